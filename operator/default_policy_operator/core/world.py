"""The operator's in-memory model of the cluster, and the planning it drives.

Indexes of namespaces (names, labels, annotations), profiles (last good version and current
error) and managed objects (names, labels, hashes: never whole objects). Every question the
reconciler asks -- who governs this namespace, what should exist there, what must change, what
does a profile's status say -- is answered here without I/O, so it is unit-tested directly and
the same code serves ``dpo render``, ``dpo diff`` and ``dpo audit``.
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
from default_policy_operator.core.normalize import ObjectState
from default_policy_operator.core.objects import (
    GLOBAL_NETWORK_POLICY,
    ObjectKey,
    calico_policy_name,
)
from default_policy_operator.core.plan import Action, Desired, plan
from default_policy_operator.core.render import Renderer, RenderError
from default_policy_operator.core.selector import calico_name_not_in, to_calico


@dataclass
class ProfileEntry:
    """A profile as the operator knows it: the last version that validated, and any error."""

    name: str
    profile: Profile | None = None
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


@dataclass
class ProfileCounts:
    governed: int = 0
    shadowed: int = 0
    excluded: int = 0
    managed: int = 0
    drifted: int = 0
    conflict_keys: list[str] = field(default_factory=list)


class World:
    def __init__(self, protected: frozenset[str], renderer: Renderer | None = None) -> None:
        self.protected = protected
        self.renderer = renderer or Renderer()
        self.namespaces: dict[str, Namespace] = {}
        self.profiles: dict[str, ProfileEntry] = {}
        self.objects: dict[ObjectKey, ObjectState] = {}
        self._by_namespace: dict[str, set[ObjectKey]] = {}
        #: keys held by an object we did not create, with a human explanation
        self.conflicts: dict[ObjectKey, str] = {}
        #: per profile, namespaces whose last plan found audit findings or render errors
        self.audit_findings: dict[str, dict[ObjectKey, str]] = {}
        self._sorted: list[Profile] | None = None

    # -- index maintenance ---------------------------------------------------------------

    def set_namespace(self, namespace: Namespace) -> None:
        self.namespaces[namespace.name] = namespace

    def remove_namespace(self, name: str) -> None:
        self.namespaces.pop(name, None)

    def set_profile(self, entry: ProfileEntry) -> None:
        self.profiles[entry.name] = entry
        self._sorted = None

    def update_profile(self, body: Mapping[str, Any]) -> ProfileEntry:
        """Admit a profile object: parse, validate, trial-render; keep the last good version.

        An invalid edit leaves ``profile`` at the previous valid version (fail static) and
        explains itself in ``error``; the status reports both.
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
            profile = parse_profile(body)
            self.renderer.trial(profile)
        except ProfileError as exc:
            entry.error = f"invalid spec: {exc}"
        except RenderError as exc:
            entry.error = f"invalid template: {exc}"
        else:
            entry.profile = profile
        self.set_profile(entry)
        return entry

    def remove_profile(self, name: str) -> None:
        self.profiles.pop(name, None)
        self.audit_findings.pop(name, None)
        self._sorted = None

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

    def plan_namespace(self, name: str) -> ScopePlan:
        """Plan the NetworkPolicy objects of one namespace.

        A terminating namespace gets an empty plan: the namespace controller deletes our
        objects there (a deletion that is not drift) and admission would refuse any create, so
        re-creating would only fail; deleting is the controller's job. It keeps its governor
        otherwise, so a Calico selector does not change for a namespace on its way out.
        """
        result = ScopePlan()
        namespace = self.namespaces.get(name)
        if namespace is not None and namespace.terminating:
            return result
        actual = self.objects_in(name)
        governor = self.governor(namespace) if namespace is not None else None
        desired: dict[ObjectKey, Desired] = {}
        held: set[str] = set()
        if governor is not None and governor.flavor is Flavor.NETWORK_POLICY:
            assert namespace is not None
            desired, held = self._render_namespace(governor, namespace, result)
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

    def _render_namespace(
        self, profile: Profile, namespace: Namespace, result: ScopePlan
    ) -> tuple[dict[ObjectKey, Desired], set[str]]:
        """Desired objects, and the policies that failed to render (held: kept, not written)."""
        data = {
            "name": namespace.name,
            "labels": namespace.labels,
            "annotations": namespace.annotations,
        }
        rendered, errors = self.renderer.render_namespace_partial(profile, data)
        result.errors.extend((profile.name, error) for error in errors)
        return {o.key: Desired.of(o) for o in rendered}, {e.policy for e in errors}

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
            try:
                rendered = self.renderer.render_calico(profile, self.calico_selector(profile))
            except RenderError as exc:
                result.errors.append((profile.name, exc))
                held_profiles.add(profile.name)
                continue
            target = desired if profile.enforcing else audit_desired
            target.update((o.key, Desired.of(o)) for o in rendered)
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
            if namespace.terminating:
                continue  # nothing is applied there any more (see namespace_state)
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
                governor = None
                if holder is not None and not holder.terminating:  # else it goes with them
                    governor = self.governor(holder)
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
