"""Structural validation of rendered policies: what the API server would refuse, found first.

A template can render YAML that parses but is not a policy: ``egress: [{ports: [53]}]``,
``ingress: allow``, an unquoted date, ``!!binary``. Refusing it in the profile's trial (and in
every per-namespace render) keeps the failure inside the profile that caused it, names the
field, and means the normaliser, the hash and the plan only ever see well-formed specs.

The rules follow the API server's own for ``networking.k8s.io/v1`` NetworkPolicy (JSON decoding
into the Go types, then ``ValidateNetworkPolicySpec`` with strict CIDR checks as in 1.36) and
the Calico CRD schema for GlobalNetworkPolicy. Deliberately stricter in three places, so that
what passes is also what normalises without surprises: unknown fields are refused (as with
``fieldValidation=Strict``) and ``null`` is refused as a list element (Go would read it as an
empty rule or port). A ``null`` field reads as absent, as in Go.

Each :class:`Problem` says whether it is about **structure** (a type or a field name: the same
on every namespace) or about a **value** (a port number, a label value: it may come from the
namespace's data), so a trial against a sample namespace judges only what it can know.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from default_policy_operator.core.selector import valid_label_key, valid_label_value


@dataclass(frozen=True)
class Problem:
    path: str
    message: str
    structural: bool = True  # False: a value that may depend on the namespace's data

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


Check = Callable[[Any, str], Iterator[Problem]]

_INT32 = (-(2**31), 2**31 - 1)
_PORT_NAME = re.compile(r"[-a-z0-9]+")
_PROTOCOLS = ("TCP", "UDP", "SCTP")
_POLICY_TYPES = ("Ingress", "Egress")
_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


def _type_name(value: Any) -> str:
    names = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    if isinstance(value, int) and not isinstance(value, bool):
        return "an integer"
    return names.get(type(value), f"a {type(value).__name__}")


def _wrong(path: str, want: str, value: Any) -> Iterator[Problem]:
    yield Problem(path, f"must be {want}, not {_type_name(value)}")


# -- building blocks ---------------------------------------------------------------------------


def string(value: Any, path: str) -> Iterator[Problem]:
    if not isinstance(value, str):
        yield from _wrong(path, "a string", value)


def integer(value: Any, path: str) -> Iterator[Problem]:
    if not isinstance(value, int) or isinstance(value, bool):
        yield from _wrong(path, "an integer", value)
    elif not _INT32[0] <= value <= _INT32[1]:
        yield Problem(path, "must fit in 32 bits", structural=False)


def number(value: Any, path: str) -> Iterator[Problem]:
    if not isinstance(value, int | float) or isinstance(value, bool):
        yield from _wrong(path, "a number", value)
    elif not math.isfinite(value):
        yield Problem(path, "must be a finite number", structural=False)


def int_or_string(value: Any, path: str) -> Iterator[Problem]:
    if isinstance(value, str):
        return
    if isinstance(value, int) and not isinstance(value, bool):
        yield from integer(value, path)
    else:
        yield from _wrong(path, "an integer or a string", value)


def list_of(item: Check) -> Check:
    def check(value: Any, path: str) -> Iterator[Problem]:
        if not isinstance(value, list):
            yield from _wrong(path, "a list", value)
            return
        for i, element in enumerate(value):
            yield from item(element, f"{path}[{i}]")

    return check


def map_of_strings(value: Any, path: str) -> Iterator[Problem]:
    if not isinstance(value, dict):
        yield from _wrong(path, "a mapping", value)
        return
    for key, item in value.items():
        yield from string(key, f"{path} key")
        yield from string(item, f"{path}[{key!r}]")


def one_of(choices: tuple[Any, ...], base: Check = string) -> Check:
    def check(value: Any, path: str) -> Iterator[Problem]:
        problems = list(base(value, path))
        if problems:
            yield from problems
        elif value not in choices:
            supported = ", ".join(str(c) for c in choices)
            yield Problem(path, f"unsupported value {value!r}: must be one of {supported}", False)

    return check


def mapping(
    fields: Mapping[str, Check],
    *,
    required: tuple[str, ...] = (),
    rules: tuple[Callable[[dict[str, Any], str], Iterator[Problem]], ...] = (),
) -> Check:
    """A mapping with known fields only; ``rules`` run once every field has the right type."""

    def check(value: Any, path: str) -> Iterator[Problem]:
        if not isinstance(value, dict):
            yield from _wrong(path, "a mapping", value)
            return
        present = {k: v for k, v in value.items() if v is not None}  # null reads as absent
        problems: list[Problem] = []
        for key, item in present.items():
            where = f"{path}.{key}" if path else str(key)
            if key in fields:
                problems.extend(fields[key](item, where))
            else:
                problems.append(Problem(where, "unknown field"))
        problems.extend(Problem(f"{path}.{k}", "is required") for k in required if k not in present)
        yield from problems
        if not problems:
            for rule in rules:
                yield from rule(present, path)

    return check


# -- Kubernetes rules --------------------------------------------------------------------------


def label_key(value: Any, path: str) -> Iterator[Problem]:
    yield from string(value, path)
    if isinstance(value, str) and not valid_label_key(value):
        yield Problem(path, f"{value!r} is not a valid label key", structural=False)


def label_value(value: Any, path: str) -> Iterator[Problem]:
    yield from string(value, path)
    if isinstance(value, str) and not valid_label_value(value):
        yield Problem(path, f"{value!r} is not a valid label value", structural=False)


def labels(value: Any, path: str) -> Iterator[Problem]:
    if not isinstance(value, dict):
        yield from _wrong(path, "a mapping", value)
        return
    for key, item in value.items():
        yield from label_key(key, f"{path} key")
        yield from label_value(item, f"{path}[{key!r}]")


def _requirement_rule(value: dict[str, Any], path: str) -> Iterator[Problem]:
    operator, values = value.get("operator"), value.get("values") or []
    if operator in ("In", "NotIn") and not values:
        yield Problem(f"{path}.values", f"must be non-empty with operator {operator}", False)
    if operator in ("Exists", "DoesNotExist") and values:
        yield Problem(f"{path}.values", f"must be empty with operator {operator}", False)


requirement = mapping(
    {"key": label_key, "operator": one_of(_OPERATORS), "values": list_of(label_value)},
    required=("key", "operator"),
    rules=(_requirement_rule,),
)
label_selector = mapping({"matchLabels": labels, "matchExpressions": list_of(requirement)})


def cidr(value: Any, path: str) -> Iterator[Problem]:
    """The API server's strict CIDR form: ``address/prefix``, no host bits, no leading zeros."""
    yield from string(value, path)
    if not isinstance(value, str):
        return
    _, slash, prefix = value.partition("/")
    network = None
    if slash and prefix.isdigit() and (prefix == "0" or not prefix.startswith("0")):
        try:
            network = ipaddress.ip_network(value, strict=True) if "%" not in value else None
        except ValueError:
            network = None
    if network is None or (
        isinstance(network, ipaddress.IPv6Network) and network.network_address.ipv4_mapped
    ):
        yield Problem(path, f"{value!r} is not a valid CIDR (e.g. 10.9.8.0/24)", False)


def _ip_block_rule(value: dict[str, Any], path: str) -> Iterator[Problem]:
    if not value.get("cidr"):
        return
    outer = ipaddress.ip_network(value["cidr"])
    for i, text in enumerate(value.get("except") or []):
        inner = ipaddress.ip_network(text)
        inside = inner.version == outer.version and inner.subnet_of(outer)  # type: ignore[arg-type]
        if not inside or inner.prefixlen <= outer.prefixlen:
            yield Problem(f"{path}.except[{i}]", "must be a strict subset of cidr", False)


ip_block = mapping(
    {"cidr": cidr, "except": list_of(cidr)}, required=("cidr",), rules=(_ip_block_rule,)
)


def _peer_rule(value: dict[str, Any], path: str) -> Iterator[Problem]:
    if not value:
        yield Problem(path, "must specify a peer (podSelector, namespaceSelector or ipBlock)")
    elif "ipBlock" in value and len(value) > 1:
        yield Problem(path, "may not specify both ipBlock and another peer")


peer = mapping(
    {"podSelector": label_selector, "namespaceSelector": label_selector, "ipBlock": ip_block},
    rules=(_peer_rule,),
)


def _port_name_problem(name: str) -> str | None:
    if not 1 <= len(name) <= 15 or not _PORT_NAME.fullmatch(name):
        return "must be 1-15 characters of a-z, 0-9 and '-'"
    if not re.search("[a-z]", name):
        return "must contain at least one letter"
    if "--" in name or name.startswith("-") or name.endswith("-"):
        return "must not contain '--' nor begin or end with '-'"
    return None


def _port_rule(value: dict[str, Any], path: str) -> Iterator[Problem]:
    port, end = value.get("port"), value.get("endPort")
    if isinstance(port, int):
        if not 1 <= port <= 65535:
            yield Problem(f"{path}.port", "must be between 1 and 65535", False)
        if end is not None and not port <= end <= 65535:
            yield Problem(f"{path}.endPort", "must be between port and 65535", False)
    elif isinstance(port, str):
        problem = _port_name_problem(port)
        if problem:
            yield Problem(f"{path}.port", f"port name {port!r} {problem}", False)
        if end is not None:
            yield Problem(f"{path}.endPort", "may not be set when port is a name", False)
    elif end is not None:
        yield Problem(f"{path}.endPort", "may not be set without port", False)


network_policy_port = mapping(
    {"protocol": one_of(_PROTOCOLS), "port": int_or_string, "endPort": integer},
    rules=(_port_rule,),
)


def _rule(peers: str) -> Check:
    return mapping({peers: list_of(peer), "ports": list_of(network_policy_port)})


def _policy_types_rule(value: dict[str, Any], path: str) -> Iterator[Problem]:
    if len(value.get("policyTypes") or []) > 2:
        yield Problem(f"{path}.policyTypes", "may not list more than two policy types", False)


network_policy_spec = mapping(
    {
        "podSelector": label_selector,
        "policyTypes": list_of(one_of(_POLICY_TYPES)),
        "ingress": list_of(_rule("from")),
        "egress": list_of(_rule("to")),
    },
    rules=(_policy_types_rule,),
)


# -- Calico NetworkPolicy and GlobalNetworkPolicy (the CRDs' schemas) ------------------------------


def _bounded(low: int, high: int) -> Check:
    def check(value: Any, path: str) -> Iterator[Problem]:
        problems = list(integer(value, path))
        yield from problems
        if not problems and not low <= value <= high:
            yield Problem(path, f"must be between {low} and {high}", False)

    return check


_icmp = mapping({"type": _bounded(0, 254), "code": _bounded(0, 255)})
_entity_rule = mapping(
    {
        "nets": list_of(string),
        "notNets": list_of(string),
        "selector": string,
        "notSelector": string,
        "namespaceSelector": string,
        "ports": list_of(int_or_string),
        "notPorts": list_of(int_or_string),
        "serviceAccounts": mapping({"names": list_of(string), "selector": string}),
        "services": mapping({"name": string, "namespace": string}),
    }
)
calico_rule = mapping(
    {
        "action": one_of(("Allow", "Deny", "Log", "Pass")),
        "ipVersion": one_of((4, 6), integer),
        "protocol": int_or_string,
        "notProtocol": int_or_string,
        "icmp": _icmp,
        "notICMP": _icmp,
        "source": _entity_rule,
        "destination": _entity_rule,
        "http": mapping(
            {
                "methods": list_of(string),
                "paths": list_of(mapping({"exact": string, "prefix": string})),
            }
        ),
        "metadata": mapping({"annotations": map_of_strings}),
    },
    required=("action",),
)
_calico_namespaced_fields: dict[str, Check] = {
    "order": number,
    "selector": string,
    "serviceAccountSelector": string,
    "types": list_of(one_of(_POLICY_TYPES)),
    "ingress": list_of(calico_rule),
    "egress": list_of(calico_rule),
}
#: Calico's namespaced NetworkPolicy: a GlobalNetworkPolicy without the namespaceSelector
calico_namespaced_spec = mapping(_calico_namespaced_fields)
calico_spec = mapping({**_calico_namespaced_fields, "namespaceSelector": string})


# -- ClusterNetworkPolicy (sigs.k8s.io/network-policy-api v0.3.0, v1beta1) ----------------------

#: the CRD's cap on rules per direction, peers per rule and protocols per rule
CLUSTER_POLICY_MAX_ITEMS = 25


def _at_most(limit: int, check: Check) -> Check:
    def bounded(value: Any, path: str) -> Iterator[Problem]:
        yield from check(value, path)
        if isinstance(value, list) and len(value) > limit:
            yield Problem(path, f"holds {len(value)} entries; at most {limit}", False)

    return bounded


def _port_range_rule(value: dict[str, Any], path: str) -> Iterator[Problem]:
    if value["start"] >= value["end"]:
        yield Problem(path, "start must be less than end", False)


_destination_port = mapping(
    {
        "number": _bounded(1, 65535),
        "range": mapping(
            {"start": _bounded(1, 65535), "end": _bounded(1, 65535)},
            required=("start", "end"),
            rules=(_port_range_rule,),
        ),
    }
)
_protocol = mapping(
    {p: mapping({"destinationPort": _destination_port}) for p in ("tcp", "udp", "sctp")}
)
_pods_peer = mapping(
    {"namespaceSelector": label_selector, "podSelector": label_selector},
    required=("namespaceSelector", "podSelector"),
)
_cluster_rule_fields: dict[str, Check] = {
    "name": string,
    "action": one_of(("Accept", "Deny", "Pass")),
    "protocols": _at_most(CLUSTER_POLICY_MAX_ITEMS, list_of(_protocol)),
}
_cluster_ingress = mapping(
    {
        **_cluster_rule_fields,
        "from": _at_most(
            CLUSTER_POLICY_MAX_ITEMS,
            list_of(mapping({"namespaces": label_selector, "pods": _pods_peer})),
        ),
    },
    required=("action", "from"),
)
_cluster_egress = mapping(
    {
        **_cluster_rule_fields,
        "to": _at_most(
            CLUSTER_POLICY_MAX_ITEMS,
            list_of(
                mapping(
                    {"namespaces": label_selector, "pods": _pods_peer, "networks": list_of(cidr)}
                )
            ),
        ),
    },
    required=("action", "to"),
)
cluster_network_policy_spec = mapping(
    {
        "tier": one_of(("Admin", "Baseline")),
        "priority": _bounded(0, 1000),
        "subject": mapping({"namespaces": label_selector, "pods": _pods_peer}),
        "ingress": _at_most(CLUSTER_POLICY_MAX_ITEMS, list_of(_cluster_ingress)),
        "egress": _at_most(CLUSTER_POLICY_MAX_ITEMS, list_of(_cluster_egress)),
    },
    required=("tier", "priority", "subject"),
)


def problems(check: Check, value: Any, path: str = "spec") -> list[Problem]:
    """Every problem ``check`` finds in ``value``, in document order."""
    return list(check(value, path))
