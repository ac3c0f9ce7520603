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

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from default_policy_operator.core.governance import (
    Namespace,
    Standing,
    candidate_standing,
    governing_profile,
    precedence,
)
from default_policy_operator.core.labels import CALICO_NAME_LABEL, EXEMPT_LABEL, POLICY_LABEL
from default_policy_operator.core.model import (
    DNS1123_LABEL,
    DeletionPolicy,
    Flavor,
    Profile,
    ProfileError,
    parse_profile,
)
from default_policy_operator.core.normalize import ObjectState, spec_hash
from default_policy_operator.core.objects import (
    GLOBAL_NETWORK_POLICY,
    ObjectKey,
    RenderedObject,
    calico_policy_name,
    copy_tree,
)
from default_policy_operator.core.plan import Action, Desired, plan
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
from default_policy_operator.core.selector import calico_name_not_in, to_calico


@dataclass
class ProfileEntry:
    """A profile as the operator knows it: the last version that validated, and any error."""

    name: str
    profile: Profile | None = None
    #: the trial renders of ``profile`` (set together with it)
    render: ProfileRender | None = None
    #: a newer version that parsed and awaits its trial render; ``profile`` stays in force
    trial: Profile | None = None
    error: str | None = None
    generation: int = 0
    deleting: bool = False
    deletion_policy: DeletionPolicy = DeletionPolicy.DELETE
    #: the status last read from the API, so a restart does not rewrite an identical status
    status: dict[str, Any] = field(default_factory=dict)
    resource_version: str = ""

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
    #: renders the plan needs are missing (see World.missing_renders): nothing was planned
    incomplete: bool = False


@dataclass
class _NamespaceRenders:
    """A namespace's renders of one profile version's namespace-dependent policies."""

    profile: Profile
    namespace: Namespace
    results: dict[str, RenderedObject | RenderError] = field(default_factory=dict)


@dataclass
class ProfileCounts:
    governed: int = 0
    shadowed: int = 0
    excluded: int = 0
    managed: int = 0
    drifted: int = 0
    conflict_keys: list[str] = field(default_factory=list)


class World:
    def __init__(self, protected: frozenset[str]) -> None:
        self.protected = protected
        self.namespaces: dict[str, Namespace] = {}
        self.profiles: dict[str, ProfileEntry] = {}
        self.objects: dict[ObjectKey, ObjectState] = {}
        self._by_namespace: dict[str, set[ObjectKey]] = {}
        #: keys held by an object we did not create, with a human explanation
        self.conflicts: dict[ObjectKey, str] = {}
        #: per profile, namespaces whose last plan found audit findings or render errors
        self.audit_findings: dict[str, dict[ObjectKey, str]] = {}
        self._sorted: list[Profile] | None = None
        #: (profile, namespace) -> renders of the profile's namespace-dependent policies
        self._rendered: dict[tuple[str, str], _NamespaceRenders] = {}

    # -- index maintenance ---------------------------------------------------------------

    def set_namespace(self, namespace: Namespace) -> None:
        self.namespaces[namespace.name] = namespace

    def remove_namespace(self, name: str) -> None:
        self.namespaces.pop(name, None)
        for profile in self.profiles:
            self._rendered.pop((profile, name), None)

    def set_profile(self, entry: ProfileEntry) -> None:
        self.profiles[entry.name] = entry
        self._sorted = None

    def update_profile(self, body: Mapping[str, Any]) -> ProfileEntry:
        """Admit a profile object: parse and validate; a valid new version awaits its trial.

        Until the trial (:meth:`finish_trial`) passes, ``profile`` stays at the previous valid
        version (fail static); an invalid edit explains itself in ``error``.
        """
        meta = body.get("metadata") or {}
        name = str(meta.get("name", ""))
        previous = self.profiles.get(name)
        generation = int(meta.get("generation") or 0)
        deleting = bool(meta.get("deletionTimestamp"))
        version = str(meta.get("resourceVersion", ""))
        if previous and (previous.generation, previous.deleting) == (generation, deleting):
            previous.status = dict(body.get("status") or {})  # a status-only change
            previous.resource_version = version
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
        try:
            entry.trial = parse_profile(body)
        except ProfileError as exc:
            entry.error = f"invalid spec: {exc}"
        self.set_profile(entry)
        return entry

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
        entry.trial = None
        try:
            render = trial_result(candidate, results)
        except RenderError as exc:
            entry.error = f"invalid template: {exc}"
        else:
            entry.profile, entry.render, entry.error = candidate, render, None
            self._forget_renders(candidate.name)
        self.set_profile(entry)
        return entry

    def remove_profile(self, name: str) -> None:
        self.profiles.pop(name, None)
        self.audit_findings.pop(name, None)
        self._forget_renders(name)
        self._sorted = None

    def _forget_renders(self, profile: str) -> None:
        for key in [k for k in self._rendered if k[0] == profile]:
            del self._rendered[key]

    def set_object(self, state: ObjectState) -> None:
        self.objects[state.key] = state
        if state.key.namespace:
            self._by_namespace.setdefault(state.key.namespace, set()).add(state.key)

    def remove_object(self, key: ObjectKey) -> None:
        self.objects.pop(key, None)
        keys = self._by_namespace.get(key.namespace)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_namespace[key.namespace]

    def objects_in(self, namespace: str) -> dict[ObjectKey, ObjectState]:
        return {k: self.objects[k] for k in self._by_namespace.get(namespace, ())}

    def calico_objects(self) -> dict[ObjectKey, ObjectState]:
        return {k: v for k, v in self.objects.items() if k.kind == GLOBAL_NETWORK_POLICY}

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
        return entry.profile is not None and entry.profile.enforcing

    # -- planning ------------------------------------------------------------------------

    def missing_renders(self, scope: str) -> list[RenderTask]:
        """The renders :meth:`plan_namespace` needs before it can plan ``scope``."""
        namespace = self.namespaces.get(scope)
        governor = self.governor(namespace) if namespace is not None else None
        if governor is None or governor.flavor is not Flavor.NETWORK_POLICY:
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
            cached.results[task.policy] = result

    def _renders_of(self, profile: Profile, namespace: Namespace) -> _NamespaceRenders | None:
        cached = self._rendered.get((profile.name, namespace.name))
        if cached is None or cached.profile is not profile or cached.namespace != namespace:
            return None
        return cached

    def plan_namespace(self, name: str) -> ScopePlan:
        """Plan the NetworkPolicy objects of one namespace."""
        result = ScopePlan()
        actual = self.objects_in(name)
        namespace = self.namespaces.get(name)
        governor = self.governor(namespace) if namespace is not None else None
        desired: dict[ObjectKey, Desired] = {}
        held: set[str] = set()
        if governor is not None and governor.flavor is Flavor.NETWORK_POLICY:
            assert namespace is not None
            wanted = self.wanted_in(governor, namespace)
            if wanted is None:
                result.incomplete = True
                return result
            objects, errors = wanted
            desired = {o.key: Desired.of(o) for o in objects}
            held = {e.policy for e in errors}
            result.errors.extend((governor.name, e) for e in errors)
        if governor is not None and not governor.enforcing:
            # Audit: compute what Enforce would do, execute nothing in this namespace.
            result.audit_findings = plan(
                desired, actual, may_delete=lambda s: False, blocked=self.conflicts
            )
            return result

        def may_delete(state: ObjectState) -> bool:
            held_here = governor is not None and state.profile == governor.name
            return not (held_here and state.labels.get(POLICY_LABEL) in held) and (
                self.may_delete(state)
            )

        result.actions = plan(desired, actual, may_delete=may_delete, blocked=self.conflicts)
        return result

    def wanted_in(
        self, profile: Profile, namespace: Namespace
    ) -> tuple[list[RenderedObject], list[RenderError]] | None:
        """The NetworkPolicies ``profile`` wants in ``namespace``, and the policies that failed
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
                objects.append(found)
        return objects, errors

    def wanted_calico(self, profile: Profile) -> list[RenderedObject] | None:
        """The GlobalNetworkPolicies ``profile`` wants (None before its trial passed)."""
        render = self.profiles[profile.name].render
        if render is None:
            return None
        selector = self.calico_selector(profile)
        return [with_namespace_selector(obj, selector) for obj in render.shared.values()]

    def calico_selector(self, profile: Profile) -> str:
        """A Calico namespaceSelector matching exactly the namespaces ``profile`` governs.

        The profile's label selector, minus exempt namespaces (by label, effective at once), minus
        every selected namespace it does not govern (protected, excluded, shadowed) by name.
        """
        left_out = set(self.protected)
        # Exact names only (globs are covered by name below); an entry that cannot name a
        # namespace would only break the Calico selector's string syntax.
        left_out.update(p for p in profile.exclude_namespaces if DNS1123_LABEL.fullmatch(p))
        for namespace in self.namespaces.values():
            if not profile.namespace_selector.matches(namespace.labels):
                continue
            governor = self.governor(namespace)
            if governor is None or governor.name != profile.name:
                left_out.add(namespace.name)
        terms = [
            f"({to_calico(profile.namespace_selector)})",
            f'{EXEMPT_LABEL} != "true"',
            calico_name_not_in(CALICO_NAME_LABEL, sorted(left_out)),
        ]
        return " && ".join(t for t in terms if t)

    def plan_calico(self) -> ScopePlan:
        """Plan the cluster-scoped GlobalNetworkPolicy objects of every Calico profile."""
        result = ScopePlan()
        desired: dict[ObjectKey, Desired] = {}
        audit_desired: dict[ObjectKey, Desired] = {}
        held_profiles: set[str] = set()
        for profile in self.active_profiles():
            if profile.flavor is not Flavor.CALICO:
                continue
            wanted = self.wanted_calico(profile)
            if wanted is None:
                held_profiles.add(profile.name)
                continue
            target = desired if profile.enforcing else audit_desired
            target.update((obj.key, Desired.of(obj)) for obj in wanted)
        actual = self.calico_objects()
        audit_profiles = {d.profile for d in audit_desired.values()}
        result.actions = plan(
            desired,
            {k: v for k, v in actual.items() if v.profile not in audit_profiles},
            may_delete=lambda s: s.profile not in held_profiles and self.may_delete(s),
            blocked=self.conflicts,
        )
        result.audit_findings = plan(
            audit_desired,
            {k: v for k, v in actual.items() if v.profile in audit_profiles},
            may_delete=lambda s: False,
            blocked=self.conflicts,
        )
        return result

    # -- reporting -----------------------------------------------------------------------

    def standings(self, namespace: Namespace) -> dict[str, Standing]:
        """The namespace's standing for every active profile."""
        governor = self.governor(namespace)
        out = {}
        for profile in self.active_profiles():
            reason = candidate_standing(profile, namespace, self.protected)
            if reason is None:
                reason = (
                    Standing.GOVERNED
                    if governor is not None and governor.name == profile.name
                    else Standing.SHADOWED
                )
            out[profile.name] = reason
        return out

    def counts(self) -> dict[str, ProfileCounts]:
        """Per-profile counts for status and metrics, in one pass over the namespaces."""
        counts = {name: ProfileCounts() for name in self.profiles}
        for namespace in self.namespaces.values():
            for profile, reason in self.standings(namespace).items():
                c = counts[profile]
                if reason is Standing.GOVERNED:
                    c.governed += 1
                elif reason is Standing.SHADOWED:
                    c.shadowed += 1
                elif reason is not Standing.UNSELECTED:
                    c.excluded += 1
        managed = Counter(state.profile for state in self.objects.values())
        for name, c in counts.items():
            c.managed = managed.get(name, 0)
            c.drifted = len(self.audit_findings.get(name, {}))
        calico_names = {
            calico_policy_name(p.name, policy): p.name
            for p in self.active_profiles()
            if p.flavor is Flavor.CALICO
            for policy in p.policy_names()
        }
        for key in self.conflicts:
            if key.kind == GLOBAL_NETWORK_POLICY:
                owner = calico_names.get(key.name)
            else:
                holder = self.namespaces.get(key.namespace)
                governor = self.governor(holder) if holder is not None else None
                owner = governor.name if governor is not None else None
            if owner in counts:
                counts[owner].conflict_keys.append(str(key))
        return counts

    def coverage(self) -> Counter[str]:
        """Namespaces by their best standing across profiles: the headline coverage gauge."""
        totals: Counter[str] = Counter()
        for namespace in self.namespaces.values():
            totals[self.namespace_state(namespace)] += 1
        return totals

    def namespace_state(self, namespace: Namespace) -> str:
        if namespace.name in self.protected:
            return "protected"
        if namespace.exempt:
            return "exempt"
        governor = self.governor(namespace)
        if governor is not None:
            return "governed"
        selected = any(
            p.namespace_selector.matches(namespace.labels) for p in self.active_profiles()
        )
        return "excluded" if selected else "uncovered"


def with_namespace_selector(obj: RenderedObject, governed: str) -> RenderedObject:
    """A GlobalNetworkPolicy limited to the namespaces its profile governs: the template's own
    ``namespaceSelector`` (if any) ANDed with ``governed``. Done at planning, outside the render
    workers, because ``governed`` changes with every namespace event."""
    body = copy_tree(obj.body)
    spec = body["spec"]
    own = spec.get("namespaceSelector")
    spec["namespaceSelector"] = f"({governed}) && ({own})" if own else governed
    return RenderedObject(obj.key, obj.policy, body, spec_hash(obj.key.kind, spec))
