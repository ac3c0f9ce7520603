"""``dpo run``: wire the client, the world, the reconciler, kopf and the HTTP endpoints."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import kopf
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from default_policy_operator import metrics
from default_policy_operator.controller.handlers import HandlerConfig, build_registry
from default_policy_operator.controller.reconciler import NAMESPACE, Reconciler, Settings
from default_policy_operator.controller.reports import ReportPublisher
from default_policy_operator.core.governance import protected_namespaces
from default_policy_operator.core.labels import KIND, MANAGED_SELECTOR
from default_policy_operator.core.objects import (
    CALICO_NETWORK_POLICY,
    CLUSTER_NETWORK_POLICY,
    CLUSTER_POLICY_APIS,
    GLOBAL_NETWORK_POLICY,
    NETWORK_POLICY,
)
from default_policy_operator.core.world import World
from default_policy_operator.kube.client import (
    NAMESPACES,
    NETWORK_POLICIES,
    PROFILES,
    KubeApi,
    Resource,
)
from default_policy_operator.kube.credentials import load_credentials
from default_policy_operator.kube.informers import Informer
from default_policy_operator.kube.leader import FencedKubeApi, LeaderElectionConfig, LeaderElector
from default_policy_operator.rendering.pool import PoolSettings, RenderPool

log = logging.getLogger(__name__)

#: Watches end and are renewed every --watch-timeout seconds and carry bookmarks: this many
#: timeouts without a word from the API server means a stream is stuck, and liveness says so.
STALE_WATCH_TIMEOUTS = 3
#: Connections beyond one per writer: the informers' watches (up to ten kinds), a list during a
#: resync, status and Event writes, so that writers never wait for a socket.
WATCH_CONNECTIONS = 16


@dataclass
class RunOptions:
    kubeconfig: str | None = None
    namespace: str | None = None  # the operator's own namespace, always protected
    metrics_port: int = 8080
    health_port: int = 8081
    bind_address: str = "0.0.0.0"
    log_format: str = "text"
    log_level: str = "INFO"
    resync_period: float = 600.0
    watch_timeout: int = 60
    workers: int = 64
    #: ``--handover-settle``: seconds a new cover of another kind is live before the old goes
    handover_settle: float = 3.0
    calico_api_version: str = "crd.projectcalico.org/v1"
    cluster_api_version: str = CLUSTER_POLICY_APIS[0]
    #: ``--audit-reports``: publish Audit findings as OpenReports / PolicyReports
    audit_reports: bool = False
    render: PoolSettings = field(default_factory=PoolSettings)
    #: ``--leader-elect``: stand by until this replica holds the Lease (None: always act)
    leader_election: LeaderElectionConfig | None = None


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(fmt: str, level: str) -> None:
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # kopf logs every successful handler call at INFO: one line per event at scale.
    logging.getLogger("kopf.objects").setLevel(max(logging.WARNING, logging.getLevelName(level)))


def health_app(
    reconciler: Reconciler,
    resync_period: float,
    elector: LeaderElector | None = None,
    watch_timeout: float = 60.0,
) -> web.Application:
    """Liveness: the reconcile loop turns over and resyncs happen; readiness: first sync done.

    A standby (leader election on, Lease held by another replica) is alive while its election
    loop turns over, and never ready: it serves nothing and writes nothing.
    """

    async def healthz(_: web.Request) -> web.Response:
        now = time.monotonic()
        problems = []
        if elector is not None and not elector.is_leader:
            if now - elector.last_attempt > 60:
                return web.Response(status=500, text="leader election stalled\n")
            return web.Response(text="ok (standby)\n")
        if now - reconciler.last_loop > 60:
            problems.append("reconcile loop stalled")
        if reconciler.last_resync and now - reconciler.last_resync > 3 * resync_period:
            problems.append("full resync overdue")
        stale_after = STALE_WATCH_TIMEOUTS * watch_timeout
        stale = reconciler.stale_informers(stale_after)
        if stale:
            problems.append(
                f"no word from the API server for {stale_after:.0f}s: {', '.join(stale)}"
            )
        if problems:
            return web.Response(status=500, text="; ".join(problems) + "\n")
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        if elector is not None and not elector.is_leader:
            return web.Response(status=503, text="standby: another replica is the leader\n")
        if reconciler.synced.is_set():
            return web.Response(text="ok\n")
        return web.Response(status=503, text="initial sync in progress\n")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


def metrics_app() -> web.Application:
    async def serve(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(metrics.REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app = web.Application()
    app.router.add_get("/metrics", serve)
    return app


async def _serve(app: web.Application, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _stop_on_signals(stop: asyncio.Event) -> None:
    """SIGTERM/SIGINT set ``stop`` until kopf installs its own handlers (it replaces these)."""
    if threading.current_thread() is threading.main_thread():
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)


def build_informers(api: KubeApi, reconciler: Reconciler, watch_timeout: int) -> list[Informer]:
    """One list-then-watch cache per kind the operator reads."""
    informer = functools.partial(Informer, api, watch_timeout=watch_timeout)

    def objects(resource: Resource, kind: str, optional: bool = False) -> Informer:
        """Managed objects of one kind: ours by label, merged by kind."""
        return informer(
            resource, label_selector=MANAGED_SELECTOR, optional=optional,
            on_list=functools.partial(reconciler.objects_listed, kind),
            listing=functools.partial(reconciler.listing, kind),
            on_event=reconciler.object_event, digest=reconciler.object_digest,
        )  # fmt: skip

    return [
        informer(NAMESPACES, on_list=reconciler.namespaces_listed,
                 listing=functools.partial(reconciler.listing, NAMESPACE),
                 digest=reconciler.namespace_digest, on_event=reconciler.namespace_event),
        informer(PROFILES, on_list=reconciler.profiles_listed,
                 listing=functools.partial(reconciler.listing, KIND),
                 on_event=reconciler.profile_event),
        objects(NETWORK_POLICIES, NETWORK_POLICY),
        objects(reconciler.calico, GLOBAL_NETWORK_POLICY, optional=True),
        objects(reconciler.calico_namespaced, CALICO_NETWORK_POLICY, optional=True),
        objects(reconciler.cluster_policies, CLUSTER_NETWORK_POLICY, optional=True),
        *(objects(resource, kind, optional=True) for kind, resource in reconciler.staged.items()),
    ]  # fmt: skip


def _build_reconciler(options: RunOptions, api: KubeApi, pool: RenderPool) -> Reconciler:
    settings = Settings(
        workers=options.workers,
        resync_period=options.resync_period,
        calico_api_version=options.calico_api_version,
        cluster_api_version=options.cluster_api_version,
    )
    world = World(
        protected_namespaces(options.namespace),
        calico_api_version=options.calico_api_version,
        cluster_api_version=options.cluster_api_version,
        handover_settle=options.handover_settle,
    )
    reconciler = Reconciler(world, api, settings, pool)
    if options.audit_reports:
        reconciler.reports = ReportPublisher(world, api)
    reconciler.informers = build_informers(api, reconciler, options.watch_timeout)
    return reconciler


async def _run_with_kopf(
    reconciler: Reconciler, registry: kopf.OperatorRegistry, stop: asyncio.Event | None
) -> None:
    """The reconciler's loops beside kopf (the profile finalizer), until kopf stops."""
    loops = asyncio.create_task(reconciler.run(), name="dpo-reconciler")

    @kopf.on.cleanup(registry=registry)
    async def stop_reconciler(**_: Any) -> None:
        # First thing when kopf stops (SIGTERM): otherwise kopf waits 5 s for these tasks as
        # "hung" ones, and a standby waits that much longer for the released Lease.
        await _cancel(loops)
        if stop is not None:
            stop.set()  # ends kopf's own waiter on the flag (else also "hung" for 5 s)

    try:
        await kopf.operator(registry=registry, clusterwide=True, standalone=True, stop_flag=stop)
    finally:
        await _cancel(loops)


async def run_operator(options: RunOptions, stop: asyncio.Event | None = None) -> None:
    credentials = await load_credentials(options.kubeconfig)
    connections = options.workers + WATCH_CONNECTIONS
    elector = None
    if options.leader_election is not None:
        elector = LeaderElector(credentials, options.leader_election)
        # The reconciler's client refuses to write once the Lease is lost or released.
        api: KubeApi = FencedKubeApi(credentials, elector, connections=connections)
    else:
        metrics.LEADER.set(1)  # without leader election this process is the writer
        api = KubeApi(credentials, connections=connections)
    pool = RenderPool(options.render)
    reconciler = _build_reconciler(options, api, pool)
    registry = build_registry(HandlerConfig(credentials=credentials), reconciler)
    runners = [
        await _serve(metrics_app(), options.bind_address, options.metrics_port),
        await _serve(
            health_app(reconciler, options.resync_period, elector, options.watch_timeout),
            options.bind_address,
            options.health_port,
        ),
    ]
    log.info(
        "default-policy-operator starting on %s's event loop: metrics on :%d, health on :%d",
        type(asyncio.get_running_loop()).__module__.partition(".")[0],
        options.metrics_port,
        options.health_port,
    )
    try:
        if elector is not None:
            # Standing by: neither kopf nor the reconciler runs until this replica leads.
            stop = stop or asyncio.Event()
            _stop_on_signals(stop)
            if not await elector.acquire(stop):
                return
            reconciler.last_loop = time.monotonic()  # liveness counts from taking over
        await _run_with_kopf(reconciler, registry, stop)
    finally:
        if elector is not None:  # everything that writes has stopped: hand over now
            await elector.release()
        for runner in runners:
            await runner.cleanup()
        await api.close()
        pool.close()
