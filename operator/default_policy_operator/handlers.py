"""kopf handlers: thin adapters from watch events to the reconciler.

Namespaces and managed objects go through ``@kopf.index`` (kopf lists them all before any
handler runs, which is our "never act on a partial view" gate) and ``@kopf.on.event``: neither
writes anything to the watched objects -- no annotations, finalizers or events on Namespaces.
Only profiles get a change handler, for the finalizer that cleans up after them. Managed objects
are watched with a server-side label selector: the operator never sees other policies.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import kopf

from .kube import NETWORK_POLICIES, Credentials, calico_resource
from .labels import FINALIZER, GROUP, MANAGED_BY, MANAGED_SELECTOR, PLURAL, VERSION
from .model import DeletionPolicy
from .reconciler import Reconciler

log = logging.getLogger(__name__)


@dataclass
class HandlerConfig:
    credentials: Credentials
    calico_api_version: str
    watch_server_timeout: int = 300


def build_registry(config: HandlerConfig, reconciler: Reconciler) -> kopf.OperatorRegistry:
    """All handlers, registered on a private registry (flags decide what is watched)."""
    registry = kopf.OperatorRegistry()
    calico = calico_resource(config.calico_api_version)
    policy_kinds = [
        (NETWORK_POLICIES.group, NETWORK_POLICIES.version, NETWORK_POLICIES.plural),
        (calico.group, calico.version, calico.plural),
    ]

    @kopf.on.startup(registry=registry)
    async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.enabled = False  # our Events are deliberate; kopf's log lines are not
        settings.watching.server_timeout = config.watch_server_timeout
        settings.watching.client_timeout = config.watch_server_timeout + 30
        settings.watching.connect_timeout = 30
        # No batching.worker_limit: with indexes, kopf parks one worker per listed object until
        # every index is populated, so any limit below the object count deadlocks the start-up
        # (seen with 64 and 125 objects). Workers are short-lived tasks that exit when idle;
        # the writes themselves are bounded by the reconciler's own --workers semaphore.
        settings.persistence.finalizer = FINALIZER
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
        settings.peering.standalone = True
        for group, _version, plural in policy_kinds:
            settings.watching.label_selectors[group, plural] = MANAGED_SELECTOR

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        creds = config.credentials
        return kopf.ConnectionInfo(
            server=creds.server,
            ca_path=creds.ca_file,
            insecure=creds.ssl_context is False,
            certificate_path=creds.cert_file,
            private_key_path=creds.key_file,
            token=creds.authorization(),
        )

    # -- namespaces ---------------------------------------------------------------------

    @kopf.index("namespaces", registry=registry)
    def namespace_index(body: kopf.Body, **_: Any) -> None:
        reconciler.namespace_event(_event_type(reconciler), dict(body))

    @kopf.on.event("namespaces", registry=registry)
    def namespace_event(type: str | None, body: kopf.Body, **_: Any) -> None:
        reconciler.started.set()
        if type == "DELETED":
            reconciler.namespace_event(type, dict(body))

    # -- managed objects ----------------------------------------------------------------

    for group, version, plural in policy_kinds:

        @kopf.index(group, version, plural, labels={MANAGED_BY: kopf.PRESENT}, registry=registry)
        def object_index(body: kopf.Body, **_: Any) -> None:
            reconciler.object_event(_event_type(reconciler), dict(body))

        # Only deletions need this handler (index handlers never see them); the filter keeps
        # kopf from invoking it, with all its bookkeeping, for every other event.
        @kopf.on.event(
            group,
            version,
            plural,
            labels={MANAGED_BY: kopf.PRESENT},
            when=lambda type, **_: type == "DELETED",
            registry=registry,
        )
        def object_event(type: str | None, body: kopf.Body, **_: Any) -> None:
            reconciler.object_event(type, dict(body))

    # -- profiles -----------------------------------------------------------------------

    @kopf.index(GROUP, VERSION, PLURAL, registry=registry)
    def profile_index(body: kopf.Body, **_: Any) -> None:
        # Our own status writes come back here too: only a new generation or a deletion
        # changes what the profile wants, so only those re-plan the cluster.
        before = reconciler.world.profiles.get(body.metadata.name)
        entry = reconciler.world.update_profile(dict(body))
        if entry is before:
            return
        if entry.error:
            log.warning("profile %s: %s", entry.name, entry.error)
        reconciler.profile_changed()

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    def profile_event(type: str | None, name: str, **_: Any) -> None:
        reconciler.started.set()
        if type == "DELETED":
            reconciler.world.remove_profile(name)
            reconciler.forget_profile(name)
            reconciler.profile_changed()

    @kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry)
    async def profile_deleted(name: str, **_: Any) -> None:
        """Finalizer: remove (Delete) or release (Orphan) the profile's objects, then let go."""
        entry = reconciler.world.profiles.get(name)
        reconciler.profile_changed()
        await reconciler.idle()
        if entry is not None and entry.deletion_policy is DeletionPolicy.ORPHAN:
            await reconciler.orphan(name)
            return
        remaining = reconciler.objects_of(name)
        if remaining:
            raise kopf.TemporaryError(f"waiting for {len(remaining)} object(s) to go", delay=1)

    return registry


def _event_type(reconciler: Reconciler) -> str | None:
    """Index calls carry no event type: before the first handler ran, it is the initial list."""
    return "MODIFIED" if reconciler.started.is_set() else None
