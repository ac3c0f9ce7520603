"""The built-in switches and what their names promise, shared by the evaluator and packet tests.

:func:`promised` is written from the switch names alone, not from the templates, so that
``tests/core/test_connectivity.py`` (the reference evaluators over every combination) and the
Felix packet tests (``tests/e2e/test_felix_dataplane_e2e.py``) judge the operator against one
statement of the promise:

* a direction whose deny is off is open;
* a denied direction admits exactly what an enabled allow names: DNS (UDP and TCP 53 to the DNS
  pods), kube-system (any port, from or to any kube-system pod), the same namespace;
* nothing outside the governed namespace is restricted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

DNS_LABELS = {"k8s-app": "kube-dns"}
CNP = "ClusterNetworkPolicy"


class Endpoint(Protocol):
    """A pod as far as the promise cares: its namespace and labels (a reference-evaluator
    ``Pod`` or a dataplane ``PodNet``)."""

    @property
    def namespace(self) -> str: ...

    @property
    def labels(self) -> Mapping[str, str]: ...


@dataclass(frozen=True)
class Switches:
    deny_ingress: bool
    deny_egress: bool
    dns: bool
    kube_system_ingress: bool
    kube_system_egress: bool
    same_ingress: bool
    same_egress: bool
    dns_namespace: str
    flavor: str = "NetworkPolicy"
    dns_tier: str = "Baseline"  # ClusterNetworkPolicy flavor only
    layout: str = "Separate"  # NetworkPolicy flavor only

    def spec(self) -> dict[str, Any]:
        cluster = {"clusterNetworkPolicy": {"dnsTier": self.dns_tier}} if self.flavor == CNP else {}
        return {
            **cluster,
            "layout": self.layout,
            "flavor": self.flavor,
            "policies": {
                "denyAll": {"ingress": self.deny_ingress, "egress": self.deny_egress},
                "allowDNS": {"enabled": self.dns, "namespace": self.dns_namespace},
                "allowKubeSystem": {
                    "ingress": self.kube_system_ingress,
                    "egress": self.kube_system_egress,
                },
                "allowSameNamespace": {"ingress": self.same_ingress, "egress": self.same_egress},
            },
        }


def promised(
    switches: Switches,
    governed: str,
    source: Endpoint,
    destination: Endpoint,
    protocol: str,
    port: int,
) -> bool:
    """What the switch names promise for one flow, ``governed`` being the governed namespace."""
    egress = True
    if source.namespace == governed and switches.deny_egress:
        to_dns = (
            destination.namespace == switches.dns_namespace
            and dict(destination.labels) == DNS_LABELS
            and port == 53
            and protocol in ("UDP", "TCP")
        )
        egress = (
            (switches.dns and to_dns)
            or (switches.kube_system_egress and destination.namespace == "kube-system")
            or (switches.same_egress and destination.namespace == governed)
        )
    ingress = True
    if destination.namespace == governed and switches.deny_ingress:
        ingress = (switches.kube_system_ingress and source.namespace == "kube-system") or (
            switches.same_ingress and source.namespace == governed
        )
    return egress and ingress
