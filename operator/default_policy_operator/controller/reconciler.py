"""Level-based reconciliation: events mark scopes dirty; one loop plans and applies them.

Every event (namespace, profile, managed object) only updates the :class:`World` and marks the
affected scopes -- namespaces, or "calico" for the cluster-scoped objects -- as dirty. A single
loop drains the dirty set, asks the world for a plan and executes it with bounded concurrency.
Because plans come from state, not from the event that triggered them, a burst of events for
one namespace costs one plan, and a periodic full resync that finds nothing to do writes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time
from collections import deque
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from typing import Any

from default_policy_operator import metrics
from default_policy_operator.core.conditions import Observations, checks, condition
from default_policy_operator.core.governance import Namespace
from default_policy_operator.core.labels import (
    GROUP,
    KIND,
    MANAGED_SELECTOR,
    PROFILE_LABEL,
    VERSION,
)
from default_policy_operator.core.model import Profile
from default_policy_operator.core.normalize import ObjectState, state_of
from default_policy_operator.core.objects import (
    GLOBAL_NETWORK_POLICY,
    ObjectKey,
    is_managed,
    managed_labels,
)
from default_policy_operator.core.plan import Action, Verb
from default_policy_operator.core.render import RenderTask, trial_tasks
from default_policy_operator.core.world import ProfileCounts, ScopePlan, World
from default_policy_operator.kube.client import (
    NETWORK_POLICIES,
    PROFILES,
    ApiError,
    KubeApi,
    Resource,
    calico_resource,
)
from default_policy_operator.kube.informers import Informer
from default_policy_operator.rendering.pool import RenderPool

log = logging.getLogger(__name__)

CALICO_SCOPE = ""  # the dirty-set entry for cluster-scoped Calico objects
STANDINGS = ("governed", "shadowed", "excluded")
BULK_CHUNK = 100  # scopes planned per step of a bulk re-plan
RENDER_GROUP = 8  # scopes per render request: their plans go out as each group is back
BULK_RENDERS = 4  # bulk render requests in flight before the next bulk chunk is taken
PLAN_RETRY = 5.0  # seconds before a scope whose planning or rendering failed is tried again
DRIFT_WINDOW = 60.0  # repairs of one object closer together than this count as a fight
FIGHT_THRESHOLD = 3  # repairs within the window before backing off
MAX_BACKOFF = 300.0


@dataclass
class Settings:
    workers: int = 32
    resync_period: float = 600.0
    status_interval: float = 1.0
    calico_api_version: str = "crd.projectcalico.org/v1"


#: (kind of drift: "modified" or "deleted", monotonic time the watch showed it)
_Drift = tuple[str, float]


@dataclass
class _Fight:
    """Repair history of one object, for backing off from a controller that reverts us."""

    repairs: int = 0
    last: float = 0.0
    blocked_until: float = 0.0


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Reconciler:
    def __init__(
        self, world: World, api: KubeApi, settings: Settings, pool: RenderPool | None = None
    ) -> None:
        self.world = world
        self.api = api
        self.settings = settings
        self.pool = pool or RenderPool()  # (its worker processes start on first use)
        self.calico = calico_resource(settings.calico_api_version)
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._bulk: set[str] = set()  # scopes to re-plan in bulk (profile change, resync)
        self._queues: dict[bool, deque[tuple[Action, _Drift | None]]] = {
            True: deque(),  # urgent: from events
            False: deque(),  # bulk
        }
        self._work = asyncio.Event()  # writers: something was queued
        self._inflight: set[ObjectKey] = set()  # queued or being written
        self._replan: set[str] = set()  # scopes skipped because a write was in flight
        self._idle = asyncio.Event()  # set while nothing is dirty or in flight
        self._status_dirty = asyncio.Event()
        self.synced = asyncio.Event()  # readiness: the first full pass completed
        self.started = asyncio.Event()  # kopf finished its initial listings
        self.last_loop = time.monotonic()  # liveness heartbeat
        self.last_resync = 0.0
        self._own_versions: dict[ObjectKey, str] = {}  # resourceVersions of our own writes
        self._drift: dict[ObjectKey, _Drift] = {}
        self._fights: dict[ObjectKey, _Fight] = {}
        self._deferred: dict[ObjectKey, _Drift] = {}  # drift seen, repair not yet made
        self._failures: dict[ObjectKey, int] = {}  # consecutive failed writes, for backoff
        #: per scope, (profile, what) -> message: render errors and refused writes
        self._errors: dict[str, dict[tuple[str, str], str]] = {}
        self._pending: dict[str, int] = {}  # profile -> actions in flight
        self._published: dict[str, dict[str, Any]] = {}  # profile -> last status written
        self._initialised: set[str] = set()  # profiles whose counter series exist
        self._tasks: list[asyncio.Task[None]] = []
        self._trials: dict[str, Profile] = {}  # profile -> the version whose trial is running
        self._rendering: set[str] = set()  # scopes waiting for their renders
        self._urgent_after: set[str] = set()  # of those, scopes an event touched meanwhile
        self._bulk_renders = 0  # bulk render requests in flight
        self._landed: set[str] = set()  # bulk scopes whose renders are back, to plan
        self.informers: list[Informer] = []  # set by the runtime; relisted by resync()

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

    def namespaces_listed(self, items: list[dict[str, Any]], version: str) -> None:
        listed = {(i.get("metadata") or {}).get("name", ""): i for i in items}
        for name, known in list(self.world.namespaces.items()):
            if name not in listed and not _older(version, known.resource_version):
                self.namespace_event("DELETED", {"metadata": {"name": name}})
        for name, body in listed.items():
            seen = self.world.namespaces.get(name)
            if seen is None or _older(seen.resource_version, _version_of(body)):
                self.namespace_event("MODIFIED", body)

    def objects_listed(self, kind: str, items: list[dict[str, Any]], version: str) -> None:
        """A (re)list of one kind of managed object; what vanished unseen was deleted."""
        listed = {state_of(body).key: body for body in items}
        for key in [k for k in self.world.objects if k.kind == kind and k not in listed]:
            known = self.world.objects[key]
            if _older(version, known.resource_version):
                continue  # created after the list was taken
            self.object_event("DELETED", {"kind": kind, "metadata": {
                "name": key.name, "namespace": key.namespace, "uid": known.uid,
                "resourceVersion": known.resource_version}})  # fmt: skip
        for key, body in listed.items():
            current = self.world.objects.get(key)
            if current is None or _older(current.resource_version, _version_of(body)):
                self.object_event("ADDED" if current is None else "MODIFIED", body)

    def profiles_listed(self, items: list[dict[str, Any]], version: str) -> None:
        listed = {(i.get("metadata") or {}).get("name", ""): i for i in items}
        for name, entry in list(self.world.profiles.items()):
            if name not in listed and not _older(version, entry.resource_version):
                self.profile_event("DELETED", {"metadata": {"name": name}})
        for body in listed.values():
            self.profile_event("MODIFIED", body)

    def profile_event(self, event_type: str, body: dict[str, Any]) -> None:
        name = (body.get("metadata") or {}).get("name", "")
        if event_type == "DELETED":
            self.world.remove_profile(name)
            self.forget_profile(name)
            self.profile_changed()
            return
        # Our own status writes come back here too: only a new generation or a deletion
        # changes what the profile wants, so only those re-plan the cluster.
        before = self.world.profiles.get(name)
        entry = self.world.update_profile(body)
        if entry is before:
            return
        if entry.error:
            log.warning("profile %s: %s", entry.name, entry.error)
        if entry.trial is not None:
            self._trials[name] = entry.trial
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
        if self._trials.get(profile.name) is profile:
            del self._trials[profile.name]
        entry = self.world.finish_trial(profile, results)
        if entry is None:
            return  # superseded while it rendered
        if entry.error:
            log.warning("profile %s: %s", entry.name, entry.error)
        self.profile_changed()

    def namespace_event(self, event_type: str | None, body: dict[str, Any]) -> None:
        meta = body.get("metadata") or {}
        name = meta.get("name", "")
        if event_type == "DELETED":
            if self.world.namespaces.get(name) is None:
                return
            self.world.remove_namespace(name)
        else:
            annotations = dict(meta.get("annotations") or {})
            annotations.pop("kubectl.kubernetes.io/last-applied-configuration", None)
            namespace = Namespace(
                name=name,
                labels=dict(meta.get("labels") or {}),
                annotations=annotations,
                resource_version=str(meta.get("resourceVersion", "")),
            )
            previous = self.world.namespaces.get(name)
            self.world.set_namespace(namespace)
            if previous == namespace:
                return  # status or finalizers moved, or a re-list: nothing we read changed
        self.mark([name, CALICO_SCOPE])

    def object_event(self, event_type: str | None, body: dict[str, Any]) -> None:
        """A managed object changed: update the index, detect drift, re-plan its scope."""
        state = state_of(body)
        key = state.key
        known = self.world.objects.get(key)
        if known is not None and _older(state.resource_version, known.resource_version):
            return  # a stale event overtaken by our own write's response
        own = self._own_versions.get(key) == state.resource_version
        if own and event_type != "DELETED":
            # The echo of our own write: the index already holds it, nothing to re-plan.
            del self._own_versions[key]
            self.world.set_object(state)
            return
        if event_type == "DELETED":
            self.world.remove_object(key)
            if self.started.is_set() and known is not None and known.uid == state.uid:
                self._drift.setdefault(key, ("deleted", time.monotonic()))
        else:
            self.world.set_object(state)
            if self.started.is_set() and not own:
                self._drift.setdefault(key, ("modified", time.monotonic()))
        self.mark([key.namespace or CALICO_SCOPE])

    def profile_changed(self) -> None:
        self.mark_all()

    def objects_of(self, profile: str) -> list[ObjectState]:
        return [s for s in self.world.objects.values() if s.profile == profile]

    async def idle(self, limit: float = 30.0) -> None:
        """Wait until every dirty scope has been reconciled (at most ``limit`` seconds)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), limit)

    async def orphan(self, profile: str) -> None:
        """Release a profile's remaining objects: drop our labels and owner, keep the policy.

        Called by the finalizer of a profile with ``deletionPolicy: Orphan``, after namespaces
        that another profile governs have been handed over in place. The objects come from a
        fresh list, not the cache: a write whose response is still on its way must not be missed.
        """
        release = {
            "metadata": {"labels": dict.fromkeys(managed_labels("", "")), "ownerReferences": None}
        }
        selector = f"{MANAGED_SELECTOR},{PROFILE_LABEL}={profile}"
        bodies = await self.api.list_objects(NETWORK_POLICIES, label_selector=selector)
        with contextlib.suppress(ApiError):  # Calico may not be installed
            bodies += await self.api.list_objects(self.calico, label_selector=selector)
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
            self.started.set()
            self.mark_all()
            self._tasks += [
                asyncio.create_task(self._reconcile_loop(), name="dpo-reconcile"),
                *(
                    asyncio.create_task(self._writer(), name=f"dpo-writer-{i}")
                    for i in range(self.settings.workers)
                ),
                asyncio.create_task(self._status_loop(), name="dpo-status"),
                asyncio.create_task(self._resync_loop(), name="dpo-resync"),
            ]
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
            metrics.RECONCILE_DURATION.labels(trigger="events").observe(time.monotonic() - started)

    async def reconcile(self, scopes: set[str], *, urgent: bool = True) -> None:
        """Plan ``scopes`` and queue the resulting actions for the writers.

        Scopes that need renders first are handed to the render pool and planned when their
        renders are back; the others are planned now. A scope whose planning fails is recorded
        and retried on its own: it never holds up the rest of the batch.
        """
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
        if result.incomplete:  # changed since its renders were requested: request again
            self.mark([scope])
            return
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

    async def _writer(self) -> None:
        """One of ``--workers`` writers: urgent actions first, then bulk ones."""
        while True:
            for urgent in (True, False):
                if self._queues[urgent]:
                    action, drift = self._queues[urgent].popleft()
                    break
            else:
                self._work.clear()
                await self._work.wait()
                continue
            try:
                await self._execute(action, drift)
            except Exception:
                log.exception("%s %s failed unexpectedly", action.verb, action.key)
                metrics.RECONCILE_ERRORS.labels(reason="unexpected").inc()
            finally:
                self._inflight.discard(action.key)
                self._pending[action.profile] -= 1
                scope = action.key.namespace or CALICO_SCOPE
                if scope in self._replan:
                    self._replan.discard(scope)
                    self.mark([scope])
                self._wake.set()  # the planner may be waiting for room, or for idleness

    def _admit(self, result: ScopePlan, scope: str) -> list[tuple[Action, _Drift | None]]:
        """Record errors and audit findings; hold back repairs of contested objects."""
        self._errors[scope] = {}
        for profile, error in result.errors:
            self._errors[scope][profile, f"policy {error.policy}"] = error.message
            metrics.RECONCILE_ERRORS.labels(reason="render").inc()
        self._record_findings(result, scope)
        admitted: list[tuple[Action, _Drift | None]] = []
        now = time.monotonic()
        for action in result.actions:
            key = action.key
            if action.verb is Verb.DELETE:
                admitted.append((action, None))
                continue
            fresh = self._drift.pop(key, None)
            if fresh is not None:
                metrics.DRIFT_DETECTED.labels(profile=action.profile, kind=fresh[0]).inc()
                self._deferred.setdefault(key, fresh)
            drift = self._deferred.get(key)
            fight = self._fights.get(key)
            if drift is None:
                if fight is None or fight.blocked_until <= now:
                    admitted.append((action, None))
                continue
            fight = self._fights.setdefault(key, _Fight())
            if fight.blocked_until > now:
                continue  # a repair is already scheduled for when the backoff ends
            if fight.blocked_until:
                fight.blocked_until = 0.0  # the backoff just ended: this repair may go
            else:
                fight.repairs = fight.repairs + 1 if now - fight.last < DRIFT_WINDOW else 1
                if fight.repairs > FIGHT_THRESHOLD:
                    delay = min(MAX_BACKOFF, 2.0 ** (fight.repairs - FIGHT_THRESHOLD))
                    fight.blocked_until = now + delay
                    metrics.BACKOFFS.labels(profile=action.profile).inc()
                    log.warning("%s keeps being reverted; next repair in %.0fs", key, delay)
                    self._schedule(delay, scope)
                    self._event_later(action, delay)
                    continue
            fight.last = now
            del self._deferred[key]
            admitted.append((action, drift))
        # Drift that needs no write after all (reverted by someone, or irrelevant) is forgotten.
        wanted = {a.key for a in result.actions}
        for pending in (self._drift, self._deferred):
            for key in [k for k in pending if (k.namespace or CALICO_SCOPE) == scope]:
                if key not in wanted:
                    del pending[key]
        return admitted

    def _record_findings(self, result: ScopePlan, scope: str) -> None:
        for findings in self.world.audit_findings.values():
            for key in [k for k in findings if (k.namespace or CALICO_SCOPE) == scope]:
                del findings[key]
        for action in result.audit_findings:
            self.world.audit_findings.setdefault(action.profile, {})[action.key] = action.verb
            drift = self._drift.pop(action.key, None)
            if drift is not None:
                metrics.DRIFT_DETECTED.labels(profile=action.profile, kind=drift[0]).inc()

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

    def contested(self, profile: str) -> list[str]:
        """Objects whose repairs were backed off within the last drift window."""
        now = time.monotonic()
        return [
            str(k)
            for k, f in self._fights.items()
            if f.repairs > FIGHT_THRESHOLD
            and now - max(f.last, f.blocked_until) < DRIFT_WINDOW
            and self._profile_of(k) == profile
        ]

    def _profile_of(self, key: ObjectKey) -> str:
        state = self.world.objects.get(key)
        return state.profile if state is not None else ""

    # -- executing ----------------------------------------------------------------------

    def _resource(self, key: ObjectKey) -> Resource:
        return self.calico if key.kind == GLOBAL_NETWORK_POLICY else NETWORK_POLICIES

    async def _execute(self, action: Action, drift: _Drift | None = None) -> None:
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
                self.world.remove_object(key)
        except ApiError as exc:
            await self._failed(action, exc)
            return
        if drift is not None:
            kind, detected = drift
            metrics.DRIFT_REPAIRED.labels(profile=action.profile, kind=kind).inc()
            metrics.REPAIR_LATENCY.observe(time.monotonic() - detected)
            await self._profile_event(
                action.profile, "Normal", "DriftRepaired", f"{key} was {kind}; restored"
            )

    def _remember(self, body: dict[str, Any]) -> None:
        state = state_of(body)
        self._failures.pop(state.key, None)
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
        if exc.status in (404, 409) and action.verb is Verb.UPDATE:
            # Stale resourceVersion or gone meanwhile: the watch will tell; re-plan then.
            self.mark([key.namespace or CALICO_SCOPE])
            return
        log.error("%s %s failed: %s", action.verb, key, exc)
        metrics.RECONCILE_ERRORS.labels(reason=f"api_{exc.status}").inc()
        scope = key.namespace or CALICO_SCOPE
        self._errors.setdefault(scope, {})[action.profile, str(key)] = (
            f"{action.verb} failed: {exc.status} {exc.reason}: {exc.message}"[:300]
        )
        failures = self._failures[key] = self._failures.get(key, 0) + 1
        self._schedule(min(MAX_BACKOFF, 2.0**failures), scope)

    async def _check_conflict(self, action: Action) -> None:
        """A create hit an existing object: ours (index lagging) or someone else's (conflict)."""
        key = action.key
        try:
            live = await self.api.get(self._resource(key), key.name, key.namespace)
        except ApiError as exc:
            if exc.status == 404:
                self.mark([key.namespace or CALICO_SCOPE])
                return
            raise
        if is_managed(live):
            live.setdefault("kind", key.kind)
            self.world.set_object(state_of(live))
            self.mark([key.namespace or CALICO_SCOPE])
            return
        if key not in self.world.conflicts:
            self.world.conflicts[key] = "exists and was not created by the operator"
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
        await self.api.post_event(regarding, event_type=event_type, reason=reason, message=msg)

    # -- status ------------------------------------------------------------------------

    async def _status_loop(self) -> None:
        while True:
            await self._status_dirty.wait()
            self._status_dirty.clear()
            try:
                await self.publish_status()
            except Exception:
                log.exception("status update failed")
            await asyncio.sleep(self.settings.status_interval)

    def status_for(
        self, name: str, previous: dict[str, Any], counts: ProfileCounts
    ) -> dict[str, Any]:
        entry = self.world.profiles[name]
        conflicts = counts.conflict_keys
        findings = self.world.audit_findings.get(name, {})
        obs = Observations(
            spec_error=entry.error,
            errors={
                what: message
                for errors in self._errors.values()
                for (profile, what), message in errors.items()
                if profile == name
            },
            conflicts=conflicts,
            contested=self.contested(name),
            pending=self._pending.get(name, 0),
            audit_findings=[f"{verb} {key}" for key, verb in findings.items()],
            audit=entry.profile is not None and not entry.profile.enforcing,
        )
        now = now_rfc3339()
        previous_conditions = previous.get("conditions") or []
        status: dict[str, Any] = {
            "observedGeneration": entry.generation,
            "governedNamespaces": counts.governed,
            "shadowedNamespaces": counts.shadowed,
            "excludedNamespaces": counts.excluded,
            "managedObjects": counts.managed,
            "driftedObjects": counts.drifted,
            "conflicts": len(conflicts),
            "conditions": [
                condition(c, entry.generation, previous_conditions, now) for c in checks(obs)
            ],
        }
        comparable = {k: v for k, v in previous.items() if k != "lastSyncTime"}
        status["lastSyncTime"] = previous.get("lastSyncTime", now) if comparable == status else now
        metrics.PROFILE_READY.labels(profile=name).set(
            1 if status["conditions"][0]["status"] == "True" else 0
        )
        metrics.MANAGED_OBJECTS.labels(profile=name).set(counts.managed)
        metrics.DRIFTED_OBJECTS.labels(profile=name).set(counts.drifted)
        metrics.CONFLICTS.labels(profile=name).set(len(conflicts))
        self._initialise_series(name)
        for standing in STANDINGS:
            metrics.PROFILE_NAMESPACES.labels(profile=name, standing=standing).set(
                getattr(counts, standing)
            )
        return status

    async def publish_status(self) -> None:
        """Write each profile's status when it differs from what was last written."""
        coverage = self.world.coverage()
        for state in ("governed", "excluded", "exempt", "protected", "uncovered"):
            metrics.NAMESPACES.labels(state=state).set(coverage.get(state, 0))
        counts = self.world.counts()
        for name, entry in list(self.world.profiles.items()):
            if name not in self.world.profiles:
                continue  # deleted while an earlier status write was awaited
            previous = self._published.get(name, entry.status)
            status = self.status_for(name, previous, counts[name])
            if status == previous:
                continue
            try:
                await self.api.patch(PROFILES, name, {"status": status}, subresource="status")
            except ApiError as exc:
                if exc.status != 404:
                    raise
                continue
            self._published[name] = status

    def forget_profile(self, name: str) -> None:
        self._published.pop(name, None)
        self._initialised.discard(name)
        for gauge in (
            metrics.PROFILE_READY,
            metrics.MANAGED_OBJECTS,
            metrics.DRIFTED_OBJECTS,
            metrics.CONFLICTS,
        ):
            with contextlib.suppress(KeyError):
                gauge.remove(name)
        for standing in STANDINGS:
            with contextlib.suppress(KeyError):
                metrics.PROFILE_NAMESPACES.remove(name, standing)

    def _initialise_series(self, name: str) -> None:
        """Start a profile's counters at 0, so that rate() and increase() see the first event."""
        if name in self._initialised:
            return
        self._initialised.add(name)
        for kind in ("modified", "deleted", "foreign"):
            metrics.DRIFT_DETECTED.labels(profile=name, kind=kind)
        for kind in ("modified", "deleted"):
            metrics.DRIFT_REPAIRED.labels(profile=name, kind=kind)
        metrics.BACKOFFS.labels(profile=name)

    # -- resync -------------------------------------------------------------------------

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.resync_period)
            try:
                await self.resync()
            except Exception:
                log.exception("full resync failed; will try again next period")

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
        self.world.conflicts.clear()  # re-detected by the next create attempt
        now = time.monotonic()
        self._fights = {
            k: f for k, f in self._fights.items()
            if max(f.last, f.blocked_until) > now - DRIFT_WINDOW
        }  # fmt: skip
        self.mark_all()
        self.last_resync = time.monotonic()
        metrics.LAST_FULL_RESYNC.set(time.time())
        metrics.RECONCILE_DURATION.labels(trigger="resync").observe(time.monotonic() - started)


def _version_of(body: dict[str, Any]) -> str:
    return str((body.get("metadata") or {}).get("resourceVersion", ""))


def _older(candidate: str, current: str) -> bool:
    try:
        return int(candidate) < int(current)
    except ValueError:
        return False
