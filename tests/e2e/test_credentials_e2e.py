"""Credentials against a real kube-apiserver: who the server says we are, for each way in.

Every test asks the apiserver's SelfSubjectReview for the identity it authenticated, so a
test passes only if the server accepted exactly the credential the test meant.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import datetime
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from default_policy_operator.kube.client import KubeApi
from default_policy_operator.kube.credentials import Credentials, load_credentials
from dpo_dev.cluster import ADMIN_USER, ControlPlane
from tests.kube.tls import Authority
from tests.support import Api

pytestmark = pytest.mark.e2e

EXEC_API = "client.authentication.k8s.io/v1"
DEADLINE = 30.0


class FrozenClock:
    """Time that never passes: a reload can then only come from a 401."""

    def __init__(self) -> None:
        self.now = datetime.datetime.now(datetime.UTC)

    def __call__(self) -> datetime.datetime:
        return self.now


async def eventually(check: Callable[[], Awaitable[bool]]) -> bool:
    """Whether ``check`` holds within :data:`DEADLINE` (asked every 0.2 s)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while loop.time() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.2)
    return False


async def whoami(credentials: Credentials) -> str:
    async with KubeApi(credentials, retries=0) as api:
        review = await api.request(
            "POST",
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            body={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
        )
    return str(review["status"]["userInfo"]["username"])


def plane_config(plane: ControlPlane) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(plane.kubeconfig.read_text())
    return config


def write(path: Path, config: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


def with_user(plane: ControlPlane, user: dict[str, Any]) -> dict[str, Any]:
    config = plane_config(plane)
    config["users"][0]["user"] = user
    return config


def service_account_token(api: Api, namespace: str, name: str) -> str:
    api.namespace(namespace)
    api.create(
        f"/api/v1/namespaces/{namespace}/serviceaccounts",
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}},
    )
    review = api.create(
        f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}},
    )
    return str(review["status"]["token"])


async def test_token_kubeconfig(control_plane: ControlPlane) -> None:
    assert await whoami(await load_credentials(str(control_plane.kubeconfig))) == ADMIN_USER


async def test_kubeconfig_list_of_two_files(
    control_plane: ControlPlane, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cluster and context in one file, the user in another, as people split them."""
    config = plane_config(control_plane)
    users = {"apiVersion": "v1", "kind": "Config", "users": config.pop("users")}
    config["users"] = []
    first = write(tmp_path / "clusters" / "config", config)
    second = write(tmp_path / "users" / "config", users)
    monkeypatch.setenv("KUBECONFIG", f"{first}:{second}")
    assert await whoami(await load_credentials()) == ADMIN_USER


async def test_rotated_token_file_is_read_again_after_401(
    control_plane: ControlPlane, api: Api, tmp_path: Path, unique_name: str
) -> None:
    """The file's token is revoked (its ServiceAccount deleted) after the file was rotated:
    the next request gets 401, reads the file again and goes on as the new identity."""
    token_file = tmp_path / "token"
    token_file.write_text(service_account_token(api, unique_name, "one"))
    config = write(tmp_path / "config", with_user(control_plane, {"tokenFile": str(token_file)}))
    credentials = await load_credentials(str(config), clock=FrozenClock())
    assert await whoami(credentials) == f"system:serviceaccount:{unique_name}:one"
    token_file.write_text(control_plane.admin_token)
    api.delete(f"/api/v1/namespaces/{unique_name}/serviceaccounts/one")

    async def admin() -> bool:  # the authenticator may cache the account for a moment
        return await whoami(credentials) == ADMIN_USER

    assert await eventually(admin)


async def test_in_cluster_service_account(
    control_plane: ControlPlane,
    api: Api,
    tmp_path: Path,
    unique_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "ca.crt").write_bytes(control_plane.ca_file.read_bytes())
    (account / "token").write_text(service_account_token(api, unique_name, "operator"))
    host, port = control_plane.server.removeprefix("https://").rsplit(":", 1)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", host)
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", port)
    credentials = await load_credentials(service_account_dir=account)
    assert await whoami(credentials) == f"system:serviceaccount:{unique_name}:operator"


@pytest.fixture
async def ipv6_forward(control_plane: ControlPlane) -> AsyncIterator[str]:
    """[::1]:port forwarding bytes to the apiserver (which listens on 127.0.0.1 only)."""
    host, port = control_plane.server.removeprefix("https://").rsplit(":", 1)

    async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
        sink.close()

    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    server = await asyncio.start_server(forward, "::1", 0)
    try:
        yield f"https://[::1]:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


async def test_ipv6_server_with_tls_server_name(
    control_plane: ControlPlane, ipv6_forward: str, tmp_path: Path
) -> None:
    """A bracketed IPv6 URL, verified against a name the serving certificate holds."""
    config = plane_config(control_plane)
    config["clusters"][0]["cluster"]["server"] = ipv6_forward
    config["clusters"][0]["cluster"]["tls-server-name"] = "kubernetes.default.svc"
    credentials = await load_credentials(str(write(tmp_path / "config", config)))
    assert credentials.server == ipv6_forward
    assert await whoami(credentials) == ADMIN_USER


# -- exec plugin -----------------------------------------------------------------------------


def exec_plugin(directory: Path, token: str, lifetime: datetime.timedelta) -> Path:
    """A plugin that counts its runs, takes 0.3 s, and gives ``token`` for ``lifetime``."""
    script = directory / "plugin.py"
    script.write_text(
        f"#!{sys.executable}\n"
        "import datetime, json, pathlib, time\n"
        f"counter = pathlib.Path({str(directory / 'runs')!r})\n"
        "counter.write_text(str(int(counter.read_text()) + 1 if counter.exists() else 1))\n"
        "time.sleep(0.3)\n"
        "expiry = datetime.datetime.now(datetime.UTC) + "
        f"datetime.timedelta(seconds={lifetime.total_seconds()})\n"
        f"status = {{'token': {token!r}, "
        "'expirationTimestamp': expiry.strftime('%Y-%m-%dT%H:%M:%SZ')}\n"
        f"print(json.dumps({{'apiVersion': '{EXEC_API}', 'kind': 'ExecCredential', "
        "'status': status}))\n"
    )
    script.chmod(0o700)
    return script


async def test_exec_plugin_called_once_then_again_after_expiry(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    plugin = exec_plugin(tmp_path, control_plane.admin_token, datetime.timedelta(seconds=14))
    user = {"exec": {"apiVersion": EXEC_API, "command": str(plugin)}}
    config = write(tmp_path / "config", with_user(control_plane, user))

    def runs() -> int:
        return int((tmp_path / "runs").read_text())

    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    beat = asyncio.create_task(ticker())
    try:
        credentials = await load_credentials(str(config))
        assert ticks >= 10  # the event loop kept running while the plugin did
    finally:
        beat.cancel()
    identities = await asyncio.gather(*(whoami(credentials) for _ in range(5)))
    assert set(identities) == {ADMIN_USER}
    assert runs() == 1
    # Valid for 14 s, renewed 10 s before expiry: within seconds, and only then, it runs again.

    async def ran_again() -> bool:
        assert await whoami(credentials) == ADMIN_USER
        return runs() == 2

    assert await eventually(ran_again)
    assert await whoami(credentials) == ADMIN_USER
    assert runs() == 2


# -- client certificates (a control plane of this module's own, trusting a test CA) ----------


@pytest.fixture(scope="module")
def cert_plane(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ControlPlane, Authority]]:
    authority = Authority.create(tmp_path_factory.mktemp("client-ca"))
    plane = ControlPlane(
        tmp_path_factory.mktemp("cert-plane"),
        extra_apiserver_args=[f"--client-ca-file={authority.cert}"],
    )
    atexit.register(plane.stop)
    try:
        plane.start()
        yield plane, authority
    finally:
        plane.stop()
        atexit.unregister(plane.stop)


@pytest.mark.parametrize("form", ["data", "files"])
async def test_client_certificate_kubeconfig(
    cert_plane: tuple[ControlPlane, Authority], tmp_path: Path, form: str
) -> None:
    plane, authority = cert_plane
    pair = authority.client(f"carol-{form}", "system:masters")
    if form == "data":
        user = {
            "client-certificate-data": base64.b64encode(pair.cert.read_bytes()).decode(),
            "client-key-data": base64.b64encode(pair.key.read_bytes()).decode(),
        }
    else:
        user = {"client-certificate": str(pair.cert), "client-key": str(pair.key)}
    credentials = await load_credentials(str(write(tmp_path / "config", with_user(plane, user))))
    assert await whoami(credentials) == f"carol-{form}"
    async with KubeApi(credentials) as client:  # system:masters: it may list, too
        assert await client.request("GET", "/api/v1/namespaces/kube-system")
