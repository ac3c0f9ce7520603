"""A loopback, fault-injecting HTTPS reverse proxy in front of kube-apiserver (resilience tests).

The operator is pointed at the proxy (a kubeconfig whose server is the proxy's URL and whose CA
is the proxy's own throwaway certificate, made with ``openssl``); the proxy terminates TLS,
forwards each request to the apiserver over TLS (verified against the control plane's CA, the
client's bearer token passed through) and streams the response back, watches included. It runs
its own asyncio loop in a daemon thread, so a synchronous test drives it directly.

Faults are :class:`Rule` s the test installs and removes while the operator runs. The first rule
that matches a request (and wins its coin toss) decides what happens to it:

* ``reset``: the client's connection is closed with a TCP RST and no response;
* ``stall``: the request is held ``seconds`` (``math.inf``: as long as the rule is installed),
  then forwarded -- a hung apiserver or a black-holed watch;
* ``status``: an immediate ``status`` (503, 429, ...) with a ``Status`` body and
  ``Retry-After: seconds``.

:meth:`FaultProxy.drop_connections` resets the requests in flight (e.g. every open watch);
:meth:`FaultProxy.end_watches` ends the watch streams cleanly, as the server's timeout would.
Every request is recorded (arrival time, method, path, whether it is a watch, user agent, what
the proxy did and the status sent), so a test can count requests and measure retry spacing, and
every watch stream that carried a ``410 Gone`` ERROR event is noted in :attr:`expired`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import math
import random
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
import yaml
from aiohttp import web
from yarl import URL

#: Headers that belong to one hop, never forwarded (aiohttp sets its own framing).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)


#: What a watch stream says when the resourceVersion asked for is compacted away (410 Gone).
EXPIRED = b'"code":410'


@dataclass(frozen=True)
class Rule:
    """One fault: what to do to the requests it matches."""

    action: str  # "reset" | "stall" | "status"
    seconds: float = 0.0  # stall duration, or the Retry-After value of a status
    status: int = 503
    probability: float = 1.0
    #: True: only watch requests; False: only the others; None: every request
    watches: bool | None = False
    #: only requests whose User-Agent contains this (e.g. "kopf"); "" matches all
    agent: str = ""
    #: only requests whose path contains this; "" matches all
    path: str = ""

    def matches(self, watch: bool, agent: str, path: str) -> bool:
        return (
            (self.watches is None or self.watches == watch)
            and self.agent in agent
            and self.path in path
        )


@dataclass(frozen=True)
class Record:
    at: float  # time.monotonic() when the request arrived
    method: str
    path: str
    query: str
    watch: bool
    agent: str
    action: str  # "forward", "reset", "stall", "status"
    status: int = 0  # the status sent to the client (0: none, the connection was reset)
    name: str = ""  # metadata.name of the request's JSON body, if any (tells creates apart)

    @property
    def key(self) -> str:
        """One request and its retries: method, path and the name of the object sent."""
        return f"{self.method} {self.path}" + (f" {self.name}" if self.name else "")


@dataclass(eq=False)
class _Flight:
    """A request being handled, so drop_connections() and end_watches() can reach it."""

    transport: asyncio.Transport
    watch: bool
    agent: str
    arrived: float
    ended: asyncio.Event  # set: finish the response cleanly now (a watch's server timeout)


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A throwaway P-256 certificate for 127.0.0.1 (it is its own CA); returns (cert, key)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "proxy.crt", directory / "proxy.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "1", "-subj", "/CN=dpo-faultproxy",
            "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    key.chmod(0o600)
    return cert, key


def _name_in(body: bytes) -> str:
    try:
        return str(json.loads(body)["metadata"]["name"])
    except (ValueError, KeyError, TypeError):
        return ""


def _reset(transport: asyncio.Transport) -> None:
    """Close a connection with a TCP RST (SO_LINGER 0), not a FIN."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class FaultProxy:
    def __init__(self, upstream: str, upstream_ca: Path, workdir: Path) -> None:
        self.upstream = upstream.rstrip("/")
        self.upstream_ca = upstream_ca
        self.cert, self.key = self_signed_certificate(workdir)
        self.port = 0
        self._rules: list[Rule] = []
        self._records: list[Record] = []
        #: (time, path, query) of every watch response that carried a 410 Gone ERROR event
        self.expired: list[tuple[float, str, str]] = []
        self._lock = threading.Lock()
        self._flights: set[_Flight] = set()  # only touched on the proxy's loop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._random = random.Random(7)  # reproducible fault patterns
        self._changed: asyncio.Event  # set (and replaced) whenever the rules change

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)  # resets are deliberate
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="faultproxy", daemon=True
        )
        self._thread.start()
        try:
            self._call(self._start())
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        with contextlib.suppress(Exception):
            self._call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        self._loop = self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _call(self, coro: Any, timeout: float = 15.0) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _start(self) -> None:
        self._changed = asyncio.Event()
        client_tls = ssl.create_default_context(cafile=str(self.upstream_ca))
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=client_tls, limit=0),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            auto_decompress=False,
        )
        server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_tls.load_cert_chain(self.cert, self.key)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=server_tls)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.base_events.Server)
        self.port = int(server.sockets[0].getsockname()[1])

    async def _stop(self) -> None:
        self._drop(lambda flight: True)
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    # -- the test's controls -------------------------------------------------------------------

    def kubeconfig(self, source: Path, destination: Path) -> Path:
        """A copy of ``source`` that goes through the proxy (same user, the proxy's CA)."""
        config = yaml.safe_load(source.read_text())
        ca = base64.b64encode(self.cert.read_bytes()).decode()
        for cluster in config["clusters"]:
            cluster["cluster"]["server"] = self.url
            cluster["cluster"]["certificate-authority-data"] = ca
            cluster["cluster"].pop("certificate-authority", None)
        destination.write_text(yaml.safe_dump(config))
        destination.chmod(0o600)
        return destination

    def set_rules(self, *rules: Rule) -> None:
        """Replace the faults in force (none: a transparent proxy)."""
        with self._lock:
            self._rules = list(rules)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._notify)

    def clear(self) -> None:
        self.set_rules()

    @contextlib.contextmanager
    def faults(self, *rules: Rule) -> Iterator[None]:
        self.set_rules(*rules)
        try:
            yield
        finally:
            self.clear()

    def drop_connections(self, watches: bool | None = None) -> int:
        """Reset the connections of requests in flight (watches only: ``True``); return how many."""
        count: int = self._call(self._drop_async(watches))
        return count

    def end_watches(self) -> int:
        """End the watch streams in flight cleanly, as the server does at their timeout (the
        client then resumes from the last resourceVersion it saw); returns how many."""
        count: int = self._call(self._end_watches())
        return count

    async def _end_watches(self) -> int:
        chosen = [f for f in self._flights if f.watch]
        for flight in chosen:
            flight.ended.set()
        return len(chosen)

    async def _drop_async(self, watches: bool | None) -> int:
        return self._drop(lambda f: watches is None or f.watch == watches)

    def _drop(self, which: Callable[[_Flight], bool]) -> int:
        chosen = [f for f in self._flights if which(f)]
        for flight in chosen:
            _reset(flight.transport)
        return len(chosen)

    def records(self, since: float = 0.0) -> list[Record]:
        with self._lock:
            return [r for r in self._records if r.at >= since]

    def open_watches(self) -> int:
        return int(self._call(self._count_watches()))

    async def _count_watches(self) -> int:
        return sum(1 for f in self._flights if f.watch)

    # -- the proxy -----------------------------------------------------------------------------

    def _rule_for(self, watch: bool, agent: str, path: str) -> Rule | None:
        with self._lock:
            rules = list(self._rules)
        for rule in rules:
            if rule.matches(watch, agent, path) and self._random.random() < rule.probability:
                return rule
        return None

    def _in_force(self, rule: Rule) -> bool:
        with self._lock:
            return rule in self._rules

    def _notify(self) -> None:
        """On the proxy's loop: wake the stalls, so those whose rule is gone carry on."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def _stall(self, rule: Rule) -> None:
        if not math.isinf(rule.seconds):
            await asyncio.sleep(rule.seconds)
            return
        while True:
            changed = self._changed
            if not self._in_force(rule):
                return
            await changed.wait()

    def _record(
        self, request: web.Request, flight: _Flight, action: str, status: int, body: bytes = b""
    ) -> None:
        record = Record(
            at=flight.arrived,
            method=request.method,
            path=request.path,
            query=request.query_string,
            watch=flight.watch,
            agent=flight.agent,
            action=action,
            status=status,
            name=_name_in(body),
        )
        with self._lock:
            self._records.append(record)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        transport = request.transport
        assert transport is not None
        flight = _Flight(
            transport=transport,
            watch=request.query.get("watch") in ("true", "1"),
            agent=request.headers.get("User-Agent", ""),
            arrived=time.monotonic(),
            ended=asyncio.Event(),
        )
        self._flights.add(flight)
        try:
            body = await request.read()
            rule = self._rule_for(flight.watch, flight.agent, request.path)
            if rule is not None and rule.action == "reset":
                self._record(request, flight, "reset", 0, body)
                _reset(transport)
                return web.Response(status=499)  # never reaches anyone: the socket is gone
            if rule is not None and rule.action == "status":
                self._record(request, flight, "status", rule.status, body)
                return self._status(rule)
            action = "forward"
            if rule is not None and rule.action == "stall":
                action = "stall"
                await self._stall(rule)
            return await self._forward(request, flight, action, body)
        finally:
            self._flights.discard(flight)

    def _sniff(self, request: web.Request, data: bytes) -> bytes:
        """Note a watch stream's "410 Gone" (an ERROR event: resourceVersion too old)."""
        if EXPIRED in data.replace(b" ", b""):
            with self._lock:
                self.expired.append((time.monotonic(), request.path, request.query_string))
            return b""
        return data[-32:]

    def _status(self, rule: Rule) -> web.Response:
        reason = {429: "TooManyRequests", 503: "ServiceUnavailable"}.get(rule.status, "")
        body = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": f"injected by the fault proxy ({rule.status})",
            "reason": reason,
            "details": {"retryAfterSeconds": int(rule.seconds)},
            "code": rule.status,
        }
        return web.Response(
            status=rule.status,
            text=json.dumps(body),
            content_type="application/json",
            headers={"Retry-After": str(int(rule.seconds))},
        )

    async def _forward(
        self, request: web.Request, flight: _Flight, action: str, body: bytes
    ) -> web.StreamResponse:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        url = URL(self.upstream + request.rel_url.raw_path_qs, encoded=True)
        try:
            async with self._session.request(
                request.method, url, headers=headers, data=body or None, allow_redirects=False
            ) as upstream:
                self._record(request, flight, action, upstream.status, body)
                response = web.StreamResponse(
                    status=upstream.status,
                    headers={
                        k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP
                    },
                )
                await response.prepare(request)
                relay = asyncio.ensure_future(self._relay(request, flight, upstream, response))
                ended = asyncio.ensure_future(flight.ended.wait())
                await asyncio.wait({relay, ended}, return_when=asyncio.FIRST_COMPLETED)
                for task in (relay, ended):
                    task.cancel()
                with contextlib.suppress(ConnectionError, aiohttp.ClientError):
                    await response.write_eof()
                return response
        except (aiohttp.ClientError, TimeoutError) as exc:
            # The apiserver is unreachable: tell the client the way a gateway would.
            self._record(request, flight, "upstream-error", 502, body)
            return web.Response(status=502, text=f"fault proxy: upstream error: {exc!r}\n")

    async def _relay(
        self,
        request: web.Request,
        flight: _Flight,
        upstream: aiohttp.ClientResponse,
        response: web.StreamResponse,
    ) -> None:
        tail = b""
        with contextlib.suppress(ConnectionError, aiohttp.ClientError):
            async for chunk in upstream.content.iter_any():
                if flight.watch:
                    tail = self._sniff(request, tail + chunk)
                await response.write(chunk)
