"""The DefaultPolicyProfile model: parsing, defaults and validation.

Pure: takes the plain dict the API server returned (or a YAML file held), gives back an
immutable :class:`Profile` or a :class:`ProfileError` listing *every* problem at once, so a
platform engineer fixes a profile in one round trip instead of one error per apply.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from default_policy_operator.core.selector import LabelSelector, SelectorError, parse_selector

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
#: Longest custom policy name: ``dpo-`` + name must stay a valid 63-character label value.
MAX_POLICY_NAME = 40
MAX_TEMPLATE_BYTES = 16 * 1024
MAX_EXCLUSIONS = 1000
MAX_CUSTOM_POLICIES = 20
PROTOCOLS = ("TCP", "UDP", "SCTP")
BUILTIN_POLICIES = ("deny-all", "allow-dns", "allow-kube-system", "allow-same-namespace")
#: The one built-in policy of the Compact layout: deny-all and the allows in a single object.
BASELINE_POLICY = "baseline"


class Mode(StrEnum):
    """Enforce writes policies; Audit writes nothing and reports; Stage writes Calico's staged
    kinds, which enforce nothing and show in Calico's flow tooling what the baseline would do."""

    ENFORCE = "Enforce"
    AUDIT = "Audit"
    STAGE = "Stage"


class DeletionPolicy(StrEnum):
    DELETE = "Delete"
    ORPHAN = "Orphan"


class Flavor(StrEnum):
    """What a profile writes: objects in each governed namespace, or cluster-scoped ones."""

    NETWORK_POLICY = "NetworkPolicy"
    CALICO_NAMESPACED = "CalicoNetworkPolicy"
    CALICO = "CalicoGlobalNetworkPolicy"
    CLUSTER_NETWORK_POLICY = "ClusterNetworkPolicy"

    @property
    def namespaced(self) -> bool:
        """Objects in each governed namespace (planned per namespace, handed over in place);
        the others are cluster-scoped and select the governed namespaces."""
        return self in (Flavor.NETWORK_POLICY, Flavor.CALICO_NAMESPACED)

    @property
    def calico(self) -> bool:
        """Calico's own kinds: ``order``, ``action``, Calico selectors, its API version."""
        return self in (Flavor.CALICO_NAMESPACED, Flavor.CALICO)


class Layout(StrEnum):
    """How the NetworkPolicy flavor lays the built-ins out in a namespace.

    Separate: one object per built-in (``dpo-deny-all``, ``dpo-allow-dns``, ...), the names
    users know and drift reported per policy. Compact: one ``dpo-baseline`` carrying them all
    (NetworkPolicy rules are additive, so the connectivity is the same), one write instead of
    up to four per namespace. Custom policies stay separate objects in both.
    """

    SEPARATE = "Separate"
    COMPACT = "Compact"


class DNSTier(StrEnum):
    """Where the ClusterNetworkPolicy flavor's allow-DNS goes (see :class:`ClusterSettings`)."""

    BASELINE = "Baseline"
    ADMIN = "Admin"


@dataclass(frozen=True)
class ClusterSettings:
    """``spec.clusterNetworkPolicy``: the upstream ClusterNetworkPolicy flavor's knobs.

    Every object goes into the Baseline tier ("default policy that namespace policies
    override") at ``priority``, except deny-all at ``priority + 1``, so the allows are
    evaluated before it. A Baseline rule only applies to a pod no namespace NetworkPolicy
    selects: a namespace owner's first policy for a pod ends the baseline's allow-DNS for it.
    ``dnsTier: Admin`` puts allow-DNS in the Admin tier instead, where its Accept is final
    and namespace policies cannot take DNS away (nor deny it).
    """

    priority: int = 100
    dns_tier: DNSTier = DNSTier.BASELINE
    #: the operator's --cluster-network-policy-api-version (v1alpha2 where v1beta1 is not served)
    api_version: str = "policy.networking.k8s.io/v1beta1"


CALICO_API_VERSIONS = ("crd.projectcalico.org/v1", "projectcalico.org/v3")


class ProfileError(ValueError):
    """A profile that cannot be used; ``problems`` holds one human sentence per problem."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


@dataclass(frozen=True)
class Port:
    protocol: str
    port: int | str
    end_port: int | None = None

    def as_k8s(self) -> dict[str, Any]:
        out: dict[str, Any] = {"protocol": self.protocol, "port": self.port}
        if self.end_port is not None:
            out["endPort"] = self.end_port
        return out


@dataclass(frozen=True)
class Directions:
    """An ingress/egress pair of switches (deny-all, allow-kube-system, allow-same-namespace)."""

    ingress: bool
    egress: bool

    @property
    def enabled(self) -> bool:
        return self.ingress or self.egress

    def within(self, denied: Directions) -> Directions:
        """The directions among these that ``denied`` denies: where an allow means something."""
        return Directions(
            ingress=self.ingress and denied.ingress, egress=self.egress and denied.egress
        )


@dataclass(frozen=True)
class AllowDNS:
    enabled: bool
    namespace: str
    pod_selector: LabelSelector
    ports: tuple[Port, ...]


@dataclass(frozen=True)
class CustomPolicy:
    name: str
    template: str


@dataclass(frozen=True)
class Profile:
    """A validated profile with every default filled in."""

    name: str
    uid: str = ""
    generation: int = 0
    namespace_selector: LabelSelector = field(default_factory=LabelSelector)
    exclude_namespaces: tuple[str, ...] = ()
    priority: int = 0
    mode: Mode = Mode.ENFORCE
    deletion_policy: DeletionPolicy = DeletionPolicy.DELETE
    flavor: Flavor = Flavor.NETWORK_POLICY
    layout: Layout = Layout.SEPARATE
    calico_order: float = 2000
    calico_api_version: str = CALICO_API_VERSIONS[0]
    cluster: ClusterSettings = ClusterSettings()
    deny_all: Directions = Directions(ingress=True, egress=True)
    allow_dns: AllowDNS = AllowDNS(
        enabled=True,
        namespace="kube-system",
        pod_selector=LabelSelector(match_labels=(("k8s-app", "kube-dns"),)),
        ports=(Port("UDP", 53), Port("TCP", 53)),
    )
    allow_kube_system: Directions = Directions(ingress=True, egress=False)
    allow_same_namespace: Directions = Directions(ingress=False, egress=False)
    custom_policies: tuple[CustomPolicy, ...] = ()

    @property
    def enforcing(self) -> bool:
        return self.mode is Mode.ENFORCE

    @property
    def writes(self) -> bool:
        """Enforce and Stage write objects; Audit only reports."""
        return self.mode is not Mode.AUDIT

    @property
    def staged(self) -> bool:
        return self.mode is Mode.STAGE

    def allows(self, policy: str) -> Directions:
        """The directions a built-in allow policy takes effect in: only those deny-all denies.

        Any policy that selects a pod for a direction isolates the pod in that direction
        (NetworkPolicy and Calico alike): an allow-DNS egress policy alone would turn open
        egress into "DNS only". An allow for a direction that is not denied is therefore left
        out, and the direction stays open, as ``denyAll`` says.
        """
        if policy == "allow-dns":
            return Directions(ingress=False, egress=self.allow_dns.enabled).within(self.deny_all)
        if policy == "allow-kube-system":
            return self.allow_kube_system.within(self.deny_all)
        assert policy == "allow-same-namespace", policy
        return self.allow_same_namespace.within(self.deny_all)

    def policy_names(self) -> tuple[str, ...]:
        """Names of the policies this profile wants, built-ins first, in a stable order."""
        names = list(self.builtin_names())
        if self.layout is Layout.COMPACT and names:
            names = [BASELINE_POLICY]  # one object carries them all (render: baseline template)
        names.extend(c.name for c in self.custom_policies)
        return tuple(names)

    def builtin_names(self) -> tuple[str, ...]:
        """The built-ins in force: deny-all if it denies anything, the allows that take effect."""
        names = ["deny-all"] if self.deny_all.enabled else []
        names.extend(p for p in BUILTIN_POLICIES[1:] if self.allows(p).enabled)
        return tuple(names)


class _Reader:
    """Reads typed fields out of a loosely typed mapping, collecting problems instead of raising."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def mapping(self, data: Any, path: str) -> Mapping[str, Any]:
        if data is None:
            return {}
        if not isinstance(data, Mapping):
            self.problems.append(f"{path} must be an object")
            return {}
        return data

    def boolean(self, data: Mapping[str, Any], key: str, default: bool, path: str) -> bool:
        value = data.get(key, default)
        if not isinstance(value, bool):
            self.problems.append(f"{path}.{key} must be true or false")
            return default
        return value

    def enum(self, data: Mapping[str, Any], key: str, choices: Sequence[str], default: str) -> str:
        value = data.get(key, default)
        if value not in choices:
            self.problems.append(f"spec.{key} must be one of {', '.join(choices)}, not {value!r}")
            return default
        return str(value)

    def directions(
        self, data: Mapping[str, Any], key: str, default: Directions, path: str
    ) -> Directions:
        section = self.mapping(data.get(key), f"{path}.{key}")
        # ``enabled: false`` is accepted everywhere as "neither direction" for a uniform API.
        if section.get("enabled") is False:
            return Directions(ingress=False, egress=False)
        if "enabled" in section and "ingress" not in section and "egress" not in section:
            on = self.boolean(section, "enabled", True, f"{path}.{key}")
            return Directions(ingress=on, egress=on)
        return Directions(
            ingress=self.boolean(section, "ingress", default.ingress, f"{path}.{key}"),
            egress=self.boolean(section, "egress", default.egress, f"{path}.{key}"),
        )

    def selector(self, data: Any, path: str) -> LabelSelector:
        try:
            return parse_selector(data)
        except SelectorError as exc:
            self.problems.append(f"{path}: {exc}")
            return LabelSelector()


def _parse_ports(reader: _Reader, raw: Any, path: str) -> tuple[Port, ...]:
    if not isinstance(raw, list) or not raw:
        reader.problems.append(f"{path} must be a non-empty list")
        return ()
    ports = []
    for i, item in enumerate(raw):
        item_path = f"{path}[{i}]"
        entry = reader.mapping(item, item_path)
        protocol = entry.get("protocol", "TCP")
        if protocol not in PROTOCOLS:
            reader.problems.append(f"{item_path}.protocol must be one of {', '.join(PROTOCOLS)}")
            continue
        port = entry.get("port")
        valid_int = isinstance(port, int) and not isinstance(port, bool) and 1 <= port <= 65535
        valid_name = isinstance(port, str) and DNS1123_LABEL.match(port) and len(port) <= 15
        if not (valid_int or valid_name):
            reader.problems.append(f"{item_path}.port must be 1-65535 or a port name")
            continue
        end_port = entry.get("endPort")
        if end_port is not None and not (
            isinstance(end_port, int) and isinstance(port, int) and port <= end_port <= 65535
        ):
            reader.problems.append(f"{item_path}.endPort must be a number between port and 65535")
            continue
        ports.append(Port(protocol=str(protocol), port=port, end_port=end_port))  # type: ignore[arg-type]
    return tuple(ports)


def _parse_custom(reader: _Reader, raw: Any) -> tuple[CustomPolicy, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        reader.problems.append("spec.customPolicies must be a list")
        return ()
    if len(raw) > MAX_CUSTOM_POLICIES:
        reader.problems.append(f"spec.customPolicies holds at most {MAX_CUSTOM_POLICIES} entries")
    seen: set[str] = set()
    out = []
    for i, item in enumerate(raw[:MAX_CUSTOM_POLICIES]):
        path = f"spec.customPolicies[{i}]"
        entry = reader.mapping(item, path)
        name = entry.get("name")
        template = entry.get("template")
        if (
            not isinstance(name, str)
            or not DNS1123_LABEL.match(name)
            or len(name) > MAX_POLICY_NAME
        ):
            reader.problems.append(
                f"{path}.name must be a lowercase DNS label of at most {MAX_POLICY_NAME} characters"
            )
            continue
        if name in BUILTIN_POLICIES:
            reader.problems.append(f"{path}.name {name!r} is reserved for a built-in policy")
            continue
        if name in seen:
            reader.problems.append(f"{path}.name {name!r} is used twice")
            continue
        if not isinstance(template, str) or not template.strip():
            reader.problems.append(f"{path}.template must be a non-empty string")
            continue
        if len(template.encode()) > MAX_TEMPLATE_BYTES:
            reader.problems.append(f"{path}.template is longer than {MAX_TEMPLATE_BYTES} bytes")
            continue
        seen.add(name)
        out.append(CustomPolicy(name=name, template=template))
    return tuple(out)


def _parse_exclusions(reader: _Reader, raw: Any) -> tuple[str, ...]:
    exclusions = raw or []
    if not isinstance(exclusions, list) or not all(isinstance(e, str) for e in exclusions):
        reader.problems.append("spec.excludeNamespaces must be a list of names or globs")
        return ()
    if len(exclusions) > MAX_EXCLUSIONS:
        reader.problems.append(f"spec.excludeNamespaces holds at most {MAX_EXCLUSIONS} entries")
        return ()
    return tuple(exclusions)


def _parse_priority(reader: _Reader, priority: Any) -> int:
    if not isinstance(priority, int) or isinstance(priority, bool) or abs(priority) > 1_000_000:
        reader.problems.append("spec.priority must be an integer between -1000000 and 1000000")
        return 0
    return priority


def _parse_calico(reader: _Reader, spec: Mapping[str, Any], api_version: str) -> float:
    """``spec.calico``: the order of Calico objects.

    The API version is the operator's (``--calico-api-version``): it is where the operator
    reads and writes, so an object of another version would be refused (400) on every write.
    ``spec.calico.apiVersion`` is accepted only when it says the same, and otherwise explained.
    """
    calico = reader.mapping(spec.get("calico"), "spec.calico")
    order: float = 2000  # an int stays an int: 2000.0 would differ from what the API returns
    given = calico.get("order", order)
    if isinstance(given, int | float) and not isinstance(given, bool) and given >= 0:
        order = given
    else:
        reader.problems.append("spec.calico.order must be a non-negative number")
    written = calico.get("apiVersion", api_version)
    if written not in CALICO_API_VERSIONS:
        reader.problems.append(
            f"spec.calico.apiVersion must be one of {', '.join(CALICO_API_VERSIONS)}"
        )
    elif written != api_version:
        reader.problems.append(
            f"spec.calico.apiVersion is {written}, but the operator talks to Calico as "
            f"{api_version} (its --calico-api-version flag, which decides): remove the field "
            "or change the flag"
        )
    return order


def _parse_cluster(reader: _Reader, spec: Mapping[str, Any], api_version: str) -> ClusterSettings:
    """``spec.clusterNetworkPolicy``: priority (0-999; deny-all takes the next) and dnsTier."""
    section = reader.mapping(spec.get("clusterNetworkPolicy"), "spec.clusterNetworkPolicy")
    priority = section.get("priority", ClusterSettings.priority)
    if not isinstance(priority, int) or isinstance(priority, bool) or not 0 <= priority <= 999:
        reader.problems.append("spec.clusterNetworkPolicy.priority must be an integer 0-999")
        priority = ClusterSettings.priority
    tiers = [t.value for t in DNSTier]
    tier = section.get("dnsTier", DNSTier.BASELINE.value)
    if tier not in tiers:
        reader.problems.append(
            f"spec.clusterNetworkPolicy.dnsTier must be one of {', '.join(tiers)}, not {tier!r}"
        )
        tier = DNSTier.BASELINE.value
    return ClusterSettings(priority=priority, dns_tier=DNSTier(tier), api_version=api_version)


def _parse_allow_dns(reader: _Reader, policies: Mapping[str, Any], default: AllowDNS) -> AllowDNS:
    dns_raw = reader.mapping(policies.get("allowDNS"), "spec.policies.allowDNS")
    dns_namespace = dns_raw.get("namespace", default.namespace)
    if not isinstance(dns_namespace, str) or not DNS1123_LABEL.match(dns_namespace):
        reader.problems.append("spec.policies.allowDNS.namespace must be a namespace name")
        dns_namespace = default.namespace
    return AllowDNS(
        enabled=reader.boolean(dns_raw, "enabled", True, "spec.policies.allowDNS"),
        namespace=dns_namespace,
        pod_selector=(
            reader.selector(dns_raw["podSelector"], "spec.policies.allowDNS.podSelector")
            if "podSelector" in dns_raw
            else default.pod_selector
        ),
        ports=(
            _parse_ports(reader, dns_raw["ports"], "spec.policies.allowDNS.ports")
            if "ports" in dns_raw
            else default.ports
        ),
    )


def _parse_layout(
    reader: _Reader, spec: Mapping[str, Any], flavor: Flavor, customs: Sequence[CustomPolicy]
) -> Layout:
    """``spec.layout``: Compact only for the NetworkPolicy flavor, and then the name
    ``baseline`` belongs to the built-ins (``dpo-baseline`` is the object that carries them)."""
    layout = Layout(reader.enum(spec, "layout", [x.value for x in Layout], Layout.SEPARATE))
    if layout is Layout.COMPACT and flavor is not Flavor.NETWORK_POLICY:
        reader.problems.append(
            f"spec.layout Compact needs the NetworkPolicy flavor, not {flavor}: only Kubernetes "
            "NetworkPolicies are laid out as one object per namespace (remove spec.layout or "
            "set it to Separate)"
        )
    if layout is Layout.COMPACT and any(c.name == BASELINE_POLICY for c in customs):
        reader.problems.append(
            f"spec.customPolicies: the name {BASELINE_POLICY!r} is reserved for the built-in "
            "policies in layout Compact (they are one object, dpo-baseline)"
        )
    return layout


def parse_profile(
    obj: Mapping[str, Any],
    *,
    calico_api_version: str = CALICO_API_VERSIONS[0],
    cluster_api_version: str = ClusterSettings.api_version,
) -> Profile:
    """Turn a DefaultPolicyProfile into a :class:`Profile`, or raise :class:`ProfileError`.

    Every problem is collected before raising, so one status message lists them all.
    ``calico_api_version`` and ``cluster_api_version`` are the operator's settings: the API
    versions its Calico and ClusterNetworkPolicy objects are written in.
    """
    reader = _Reader()
    metadata = reader.mapping(obj.get("metadata"), "metadata")
    spec = reader.mapping(obj.get("spec"), "spec")
    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        raise ProfileError(["metadata.name is missing"])
    defaults = Profile(name=name)
    flavor = Flavor(reader.enum(spec, "flavor", [f.value for f in Flavor], Flavor.NETWORK_POLICY))
    order = _parse_calico(reader, spec, calico_api_version)
    policies = reader.mapping(spec.get("policies"), "spec.policies")
    same_namespace = reader.directions(
        policies, "allowSameNamespace", defaults.allow_same_namespace, "spec.policies"
    )
    mode = Mode(reader.enum(spec, "mode", [m.value for m in Mode], Mode.ENFORCE))
    if mode is Mode.STAGE and flavor is Flavor.CLUSTER_NETWORK_POLICY:
        reader.problems.append(
            "spec.mode Stage needs a flavor Calico can stage (NetworkPolicy, CalicoNetworkPolicy "
            "or CalicoGlobalNetworkPolicy): ClusterNetworkPolicy has no staged kind"
        )
    if not flavor.namespaced and same_namespace.enabled:
        reader.problems.append(
            "spec.policies.allowSameNamespace needs a namespaced flavor (NetworkPolicy or "
            f"CalicoNetworkPolicy): a cluster-scoped {flavor} cannot say 'the pod's own "
            "namespace'"
        )

    customs = _parse_custom(reader, spec.get("customPolicies"))
    profile = Profile(
        name=name,
        uid=str(metadata.get("uid", "")),
        generation=int(metadata.get("generation", 0) or 0),
        namespace_selector=reader.selector(spec.get("namespaceSelector"), "spec.namespaceSelector"),
        exclude_namespaces=_parse_exclusions(reader, spec.get("excludeNamespaces")),
        priority=_parse_priority(reader, spec.get("priority", 0)),
        mode=mode,
        deletion_policy=DeletionPolicy(
            reader.enum(spec, "deletionPolicy", [d.value for d in DeletionPolicy], "Delete")
        ),
        flavor=flavor,
        layout=_parse_layout(reader, spec, flavor, customs),
        calico_order=order,
        calico_api_version=calico_api_version,
        cluster=_parse_cluster(reader, spec, cluster_api_version),
        deny_all=reader.directions(policies, "denyAll", defaults.deny_all, "spec.policies"),
        allow_dns=_parse_allow_dns(reader, policies, defaults.allow_dns),
        allow_kube_system=reader.directions(
            policies, "allowKubeSystem", defaults.allow_kube_system, "spec.policies"
        ),
        allow_same_namespace=same_namespace,
        custom_policies=customs,
    )
    if reader.problems:
        raise ProfileError(reader.problems)
    return profile
