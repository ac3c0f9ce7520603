"""kopf handlers: the profile finalizer, kopf's settings and its login.

kopf does what it is best at here: the profile lifecycle (finalizer, retries with backoff).
Namespaces, profiles and managed objects are cached by the informers (``informers.py``), not
kopf indexes, which stall quadratically at start-up with thousands of objects. Nothing is ever
written to a Namespace: no annotations, finalizers or events.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import kopf

from default_policy_operator.controller.reconciler import Reconciler
from default_policy_operator.core.labels import FINALIZER, GROUP, PLURAL, VERSION
from default_policy_operator.kube.credentials import Credentials

log = logging.getLogger(__name__)


@dataclass
class HandlerConfig:
    credentials: Credentials
    watch_server_timeout: int = 300


def build_registry(config: HandlerConfig, reconciler: Reconciler) -> kopf.OperatorRegistry:
    """The handlers, registered on a private registry."""
    registry = kopf.OperatorRegistry()

    @kopf.on.startup(registry=registry)
    async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.enabled = False  # our Events are deliberate; kopf's log lines are not
        settings.watching.server_timeout = config.watch_server_timeout
        settings.watching.client_timeout = config.watch_server_timeout + 30
        settings.watching.connect_timeout = 30
        settings.batching.worker_limit = 16  # profiles only: a handful of objects
        settings.persistence.finalizer = FINALIZER
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
        settings.peering.standalone = True

    @kopf.on.login(registry=registry)
    async def login(**_: Any) -> kopf.AiohttpSession:
        """kopf's session from the same credentials as ours, loaded again: kopf logs in at start
        and after a 401 (a rotated token), and again at an exec credential's expiry. A session
        of our own, not a ``ConnectionInfo``, so kopf gets the same TLS context (with
        ``tls-server-name``) and proxy as the request layer."""
        auth = await config.credentials.refresh()
        return kopf.AiohttpSession(
            server=auth.server, aiohttp_session=auth.session(), expiration=auth.expiry
        )

    @kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry)
    async def profile_deleted(name: str, uid: str, **_: Any) -> None:
        """Finalizer: remove (Delete) or release (Orphan) the profile's objects, then let go.

        The reconciler runs the clean-up (``finalizer.py``) and removes the finalizer itself
        too, which also works while the CRD is being deleted and kopf no longer serves it."""
        await reconciler.finalizer.wait(name, uid)

    return registry
