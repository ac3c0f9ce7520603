"""HTTP/1.1 exchanges on kept-alive connections: the path of every API request but watches.

Why not aiohttp here: on 2 cores shared with the apiserver, the operator's own CPU per write
decides how fast a rollout converges, and aiohttp's client machinery (session, connector,
request and response objects, URL building, header multidicts) was half of the operator's
profile. 5,000 NetworkPolicy creates against the local apiserver, 64 in flight, cost 340-430 µs
of client CPU each through ``aiohttp.ClientSession`` and 160-210 µs through a first prototype
of this module (JSON included in both). Watches stay on aiohttp: they are long-lived streams,
not per-object work.

What it does: one exchange at a time per connection (no pipelining); idle connections reused
last-in first-out; ``Content-Length``, chunked and read-until-close bodies; gzip; a tunnel
through an ``http://`` proxy (``CONNECT``); one deadline per exchange, connecting included.
What it does not: redirects, HTTP/2, ``Expect: 100-continue``.
"""

from __future__ import annotations

import asyncio
import base64
import zlib
from dataclasses import dataclass, field
from ssl import SSLContext
from typing import cast
from urllib.parse import unquote, urlsplit

#: answers that carry no body whatever their headers say (RFC 9112, section 6.3)
_NO_BODY = frozenset({204, 304})


class HttpError(Exception):
    """The connection failed, or the answer was not HTTP: the request's fate is unknown."""


@dataclass(slots=True)
class Reply:
    status: int
    #: header names in lower case; a repeated header keeps its last value
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class Origin:
    """Where connections go: they are pooled per origin, so a rotated TLS context or a new
    server never reuses a connection made for the old one."""

    host: str
    port: int
    tls: SSLContext | None
    proxy: str | None = None
    #: the server URL's own path (a cluster behind a proxying gateway), before every request's
    prefix: str = ""

    @classmethod
    def of(cls, server: str, tls: SSLContext | None, proxy: str | None) -> Origin:
        url = urlsplit(server)
        secure = url.scheme == "https"
        port = url.port or (443 if secure else 80)
        return cls(url.hostname or "", port, tls if secure else None, proxy, url.path.rstrip("/"))

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


class ReplyParser:
    """An answer, parsed as its bytes arrive. Pure, so the framing is tested without sockets."""

    def __init__(self, *, body_expected: bool = True) -> None:
        self._buffer = bytearray()
        self._body_expected = body_expected
        self._status = 0
        self._headers: dict[str, str] = {}
        self._length: int | None = None  # None: chunked or until close
        self._chunked = False
        self._chunks = bytearray()
        self.started = False  # whether any byte of the answer came
        self.keep_alive = True

    def feed(self, data: bytes) -> Reply | None:
        """The answer once ``data`` completes it, else None."""
        self.started = True
        self._buffer += data
        if not self._status and not self._head():
            return None
        if self._chunked:
            return self._chunk()
        if self._length is not None and len(self._buffer) >= self._length:
            if len(self._buffer) > self._length:  # bytes nobody asked for: don't reuse
                self.keep_alive = False
            return self._reply(bytes(self._buffer[: self._length]))
        return None

    def eof(self) -> Reply | None:
        """The connection closed: the answer, if its body was meant to run until the close."""
        if self._status and self._length is None and not self._chunked:
            self.keep_alive = False
            return self._reply(bytes(self._buffer))
        return None

    def _head(self) -> bool:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            return False
        lines = self._buffer[:end].decode("latin-1").split("\r\n")
        del self._buffer[: end + 4]
        version, _, rest = lines[0].partition(" ")
        code = rest[:3]
        if not version.startswith("HTTP/1.") or not code.isdigit():
            raise HttpError(f"not an HTTP/1 answer: {lines[0][:80]!r}")
        for line in lines[1:]:
            name, _, value = line.partition(":")
            self._headers[name.strip().lower()] = value.strip()
        connection = self._headers.get("connection", "").lower()
        self.keep_alive = connection != "close" and (
            version != "HTTP/1.0" or "keep-alive" in connection
        )
        self._status = int(code)
        if 100 <= self._status < 200:  # informational: the real answer follows
            self._status, self._headers = 0, {}
            return self._head()
        self._frame()
        return True

    def _frame(self) -> None:
        if not self._body_expected or self._status in _NO_BODY:
            self._length = 0
        elif "chunked" in self._headers.get("transfer-encoding", "").lower():
            self._chunked = True
        elif "content-length" in self._headers:
            length = self._headers["content-length"]
            if not (length.isascii() and length.isdigit()):
                raise HttpError(f"bad Content-Length {length[:20]!r}")
            self._length = int(length)

    def _chunk(self) -> Reply | None:
        buffer, position = self._buffer, 0
        while True:
            line_end = buffer.find(b"\r\n", position)
            if line_end < 0:
                break
            size_text = bytes(buffer[position:line_end].split(b";", 1)[0].strip())
            if not size_text or size_text.strip(b"0123456789abcdefABCDEF"):
                raise HttpError(f"bad chunk size {size_text[:20]!r}")
            size = int(size_text, 16)
            if size == 0:  # the last chunk: done once the (possibly empty) trailers end
                if buffer.find(b"\r\n\r\n", line_end) < 0:
                    break
                return self._reply(bytes(self._chunks))
            if len(buffer) < line_end + 2 + size + 2:
                break
            self._chunks += buffer[line_end + 2 : line_end + 2 + size]
            position = line_end + 2 + size + 2
        del buffer[:position]
        return None

    def _reply(self, body: bytes) -> Reply:
        if self._headers.get("content-encoding", "").lower() == "gzip":
            try:
                body = zlib.decompress(body, wbits=31)
            except zlib.error as exc:
                raise HttpError(f"bad gzip body: {exc}") from None
        return Reply(self._status, self._headers, body)


class _Connection(asyncio.Protocol):
    """One connection, one exchange at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._parser: ReplyParser | None = None
        self._answer: asyncio.Future[Reply] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport, whatever its class: uvloop's TLS transport is not a subclass of
        # asyncio.Transport, only its equal.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._parser is not None and self._answer is not None and not self._answer.done():
            try:  # a body that runs until the close ends only with a clean close, not a reset
                reply = self._parser.eof() if exc is None else None
            except HttpError as error:
                self._answer.set_exception(error)
                return
            if reply is not None:
                self._answer.set_result(reply)
            else:
                self._answer.set_exception(_Lost(self._parser.started, exc))

    def data_received(self, data: bytes) -> None:
        if self._parser is None or self._answer is None or self._answer.done():
            self.close()  # nothing was asked: the stream is out of step
            return
        try:
            reply = self._parser.feed(data)
        except HttpError as error:
            self._answer.set_exception(error)
            return
        if reply is not None:
            self._answer.set_result(reply)

    async def exchange(self, request: bytes, *, body_expected: bool) -> tuple[Reply, bool]:
        """The answer to ``request``, and whether this connection may carry another."""
        assert self.transport is not None  # taken open: no await since (see ConnectionPool)
        self._parser = parser = ReplyParser(body_expected=body_expected)
        self._answer = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        try:
            reply = await self._answer
        finally:
            self._parser = self._answer = None
        return reply, parser.keep_alive and not self.closed

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class _Lost(HttpError):
    def __init__(self, started: bool, cause: Exception | None) -> None:
        #: whether any of the answer came: if not, a reused connection the server had closed
        self.started = started
        super().__init__(f"connection closed{' mid-answer' if started else ''}: {cause or 'EOF'}")


@dataclass
class ConnectionPool:
    """Kept-alive connections to one :class:`Origin` at a time. How many requests run at once
    is the caller's to bound (:class:`~default_policy_operator.kube.throttle.AdaptiveLimit`);
    the pool keeps up to ``keep`` idle connections, the rest close after their exchange. An
    exchange, connecting included, takes at most ``timeout`` seconds."""

    keep: int = 64
    timeout: float = 30.0
    _idle: list[_Connection] = field(default_factory=list)
    _busy: set[_Connection] = field(default_factory=set)
    #: the origin of the latest request: only its connections are kept (a new server or TLS
    #: context retires the old ones, as their exchanges end)
    _origin: Origin | None = None

    async def exchange(
        self, origin: Origin, request: bytes, *, body_expected: bool = True
    ) -> Reply:
        """Send ``request`` (head and body, whole) and return the answer, within the timeout.

        A reused connection that turns out closed before any answer came (the server dropped
        it while idle) is replaced once at once; any other failure raises :class:`HttpError`
        or :class:`TimeoutError`.
        """
        if origin != self._origin:
            self._origin = origin
            self._close(self._idle)
        async with asyncio.timeout(self.timeout):
            connection = self._take()
            if connection is not None:
                try:
                    return await self._exchange(origin, connection, request, body_expected)
                except _Lost as lost:
                    if lost.started:
                        raise
            connection = await _connect(origin)
            return await self._exchange(origin, connection, request, body_expected)

    async def _exchange(
        self, origin: Origin, connection: _Connection, request: bytes, body_expected: bool
    ) -> Reply:
        self._busy.add(connection)
        try:
            reply, reusable = await connection.exchange(request, body_expected=body_expected)
        except BaseException:  # failed or cancelled mid-exchange: the stream is out of step
            connection.close()
            raise
        finally:
            self._busy.discard(connection)
        if reusable and origin == self._origin and len(self._idle) < self.keep:
            self._idle.append(connection)
        else:
            connection.close()
        return reply

    def _take(self) -> _Connection | None:
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed:
                return connection
        return None

    def close(self) -> None:
        """Close every connection, those in an exchange too (their requests fail)."""
        self._close(self._idle)
        self._close(self._busy)

    @staticmethod
    def _close(connections: list[_Connection] | set[_Connection]) -> None:
        for connection in list(connections):
            connection.close()
        connections.clear()


async def _connect(origin: Origin) -> _Connection:
    loop = asyncio.get_running_loop()
    try:
        if origin.proxy is None:
            _, connection = await loop.create_connection(
                _Connection, origin.host, origin.port, ssl=origin.tls
            )
            return connection
        return await _tunnel(origin, origin.proxy)
    except OSError as exc:
        raise HttpError(f"cannot connect to {origin.authority}: {exc}") from exc


async def _tunnel(origin: Origin, proxy: str) -> _Connection:
    """A connection to ``origin`` through an ``http://`` proxy's ``CONNECT``, TLS inside."""
    url = urlsplit(proxy)
    if url.scheme != "http":
        raise HttpError(f"proxy {proxy}: only http:// proxies are supported for requests")
    loop = asyncio.get_running_loop()
    transport, connection = await loop.create_connection(
        _Connection, url.hostname or "", url.port or 80
    )
    head = f"CONNECT {origin.authority} HTTP/1.1\r\nHost: {origin.authority}\r\n"
    if url.username is not None:
        user = f"{unquote(url.username)}:{unquote(url.password or '')}"
        head += f"Proxy-Authorization: Basic {base64.b64encode(user.encode()).decode()}\r\n"
    try:
        reply, _ = await connection.exchange((head + "\r\n").encode(), body_expected=False)
    except BaseException:
        connection.close()
        raise
    if not 200 <= reply.status < 300:
        connection.close()
        raise HttpError(f"proxy {url.hostname}:{url.port} refused the tunnel: {reply.status}")
    if origin.tls is None:
        return connection
    secure = await loop.start_tls(transport, connection, origin.tls, server_hostname=origin.host)
    if secure is None:
        raise HttpError(f"no TLS through the proxy to {origin.authority}")
    connection.connection_made(secure)
    return connection
