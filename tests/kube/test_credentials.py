"""Credentials as kubectl loads them, against real files and a real HTTPS server on loopback.

The server (aiohttp, TLS with a throwaway CA) answers every request with what it saw: the
``Authorization`` header and the client certificate's common name; it can refuse tokens it
does not accept with 401, as an apiserver does with a rotated-out token. Time is a clock the
tests move, so "after the reload period" and "after expiry" need no sleeping.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import ssl
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from default_policy_operator.controller.handlers import HandlerConfig, build_registry
from default_policy_operator.controller.reconciler import Reconciler, Settings
from default_policy_operator.core.world import World
from default_policy_operator.kube.client import ApiError, KubeApi
from default_policy_operator.kube.credentials import (
    EXPIRY_SKEW,
    RELOAD_PERIOD,
    Credentials,
    CredentialsError,
    load_credentials,
)
from tests.kube.tls import Authority, Pair

SERVER_NAME = "apiserver.test"
EXEC_API = "client.authentication.k8s.io/v1"


class Clock:
    def __init__(self) -> None:
        self.now = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)

    def __call__(self) -> datetime.datetime:
        return self.now

    def advance(self, delta: datetime.timedelta) -> None:
        self.now += delta


@dataclass
class EchoServer:
    """Answers ``{"authorization": ..., "client": CN}``; 401 for tokens not in ``accept``."""

    url: str
    ca: Path
    accept: set[str] | None = None
    seen: list[str | None] = field(default_factory=list)
    connects: int = 0


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    return Authority.create(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def server_pair(authority: Authority) -> Pair:
    return authority.server(SERVER_NAME)  # no IP in its names: 127.0.0.1 alone must fail


@pytest.fixture
async def echo(authority: Authority, server_pair: Pair) -> AsyncIterator[EchoServer]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(authority.cert))
    context.load_cert_chain(server_pair.cert, server_pair.key)
    context.verify_mode = ssl.CERT_OPTIONAL
    state = EchoServer("", authority.cert)

    async def answer(request: web.Request) -> web.Response:
        header = request.headers.get("Authorization")
        state.seen.append(header)
        token = (header or "").removeprefix("Bearer ")
        if state.accept is not None and token not in state.accept:
            return web.json_response({"reason": "Unauthorized", "message": "no"}, status=401)
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        subject = dict(item[0] for item in peer["subject"]) if peer else {}
        return web.json_response({"authorization": header, "client": subject.get("commonName")})

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = runner.addresses[0][1]
    state.url = f"https://127.0.0.1:{port}"
    try:
        yield state
    finally:
        await runner.cleanup()


def write_kubeconfig(
    path: Path,
    *,
    server: str = "",
    cluster: dict[str, Any] | None = None,
    user: dict[str, Any] | None = None,
    name: str = "test",
    current: str | None = "test",
) -> Path:
    """A kubeconfig with (optionally) one cluster, one user and one context, all ``name``."""
    config: dict[str, Any] = {"apiVersion": "v1", "kind": "Config", "clusters": [], "users": []}
    if server:
        config["clusters"] = [{"name": name, "cluster": {"server": server, **(cluster or {})}}]
    if user is not None:
        config["users"] = [{"name": name, "user": user}]
    config["contexts"] = [{"name": name, "context": {"cluster": name, "user": name}}]
    if current:
        config["current-context"] = current
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


def ca_data(echo: EchoServer) -> dict[str, Any]:
    return {
        "certificate-authority-data": base64.b64encode(echo.ca.read_bytes()).decode(),
        "tls-server-name": SERVER_NAME,
    }


async def get(credentials: Credentials) -> dict[str, Any]:
    async with KubeApi(credentials, retries=0) as api:
        result: dict[str, Any] = await api.request("GET", "/version")
        return result


# -- in-cluster ------------------------------------------------------------------------------


@pytest.fixture
def account(tmp_path: Path, authority: Authority, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ServiceAccount directory as the kubelet projects it, and no KUBECONFIG."""
    directory = tmp_path / "serviceaccount"
    directory.mkdir()
    (directory / "ca.crt").write_bytes(authority.cert.read_bytes())
    (directory / "token").write_text("one")
    monkeypatch.delenv("KUBECONFIG", raising=False)
    return directory


async def test_in_cluster_ipv6_host_is_bracketed(
    account: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    credentials = await load_credentials(service_account_dir=account)
    assert credentials.server == "https://[fd00::1]:443"


async def test_in_cluster_token_is_read_again_after_rotation(
    account: Path, echo: EchoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kubelet rewrites the projected token; a running process must pick it up."""
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", echo.url.rsplit(":", 1)[1])
    clock = Clock()
    credentials = await load_credentials(service_account_dir=account, clock=clock)
    assert credentials.server == echo.url
    (account / "token").write_text("two")
    assert (await credentials.current()).header == "Bearer one"  # within the period: cached
    clock.advance(RELOAD_PERIOD)
    assert (await credentials.current()).header == "Bearer two"


# -- kubeconfig ------------------------------------------------------------------------------


async def test_token_file_is_read_again_after_401(tmp_path: Path, echo: EchoServer) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("one\n")
    config = write_kubeconfig(
        tmp_path / "config", server=echo.url, cluster=ca_data(echo), user={"tokenFile": "token"}
    )
    credentials = await load_credentials(str(config), clock=Clock())  # time stands still
    echo.accept = {"two"}
    token_file.write_text("two\n")  # rotated, and the old token revoked
    assert (await get(credentials))["authorization"] == "Bearer two"
    assert echo.seen == ["Bearer one", "Bearer two"]


async def test_kubeconfig_list_merges_like_kubectl(
    tmp_path: Path, echo: EchoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """KUBECONFIG=a:b: names first-wins, the first file's current-context wins, relative paths
    are relative to the file that holds them, empty and missing entries are skipped."""
    first = write_kubeconfig(tmp_path / "a" / "config", server=echo.url, cluster=ca_data(echo))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "token").write_text("from-b")
    second = write_kubeconfig(
        tmp_path / "b" / "config",
        server="https://127.0.0.1:1",  # loses to the first file's cluster of the same name
        user={"tokenFile": "token"},
        current="elsewhere",  # loses to the first file's current-context
    )
    monkeypatch.setenv("KUBECONFIG", f"{first}::{tmp_path / 'missing'}:{second}")
    credentials = await load_credentials()
    assert credentials.server == echo.url
    assert (await get(credentials))["authorization"] == "Bearer from-b"


async def test_the_context_argument_picks_a_context(tmp_path: Path, echo: EchoServer) -> None:
    config = write_kubeconfig(
        tmp_path / "config",
        server=echo.url,
        cluster=ca_data(echo),
        user={"token": "t"},
        name="other",
        current="missing",
    )
    with pytest.raises(CredentialsError, match="missing"):
        await load_credentials(str(config))
    credentials = await load_credentials(str(config), context="other")
    assert (await get(credentials))["authorization"] == "Bearer t"


async def test_tls_server_name_is_what_is_verified(tmp_path: Path, echo: EchoServer) -> None:
    """The certificate names apiserver.test; the URL says 127.0.0.1."""
    named = write_kubeconfig(
        tmp_path / "named", server=echo.url, cluster=ca_data(echo), user={"token": "t"}
    )
    assert (await get(await load_credentials(str(named))))["authorization"] == "Bearer t"
    cluster = {k: v for k, v in ca_data(echo).items() if k != "tls-server-name"}
    unnamed = write_kubeconfig(tmp_path / "unnamed", server=echo.url, cluster=cluster, user={})
    with pytest.raises(ApiError, match="certificate verify failed"):
        await get(await load_credentials(str(unnamed)))


@pytest.mark.parametrize("form", ["data", "files"])
async def test_client_certificates(
    tmp_path: Path, echo: EchoServer, authority: Authority, form: str
) -> None:
    pair = authority.client("alice")
    user = (
        {
            "client-certificate-data": base64.b64encode(pair.cert.read_bytes()).decode(),
            "client-key-data": base64.b64encode(pair.key.read_bytes()).decode(),
        }
        if form == "data"
        else {"client-certificate": str(pair.cert), "client-key": str(pair.key)}
    )
    config = write_kubeconfig(
        tmp_path / "config", server=echo.url, cluster=ca_data(echo), user=user
    )
    assert (await get(await load_credentials(str(config))))["client"] == "alice"


async def test_no_key_material_is_left_in_the_temp_dir(
    tmp_path: Path, echo: EchoServer, authority: Authority, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``*-data`` fields go through files (Python's ssl wants files) that live only while one
    load runs; a second load of the same data (a reload, another client) still works."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    pair = authority.client("bob")
    user = {
        "client-certificate-data": base64.b64encode(pair.cert.read_bytes()).decode(),
        "client-key-data": base64.b64encode(pair.key.read_bytes()).decode(),
    }
    config = write_kubeconfig(
        tmp_path / "config", server=echo.url, cluster=ca_data(echo), user=user
    )
    for _ in range(2):
        credentials = await load_credentials(str(config))
        assert list(scratch.iterdir()) == []
        assert (await get(credentials))["client"] == "bob"
        await credentials.refresh()
        assert list(scratch.iterdir()) == []


async def test_http_proxy_url_is_used(tmp_path: Path, echo: EchoServer) -> None:
    connects: list[str] = []

    async def tunnel(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = (await reader.readuntil(b"\r\n\r\n")).decode()
        target = request.split()[1]
        connects.append(target)
        host, port = target.rsplit(":", 1)
        upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    proxy = await asyncio.start_server(tunnel, "127.0.0.1", 0)
    port = proxy.sockets[0].getsockname()[1]
    try:
        cluster = {**ca_data(echo), "proxy-url": f"http://127.0.0.1:{port}"}
        config = write_kubeconfig(
            tmp_path / "config", server=echo.url, cluster=cluster, user={"token": "t"}
        )
        assert (await get(await load_credentials(str(config))))["authorization"] == "Bearer t"
        assert connects == [echo.url.removeprefix("https://")]
        socks = {**cluster, "proxy-url": "socks5://127.0.0.1:1"}
        write_kubeconfig(tmp_path / "config", server=echo.url, cluster=socks, user={})
        with pytest.raises(CredentialsError, match="socks5"):
            await load_credentials(str(config))
        secure = {**cluster, "proxy-url": "https://127.0.0.1:1"}
        write_kubeconfig(tmp_path / "config", server=echo.url, cluster=secure, user={})
        with pytest.raises(CredentialsError, match="only http:// proxies"):
            await load_credentials(str(config))
    finally:
        proxy.close()


# -- exec plugins ----------------------------------------------------------------------------


@pytest.fixture
def plugin(tmp_path: Path) -> Path:
    """An exec plugin that counts its runs, takes 0.3 s, and prints token ``t<run>`` with the
    expiry in ``$EXPIRY`` (none if empty)."""
    script = tmp_path / "plugin.py"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, os, pathlib, time\n"
        "counter = pathlib.Path(os.environ['COUNTER'])\n"
        "runs = int(counter.read_text() or 0) + 1 if counter.exists() else 1\n"
        "counter.write_text(str(runs))\n"
        "time.sleep(0.3)\n"
        f"status = {{'token': f't{{runs}}'}}\n"
        "if os.environ['EXPIRY']:\n"
        "    status['expirationTimestamp'] = os.environ['EXPIRY']\n"
        f"print(json.dumps({{'apiVersion': '{EXEC_API}', 'kind': 'ExecCredential', "
        "'status': status}))\n"
    )
    script.chmod(0o755)
    return script


def exec_user(plugin: Path, expiry: str = "") -> dict[str, Any]:
    env = [
        {"name": "COUNTER", "value": str(plugin.parent / "runs")},
        {"name": "EXPIRY", "value": expiry},
    ]
    return {"exec": {"apiVersion": EXEC_API, "command": str(plugin), "env": env}}


def runs(plugin: Path) -> int:
    return int((plugin.parent / "runs").read_text())


async def test_exec_plugin_runs_off_the_loop_and_is_cached_until_expiry(
    tmp_path: Path, echo: EchoServer, plugin: Path
) -> None:
    clock = Clock()
    expiry = clock.now + datetime.timedelta(hours=1)
    user = exec_user(plugin, expiry.strftime("%Y-%m-%dT%H:%M:%SZ"))
    config = write_kubeconfig(
        tmp_path / "config", server=echo.url, cluster=ca_data(echo), user=user
    )

    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    beat = asyncio.create_task(ticker())
    try:
        credentials = await load_credentials(str(config), clock=clock)
        assert ticks >= 10  # the loop ran on during the plugin's 0.3 s
        assert runs(plugin) == 1
        answers = await asyncio.gather(*(get(credentials) for _ in range(5)))
        assert {a["authorization"] for a in answers} == {"Bearer t1"}
        assert runs(plugin) == 1
        assert (await credentials.current()).expiry == expiry - EXPIRY_SKEW
        clock.advance(datetime.timedelta(minutes=59, seconds=51))  # within the skew
        headers = await asyncio.gather(*(credentials.current() for _ in range(5)))
        assert {h.header for h in headers} == {"Bearer t2"}
        assert runs(plugin) == 2  # concurrent callers shared one run
    finally:
        beat.cancel()


async def test_exec_plugin_without_expiry_lasts_until_401(
    tmp_path: Path, echo: EchoServer, plugin: Path
) -> None:
    clock = Clock()
    config = write_kubeconfig(
        tmp_path / "config", server=echo.url, cluster=ca_data(echo), user=exec_user(plugin)
    )
    credentials = await load_credentials(str(config), clock=clock)
    clock.advance(datetime.timedelta(days=1))
    assert (await credentials.current()).header == "Bearer t1"
    echo.accept = {"t2"}
    assert (await get(credentials))["authorization"] == "Bearer t2"
    assert runs(plugin) == 2


async def test_a_failing_exec_plugin_is_a_credentials_error(tmp_path: Path) -> None:
    user = {"exec": {"apiVersion": EXEC_API, "command": "false"}}
    config = write_kubeconfig(tmp_path / "config", server="https://127.0.0.1:1", user=user)
    with pytest.raises(CredentialsError, match="returned 1"):
        await load_credentials(str(config))


# -- kopf ------------------------------------------------------------------------------------


async def test_kopf_logs_in_with_the_same_credentials(tmp_path: Path, echo: EchoServer) -> None:
    """kopf's session carries our TLS context (tls-server-name included), header and server,
    and each login loads again (kopf logs in again after a 401)."""
    token_file = tmp_path / "token"
    token_file.write_text("one")
    config = write_kubeconfig(
        tmp_path / "config", server=echo.url, cluster=ca_data(echo), user={"tokenFile": "token"}
    )
    credentials = await load_credentials(str(config), clock=Clock())
    registry = build_registry(
        HandlerConfig(credentials=credentials),
        Reconciler(World(frozenset()), KubeApi(credentials), Settings()),
    )
    (login,) = (h.fn for h in registry._activities.get_all_handlers() if h.fn.__name__ == "login")
    token_file.write_text("two")
    info = await login()
    assert info.server == echo.url
    assert info.expiration is None
    async with info.aiohttp_session as session, session.get(f"{info.server}/version") as response:
        assert json.loads(await response.text())["authorization"] == "Bearer two"
    assert (await credentials.current()).header == "Bearer two"
