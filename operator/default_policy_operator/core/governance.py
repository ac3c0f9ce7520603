"""Which profile governs a namespace, and why the others do not.

Exactly one profile governs a namespace: among the profiles whose selector matches it and that
do not exclude it, the highest ``priority`` wins and ties go to the alphabetically first name.
The order is total, so every replica and every ``dpo render`` reaches the same answer.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from default_policy_operator.core.labels import DEFAULT_PROTECTED_NAMESPACES, EXEMPT_LABEL
from default_policy_operator.core.model import Profile


class Standing(StrEnum):
    """A namespace's relation to one profile (also the metric label for coverage)."""

    GOVERNED = "governed"
    SHADOWED = "shadowed"  # selected, but a higher-priority profile governs it
    EXCLUDED = "excluded"  # selected, but named in excludeNamespaces
    EXEMPT = "exempt"  # selected, but labelled defaultpolicy.dev/exempt=true
    PROTECTED = "protected"  # selected, but a system namespace
    UNSELECTED = "unselected"


@dataclass(frozen=True, slots=True)
class Namespace:
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    #: where the informer saw it; not part of equality (a new version may change nothing we read)
    resource_version: str = field(default="", compare=False)
    #: it has a ``deletionTimestamp``: the namespace controller is deleting everything in it and
    #: admission refuses creates there, so nothing is planned for it (``World.plan_namespace``).
    #: Part of equality: the reconciler re-plans only namespaces whose record changed.
    terminating: bool = False

    @property
    def exempt(self) -> bool:
        return self.labels.get(EXEMPT_LABEL) == "true"


@functools.lru_cache(maxsize=256)
def _exclusion_matcher(patterns: tuple[str, ...]) -> tuple[frozenset[str], re.Pattern[str] | None]:
    """Exact names go to a set, globs to one combined regex: O(1)-ish with thousands of entries."""
    exact = frozenset(p for p in patterns if not any(c in p for c in "*?["))
    globs = [fnmatch.translate(p) for p in patterns if p not in exact]
    return exact, (re.compile("|".join(globs)) if globs else None)


def is_excluded(name: str, patterns: tuple[str, ...]) -> bool:
    exact, globs = _exclusion_matcher(patterns)
    return name in exact or (globs is not None and globs.match(name) is not None)


def candidate_standing(
    profile: Profile, namespace: Namespace, protected: frozenset[str]
) -> Standing | None:
    """Why ``profile`` cannot govern ``namespace``, or None if it is a candidate."""
    if not profile.namespace_selector.matches(namespace.labels):
        return Standing.UNSELECTED
    if namespace.name in protected:
        return Standing.PROTECTED
    if namespace.exempt:
        return Standing.EXEMPT
    if is_excluded(namespace.name, profile.exclude_namespaces):
        return Standing.EXCLUDED
    return None


def precedence(profile: Profile) -> tuple[int, str]:
    """Sort key: the first profile in this order governs."""
    return (-profile.priority, profile.name)


def governing_profile(
    profiles: Iterable[Profile], namespace: Namespace, protected: frozenset[str]
) -> Profile | None:
    """The profile that governs ``namespace``; ``profiles`` must be sorted by :func:`precedence`."""
    for profile in profiles:
        if candidate_standing(profile, namespace, protected) is None:
            return profile
    return None


def standing(
    profile: Profile,
    namespace: Namespace,
    governor: Profile | None,
    protected: frozenset[str],
) -> Standing:
    """The namespace's standing for ``profile``, given who governs it."""
    reason = candidate_standing(profile, namespace, protected)
    if reason is not None:
        return reason
    return (
        Standing.GOVERNED
        if governor is not None and governor.name == profile.name
        else (Standing.SHADOWED)
    )


def protected_namespaces(
    operator_namespace: str | None, profiles: Iterable[Profile] = ()
) -> frozenset[str]:
    """Namespaces no profile may govern, whatever its selector says.

    The control plane's own, the operator's, and the DNS namespace named by *every* profile
    (``allowDNS.namespace``, enabled or not): a DNS namespace serves the whole cluster, so a
    deny-all there -- from any profile, not only the one naming it -- is a cluster-wide outage.
    """
    extra = {operator_namespace} if operator_namespace else set()
    return DEFAULT_PROTECTED_NAMESPACES | extra | dns_namespaces(profiles)


def dns_namespaces(profiles: Iterable[Profile]) -> frozenset[str]:
    """The namespaces the profiles say their DNS pods run in (protected, see above)."""
    return frozenset(profile.allow_dns.namespace for profile in profiles)
