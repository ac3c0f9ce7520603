"""Identity of managed objects: keys, names and the metadata the operator stamps on them.

The operator, never a template, decides an object's name, namespace, labels and owner: that is
what makes the output allow-list enforceable and the ownership rule ("ours iff it carries our
managed-by label") trustworthy.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
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
#: Calico's namespaced ``NetworkPolicy``: the same ``kind`` as Kubernetes' in the body, so keys
#: (and everything keyed by them) tell the two apart by this name instead.
CALICO_NETWORK_POLICY = "CalicoNetworkPolicy"
CALICO_GROUPS = ("crd.projectcalico.org", "projectcalico.org")
#: sigs.k8s.io/network-policy-api's cluster-scoped kind (policy.networking.k8s.io)
CLUSTER_NETWORK_POLICY = "ClusterNetworkPolicy"
#: the versions sigs.k8s.io/network-policy-api v0.3.0 serves (same schema); the first by default
CLUSTER_POLICY_APIS = ("policy.networking.k8s.io/v1beta1", "policy.networking.k8s.io/v1alpha2")
#: Calico's staged kinds (mode Stage), one per flavor Calico can stage: enforced kind -> staged
STAGED_KINDS = {
    NETWORK_POLICY: "StagedKubernetesNetworkPolicy",
    CALICO_NETWORK_POLICY: "StagedNetworkPolicy",
    GLOBAL_NETWORK_POLICY: "StagedGlobalNetworkPolicy",
}
CLUSTER_KINDS = frozenset(
    {GLOBAL_NETWORK_POLICY, CLUSTER_NETWORK_POLICY, STAGED_KINDS[GLOBAL_NETWORK_POLICY]}
)
#: Calico 3.29-3.31 store default-tier policies under a tier-prefixed name; using that form
#: ourselves means the name we write is the name Calico keeps, in both the v1 CRD and the v3 API
#: (3.32 dropped the prefix rule and keeps any name as written, so the same name stays valid).
CALICO_TIER_PREFIX = "default."


class ObjectKey(NamedTuple):
    kind: str  # NETWORK_POLICY, CALICO_NETWORK_POLICY, or one of CLUSTER_KINDS
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


@dataclass(frozen=True, slots=True)
class PackedObject:
    """A :class:`RenderedObject` kept as compact JSON: what a namespace's render cache holds.

    A template that reads the namespace renders once per namespace, and the operator keeps
    every render until the namespace or the profile changes. Measured with tracemalloc over
    3,000 namespaces, a cached render took 3.4 KB as nested dicts and takes 1.3 KB packed
    (cache entry included): some 40 MB less at 20,000 namespaces. :meth:`unpack` builds a fresh
    body at each plan, so no plan can alter a later one's.
    """

    key: ObjectKey
    policy: str
    body_json: str
    spec_hash: str

    @classmethod
    def of(cls, obj: RenderedObject) -> PackedObject:
        return cls(obj.key, obj.policy, json.dumps(obj.body, separators=(",", ":")), obj.spec_hash)

    def unpack(self) -> RenderedObject:
        return RenderedObject(self.key, self.policy, json.loads(self.body_json), self.spec_hash)


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
    """``default.dpo-<n>[d<i>...]-<profile>-<policy>``: one name per (profile, policy), never two.

    Why not simply ``dpo-<profile>-<policy>``: profile ``a`` + policy ``deny-all`` and profile
    ``a-deny`` + policy ``all`` would share a name, so one profile would overwrite the other.
    ``n`` is the length of the profile name, which tells where it ends, so the policy name
    (``-`` included) is whatever follows it.

    Why not a ``.`` between the parts: Calico's validator (v3.29 to v3.32, identical) allows at
    most one dot in a GlobalNetworkPolicy name, ``^([a-z0-9]([-a-z0-9]*[a-z0-9])?\\.)?`` followed
    by one such label, and in 3.29-3.31 that dot must be the ``default.`` tier prefix (any
    other prefix names a tier). So everything after ``default.`` is one label of
    ``[-a-z0-9]``, and a profile name, a DNS subdomain, may itself hold dots: each dot becomes
    ``-`` in the name and its position is recorded as ``d<i>`` after ``n``
    (``team.a`` -> ``dpo-6d4-team-a-...``). Reading back ``n``, the positions, ``n``
    characters and the rest recovers (profile, policy): the mapping is injective.

    Length: profiles are at most 40 characters, policies at most 40 (custom) or 20 (built-in),
    so names stay far below Kubernetes' 253.
    """
    dots = "".join(f"d{i}" for i, char in enumerate(profile) if char == ".")
    return f"{CALICO_TIER_PREFIX}dpo-{len(profile)}{dots}-{profile.replace('.', '-')}-{policy}"


def calico_namespaced_name(policy: str) -> str:
    """``default.dpo-<policy>``: the NetworkPolicy flavor's name behind the tier prefix that
    Calico 3.29-3.31 store default-tier policies under (see :data:`CALICO_TIER_PREFIX`). A
    Kubernetes NetworkPolicy of the same name shows in Calico as ``knp.default.dpo-...``, so
    the two flavors can stand side by side in a namespace during a handover."""
    return f"{CALICO_TIER_PREFIX}{network_policy_name(policy)}"


def cluster_policy_name(profile: str, policy: str) -> str:
    """``dpo-<n>[d<i>...]-<profile>-<policy>``: :func:`calico_policy_name` without Calico's
    tier prefix, injective for the same reasons."""
    return calico_policy_name(profile, policy).removeprefix(CALICO_TIER_PREFIX)


def object_key(profile: Profile, policy: str, namespace: str | None) -> ObjectKey:
    """The object ``policy`` of ``profile`` is written as; Stage writes the staged kind under
    the same name, so Stage -> Enforce hands over like a flavor switch."""
    key = _enforced_key(profile, policy, namespace)
    return key._replace(kind=STAGED_KINDS[key.kind]) if profile.staged else key


def _enforced_key(profile: Profile, policy: str, namespace: str | None) -> ObjectKey:
    if profile.flavor is Flavor.CALICO:
        return ObjectKey(GLOBAL_NETWORK_POLICY, "", calico_policy_name(profile.name, policy))
    if profile.flavor is Flavor.CLUSTER_NETWORK_POLICY:
        return ObjectKey(CLUSTER_NETWORK_POLICY, "", cluster_policy_name(profile.name, policy))
    assert namespace is not None
    if profile.flavor is Flavor.CALICO_NAMESPACED:
        return ObjectKey(CALICO_NETWORK_POLICY, namespace, calico_namespaced_name(policy))
    return ObjectKey(NETWORK_POLICY, namespace, network_policy_name(policy))


def key_kind(body: Mapping[str, Any]) -> str:
    """The key kind of an object as the API returns it: Calico's namespaced ``NetworkPolicy``
    is told from Kubernetes' by its API group."""
    kind = str(body.get("kind", ""))
    group = str(body.get("apiVersion", "")).partition("/")[0]
    if kind == NETWORK_POLICY and group in CALICO_GROUPS:
        return CALICO_NETWORK_POLICY
    return kind


def body_kind(kind: str) -> str:
    """The ``kind`` an object of key kind ``kind`` carries in its body."""
    return NETWORK_POLICY if kind == CALICO_NETWORK_POLICY else kind


def key_of(body: Mapping[str, Any]) -> ObjectKey:
    meta = body.get("metadata") or {}
    return ObjectKey(key_kind(body), meta.get("namespace") or "", meta.get("name", ""))


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
    """Ours: it carries our managed-by label, or an ownerReference to a profile.

    The label is what the watch selects on, but a namespace editor can remove it; the
    ownerReference the operator stamps alongside keeps the object recognisable (the create that
    follows its disappearance from the watch meets it, and it is repaired, labels restored).
    """
    meta = body.get("metadata") or {}
    labels = meta.get("labels") or {}
    if labels.get(MANAGED_BY) == MANAGED_BY_VALUE:
        return True
    return any(
        str(ref.get("apiVersion", "")).partition("/")[0] == GROUP and ref.get("kind") == KIND
        for ref in meta.get("ownerReferences") or []
    )
