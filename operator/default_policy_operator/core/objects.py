"""Identity of managed objects: keys, names and the metadata the operator stamps on them.

The operator, never a template, decides an object's name, namespace, labels and owner: that is
what makes the output allow-list enforceable and the ownership rule ("ours iff it carries our
managed-by label") trustworthy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from default_policy_operator.core.labels import (
    GROUP,
    KIND,
    MANAGED_BY,
    MANAGED_BY_VALUE,
    POLICY_LABEL,
    PROFILE_LABEL,
    VERSION,
)
from default_policy_operator.core.model import Flavor, Profile

NETWORK_POLICY = "NetworkPolicy"
GLOBAL_NETWORK_POLICY = "GlobalNetworkPolicy"
#: Calico stores default-tier policies under a tier-prefixed name; using that form ourselves means
#: the name we write is the name Calico keeps, in both the v1 CRD and the v3 API.
CALICO_TIER_PREFIX = "default."


class ObjectKey(NamedTuple):
    kind: str  # NETWORK_POLICY or GLOBAL_NETWORK_POLICY
    namespace: str  # "" for cluster-scoped objects
    name: str

    def __str__(self) -> str:
        where = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind} {where}{self.name}"


@dataclass(frozen=True)
class RenderedObject:
    """A policy object as the operator wants it: stamped, validated, its normalised spec
    hashed (``normalize.spec_hash``)."""

    key: ObjectKey
    policy: str
    body: dict[str, Any]
    spec_hash: str


def copy_tree(value: Any) -> Any:
    """A deep copy of parsed YAML (dicts, lists, scalars): several times faster than deepcopy."""
    if isinstance(value, dict):
        return {k: copy_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [copy_tree(v) for v in value]
    return value


def network_policy_name(policy: str) -> str:
    """Names do not include the profile, so a change of governing profile updates in place."""
    return f"dpo-{policy}"


def calico_policy_name(profile: str, policy: str) -> str:
    return f"{CALICO_TIER_PREFIX}dpo-{profile}-{policy}"


def object_key(profile: Profile, policy: str, namespace: str | None) -> ObjectKey:
    if profile.flavor is Flavor.CALICO:
        return ObjectKey(GLOBAL_NETWORK_POLICY, "", calico_policy_name(profile.name, policy))
    assert namespace is not None
    return ObjectKey(NETWORK_POLICY, namespace, network_policy_name(policy))


def key_of(body: dict[str, Any]) -> ObjectKey:
    meta = body.get("metadata") or {}
    return ObjectKey(str(body.get("kind", "")), meta.get("namespace") or "", meta.get("name", ""))


def managed_labels(profile: str, policy: str) -> dict[str, str]:
    return {MANAGED_BY: MANAGED_BY_VALUE, PROFILE_LABEL: profile, POLICY_LABEL: policy}


def owner_reference(profile: Profile) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "name": profile.name,
        "uid": profile.uid,
        "controller": True,
        "blockOwnerDeletion": False,
    }


def is_managed(body: dict[str, Any]) -> bool:
    labels = (body.get("metadata") or {}).get("labels") or {}
    return bool(labels.get(MANAGED_BY) == MANAGED_BY_VALUE)
