"""Where the API server is and how to authenticate to it, kept current for the process's life.

Loading is ``kubernetes_asyncio``'s config loader, so every kubeconfig kubectl accepts works the
same way here: ``KUBECONFIG`` as a list of files merged by kubectl's rules, contexts, client
certificates as data or files, tokens and token files, exec plugins (run as asyncio
subprocesses, never blocking the event loop), auth providers (OIDC, GCP), ``proxy-url`` and
``tls-server-name``; in-cluster, the projected ServiceAccount token. The request layer
(:mod:`default_policy_operator.kube.client`) and kopf's login ask :class:`Credentials` for the
current :class:`Auth` per request; it is cached until it may have changed:

- an exec plugin's credential until its ``expirationTimestamp`` (until a 401 without one);
- everything else for :data:`RELOAD_PERIOD`, because token files (the projected ServiceAccount
  token above all) and certificate files rotate under us, as client-go re-reads them;
- and always until a 401 says it is stale (:meth:`Credentials.invalidate`).

Key material: Python's ``ssl`` loads a client certificate and key only from files, and the
library writes ``*-data`` fields to files itself. Each load gets a private directory (0700)
for those files, the SSL context is built from them, and the directory is removed before the
load returns: key files exist for milliseconds, never after the process stops (not even after a
SIGKILL between loads), and nothing needs closing.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import logging
import os
import shutil
import ssl
import tempfile
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes_asyncio.client import Configuration
from kubernetes_asyncio.config import kube_config
from kubernetes_asyncio.config.config_exception import ConfigException
from kubernetes_asyncio.config.incluster_config import InClusterConfigLoader

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
#: How long a loaded credential is trusted before files are read again (client-go's period for
#: token files; the kubelet rotates a projected token long before it expires).
RELOAD_PERIOD = datetime.timedelta(minutes=1)
#: An exec credential is renewed this long before its expiry, not in the middle of a request.
EXPIRY_SKEW = datetime.timedelta(seconds=10)
#: Proxies both our request path (kube/http1.py, CONNECT) and aiohttp's watches tunnel through;
#: kubectl also speaks socks5 and https:// proxies, we do not.
PROXY_SCHEMES = ("http://",)

NEVER = datetime.datetime.max.replace(tzinfo=datetime.UTC)

Clock = Callable[[], datetime.datetime]


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class CredentialsError(Exception):
    """The configuration cannot be used (missing, malformed, or a plugin failed)."""


@dataclass(frozen=True)
class Auth:
    """One loaded credential: what goes on the wire until :attr:`reload_at` or a 401."""

    server: str
    #: The ``Authorization`` header's value (``Bearer ...``, ``Basic ...``), if any.
    header: str | None = field(repr=False)
    ssl_context: ssl.SSLContext | None  # None for plain http
    proxy: str | None
    #: When :class:`Credentials` loads again.
    reload_at: datetime.datetime
    #: When the credential itself stops working (an exec plugin's ``expirationTimestamp`` less
    #: a skew), if it says; kopf logs in again then.
    expiry: datetime.datetime | None = None
    #: A digest of what the SSL context was built from: an unchanged reload keeps the same
    #: context (and so aiohttp's pooled connections, which are keyed by it).
    tls_material: str = field(default="", repr=False)

    def headers(self) -> dict[str, str]:
        return {"Authorization": self.header} if self.header else {}

    def session(self) -> aiohttp.ClientSession:
        """A new session that talks as this credential does (kopf's, which closes it)."""
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ssl=self.tls()),
            headers=self.headers(),
            proxy=self.proxy,
        )

    def tls(self) -> ssl.SSLContext | bool:
        """aiohttp's ``ssl`` argument: our context, or its default for a plain-http server."""
        return self.ssl_context if self.ssl_context is not None else True


Loader = Callable[[], Awaitable[Auth]]


class Credentials:
    """The current :class:`Auth` of one configuration, loaded again when it may be stale.

    Concurrent callers share one load (an exec plugin runs once, not once per request).
    """

    def __init__(self, loader: Loader, *, clock: Clock = utc_now) -> None:
        self._loader = loader
        self._clock = clock
        self._auth: Auth | None = None
        self._lock = asyncio.Lock()

    @property
    def server(self) -> str:
        return self._require().server

    def _require(self) -> Auth:
        if self._auth is None:
            raise CredentialsError("credentials used before they were loaded")
        return self._auth

    async def current(self) -> Auth:
        """The cached credential, or a fresh one if it expired or was invalidated."""
        auth = self._auth
        if auth is not None and self._clock() < auth.reload_at:
            return auth
        async with self._lock:
            if self._auth is auth or self._auth is None:  # nobody loaded it while we waited
                await self._reload()
            return self._require()

    async def refresh(self) -> Auth:
        """Load again now (kopf's re-login after a 401, start-up)."""
        async with self._lock:
            await self._reload()
            return self._require()

    def invalidate(self, stale: Auth) -> None:
        """A request with ``stale`` got 401: the next :meth:`current` loads again."""
        if self._auth is stale:
            self._auth = None

    async def _reload(self) -> None:
        fresh = await self._loader()
        previous = self._auth
        if previous is not None and previous.tls_material == fresh.tls_material:
            fresh = replace(fresh, ssl_context=previous.ssl_context)
        self._auth = fresh


async def load_credentials(
    kubeconfig: str | None = None,
    *,
    context: str | None = None,
    service_account_dir: Path = SERVICE_ACCOUNT_DIR,
    clock: Clock = utc_now,
) -> Credentials:
    """Like kubectl: ``kubeconfig``, else ``$KUBECONFIG`` (a list), else the in-cluster
    ServiceAccount if ``KUBERNETES_SERVICE_HOST`` is set, else ``~/.kube/config``.

    Loads once before returning, so a broken configuration fails at start-up.
    """
    paths = kubeconfig or os.environ.get("KUBECONFIG", "")
    loader: Loader
    if not paths and os.environ.get("KUBERNETES_SERVICE_HOST"):
        loader = _in_cluster_loader(dict(os.environ), service_account_dir, clock)
    else:
        config, current = _merge(paths or str(Path.home() / ".kube" / "config"))
        loader = _kubeconfig_loader(config, context or current, clock)
    credentials = Credentials(loader, clock=clock)
    await credentials.refresh()
    return credentials


# -- kubeconfig ------------------------------------------------------------------------------


def _merge(paths: str) -> tuple[kube_config.ConfigNode, str | None]:
    """The files of a ``KUBECONFIG`` list merged, and the current context kubectl would use.

    The library merges clusters, users and contexts first-wins, as kubectl does, but lets the
    *last* file's ``current-context`` win; kubectl keeps the first file's that sets one.
    """
    merger = kube_config.KubeConfigMerger(paths)
    if merger.config is None:
        raise CredentialsError(f"no kubeconfig found at {paths}")
    current = next(
        (
            str(config["current-context"])
            for config in merger.config_files.values()
            if (config or {}).get("current-context")
        ),
        None,
    )
    return merger.config, current


def _kubeconfig_loader(config: kube_config.ConfigNode, context: str | None, clock: Clock) -> Loader:
    """Each call runs the library's loader afresh: token files and certificate files are read
    again, an exec plugin runs again (only when :class:`Credentials` decides it must)."""
    if not context:
        raise CredentialsError("the kubeconfig names no current-context (pass a context)")

    async def load() -> Auth:
        with _private_dir() as scratch:
            try:
                loader = kube_config.KubeConfigLoader(
                    config, active_context=context, config_base_path=None, temp_file_path=scratch
                )
                configuration = Configuration()
                await loader.load_and_set(configuration)
            except (ConfigException, OSError, ValueError, KeyError, TypeError) as exc:
                # TypeError: the library's answer to a context without a user
                raise CredentialsError(f"kubeconfig context {context!r}: {exc}") from exc
            expiry = getattr(loader, "exec_plugin_expiry", None)
            if expiry is not None:
                return _auth(configuration, expiry - EXPIRY_SKEW, expiry - EXPIRY_SKEW)
            if _uses_exec(config, context):
                return _auth(configuration, NEVER)  # until a 401
            return _auth(configuration, clock() + RELOAD_PERIOD)

    return load


def _uses_exec(config: kube_config.ConfigNode, context: str) -> bool:
    """Whether the context's user runs an exec plugin (whose credential lasts until a 401
    when it gives no expiry: re-running a plugin every minute can be slow and rate-limited)."""
    entry = config["contexts"].get_with_name(context)
    user_name = entry["context"].safe_get("user") if entry else None
    if not user_name or not config.safe_get("users"):
        return False
    user = config["users"].get_with_name(user_name, safe=True)
    return user is not None and "exec" in user["user"]


# -- in-cluster ------------------------------------------------------------------------------


def _in_cluster_loader(environ: Mapping[str, str], account_dir: Path, clock: Clock) -> Loader:
    """The ServiceAccount's projected token, read again every :data:`RELOAD_PERIOD` (and after a
    401): the kubelet rotates the file, the process keeps running."""

    async def load() -> Auth:
        loader = InClusterConfigLoader(
            token_filename=str(account_dir / "token"),
            cert_filename=str(account_dir / "ca.crt"),
            try_refresh_token=False,  # we reload the whole thing ourselves
            environ=dict(environ),
        )
        configuration = Configuration()
        try:
            loader.load_and_set(configuration)
        except (ConfigException, OSError) as exc:
            raise CredentialsError(f"in-cluster configuration: {exc}") from exc
        return _auth(configuration, clock() + RELOAD_PERIOD)

    return load


# -- TLS ---------------------------------------------------------------------------------


class _ServerNameContext(ssl.SSLContext):
    """Verifies (and sends SNI for) ``tls-server-name`` instead of the URL's host, as client-go
    does; asyncio hands every connection's host to ``wrap_bio``, which swaps it in. Works for
    any aiohttp session given this context, kopf's included."""

    tls_server_name: str = ""

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        name = self.tls_server_name or server_hostname
        return super().wrap_bio(incoming, outgoing, server_side, name, session)


def _auth(
    configuration: Any, reload_at: datetime.datetime, expiry: datetime.datetime | None = None
) -> Auth:
    """An :class:`Auth` from what the library set on its ``Configuration``; reads the files
    while they exist (the caller's private directory goes right after)."""
    server = str(configuration.host).rstrip("/")
    proxy = configuration.proxy or None
    if proxy and not str(proxy).startswith(PROXY_SCHEMES):
        raise CredentialsError(f"proxy-url {proxy}: only http:// proxies are supported")
    header = configuration.api_key.get("BearerToken")
    digest = hashlib.sha256(f"{configuration.verify_ssl}/{configuration.tls_server_name}".encode())
    for path in (configuration.ssl_ca_cert, configuration.cert_file, configuration.key_file):
        digest.update(b"\0" + (Path(path).read_bytes() if path else b""))
    context = None
    if server.startswith("https://"):
        context = _ssl_context(configuration)
    return Auth(
        server=server,
        header=str(header).strip() if header else None,
        ssl_context=context,
        proxy=proxy,
        reload_at=reload_at,
        expiry=expiry,
        tls_material=digest.hexdigest(),
    )


def _ssl_context(configuration: Any) -> ssl.SSLContext:
    context = _ServerNameContext(ssl.PROTOCOL_TLS_CLIENT)
    context.tls_server_name = configuration.tls_server_name or ""
    if configuration.ssl_ca_cert:
        context.load_verify_locations(cafile=configuration.ssl_ca_cert)
    else:
        context.load_default_certs()
    if not configuration.verify_ssl:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if configuration.cert_file and configuration.key_file:
        context.load_cert_chain(configuration.cert_file, configuration.key_file)
    return context


@contextlib.contextmanager
def _private_dir() -> Iterator[str]:
    """A 0700 directory for the library's key files, removed on exit together with the
    library's record of them (which it would otherwise hand out again once they are gone)."""
    path = tempfile.mkdtemp(prefix="dpo-credentials-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        records = kube_config._temp_files
        for key in [key for key, name in records.items() if name.startswith(path + os.sep)]:
            del records[key]
