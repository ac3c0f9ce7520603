"""Level-based reconciliation: events mark scopes dirty; one loop plans and applies them.

Every event (namespace, profile, managed object) only updates the :class:`World` and marks the
affected scopes -- namespaces, or ``CALICO_SCOPE`` for the cluster-scoped objects -- as dirty. A
single loop drains the dirty set, asks the world for a plan and queues it for the writers.
Because plans come from state, not from the event that triggered them, a burst of events for
one namespace costs one plan, and a periodic full resync that finds nothing to do writes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import sys
import time
from collections import Counter, deque
from collections.abc import Awaitable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from default_policy_operator import metrics
from default_policy_operator.controller.events import EventRecorder
from default_policy_operator.controller.finalizer import Finalizer
from default_policy_operator.controller.repairs import (
    ConflictTracker,
    Drift,
    RepairTracker,
    scope_of,
)
from default_policy_operator.controller.reports import ReportPublisher
from default_policy_operator.controller.status import Progress, StatusPublisher
from default_policy_operator.core.governance import Namespace
from default_policy_operator.core.labels import (
    GROUP,
    KIND,
    LAST_VALID_SPEC_ANNOTATION,
    MANAGED_SELECTOR,
    PROFILE_LABEL,
    VERSION,
)
from default_policy_operator.core.model import Profile
from default_policy_operator.core.normalize import ObjectState, interned, state_of
from default_policy_operator.core.objects import (
    CALICO_NETWORK_POLICY,
    CLUSTER_NETWORK_POLICY,
    CLUSTER_POLICY_APIS,
    GLOBAL_NETWORK_POLICY,
    STAGED_KINDS,
    ObjectKey,
    body_kind,
    is_managed,
    key_of,
    managed_labels,
)
from default_policy_operator.core.plan import Action, Verb
from default_policy_operator.core.render import RenderResult, RenderTask, trial_tasks
from default_policy_operator.core.world import ProfileEntry, ScopePlan, World
from default_policy_operator.kube.client import (
    NETWORK_POLICIES,
    PROFILES,
    RETRYABLE,
    ApiError,
    KubeApi,
    Resource,
    calico_namespaced_resource,
    calico_resource,
    calico_staged_resource,
    cluster_network_policy_resource,
)
from default_policy_operator.kube.informers import Informer
from default_policy_operator.rendering.pool import RenderPool

log = logging.getLogger(__name__)

CALICO_SCOPE = ""  # the dirty-set entry for cluster-scoped Calico objects
NAMESPACE = "Namespace"  # the kind :meth:`Reconciler.listing` keeps namespace deletes under
BULK_CHUNK = 100  # scopes planned per step of a bulk re-plan
RENDER_GROUP = 8  # scopes per render request: their plans go out as each group is back
BULK_RENDERS = 4  # bulk render requests in flight before the next bulk chunk is taken
PLAN_RETRY = 5.0  # seconds before a scope whose planning or rendering failed is tried again


class Role(enum.Enum):
    """What a writer takes. The API server answers a request after those queued before it, so
    a rollout that keeps every writer busy makes a new namespace's writes wait behind all of
    its own (measured at 5,000 namespaces: p50 413 ms with 64 writers all taking bulk work,
    about 170 ms with 32). Fewer bulk writers cost the rollout throughput, so the bulk work
    backs off only while there is event-driven work to serve."""

    EVENTS = "events"  # event-driven writes only: never held by rollout work
    YIELDING = "yielding"  # bulk too, but not within YIELD_WINDOW of an event-driven write
    BULK = "bulk"  # event-driven first, then bulk


YIELD_WINDOW = 1.0  # seconds after an event-driven write during which yielding writers wait


def writer_roles(workers: int) -> list[Role]:
    """A quarter of the writers serve events only, a quarter yield to them, the rest take
    anything (with 64: 16, 16 and 32; a rollout keeps 48 writes in flight, 32 while events
    come)."""
    quarter = workers // 4
    return (
        [Role.EVENTS] * quarter + [Role.YIELDING] * quarter + [Role.BULK] * (workers - 2 * quarter)
    )


@dataclass
class Settings:
    workers: int = 32
    resync_period: float = 600.0
    status_interval: float = 1.0
    calico_api_version: str = "crd.projectcalico.org/v1"
    cluster_api_version: str = CLUSTER_POLICY_APIS[0]


class Reconciler:
    def __init__(
        self, world: World, api: KubeApi, settings: Settings, pool: RenderPool | None = None
    ) -> None:
        self.world = world
        self.api = api
        self.settings = settings
        self.pool = pool or RenderPool()  # (its worker processes start on first use)
        self.calico = calico_resource(settings.calico_api_version)
        self.calico_namespaced = calico_namespaced_resource(settings.calico_api_version)
        self.cluster_policies = cluster_network_policy_resource(settings.cluster_api_version)
        #: staged kind -> where it is served (mode Stage)
        self.staged = {
            kind: calico_staged_resource(settings.calico_api_version, kind)
            for kind in STAGED_KINDS.values()
        }
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._bulk: set[str] = set()  # scopes to re-plan in bulk (profile change, resync)
        self._queues: dict[bool, deque[tuple[Action, Drift | None]]] = {
            True: deque(),  # urgent: from events
            False: deque(),  # bulk
        }
        self._work = asyncio.Event()  # writers: something was queued
        self._last_event_write = -YIELD_WINDOW  # when a writer last took event-driven work
        self._inflight: set[ObjectKey] = set()  # queued or being written
        self._replan: set[str] = (
            set()
        )  # plan again once a write of theirs lands (in flight, withheld deletes)
        self._idle = asyncio.Event()  # set while nothing is dirty or in flight
        self._status_dirty = asyncio.Event()
        self.synced = asyncio.Event()  # readiness: the first full pass completed
        self.listed = asyncio.Event()  # every informer delivered its first list
        self.last_loop = time.monotonic()  # liveness heartbeat
        self.last_resync = 0.0
        self._own_versions: dict[ObjectKey, str] = {}  # resourceVersions of our own writes
        self._gone: dict[ObjectKey, str] = {}  # uids we deleted, until the watch says so
        #: kinds with a list on its way, and the deletes seen meanwhile (key -> resourceVersion)
        self._listing: Counter[str] = Counter()
        self._deleted_at: dict[ObjectKey, str] = {}
        #: the resourceVersion of the earliest profile change still on trial ("" if none)
        self._trial_since = ""
        self.repairs = RepairTracker()
        self.conflicts = ConflictTracker()
        self.events = EventRecorder(api)
        #: per scope, (profile, what) -> message: render errors and refused writes
        self._errors: dict[str, dict[tuple[str, str], str]] = {}
        self._pending: dict[str, int] = {}  # profile -> actions in flight
        self._written = asyncio.Condition()  # notified whenever a write finishes
        #: profiles whose new version is still being planned across the cluster (not Ready)
        self._rolling: set[str] = set()
        self.status = StatusPublisher(world, api, self.progress)
        self._tasks: list[asyncio.Task[None]] = []
        self._trials: dict[str, Profile] = {}  # profile -> the version whose trial is running
        self._trialled = asyncio.Condition()  # notified whenever a trial finishes
        self._rendering: set[str] = set()  # scopes waiting for their renders
        self._urgent_after: set[str] = set()  # of those, scopes an event touched meanwhile
        self._bulk_renders = 0  # bulk render requests in flight
        self._landed: set[str] = set()  # bulk scopes whose renders are back, to plan
        self.informers: list[Informer] = []  # set by the runtime; relisted by resync()
        self.finalizer = Finalizer(self)
        #: set by the runtime with --audit-reports: findings published as policy reports
        self.reports: ReportPublisher | None = None

    # -- events in ----------------------------------------------------------------------

    def mark(self, scopes: Iterable[str]) -> None:
        """Scopes an event touched: planned before any bulk work still waiting."""
        self._idle.clear()
        self._dirty.update(scopes)
        self._wake.set()
        self._status_dirty.set()

    def mark_all(self) -> None:
        """Every scope (profile change, resync): planned in chunks, behind event-driven work."""
        self._idle.clear()
        self._bulk.update(
            [*self.world.namespaces, *self.world.namespaces_with_objects(), CALICO_SCOPE]
        )
        self._wake.set()
        self._status_dirty.set()

    # -- informer callbacks: a list is merged by resourceVersion; events update the view -

    def namespaces_listed(self, namespaces: list[Namespace], version: str) -> None:
        listed = {namespace.name: namespace for namespace in namespaces}
        known = {name: ns.resource_version for name, ns in self.world.namespaces.items()}
        versions = {name: ns.resource_version for name, ns in listed.items()}
        gone, fresh = self._list_news(NAMESPACE, known, versions, version)
        for name in gone:
            self.namespace_event("DELETED", _deleted_body(name, version))
        for name in fresh:
            self._namespace_seen(listed[name])

    def _list_news(
        self, kind: str, known: dict[str, str], listed: dict[str, str], version: str
    ) -> tuple[list[str], list[str]]:
        """What a list of namespaces or profiles at ``version`` tells, by name (``known`` and
        ``listed`` map names to resourceVersions): what is gone, and what is new or newer.

        Gone: deleted by the list's version at the latest, the version its delete is kept at,
        so that an older list on its way does not undo it. Neither what was created after the
        list was taken, nor what the watch saw deleted after it, nor an older version of what
        the watch has told newer news of (a name deleted and created again)."""
        gone = [n for n, v in known.items() if n not in listed and not _older(version, v)]
        fresh = [
            n
            for n, v in listed.items()
            if (
                _older(known[n], v)
                if n in known
                else not self._deleted_since(ObjectKey(kind, "", n), version)
            )
        ]
        return gone, fresh

    def object_digest(self, body: dict[str, Any]) -> ObjectState:
        """What a list keeps of one managed object: the record already known if the object is
        unchanged (same resourceVersion), else a new one. A periodic re-list of 15,000
        unchanged objects then allocates and hashes nothing, instead of holding a second record
        of each until its last page (the bench's memory peak came from there)."""
        known = self.world.objects.get(key_of(body))
        version = (body.get("metadata") or {}).get("resourceVersion")
        return known if known and known.resource_version == version else state_of(body)

    def namespace_digest(self, body: dict[str, Any]) -> Namespace:
        """What a list keeps of one namespace: as :meth:`object_digest`, for namespaces."""
        meta = body.get("metadata") or {}
        known = self.world.namespaces.get(meta.get("name", ""))
        version = str(meta.get("resourceVersion", ""))
        return known if known and known.resource_version == version else namespace_of(body)

    @contextlib.contextmanager
    def listing(self, kind: str) -> Iterator[None]:
        """While a list of ``kind`` (a managed kind, :data:`NAMESPACE` or the profiles' KIND) is
        on its way (asked for, paged, merged, or failed).

        The watch keeps running meanwhile, so the list's snapshot may predate deletes the watch
        delivers first: they are remembered until every list of the kind then on its way has
        ended, and the merge (:meth:`objects_listed`, :meth:`namespaces_listed`,
        :meth:`profiles_listed`) does not bring them back. Two may overlap (a resync and a
        relist after a broken watch). A list asked for later is a consistent read, newer than
        any delete seen before it, so nothing is kept otherwise.
        """
        self._listing[kind] += 1
        try:
            yield
        finally:
            self._listing[kind] -= 1
            if not self._listing[kind]:
                del self._listing[kind]
                for key in [k for k in self._deleted_at if k.kind == kind]:
                    del self._deleted_at[key]

    def _keep_delete(self, key: ObjectKey, resource_version: str) -> None:
        """A delete the watch delivered (or a list found), kept while a list of its kind is on
        its way; a later version of it only ever replaces an earlier one."""
        kept = self._deleted_at.get(key, "")
        if self._listing[key.kind] and (not kept or _older(kept, resource_version)):
            self._deleted_at[key] = resource_version

    def _deleted_since(self, key: ObjectKey, version: str) -> bool:
        """Whether the watch delivered a delete of ``key`` newer than a list at ``version``."""
        return _older(version, self._deleted_at.get(key, ""))

    def objects_listed(self, kind: str, states: list[ObjectState], version: str) -> None:
        """A (re)list of one kind of managed object; what vanished unseen was deleted."""
        listed = {state.key: state for state in states}
        for key in [k for k in self._gone if k.kind == kind]:
            if key not in listed or listed[key].uid != self._gone[key]:
                del self._gone[key]  # the list is newer than its delete: no older event follows
        for key in [k for k in self.world.objects if k.kind == kind and k not in listed]:
            known = self.world.objects[key]
            if _older(version, known.resource_version):
                continue  # created after the list was taken
            self._object_changed("DELETED", known)
            self._keep_delete(key, version)  # deleted by the list's version at the latest
        for key, state in listed.items():
            current = self.world.objects.get(key)
            if current is None and self._deleted_since(key, version):
                continue  # deleted after the list's snapshot: the watch said so first
            if current is None or _older(current.resource_version, state.resource_version):
                self._object_changed("ADDED" if current is None else "MODIFIED", state)

    def profiles_listed(self, items: list[dict[str, Any]], version: str) -> None:
        listed = {(i.get("metadata") or {}).get("name", ""): i for i in items}
        known = {name: entry.resource_version for name, entry in self.world.profiles.items()}
        versions = {name: _version_of(body) for name, body in listed.items()}
        gone, fresh = self._list_news(KIND, known, versions, version)
        for name in gone:
            self.profile_event("DELETED", _deleted_body(name, version))
        for name in fresh:
            self.profile_event("MODIFIED", listed[name])

    def profile_event(self, event_type: str, body: dict[str, Any]) -> None:
        meta = body.get("metadata") or {}
        name = meta.get("name", "")
        if event_type == "DELETED":
            known = self.world.profiles.get(name)
            # (a delete a relist inferred carries no uid: the one we knew is the one gone)
            uid = meta.get("uid") or (known.metadata.get("uid", "") if known else "")
            self._keep_delete(ObjectKey(KIND, "", name), _version_of(body))
            self.world.remove_profile(name)
            self.events.forget(name)
            self.status.forget(name)
            self.finalizer.forget(uid)
            self.profile_changed()
            return
        # Our own status writes come back here too: only a new generation or a deletion
        # changes what the profile wants, so only those re-plan the cluster.
        before = self.world.profiles.get(name)
        entry = self.world.update_profile(body)
        self._record_if_due(entry)
        if entry.deleting:
            self.finalizer.start(name, meta.get("uid", ""))
        if entry is before:
            return
        self._rolling.add(entry.name)
        self._report_error(entry, before.error if before else None)
        if entry.trial is not None:
            self._trials[name] = entry.trial
            if self.synced.is_set():  # a change at run time (at start, the bulk paces it all)
                # one stream delivers the profiles in order: the first version kept is the oldest
                self._trial_since = self._trial_since or entry.resource_version
            self._spawn(self._trial(entry.trial))
        self.profile_changed()

    async def _trial(self, profile: Profile) -> None:
        """Render a new profile version's trial in the pool; it comes into force (or fails,
        keeping the last good version) when the renders are back."""
        try:
            results = await self.pool.render(trial_tasks(profile), urgent=True)
        except Exception:
            log.exception("trial of profile %s failed; retrying", profile.name)
            metrics.RECONCILE_ERRORS.labels(reason="render_pool").inc()
            await asyncio.sleep(PLAN_RETRY)
            if self._trials.get(profile.name) is profile:
                self._spawn(self._trial(profile))
            return
        try:
            self._trial_done(profile, results)
        finally:
            self._after_trials()
            async with self._trialled:
                self._trialled.notify_all()

    def _trial_done(self, profile: Profile, results: list[RenderResult]) -> None:
        if self._trials.get(profile.name) is profile:
            del self._trials[profile.name]
        before = self.world.profiles.get(profile.name)
        error_before = before.error if before is not None else None
        entry = self.world.finish_trial(profile, results)
        if entry is None:
            return  # superseded while it rendered
        self._record_if_due(entry)
        self._report_error(entry, error_before)
        if entry.trial is not None:  # the recorded last valid version, tried instead
            self._trials[entry.name] = entry.trial
            self._spawn(self._trial(entry.trial))
        self.profile_changed()

    def _after_trials(self) -> None:
        """No version on trial any more: namespaces created or changed after the profile change
        go first. Planned at once with the version then in force, they would otherwise wait for
        the new one somewhere in the bulk re-plan, behind every other namespace. Newer by
        resourceVersion, not by when their event came: the namespace watch may deliver a
        namespace created after the change before the profile watch delivers the change."""
        if self._trials or not self._trial_since:
            return
        since, self._trial_since = self._trial_since, ""
        namespaces = self.world.namespaces.values()
        self.mark(ns.name for ns in namespaces if _older(since, ns.resource_version))

    def _record_if_due(self, entry: ProfileEntry) -> None:
        if entry.record_due:
            entry.recorded_spec = entry.valid_spec  # one patch in flight is enough
            self._spawn(self._record_valid_spec(entry.name, entry.valid_spec))

    def _report_error(self, entry: ProfileEntry, before: str | None) -> None:
        """Log and post a Warning event when a profile becomes invalid (once per error)."""
        if entry.error and entry.error != before:
            log.warning("profile %s: %s", entry.name, entry.error)
            self._spawn(self._profile_event(entry.name, "Warning", "InvalidSpec", entry.error))

    async def _record_valid_spec(self, name: str, spec: str) -> None:
        """Record the spec in force on the profile, for the next process (fail static)."""
        patch = {"metadata": {"annotations": {LAST_VALID_SPEC_ANNOTATION: spec}}}
        try:
            await self.api.patch(PROFILES, name, patch)
        except ApiError as exc:
            log.warning("could not record the last valid spec of %s: %s", name, exc)
            entry = self.world.profiles.get(name)
            if entry is not None and exc.status != 404:
                entry.recorded_spec = ""  # try again with the next event

    def namespace_event(self, event_type: str | None, body: dict[str, Any]) -> None:
        meta = body.get("metadata") or {}
        name = meta.get("name", "")
        if event_type == "DELETED":
            self._keep_delete(ObjectKey(NAMESPACE, "", name), _version_of(body))
            if self.world.namespaces.get(name) is None:
                return
            self.world.remove_namespace(name)
            self._forget_scope(name)
            self.mark([name, CALICO_SCOPE])
        else:
            self._namespace_seen(namespace_of(body))

    def _namespace_seen(self, namespace: Namespace) -> None:
        previous = self.world.namespaces.get(namespace.name)
        self.world.set_namespace(namespace)
        if previous != namespace:  # else status or finalizers moved: nothing we read changed
            self.mark([namespace.name, CALICO_SCOPE])

    def object_event(self, event_type: str | None, body: dict[str, Any]) -> None:
        """A managed object changed: update the index, detect drift, re-plan its scope.

        The echo of our own write carries the resourceVersion its response did, so it is not
        hashed a second time (see :meth:`object_digest`)."""
        self._object_changed(event_type, self.object_digest(body))

    def _object_changed(self, event_type: str | None, state: ObjectState) -> None:
        key = state.key
        known = self.world.objects.get(key)
        if known is not None and _older(state.resource_version, known.resource_version):
            return  # a stale event overtaken by our own write's response
        if self._gone.get(key) == state.uid:
            if event_type != "DELETED":
                self._own_versions.pop(key, None)
                return  # a late event of an object we deleted: it changes nothing
            del self._gone[key]  # its delete's own echo: handled as ever
        own = self._own_versions.get(key) == state.resource_version
        if own and event_type != "DELETED":
            # The echo of our own write: the index already holds it, nothing to re-plan.
            del self._own_versions[key]
            self.world.set_object(state)
            return
        if event_type == "DELETED":
            self.world.remove_object(key)
            self._own_versions.pop(key, None)
            self._keep_delete(key, state.resource_version)
            if self.listed.is_set() and known is not None and known.uid == state.uid:
                self.repairs.observed(key, "deleted", time.monotonic())
        else:
            self.world.set_object(state)
            if self.listed.is_set() and not own:
                self.repairs.observed(key, "modified", time.monotonic())
        self.mark([scope_of(key)])

    def profile_changed(self) -> None:
        self.mark_all()

    def objects_of(self, profile: str) -> list[ObjectState]:
        return [s for s in self.world.objects.values() if s.profile == profile]

    async def idle(self, limit: float = 30.0) -> None:
        """Wait until every dirty scope has been reconciled (at most ``limit`` seconds)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), limit)

    async def drain(self, profile: str) -> None:
        """Wait until no write on behalf of ``profile`` is queued or in flight."""
        async with self._written:
            await self._written.wait_for(lambda: not self._pending.get(profile))

    async def orphan(self, profile: str) -> None:
        """Release a profile's remaining objects: drop our labels and owner, keep the policy.

        Called by the finalizer of a profile with ``deletionPolicy: Orphan``, after namespaces
        that another profile governs have been handed over in place. Writes still in flight for
        the profile land first (one landing after the list would stay labelled and then be
        deleted as an orphan of a profile that is gone); the objects come from a fresh list.
        """
        await self.drain(profile)
        release = {
            "metadata": {"labels": dict.fromkeys(managed_labels("", "")), "ownerReferences": None}
        }
        selector = f"{MANAGED_SELECTOR},{PROFILE_LABEL}={profile}"
        bodies = await self.api.list_objects(NETWORK_POLICIES, label_selector=selector)
        optional = [self.calico_namespaced, self.calico, self.cluster_policies]
        for resource in [*optional, *self.staged.values()]:
            with contextlib.suppress(ApiError):  # Calico, or the CRD, may not be installed
                bodies += await self.api.list_objects(resource, label_selector=selector)
        for body in bodies:
            key = state_of(body).key
            try:
                await self.api.patch(
                    self._resource(key), key.name, release, namespace=key.namespace
                )
            except ApiError as exc:
                if exc.status != 404:
                    raise
            self.world.remove_object(key)

    # -- the loop -----------------------------------------------------------------------

    async def run(self) -> None:
        """Start the informers, wait for their first lists, then the loops; returns when cancelled.

        Nothing is planned before every informer has delivered a complete list: acting on a
        partial view could delete what belongs to a namespace not yet seen.
        """
        self._tasks = [
            asyncio.create_task(informer.run(), name=f"dpo-informer-{informer.name}")
            for informer in self.informers
        ]
        try:
            await asyncio.gather(*(informer.listed.wait() for informer in self.informers))
            self.listed.set()
            # Nor before the profiles listed have been trialled: until then a profile has no
            # version in force, and a lower-priority one would take its namespaces over.
            async with self._trialled:
                await self._trialled.wait_for(lambda: not self._trials)
            self.mark_all()
            self._tasks += [
                asyncio.create_task(self._reconcile_loop(), name="dpo-reconcile"),
                *self.start_writers(),
                asyncio.create_task(self._status_loop(), name="dpo-status"),
                asyncio.create_task(self._resync_loop(), name="dpo-resync"),
            ]
            if self.reports is not None:
                reports = self.reports.run(self.synced, self.settings.status_interval)
                self._tasks.append(asyncio.create_task(reports, name="dpo-reports"))
            await asyncio.gather(*self._tasks)
        finally:
            for task in self._tasks:
                task.cancel()

    def stale_informers(self, limit: float) -> list[str]:
        """Informers whose watch has not heard from the API server for ``limit`` seconds."""
        now = time.monotonic()
        return [i.name for i in self.informers if now - i.last_contact > limit]

    async def _reconcile_loop(self) -> None:
        """Plan dirty scopes and queue their actions; never wait for the writes themselves.

        Event-driven scopes go first and their actions jump the queue, so a new namespace is
        covered in milliseconds even while a profile change rolls out to thousands of others.
        Bulk scopes are planned in small chunks, only as fast as the writers drain them.
        """
        while True:
            self.last_loop = time.monotonic()
            if self._dirty:
                batch, self._dirty = self._dirty, set()
                urgent = True
            elif self._landed:  # bulk scopes whose renders are back: plan them, unpaced
                batch, self._landed = self._landed, set()
                urgent = False
            elif (
                self._bulk
                and len(self._queues[False]) < 2 * self.settings.workers
                and self._bulk_renders < BULK_RENDERS
            ):
                batch = {self._bulk.pop() for _ in range(min(BULK_CHUNK, len(self._bulk)))}
                urgent = False
            else:
                if not (self._bulk or self._inflight or self._trials or self._rendering):
                    self.synced.set()
                    self._idle.set()
                    if self._rolling:  # every scope planned: no longer "rolling out"
                        self._rolling.clear()
                        self._status_dirty.set()
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=5.0)
                continue
            started = time.monotonic()
            try:
                await self.reconcile(batch, urgent=urgent)
            except Exception:  # a bug here, not in one scope (those are isolated): keep going
                log.exception("reconcile batch failed; will retry")
                metrics.RECONCILE_ERRORS.labels(reason="unexpected").inc()
                self._bulk |= batch
                await asyncio.sleep(1.0)
            trigger = "events" if urgent else "bulk"
            metrics.RECONCILE_DURATION.labels(trigger=trigger).observe(time.monotonic() - started)

    async def reconcile(self, scopes: set[str], *, urgent: bool = True) -> None:
        """Plan ``scopes`` and queue the resulting actions for the writers.

        Scopes that need renders first are handed to the render pool and planned when their
        renders are back; the others are planned now. A scope whose planning fails is recorded
        and retried on its own: it never holds up the rest of the batch.
        """
        self.world.blocked = self.conflicts.blocked(time.monotonic())
        waiting = self._request_renders(scopes, urgent)
        for count, scope in enumerate(sorted(scopes - waiting)):
            if count % 50 == 49:
                await asyncio.sleep(0)  # let watches, probes and writers run
            try:
                self._plan_scope(scope, urgent)
            except Exception as exc:  # one scope's failure is that scope's alone
                self._plan_failed(scope, exc)
        self._status_dirty.set()

    def _plan_scope(self, scope: str, urgent: bool) -> None:
        result = (
            self.world.plan_calico() if scope == CALICO_SCOPE else self.world.plan_namespace(scope)
        )
        if result.incomplete:
            if self.world.missing_renders(scope):  # changed since its renders were requested
                self.mark([scope])
            else:  # nothing to render would complete it: never spin, look again later
                log.warning("planning %s lacks renders it cannot request", scope)
                self._schedule(PLAN_RETRY, scope)
            return
        if result.withheld:
            self._replan.add(scope)  # the deletes come once the new cover has landed
        if result.retry_in is not None:
            self._schedule(result.retry_in, scope)  # ... and has settled
        if scope == CALICO_SCOPE and not result.actions and self.world.waiting_for_calico:
            # No write to land: the cluster-scoped cover they wait for is already as planned
            # (a relabel moved a namespace into it), so they look again now, not at a resync.
            self.mark(self.world.waiting_for_calico)
            self.world.waiting_for_calico.clear()
        for action, drift in self._admit(result, scope):
            if action.key in self._inflight:
                self._replan.add(scope)  # decide again once that write has landed
                continue
            self._inflight.add(action.key)
            self._pending[action.profile] = self._pending.get(action.profile, 0) + 1
            self._queues[urgent].append((action, drift))
            self._work.set()

    def _plan_failed(self, scope: str, exc: Exception) -> None:
        log.exception("planning %s failed; retrying it in %.0fs", scope or "Calico", PLAN_RETRY)
        metrics.RECONCILE_ERRORS.labels(reason="unexpected").inc()
        namespace = self.world.namespaces.get(scope)
        governor = self.world.governor(namespace) if namespace is not None else None
        message = f"planning failed: {type(exc).__name__}: {exc}"[:300]
        self._errors[scope] = {(governor.name if governor else "", "planning"): message}
        self._schedule(PLAN_RETRY, scope)

    def _request_renders(self, scopes: set[str], urgent: bool) -> set[str]:
        """Start rendering what ``scopes`` lack (a pool request per group of scopes); the scopes
        that must wait."""
        waiting = scopes & self._rendering
        if urgent:
            self._urgent_after |= waiting
        requested: dict[str, list[RenderTask]] = {}
        for scope in scopes - waiting:
            try:
                tasks = self.world.missing_renders(scope) if scope != CALICO_SCOPE else []
            except Exception as exc:
                self._plan_failed(scope, exc)
                waiting.add(scope)
                continue
            if tasks:
                requested[scope] = tasks
        self._rendering.update(requested)
        scopes_requested = sorted(requested)
        for i in range(0, len(scopes_requested), RENDER_GROUP):  # land (and write) as they come
            group = {scope: requested[scope] for scope in scopes_requested[i : i + RENDER_GROUP]}
            self._bulk_renders += 0 if urgent else 1
            self._spawn(self._render(group, urgent))
        return waiting | set(requested)

    async def _render(self, requested: dict[str, list[RenderTask]], urgent: bool) -> None:
        """Render in the pool, keep the results, then plan the scopes that waited for them."""
        tasks = [task for scope_tasks in requested.values() for task in scope_tasks]
        try:
            results = await self.pool.render(tasks, urgent=urgent)
        except Exception:
            log.exception("render pool failed; retrying in %.0fs", PLAN_RETRY)
            metrics.RECONCILE_ERRORS.labels(reason="render_pool").inc()
            for scope in requested:
                self._schedule(PLAN_RETRY, scope)
        else:
            self.world.store_renders(tasks, results)
            for scope in requested:
                urgent_now = urgent or scope in self._urgent_after
                (self._dirty if urgent_now else self._landed).add(scope)
        finally:
            self._rendering.difference_update(requested)
            self._urgent_after.difference_update(requested)
            self._bulk_renders -= 0 if urgent else 1
            self._wake.set()

    def start_writers(self) -> list[asyncio.Task[None]]:
        """``--workers`` writers in the roles of :func:`writer_roles`."""
        return [
            asyncio.create_task(self._writer(role), name=f"dpo-writer-{i}")
            for i, role in enumerate(writer_roles(self.settings.workers))
        ]

    def _take(self, role: Role) -> tuple[Action, Drift | None] | None:
        """The next action for a writer in ``role``: event-driven ones first."""
        if self._queues[True]:
            self._last_event_write = time.monotonic()
            return self._queues[True].popleft()
        if role is Role.EVENTS or not self._queues[False]:
            return None
        if role is Role.YIELDING and self._yield_left() > 0:
            return None
        return self._queues[False].popleft()

    def _yield_left(self) -> float:
        return self._last_event_write + YIELD_WINDOW - time.monotonic()

    async def _writer(self, role: Role = Role.BULK) -> None:
        """One of ``--workers`` writers; a yielding one with bulk work waiting looks again
        when the window since the last event-driven write has passed."""
        while True:
            taken = self._take(role)
            if taken is None:
                self._work.clear()
                yielding = role is Role.YIELDING and self._queues[False]
                timeout = self._yield_left() if yielding else None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._work.wait(), timeout)
                continue
            action, drift = taken
            try:
                await self._execute(action, drift)
            except Exception:  # the write's fate is unknown: look at its scope again later
                log.exception("%s %s failed unexpectedly", action.verb, action.key)
                metrics.RECONCILE_ERRORS.labels(reason="unexpected").inc()
                self._schedule(PLAN_RETRY, scope_of(action.key))
            finally:
                self._inflight.discard(action.key)
                self._pending[action.profile] -= 1
                if not self._pending[action.profile]:
                    # its last write landed: Ready may be due, and its echo marks nothing
                    self._status_dirty.set()
                self._write_landed(scope_of(action.key))
                async with self._written:
                    self._written.notify_all()
                self._wake.set()  # the planner may be waiting for room, or for idleness

    def _forget_scope(self, scope: str) -> None:
        """A namespace is gone: drop its per-scope and per-key state (no slow leak)."""
        self._errors.pop(scope, None)
        self.repairs.forget_scope(scope)
        self.conflicts.forget_scope(scope)
        for key in [k for k in self.world.conflicts if scope_of(k) == scope]:
            del self.world.conflicts[key]

    def _write_landed(self, scope: str) -> None:
        """A write of ``scope`` finished: re-plan what waited for it (see ``World`` handovers)."""
        waiting = set()
        if scope in self._replan:
            self._replan.discard(scope)
            waiting.add(scope)
        if scope == CALICO_SCOPE:
            waiting |= self.world.waiting_for_calico
            self.world.waiting_for_calico.clear()
        elif scope in self.world.calico_waiting_for:
            self.world.calico_waiting_for.discard(scope)
            waiting.add(CALICO_SCOPE)
        if waiting:
            self.mark(waiting)

    def _admit(self, result: ScopePlan, scope: str) -> list[tuple[Action, Drift | None]]:
        """Record errors and audit findings; hold back repairs of contested objects."""
        errors = {(p, f"policy {error.policy}"): error.message for p, error in result.errors}
        if errors:
            metrics.RECONCILE_ERRORS.labels(reason="render").inc(len(result.errors))
            self._errors[scope] = errors
        else:  # most scopes, most of the time: no empty record per namespace
            self._errors.pop(scope, None)
        self._record_findings(result, scope)
        self._end_stale_conflicts(result, scope)
        admission = self.repairs.admit(result.actions, scope, time.monotonic())
        for action, delay in admission.backed_off:
            log.warning("%s keeps being reverted; next repair in %.0fs", action.key, delay)
            self._schedule(delay, scope)
            self._event_later(action, delay)
        return admission.admitted

    def _end_stale_conflicts(self, result: ScopePlan, scope: str) -> None:
        """A conflict on a name this scope no longer wants is over (nothing to report)."""
        for key in [k for k in self.world.conflicts if scope_of(k) == scope]:
            if key not in result.desired_keys:
                self.conflicts.resolved(key)
                del self.world.conflicts[key]

    def _record_findings(self, result: ScopePlan, scope: str) -> None:
        for findings in self.world.audit_findings.values():
            for key in [k for k in findings if scope_of(k) == scope]:
                del findings[key]
        for action in result.audit_findings:
            self.world.audit_findings.setdefault(action.profile, {})[action.key] = action.verb
            drift = self.repairs.take_fresh(action.key)
            if drift is not None:
                metrics.DRIFT_DETECTED.labels(profile=action.profile, kind=drift.kind).inc()
        if self.reports is not None:
            self.reports.touch(scope)

    def _schedule(self, delay: float, scope: str) -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(delay, self.mark, [scope])

    def _event_later(self, action: Action, delay: float) -> None:
        message = (
            f"{action.key} keeps being changed by something else; "
            f"repair backed off for {delay:.0f}s"
        )
        self._spawn(self._profile_event(action.profile, "Warning", "RepairBackoff", message))

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.append(task)  # keep a reference until done
        task.add_done_callback(self._tasks.remove)

    def progress(self, profile: str) -> Progress:
        """Errors, contested objects and writes in flight of one profile, for its status."""
        return Progress(
            errors={
                what: message
                for errors in self._errors.values()
                for (owner, what), message in errors.items()
                if owner == profile
            },
            contested=self.repairs.contested(time.monotonic(), self._profile_of, profile),
            pending=self._pending.get(profile, 0),
            rolling_out=profile in self._rolling or not self.synced.is_set(),
        )

    def _profile_of(self, key: ObjectKey) -> str:
        state = self.world.objects.get(key)
        return state.profile if state is not None else ""

    # -- executing ----------------------------------------------------------------------

    def _resource(self, key: ObjectKey) -> Resource:
        if key.kind == GLOBAL_NETWORK_POLICY:
            return self.calico
        if key.kind == CALICO_NETWORK_POLICY:
            return self.calico_namespaced
        if key.kind == CLUSTER_NETWORK_POLICY:
            return self.cluster_policies
        return self.staged.get(key.kind, NETWORK_POLICIES)

    async def _execute(self, action: Action, drift: Drift | None = None) -> None:
        resource = self._resource(action.key)
        key = action.key
        try:
            if action.verb is Verb.CREATE:
                assert action.body is not None
                self._remember(await self.api.create(resource, action.body))
            elif action.verb is Verb.UPDATE:
                assert action.body is not None
                self._remember(
                    await self.api.replace(resource, action.body, action.resource_version)
                )
            else:
                known = self.world.objects.get(key)
                await self.api.delete(
                    resource, key.name, namespace=key.namespace, uid=known.uid if known else ""
                )
                self._deleted(key)
        except ApiError as exc:
            await self._failed(action, exc)
            return
        if action.verb is Verb.CREATE and self.conflicts.resolved(key):
            self.world.conflicts.pop(key, None)
        if drift is not None:
            metrics.DRIFT_REPAIRED.labels(profile=action.profile, kind=drift.kind).inc()
            metrics.REPAIR_LATENCY.observe(time.monotonic() - drift.detected)
            await self._profile_event(
                action.profile, "Normal", "DriftRepaired", f"{key} was {drift.kind}; restored"
            )

    def _deleted(self, key: ObjectKey) -> None:
        """Our delete of ``key`` succeeded. The object's uid is kept until the watch delivers
        the delete (or a list no longer shows it): an older event of that object still queued
        in the watch would otherwise put it back in the index, and the planner delete it again.
        """
        known = self.world.objects.get(key)
        if known is not None:
            self._gone[key] = known.uid
        self.world.remove_object(key)

    def _remember(self, body: dict[str, Any]) -> None:
        state = state_of(body)
        self.repairs.succeeded(state.key)
        self._own_versions[state.key] = state.resource_version
        self.world.set_object(state)

    async def _failed(self, action: Action, exc: ApiError) -> None:
        key = action.key
        if action.verb is Verb.DELETE and exc.status == 404:
            self.world.remove_object(key)
            return
        if action.verb is Verb.CREATE and exc.status == 409:
            await self._check_conflict(action)
            return
        if action.verb is Verb.CREATE and _namespace_terminating(exc):
            # The namespace controller's deletions reached us before the namespace's own
            # deletionTimestamp; that event is on its way and plans the namespace as empty.
            log.debug("%s not re-created: its namespace is being deleted", key)
            return
        if exc.status in (404, 409) and action.verb is Verb.UPDATE:
            # Stale resourceVersion or gone meanwhile: the watch will tell; re-plan then.
            self.mark([scope_of(key)])
            return
        log.error("%s %s failed: %s", action.verb, key, exc)
        metrics.RECONCILE_ERRORS.labels(reason=f"api_{exc.status}").inc()
        scope = scope_of(key)
        self._errors.setdefault(scope, {})[action.profile, str(key)] = (
            f"{action.verb} failed: {exc.status} {exc.reason}: {exc.message}"[:300]
        )
        self._schedule(self.repairs.failed(key, throttled=exc.status == 429), scope)

    async def _check_conflict(self, action: Action) -> None:
        """A create hit an existing object: ours (index lagging) or someone else's (conflict)."""
        key = action.key
        try:
            live = await self.api.get(self._resource(key), key.name, key.namespace)
        except ApiError as exc:
            if exc.status == 404:
                self.mark([scope_of(key)])
                return
            raise
        if is_managed(live):
            live.setdefault("kind", body_kind(key.kind))
            self.world.set_object(state_of(live))
            self.mark([scope_of(key)])
            return
        new, retry = self.conflicts.detected(key, time.monotonic())
        self.world.conflicts[key] = "exists and was not created by the operator"
        self._schedule(retry, scope_of(key))
        if new:
            metrics.DRIFT_DETECTED.labels(profile=action.profile, kind="foreign").inc()
            await self._profile_event(
                action.profile,
                "Warning",
                "Conflict",
                f"{key} already exists and was not created by default-policy-operator; "
                "left untouched. Delete or rename it to let the baseline apply.",
            )

    async def _profile_event(self, profile: str, event_type: str, reason: str, msg: str) -> None:
        entry = self.world.profiles.get(profile)
        uid = entry.profile.uid if entry and entry.profile else ""
        regarding = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": KIND,
            "metadata": {"name": profile, "uid": uid},
        }
        await self.events.record(regarding, event_type, reason, msg)

    # -- status ------------------------------------------------------------------------

    async def _status_loop(self) -> None:
        """Publish statuses at most once per ``status_interval``, when something moved; a
        refused write is tried again, not before the server's Retry-After.

        Not before the first full pass: a restart would otherwise publish "Reconciling" and then
        "Ready" again, two writes where nothing changed.
        """
        await self.synced.wait()
        while True:
            await self._status_dirty.wait()
            self._status_dirty.clear()
            pause = self.settings.status_interval
            try:
                await self.status.publish()
            except ApiError as exc:
                log.warning("status update failed: %s", exc)
                if exc.status in RETRYABLE:  # the client's retries ran out: again, when allowed
                    self._status_dirty.set()
                    pause = max(pause, exc.retry_after or 0.0)
            except Exception:
                log.exception("status update failed")
            await asyncio.sleep(pause)

    # -- resync -------------------------------------------------------------------------

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.resync_period)
            await self._until_idle(self.settings.resync_period)
            try:
                await self.resync()
            except Exception:
                log.exception("full resync failed; will try again next period")

    async def _until_idle(self, limit: float) -> None:
        """Until nothing is left to plan or write, or ``limit`` seconds: a resync waits for a
        rollout to drain.

        Mid-rollout it would re-list every namespace and every object the rollout is writing,
        on the apiserver those writes need, and re-plan scopes just planned, while the rollout
        re-plans every scope anyway. Bounded, so constant churn cannot starve it (liveness
        fails after three periods without one).
        """
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout=limit)

    async def resync(self) -> None:
        """Re-list everything through the informers and re-plan every scope.

        Catches whatever a watch may have missed; writes nothing when all is in order.
        """
        started = time.monotonic()
        results = await asyncio.gather(
            *(informer.resync() for informer in self.informers), return_exceptions=True
        )
        for informer, result in zip(self.informers, results, strict=True):
            if isinstance(result, Exception):  # its own loop retries, with backoff, and logs it
                log.debug("resync: listing %s failed: %s", informer.name, result)
        self.repairs.expire(time.monotonic())
        if self.reports is not None:
            self.reports.resync()
        self.mark_all()
        self.last_resync = time.monotonic()
        metrics.LAST_FULL_RESYNC.set(time.time())
        metrics.RECONCILE_DURATION.labels(trigger="resync").observe(time.monotonic() - started)


def namespace_of(body: dict[str, Any]) -> Namespace:
    """What the operator reads of a Namespace (never its spec or status); names, labels and
    annotation keys interned (the same ones recur across namespaces and managed objects)."""
    meta = body.get("metadata") or {}
    annotations = {sys.intern(k): v for k, v in (meta.get("annotations") or {}).items()}
    annotations.pop("kubectl.kubernetes.io/last-applied-configuration", None)
    return Namespace(
        name=sys.intern(meta.get("name", "")),
        labels=interned(meta.get("labels") or {}),
        annotations=annotations,
        resource_version=str(meta.get("resourceVersion", "")),
        terminating=bool(meta.get("deletionTimestamp")),
    )


def _deleted_body(name: str, version: str) -> dict[str, Any]:
    """The DELETED event a list implies: deleted by the list's version at the latest."""
    return {"metadata": {"name": name, "resourceVersion": version}}


def _version_of(body: dict[str, Any]) -> str:
    return str((body.get("metadata") or {}).get("resourceVersion", ""))


def _older(candidate: str, current: str) -> bool:
    try:
        return int(candidate) < int(current)
    except ValueError:
        return False


def _namespace_terminating(exc: ApiError) -> bool:
    """NamespaceLifecycle's refusal of a create in a namespace that is being deleted.

    Its reason is ``Forbidden``, like RBAC's; the cause type ``NamespaceTerminating`` is in
    the Status details, which ApiError does not keep, so the admission plugin's message
    decides: "unable to create new content in namespace X because it is being terminated".
    """
    return exc.status == 403 and "because it is being terminated" in exc.message
