"""The operator's in-memory model of the cluster, and the planning it drives.

Indexes of namespaces (names, labels, annotations), profiles (last good version, its trial
renders and current error) and managed objects (names, labels, hashes: never whole objects).
Every question the reconciler asks -- who governs this namespace, what should exist there, what
must change, what does a profile's status say -- is answered here without I/O, so it is
unit-tested directly and the same code serves ``dpo render``, ``dpo diff`` and ``dpo audit``.

The world never runs a template. Rendering happens in worker processes; the world says what it
needs rendered (:meth:`World.pending_trials`, :meth:`World.missing_renders`) and is handed the
results (:meth:`World.finish_trial`, :meth:`World.store_renders`). A profile's
namespace-independent objects come from its trial; the others are cached per namespace, keyed by
the profile version and the namespace's name, labels and annotations (all a template may read).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from default_policy_operator.core.calico_selector import (
    Compare,
    Has,
    InSet,
    Node,
    conjoin,
    parse,
    to_text,
)
from default_policy_operator.core.governance import (
    Namespace,
    Standing,
    dns_namespaces,
    governing_profile,
    precedence,
    standing,
)
from default_policy_operator.core.labels import (
    CALICO_NAME_LABEL,
    EXEMPT_LABEL,
    LAST_VALID_SPEC_ANNOTATION,
    NAMESPACE_NAME_LABEL,
    POLICY_LABEL,
)
from default_policy_operator.core.model import (
    CALICO_API_VERSIONS,
    DNS1123_LABEL,
    DeletionPolicy,
    Flavor,
    Profile,
    ProfileError,
    parse_profile,
)
from default_policy_operator.core.normalize import ObjectState, spec_hash
from default_policy_operator.core.objects import (
    CLUSTER_KINDS,
    CLUSTER_POLICY_APIS,
    STAGED_KINDS,
    ObjectKey,
    PackedObject,
    RenderedObject,
    copy_tree,
    object_key,
)
from default_policy_operator.core.plan import (
    Action,
    Desired,
    Verb,
    merge_desired,
    plan,
    writes_first,
)
from default_policy_operator.core.render import (
    ProfileRender,
    RenderError,
    RenderResult,
    RenderTask,
    Trialled,
    namespace_task,
    restamp,
    trial_result,
    trial_tasks,
)
from default_policy_operator.core.selector import (
    LabelSelector,
    Requirement,
    conjoin_k8s,
    to_calico_tree,
)


def canonical_spec(spec: Mapping[str, Any]) -> str:
    """One text per spec, so that recording it again is never a write."""
    return json.dumps(spec, sort_keys=True, separators=(",", ":"))


@dataclass
class ProfileEntry:
    """A profile as the operator knows it: the last version that validated, and any error."""

    name: str
    profile: Profile | None = None
    #: the trial renders of ``profile`` (set together with it)
    render: ProfileRender | None = None
    #: a newer version that parsed and awaits its trial render; ``profile`` stays in force
    trial: Profile | None = None
    #: canonical spec of ``trial``, and whether it is the version recorded on the profile
    trial_spec: str = ""
    trial_recorded: bool = False
    #: the profile's metadata, to admit the recorded version later (see ``_try_recorded``)
    metadata: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    generation: int = 0
    deleting: bool = False
    deletion_policy: DeletionPolicy = DeletionPolicy.DELETE
    #: the status last read from the API, so a restart does not rewrite an identical status
    status: dict[str, Any] = field(default_factory=dict)
    resource_version: str = ""
    #: canonical JSON of the spec in force when it validated, and what the profile records
    valid_spec: str = ""
    recorded_spec: str = ""

    @property
    def record_due(self) -> bool:
        """The spec in force validated but is not yet recorded on the profile (one patch)."""
        return (
            self.error is None and bool(self.valid_spec) and self.valid_spec != self.recorded_spec
        )

    @property
    def active(self) -> bool:
        return self.profile is not None and not self.deleting


@dataclass
class ScopePlan:
    """The outcome of planning one scope (a namespace, or the cluster-scoped Calico objects)."""

    actions: list[Action] = field(default_factory=list)
    #: actions an Audit-mode governor would take (reported, never executed)
    audit_findings: list[Action] = field(default_factory=list)
    errors: list[tuple[str, RenderError]] = field(default_factory=list)  # (profile, error)
    #: every key the scope wants to exist, written or blocked (ends conflicts on other names)
    desired_keys: set[ObjectKey] = field(default_factory=set)
    #: deletes held back until this scope's (or another scope's) new cover has landed
    withheld: bool = False
    #: renders the plan needs are missing (see World.missing_renders): nothing was planned
    incomplete: bool = False
    #: seconds until a new cover has settled (see ``World.handover_settle``): plan again then
    retry_in: float | None = None


@dataclass
class _NamespaceRenders:
    """A namespace's renders of one profile version's namespace-dependent policies."""

    profile: Profile
    namespace: Namespace
    results: dict[str, PackedObject | RenderError] = field(default_factory=dict)


@dataclass
class ProfileCounts:
    governed: int = 0
    shadowed: int = 0
    excluded: int = 0
    managed: int = 0
    drifted: int = 0
    conflict_keys: list[str] = field(default_factory=list)


#: standings a profile's status counts as excluded (governed, shadowed and unselected aside)
EXCLUDING = frozenset(Standing) - {Standing.GOVERNED, Standing.SHADOWED, Standing.UNSELECTED}


@dataclass(frozen=True)
class _Tally:
    """Namespaces by coverage state, and per active profile by standing."""

    coverage: Counter[str]
    standings: dict[str, Counter[Standing]]


class World:
    def __init__(
        self,
        protected: frozenset[str],
        *,
        calico_api_version: str = CALICO_API_VERSIONS[0],
        cluster_api_version: str = CLUSTER_POLICY_APIS[0],
        handover_settle: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        #: Seconds a new cover of another kind must have been live before the old one goes.
        #: A policy engine watches each kind on its own stream: order holds within a stream,
        #: not across streams, so an engine may see the old kind's delete before the new
        #: kind's create (Felix was seen to drop a DNS answer that way). Within one kind the
        #: stream's order is enough and nothing waits.
        self.handover_settle = handover_settle
        self.clock = clock
        #: when each object's current spec was first seen (see :meth:`set_object`)
        self._since: dict[ObjectKey, float] = {}
        #: (cluster-scoped profile, namespace) -> since when its live objects select it
        self._selecting_since: dict[tuple[str, str], float] = {}
        #: the soonest a cover now settling will have settled, for the plan being made
        self._settling: float | None = None
        #: the fixed protected set (system and operator namespaces); see :attr:`protected`
        self.base_protected = protected
        #: the operator's Calico API: every profile's Calico objects are written in it
        self.calico_api_version = calico_api_version
        #: the operator's ClusterNetworkPolicy API version, likewise
        self.cluster_api_version = cluster_api_version
        self.namespaces: dict[str, Namespace] = {}
        self.profiles: dict[str, ProfileEntry] = {}
        self.objects: dict[ObjectKey, ObjectState] = {}
        self._by_namespace: dict[str, set[ObjectKey]] = {}
        self._cluster_scoped: set[ObjectKey] = set()
        #: keys held by an object we did not create, with a human explanation (reported)
        self.conflicts: dict[ObjectKey, str] = {}
        #: the conflicting keys whose next create attempt is not due yet (never written)
        self.blocked: set[ObjectKey] = set()
        #: per profile, namespaces whose last plan found audit findings or render errors
        self.audit_findings: dict[str, dict[ObjectKey, str]] = {}
        #: Calico keys that several profiles wanted at the last plan, with those profiles
        self.calico_clashes: dict[ObjectKey, tuple[str, ...]] = {}
        #: (profile, namespace) -> renders of the profile's namespace-dependent policies
        self._rendered: dict[tuple[str, str], _NamespaceRenders] = {}
        self._sorted: list[Profile] | None = None
        self._protected: frozenset[str] | None = None
        #: the namespaces' standings, tallied (see :meth:`_tally`); None once one may have moved
        self._tallied: _Tally | None = None
        #: managed objects per profile label, kept as objects come and go
        self._managed: Counter[str] = Counter()
        #: per Calico profile, the namespaces its last planned selector covered (handovers)
        self.calico_covered: dict[str, frozenset[str]] = {}
        #: the desired spec hash and profile of each GlobalNetworkPolicy at the last Calico plan
        self._calico_hashes: dict[ObjectKey, str] = {}
        self._calico_owner: dict[ObjectKey, str] = {}
        #: namespaces whose NetworkPolicy deletes wait for Calico, and the reverse
        self.waiting_for_calico: set[str] = set()
        self.calico_waiting_for: set[str] = set()
        #: set by a cluster plan that keeps a namespace for a cluster-scoped successor
        self._cluster_handover_pending = False

    # -- index maintenance ---------------------------------------------------------------

    def set_namespace(self, namespace: Namespace) -> None:
        self.namespaces[namespace.name] = namespace
        self._tallied = None

    def remove_namespace(self, name: str) -> None:
        self.namespaces.pop(name, None)
        self._tallied = None
        for profile in self.profiles:
            self._rendered.pop((profile, name), None)

    def set_profile(self, entry: ProfileEntry) -> None:
        self.profiles[entry.name] = entry
        self._sorted = self._protected = self._tallied = None

    def mark_deleting(self, name: str) -> None:
        """The profile's deletion was seen elsewhere first (kopf's watch): stop governing now."""
        entry = self.profiles.get(name)
        if entry is not None and not entry.deleting:
            entry.deleting = True
            self.set_profile(entry)

    def update_profile(self, body: Mapping[str, Any]) -> ProfileEntry:
        """Admit a profile object: parse, validate, trial-render; keep the last good version.

        An invalid edit leaves ``profile`` at the previous valid version (fail static) and
        explains itself in ``error``; the status reports both.
        """
        meta = body.get("metadata") or {}
        name = str(meta.get("name", ""))
        previous = self.profiles.get(name)
        generation = int(meta.get("generation") or 0)
        # Deletion is irreversible: once seen (kopf's watch may see it first), an event of the
        # same object without it is older news and must not make the profile govern again.
        deleting = bool(meta.get("deletionTimestamp")) or (
            previous is not None
            and previous.deleting
            and previous.metadata.get("uid") == meta.get("uid")
        )
        version = str(meta.get("resourceVersion", ""))
        recorded = str((meta.get("annotations") or {}).get(LAST_VALID_SPEC_ANNOTATION, ""))
        if previous and (previous.generation, previous.deleting) == (generation, deleting):
            previous.status = dict(body.get("status") or {})  # a status-only change
            previous.resource_version = version
            previous.recorded_spec = recorded
            return previous
        spec = body.get("spec") or {}
        entry = ProfileEntry(
            name=name,
            profile=previous.profile if previous else None,
            render=previous.render if previous else None,
            generation=generation,
            deleting=deleting,
            deletion_policy=(
                DeletionPolicy.ORPHAN
                if spec.get("deletionPolicy") == DeletionPolicy.ORPHAN
                else DeletionPolicy.DELETE
            ),
            status=dict(body.get("status") or {}),
            resource_version=version,
        )
        entry.recorded_spec = recorded
        entry.valid_spec = previous.valid_spec if previous else ""
        entry.metadata = dict(meta)
        try:
            entry.trial = parse_profile(body, **self._api_versions())
            entry.trial_spec = canonical_spec(spec)
        except ProfileError as exc:
            entry.error = f"invalid spec: {exc}"
            self._try_recorded(entry)
        self.set_profile(entry)
        return entry

    def _api_versions(self) -> dict[str, str]:
        return {
            "calico_api_version": self.calico_api_version,
            "cluster_api_version": self.cluster_api_version,
        }

    def _try_recorded(self, entry: ProfileEntry) -> None:
        """No valid version in force (a restart, a new leader) and the current spec is invalid:
        the last valid spec recorded on the profile goes to its trial instead, so the
        namespaces keep exactly what was in force."""
        if entry.profile is not None or not entry.recorded_spec:
            return
        try:
            spec = json.loads(entry.recorded_spec)
            entry.trial = parse_profile(
                {"metadata": entry.metadata, "spec": spec}, **self._api_versions()
            )
        except (ValueError, ProfileError):
            return
        entry.trial_spec, entry.trial_recorded = entry.recorded_spec, True

    def pending_trials(self) -> list[tuple[Profile, list[RenderTask]]]:
        """Profile versions waiting for their trial, with the renders the trial needs."""
        return [(e.trial, trial_tasks(e.trial)) for e in self.profiles.values() if e.trial]

    def finish_trial(self, candidate: Profile, results: list[RenderResult]) -> ProfileEntry | None:
        """Judge ``candidate``'s trial renders: it comes into force, or the last good version
        stays and the error says which template failed where. None when ``candidate`` was
        superseded (or its profile removed) while it rendered."""
        entry = self.profiles.get(candidate.name)
        if entry is None or entry.trial is not candidate:
            return None
        entry.trial, recorded, entry.trial_recorded = None, entry.trial_recorded, False
        try:
            render = trial_result(candidate, results)
        except RenderError as exc:
            if not recorded:
                entry.error = f"invalid template: {exc}"
                self._try_recorded(entry)
        else:
            entry.profile, entry.render = candidate, render
            entry.valid_spec = entry.trial_spec
            if not recorded:
                entry.error = None
            self._forget_renders(candidate.name)
        self.set_profile(entry)
        return entry

    def remove_profile(self, name: str) -> None:
        self.profiles.pop(name, None)
        for cover in [c for c in self._selecting_since if c[0] == name]:
            del self._selecting_since[cover]
        self.audit_findings.pop(name, None)
        self._forget_renders(name)
        self._sorted = self._protected = self._tallied = None

    def _forget_renders(self, profile: str) -> None:
        for key in [k for k in self._rendered if k[0] == profile]:
            del self._rendered[key]

    def set_object(self, state: ObjectState) -> None:
        previous = self.objects.get(state.key)
        if previous is None or previous.spec_hash != state.spec_hash:
            self._since[state.key] = self.clock()
        if previous is not None:
            self._managed[previous.profile] -= 1
        self._managed[state.profile] += 1
        self.objects[state.key] = state
        if state.key.namespace:
            self._by_namespace.setdefault(state.key.namespace, set()).add(state.key)
        else:
            self._cluster_scoped.add(state.key)

    def remove_object(self, key: ObjectKey) -> None:
        previous = self.objects.pop(key, None)
        if previous is not None:
            self._managed[previous.profile] -= 1
        self._since.pop(key, None)
        self._cluster_scoped.discard(key)
        keys = self._by_namespace.get(key.namespace)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_namespace[key.namespace]

    def objects_in(self, namespace: str) -> dict[ObjectKey, ObjectState]:
        return {k: self.objects[k] for k in self._by_namespace.get(namespace, ())}

    def calico_objects(self) -> dict[ObjectKey, ObjectState]:
        """The cluster-scoped managed objects (GlobalNetworkPolicies, ClusterNetworkPolicies).

        From their own index: every namespace event plans the cluster scope too, and a pass
        over all objects there cost O(namespaces) per event (4 % of the operator's CPU at
        20,000 namespaces, found with py-spy in the bench)."""
        return {k: self.objects[k] for k in self._cluster_scoped if k.kind in CLUSTER_KINDS}

    def namespaces_with_objects(self) -> set[str]:
        return set(self._by_namespace)

    # -- governance ----------------------------------------------------------------------

    def active_profiles(self) -> list[Profile]:
        if self._sorted is None:
            self._sorted = sorted(
                (e.profile for e in self.profiles.values() if e.active and e.profile),
                key=precedence,
            )
        return self._sorted

    @property
    def protected(self) -> frozenset[str]:
        """The fixed set plus every active profile's DNS namespace: a profile change that names
        a new DNS namespace re-plans every scope, which removes what was governed there."""
        if self._protected is None:
            self._protected = self.base_protected | dns_namespaces(self.active_profiles())
        return self._protected

    def governor(self, namespace: Namespace) -> Profile | None:
        return governing_profile(self.active_profiles(), namespace, self.protected)

    def may_delete(self, state: ObjectState) -> bool:
        """Whether an unwanted managed object may be removed.

        Not when its profile is in Audit mode, is being deleted with ``Orphan``, or has never
        validated since the operator started (fail static: an invalid profile keeps its objects).
        """
        entry = self.profiles.get(state.profile)
        if entry is None:
            return True  # its profile is gone: nobody wants it any more
        if entry.deleting:
            return entry.deletion_policy is DeletionPolicy.DELETE
        return entry.profile is not None and entry.profile.writes

    # -- rendering: what the pool must render, and its results ---------------------------

    def missing_renders(self, scope: str) -> list[RenderTask]:
        """The renders :meth:`plan_namespace` needs before it can plan ``scope``."""
        namespace = self.namespaces.get(scope)
        governor = self.governor(namespace) if namespace is not None else None
        if governor is None or not governor.flavor.namespaced:
            return []
        assert namespace is not None
        render = self.profiles[governor.name].render
        cached = self._renders_of(governor, namespace)
        have = cached.results if cached is not None else {}
        dependent = render.dependent if render is not None else ()
        return [namespace_task(governor, p, namespace) for p in dependent if p not in have]

    def store_renders(self, tasks: list[RenderTask], results: list[RenderResult]) -> None:
        """Keep per-namespace renders; one made for an older version is simply never used."""
        for task, result in zip(tasks, results, strict=True):
            namespace = task.namespace
            assert namespace is not None
            assert not isinstance(result, Trialled)
            if namespace.name not in self.namespaces:
                continue  # deleted while it rendered
            key = (task.profile.name, namespace.name)
            cached = self._rendered.get(key)
            if cached is None or cached.profile != task.profile or cached.namespace != namespace:
                cached = self._rendered[key] = _NamespaceRenders(task.profile, namespace)
            cached.results[task.policy] = (
                PackedObject.of(result) if isinstance(result, RenderedObject) else result
            )

    def _renders_of(self, profile: Profile, namespace: Namespace) -> _NamespaceRenders | None:
        cached = self._rendered.get((profile.name, namespace.name))
        if cached is None or cached.profile is not profile or cached.namespace != namespace:
            return None
        return cached

    # -- planning ------------------------------------------------------------------------

    def plan_namespace(self, name: str) -> ScopePlan:
        """Plan the namespaced objects (NetworkPolicies, Calico NetworkPolicies) of one namespace.

        A terminating namespace gets an empty plan: the namespace controller deletes our
        objects there (a deletion that is not drift) and admission would refuse any create, so
        re-creating would only fail; deleting is the controller's job. It keeps its governor
        otherwise, so a Calico selector does not change for a namespace on its way out.
        """
        result = ScopePlan()
        self._settling = None
        namespace = self.namespaces.get(name)
        if namespace is not None and namespace.terminating:
            return result
        actual = self.objects_in(name)
        governor = self.governor(namespace) if namespace is not None else None
        desired: dict[ObjectKey, Desired] = {}
        held: set[str] = set()
        if governor is not None and governor.flavor.namespaced:
            assert namespace is not None
            wanted = self.wanted_in(governor, namespace)
            if wanted is None:
                result.incomplete = True
                return result
            objects, errors = wanted
            desired = {o.key: Desired.of(o) for o in objects}
            held = {e.policy for e in errors}
            result.errors.extend((governor.name, e) for e in errors)
        if governor is not None and not governor.writes:
            # Audit: compute what Enforce would do, execute nothing in this namespace.
            result.audit_findings = plan(
                desired, actual, may_delete=lambda s: False, blocked=self.blocked
            )
            return result

        def may_delete(state: ObjectState) -> bool:
            held_here = governor is not None and state.profile == governor.name
            return (
                not (held_here and state.labels.get(POLICY_LABEL) in held)
                and self.may_delete(state)
                and not (governor is not None and governor.staged and not _staged_own(state))
            )

        def _staged_own(state: ObjectState) -> bool:
            """A Stage governor removes only staged objects of its own: a preview never takes
            enforcement away, not another profile's and not its own from before."""
            assert governor is not None
            return state.profile == governor.name and state.key.kind in STAGED_KINDS.values()

        result.desired_keys = set(desired)
        actions = plan(desired, actual, may_delete=may_delete, blocked=self.blocked)
        result.actions, result.withheld = writes_first(actions)
        if not result.withheld:
            result.actions = self._once_settled(result.actions, cover=desired)
        calico = governor if governor is not None and not governor.flavor.namespaced else None
        if calico is not None and result.actions and not self.calico_covers(calico, name):
            result.actions, result.withheld = [], True
            self.waiting_for_calico.add(name)
        result.retry_in = self._settling
        return result

    def _once_settled(self, actions: list[Action], cover: Collection[ObjectKey]) -> list[Action]:
        """The actions, less the deletes whose cover of another kind has not settled yet."""
        return [
            action
            for action in actions
            if action.verb is not Verb.DELETE
            or self._settled([k for k in cover if k in self.objects], action.key.kind)
        ]

    def _settled(self, keys: Collection[ObjectKey], removing: str | None = None) -> bool:
        """Whether each of ``keys`` not of kind ``removing`` (the kind the cover replaces)
        has been live with its spec for ``handover_settle`` seconds."""
        now = self.clock()
        return all(self._waited(self._since.get(k, now)) for k in keys if k.kind != removing)

    def _waited(self, since: float) -> bool:
        """Whether ``handover_settle`` seconds have passed since ``since``; if not, when they
        will have is noted for the plan being made (``ScopePlan.retry_in``)."""
        left = since + self.handover_settle - self.clock()
        if left <= 0:
            return True
        self._settling = left if self._settling is None else min(self._settling, left)
        return False

    def calico_covers(self, profile: Profile, namespace: str, removing: str | None = None) -> bool:
        """Whether ``profile``'s live cluster-scoped objects select ``namespace``, and have
        selected it for ``handover_settle`` seconds (unless they are of kind ``removing``).

        It starts once the last Calico plan put the namespace in the profile's cover and every
        one of the profile's objects is live with the spec that plan wanted; only then may the
        namespace's own policies go (a handover never leaves it without a deny-all). The wait
        counts from that moment, not from the objects' last write: the namespace may have come
        in by a relabel (no write of ours at all; an engine learns it on its namespace stream),
        and while it stays in the cover every later spec selects it too, so the churn of other
        namespaces rewriting the selector does not start the wait again.
        """
        cover = (profile.name, namespace)
        if not profile.enforcing or namespace not in self.calico_covered.get(profile.name, ()):
            return False  # staged objects are no cover
        if not profile.policy_names():
            return True  # it wants nothing here: nothing to wait for
        keys = [  # a name a foreign object holds is never ours to wait for (a conflict)
            k
            for k, owner in self._calico_owner.items()
            if owner == profile.name and k not in self.conflicts
        ]
        if not keys or any(k not in self.objects for k in keys):
            self._selecting_since.pop(cover, None)
            return False
        if cover not in self._selecting_since:
            if any(self.objects[k].spec_hash != self._calico_hashes[k] for k in keys):
                return False  # the first spec that selects it has not landed yet
            self._selecting_since[cover] = self.clock()
        return all(k.kind == removing for k in keys) or self._waited(self._selecting_since[cover])

    def network_policies_cover(
        self, profile: Profile, namespace: str, removing: str | None = None
    ) -> bool:
        """Whether every namespaced policy ``profile`` wants in ``namespace`` is live, owned
        and settled (never for a profile that does not enforce: staged objects are no cover)."""
        if not profile.enforcing:
            return False
        wanted = [object_key(profile, policy, namespace) for policy in profile.policy_names()]
        return all(
            k in self.objects and self.objects[k].profile == profile.name for k in wanted
        ) and self._settled(wanted, removing)

    def wanted_in(
        self, profile: Profile, namespace: Namespace
    ) -> tuple[list[RenderedObject], list[RenderError]] | None:
        """The namespaced policies ``profile`` wants in ``namespace``, and the policies that failed
        to render there; None while a namespace-dependent render is missing."""
        render = self.profiles[profile.name].render
        cached = self._renders_of(profile, namespace)
        if render is None or (render.dependent and cached is None):
            return None
        objects: list[RenderedObject] = []
        errors: list[RenderError] = []
        for policy in profile.policy_names():
            shared = render.shared.get(policy)
            if shared is not None:
                objects.append(restamp(shared, namespace.name))
                continue
            found = cached.results.get(policy) if cached is not None else None
            if found is None:
                return None
            if isinstance(found, RenderError):
                errors.append(found)
            else:
                objects.append(found.unpack())
        return objects, errors

    def wanted_calico(self, profile: Profile) -> list[RenderedObject] | None:
        """The cluster-scoped objects ``profile`` wants (None before its trial passed), each
        narrowed to the namespaces the profile governs."""
        render = self.profiles[profile.name].render
        if render is None:
            return None
        if profile.flavor is Flavor.CLUSTER_NETWORK_POLICY:
            subject = self.subject_selector(profile)
            return [with_subject(obj, subject) for obj in render.shared.values()]
        selector = self.calico_selector(profile)
        return [with_namespace_selector(obj, selector) for obj in render.shared.values()]

    def subject_selector(self, profile: Profile) -> LabelSelector:
        """A label selector matching exactly the namespaces ``profile`` governs: its own
        selector, not exempt, and by name none of the selected namespaces it does not govern
        (``kubernetes.io/metadata.name``, which the API server sets on every namespace)."""
        left_out = tuple(sorted(self._left_out(profile)))
        requirements = (
            Requirement(EXEMPT_LABEL, "NotIn", ("true",)),
            *((Requirement(NAMESPACE_NAME_LABEL, "NotIn", left_out),) if left_out else ()),
        )
        return profile.namespace_selector.conjoin(requirements)

    def calico_selector(self, profile: Profile) -> Node:
        """A Calico namespaceSelector matching exactly the namespaces ``profile`` governs.

        Built as a tree: namespaces only (``has(projectcalico.org/name)``: host endpoints have
        no namespace labels, and ``!=``/``not in`` terms would otherwise select them), the
        profile's label selector, minus exempt namespaces (by label, effective at once), minus
        every selected namespace it does not govern (protected, excluded, shadowed) by name.
        """
        return conjoin(
            Has(CALICO_NAME_LABEL),
            to_calico_tree(profile.namespace_selector),
            Compare(EXEMPT_LABEL, "!=", "true"),
            InSet(CALICO_NAME_LABEL, tuple(self._left_out(profile)), negated=True),
        )

    def _left_out(self, profile: Profile) -> set[str]:
        """Names a cluster-scoped profile's selector must leave out: the protected namespaces,
        its exclusions, and every namespace it selects but does not govern -- save those still
        covering a handover to a namespaced flavor (see ``_still_covering``)."""
        left_out = set(self.protected) | _excluded_by_name(profile)
        for namespace in self.namespaces.values():
            if not profile.namespace_selector.matches(namespace.labels):
                continue
            governor = self.governor(namespace)
            if governor is not None and governor.name == profile.name:
                continue
            if governor is not None and self._still_covering(profile, governor, namespace.name):
                self.calico_waiting_for.add(namespace.name)
                continue
            left_out.add(namespace.name)
        return left_out

    def _still_covering(self, profile: Profile, governor: Profile, namespace: str) -> bool:
        """A namespace handed from cluster-scoped ``profile`` to another ``governor`` stays
        selected until the governor's cover is in force there (no gap)."""
        return namespace in self.calico_covered.get(
            profile.name, frozenset()
        ) and not self._covered_by(governor, namespace, object_key(profile, "", None).kind)

    def _covered_by(self, governor: Profile, namespace: str, removing: str) -> bool:
        """Whether ``governor``'s policies are in force in ``namespace``, for replacing objects
        of kind ``removing``: its namespaced objects live there, or its cluster-scoped ones live
        and selecting it, and settled where their kind differs. A cluster-scoped
        handover still waiting is noted: the cluster scope is planned again once its writes
        land (see :meth:`plan_calico`)."""
        if governor.flavor.namespaced:
            return self.network_policies_cover(governor, namespace, removing)
        if self.calico_covers(governor, namespace, removing):
            return True
        self._cluster_handover_pending = True
        return False

    def plan_calico(self) -> ScopePlan:
        """Plan the cluster-scoped GlobalNetworkPolicy objects of every Calico profile.

        A key two profiles want is held for both (neither writes nor deletes it) and recorded
        in ``calico_clashes``, which the status reports as a conflict of each.
        """
        result = ScopePlan()
        self._settling = None
        wanted: list[Desired] = []
        held_profiles: set[str] = set()
        audit_profiles: set[str] = set()
        self._cluster_handover_pending = False
        for profile in self.active_profiles():
            if profile.flavor.namespaced:
                continue
            if not profile.writes:
                audit_profiles.add(profile.name)
            rendered = self.wanted_calico(profile)
            if rendered is None:
                held_profiles.add(profile.name)
                continue
            wanted.extend(Desired.of(o) for o in rendered)
            if profile.enforcing:
                self._remember_calico_cover(profile, rendered)
        merged, self.calico_clashes = merge_desired(wanted)
        held_keys = set(self.calico_clashes)
        actual = self.calico_objects()
        result.desired_keys = set(merged) | held_keys

        def may_delete(state: ObjectState) -> bool:
            held = state.profile in held_profiles or state.key in held_keys
            return not held and self.may_delete(state) and self._calico_cover_released(state)

        actions = plan(
            {k: d for k, d in merged.items() if d.profile not in audit_profiles},
            {k: v for k, v in actual.items() if v.profile not in audit_profiles},
            may_delete=may_delete,
            blocked=self.blocked,
        )
        result.actions, result.withheld = writes_first(actions)
        result.withheld |= self._cluster_handover_pending  # plan again once the new cover lands
        result.retry_in = self._settling
        result.audit_findings = plan(
            {k: d for k, d in merged.items() if d.profile in audit_profiles},
            {k: v for k, v in actual.items() if v.profile in audit_profiles},
            may_delete=lambda s: False,
            blocked=self.blocked,
        )
        return result

    def _remember_calico_cover(self, profile: Profile, rendered: list[RenderedObject]) -> None:
        """What this plan's selector covers: the governed namespaces plus those still held for
        a handover (see ``_still_covering``)."""
        previous = self.calico_covered.get(profile.name, frozenset())
        covered = self.calico_covered[profile.name] = frozenset(
            n.name
            for n in self.namespaces.values()
            if (governor := self.governor(n)) is not None
            and (
                governor.name == profile.name
                or (
                    n.name in previous
                    and _may_stay_selected(profile, n)
                    and self._still_covering(profile, governor, n.name)
                )
            )
        )
        for cover in [c for c in self._selecting_since if c[0] == profile.name]:
            if cover[1] not in covered:  # left the cover: coming back starts the wait again
                del self._selecting_since[cover]
        for key in [k for k, owner in self._calico_owner.items() if owner == profile.name]:
            del self._calico_owner[key], self._calico_hashes[key]  # policies it no longer has
        for obj in rendered:
            self._calico_hashes[obj.key] = Desired.of(obj).spec_hash
            self._calico_owner[obj.key] = profile.name

    def _calico_cover_released(self, state: ObjectState) -> bool:
        """A leaving cluster-scoped profile's objects go only once every namespace they
        covered that another profile now governs has that profile's cover in force (and,
        where its kind differs from the leaving object's, settled)."""
        for name in self.calico_covered.get(state.profile, frozenset()):
            namespace = self.namespaces.get(name)
            governor = self.governor(namespace) if namespace is not None else None
            if governor is None:
                continue  # nobody's now: nothing to hand over
            if not self._covered_by(governor, name, state.key.kind):
                self.calico_waiting_for.add(name)
                return False
        return True

    # -- reporting -----------------------------------------------------------------------

    def standings(self, namespace: Namespace) -> dict[str, Standing]:
        """The namespace's standing for every active profile."""
        governor = self.governor(namespace)
        return {
            profile.name: standing(profile, namespace, governor, self.protected)
            for profile in self.active_profiles()
        }

    def counts(self) -> dict[str, ProfileCounts]:
        """Per-profile counts for status and metrics."""
        counts = {name: ProfileCounts() for name in self.profiles}
        for profile, by_standing in self._tally().standings.items():
            c = counts[profile]
            c.governed = by_standing[Standing.GOVERNED]
            c.shadowed = by_standing[Standing.SHADOWED]
            c.excluded = sum(n for reason, n in by_standing.items() if reason in EXCLUDING)
        for name, c in counts.items():
            c.managed = self._managed[name]
            c.drifted = len(self.audit_findings.get(name, {}))
        cluster_owners = {
            object_key(p, policy, None): p.name
            for p in self.active_profiles()
            if not p.flavor.namespaced
            for policy in p.policy_names()
        }
        for key in self.conflicts:
            if key.kind in CLUSTER_KINDS:
                owner = cluster_owners.get(key)
            else:
                holder = self.namespaces.get(key.namespace)
                governor = None
                if holder is not None and not holder.terminating:  # else it goes with them
                    governor = self.governor(holder)
                owner = governor.name if governor is not None else None
            if owner in counts:
                counts[owner].conflict_keys.append(str(key))
        for key, owners in self.calico_clashes.items():
            for owner in owners:
                if owner in counts:
                    counts[owner].conflict_keys.append(
                        f"{key} (wanted by profiles {', '.join(owners)})"
                    )
        return counts

    def coverage(self) -> Counter[str]:
        """Namespaces by their best standing across profiles: the headline coverage gauge."""
        return Counter(self._tally().coverage)

    def _tally(self) -> _Tally:
        """Every namespace's standings, counted. They move only with namespaces and profiles,
        never with objects: during a rollout the status is published once a second while
        only objects change, and walking 20,000 namespaces each time cost the operator a
        tenth of its CPU. Every namespace and profile change drops the tally."""
        if self._tallied is None:
            tally = _Tally(Counter(), {p.name: Counter() for p in self.active_profiles()})
            for namespace in self.namespaces.values():
                tally.coverage[self.namespace_state(namespace)] += 1
                if namespace.terminating:
                    continue  # nothing is applied there any more (see namespace_state)
                for profile, reason in self.standings(namespace).items():
                    tally.standings[profile][reason] += 1
            self._tallied = tally
        return self._tallied

    def namespace_state(self, namespace: Namespace) -> str:
        """The namespace's coverage state; ``uncovered`` is the one that alerts.

        A terminating namespace is ``terminating``: not ``uncovered`` (its owner deleted it,
        nothing to alert about) and not ``governed`` (nothing is applied there any more); for
        the same reason no profile counts it as governed, shadowed or excluded.
        """
        if namespace.name in self.protected:
            return "protected"
        if namespace.terminating:
            return "terminating"
        if namespace.exempt:
            return "exempt"
        governor = self.governor(namespace)
        if governor is not None:
            return "governed"
        selected = any(
            p.namespace_selector.matches(namespace.labels) for p in self.active_profiles()
        )
        return "excluded" if selected else "uncovered"


def with_namespace_selector(obj: RenderedObject, governed: Node) -> RenderedObject:
    """A GlobalNetworkPolicy limited to the namespaces its profile governs: the template's own
    ``namespaceSelector`` (checked when it was stamped) ANDed with ``governed`` as syntax trees,
    so it can narrow the governed set but never widen it. Done at planning, outside the render
    workers, because ``governed`` changes with every namespace event."""
    body = copy_tree(obj.body)
    spec = body["spec"]
    own = parse(spec.get("namespaceSelector") or "")
    spec["namespaceSelector"] = to_text(conjoin(governed, own))
    return RenderedObject(obj.key, obj.policy, body, spec_hash(obj.key.kind, spec))


def with_subject(obj: RenderedObject, governed: LabelSelector) -> RenderedObject:
    """A ClusterNetworkPolicy limited to the namespaces its profile governs: the template's
    subject (namespaces, or the namespaces of its pods) ANDed with ``governed``, so it can
    narrow the governed set but never widen it. Done at planning, like
    :func:`with_namespace_selector`."""
    body = copy_tree(obj.body)
    spec = body["spec"]
    subject = spec["subject"]
    if "pods" in subject:
        pods = subject["pods"]
        pods["namespaceSelector"] = conjoin_k8s(pods.get("namespaceSelector") or {}, governed)
    else:
        subject["namespaces"] = conjoin_k8s(subject.get("namespaces") or {}, governed)
    return RenderedObject(obj.key, obj.policy, body, spec_hash(obj.key.kind, spec))


def _excluded_by_name(profile: Profile) -> set[str]:
    """The exclusions a Calico selector leaves out by exact name (globs are left out name by
    name with the other namespaces the profile does not govern); an entry that cannot name a
    namespace would only break the selector's syntax."""
    return {p for p in profile.exclude_namespaces if DNS1123_LABEL.fullmatch(p)}


def _may_stay_selected(profile: Profile, namespace: Namespace) -> bool:
    """Whether ``profile``'s Calico selector can still select a namespace another profile now
    governs. Calico evaluates the label terms on live labels: once the namespace no longer
    matches them (a relabel) or is excluded by name, it is out of the selector at once, so no
    handover can keep it in and it is no longer part of the profile's cover."""
    return profile.namespace_selector.matches(namespace.labels) and (
        namespace.name not in _excluded_by_name(profile)
    )
