"""``dpo run``: wire the client, the world, the reconciler, kopf and the HTTP endpoints."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass

import kopf
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from . import metrics
from .governance import protected_namespaces
from .handlers import HandlerConfig, build_registry
from .kube import KubeApi, load_credentials
from .reconciler import Reconciler, Settings
from .world import World

log = logging.getLogger(__name__)


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
    workers: int = 32
    calico_api_version: str = "crd.projectcalico.org/v1"


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


def health_app(reconciler: Reconciler, resync_period: float) -> web.Application:
    """Liveness: the reconcile loop turns over and resyncs happen; readiness: first sync done."""

    async def healthz(_: web.Request) -> web.Response:
        now = time.monotonic()
        problems = []
        if now - reconciler.last_loop > 60:
            problems.append("reconcile loop stalled")
        if reconciler.last_resync and now - reconciler.last_resync > 3 * resync_period:
            problems.append("full resync overdue")
        if problems:
            return web.Response(status=500, text="; ".join(problems) + "\n")
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
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


async def run_operator(options: RunOptions, stop: asyncio.Event | None = None) -> None:
    credentials = load_credentials(options.kubeconfig)
    api = KubeApi(credentials)
    world = World(protected_namespaces(options.namespace))
    reconciler = Reconciler(
        world,
        api,
        Settings(
            workers=options.workers,
            resync_period=options.resync_period,
            calico_api_version=options.calico_api_version,
        ),
    )
    registry = build_registry(
        HandlerConfig(credentials=credentials, calico_api_version=options.calico_api_version),
        reconciler,
    )
    runners = [
        await _serve(metrics_app(), options.bind_address, options.metrics_port),
        await _serve(
            health_app(reconciler, options.resync_period),
            options.bind_address,
            options.health_port,
        ),
    ]
    loops = asyncio.create_task(reconciler.run(), name="dpo-reconciler")
    log.info(
        "default-policy-operator starting: metrics on :%d, health on :%d",
        options.metrics_port,
        options.health_port,
    )
    try:
        await kopf.operator(
            registry=registry,
            clusterwide=True,
            standalone=True,
            stop_flag=stop,
        )
    finally:
        loops.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loops
        for runner in runners:
            await runner.cleanup()
        await api.close()
