"""The bench's write accounting: the apiserver's counters minus the bench's own requests."""

from __future__ import annotations

from collections import Counter

import pytest
from bench.writes import Key, attribute, own_key, parse_request_totals, per, resource_of

METRICS = """\
# HELP apiserver_request_total [STABLE] Counter of apiserver requests
# TYPE apiserver_request_total counter
apiserver_request_total{code="201",component="apiserver",dry_run="",group="networking.k8s.io",\
resource="networkpolicies",scope="resource",subresource="",verb="POST",version="v1"} 7
apiserver_request_total{code="409",component="apiserver",dry_run="",group="networking.k8s.io",\
resource="networkpolicies",scope="resource",subresource="",verb="POST",version="v1"} 2
apiserver_request_total{code="200",component="apiserver",dry_run="",group="networking.k8s.io",\
resource="networkpolicies",scope="namespace",subresource="",verb="LIST",version="v1"} 40
apiserver_request_total{code="201",component="apiserver",dry_run="",group="",\
resource="events",scope="resource",subresource="",verb="POST",version="v1"} 3
apiserver_request_total{code="200",component="apiserver",dry_run="",group="defaultpolicy.dev",\
resource="defaultpolicyprofiles",scope="resource",subresource="status",verb="PATCH",\
version="v1alpha1"} 1
apiserver_request_totals_other{verb="POST"} 99
"""


def test_parse_keeps_writes_only_by_resource_subresource_verb_and_code() -> None:
    assert parse_request_totals(METRICS) == Counter(
        {
            ("networkpolicies", "", "POST", "201"): 7,
            ("networkpolicies", "", "POST", "409"): 2,
            ("events", "", "POST", "201"): 3,
            ("defaultpolicyprofiles", "status", "PATCH", "200"): 1,
        }
    )


@pytest.mark.parametrize(
    ("path", "resource"),
    [
        ("/api/v1/namespaces", "namespaces"),
        ("/api/v1/namespaces/app-1", "namespaces"),
        ("/api/v1/namespaces/app-1/events", "events"),
        ("/apis/networking.k8s.io/v1/namespaces/a/networkpolicies/p?dryRun=All", "networkpolicies"),
        ("/apis/defaultpolicy.dev/v1alpha1/defaultpolicyprofiles/bench", "defaultpolicyprofiles"),
        ("/apis/crd.projectcalico.org/v1/globalnetworkpolicies", "globalnetworkpolicies"),
    ],
)
def test_resource_of_names_what_the_apiserver_labels(path: str, resource: str) -> None:
    assert resource_of(path) == resource


def test_own_key_ignores_reads() -> None:
    assert own_key("GET", "/api/v1/namespaces", 200) is None
    assert own_key("DELETE", "/api/v1/namespaces/a", 200) == ("namespaces", "", "DELETE", "200")


def test_attribute_subtracts_own_writes_and_keeps_refused_apart() -> None:
    np_ok: Key = ("networkpolicies", "", "POST", "201")
    np_conflict: Key = ("networkpolicies", "", "PUT", "409")
    before = Counter({np_ok: 10})
    after = Counter({np_ok: 15, np_conflict: 2, ("events", "", "POST", "201"): 4,
                     ("leases", "", "PUT", "200"): 1,
                     ("defaultpolicyprofiles", "status", "PATCH", "200"): 2})  # fmt: skip
    own = Counter({np_ok: 3, np_conflict: 1})
    writes = attribute(after, before, own)
    assert writes == {
        "networkpolicies": 2,
        "events": 4,
        "other": 3,
        "refused": 1,
        "apiserver_own": 0,
        "by_resource": {"defaultpolicyprofiles/status": 2, "events": 4, "leases": 1,
                        "networkpolicies": 2},
        "refused_by": {"networkpolicies 409": 1},
    }  # fmt: skip
    assert per(writes, 2) == {"networkpolicies": 1.0, "events": 2.0, "other": 1.5, "refused": 0.5}


def test_the_apiservers_own_endpoint_writes_are_neither_other_nor_refused() -> None:
    """kube-apiserver reconciles the `kubernetes` Service's endpoints itself (refused, 422, on a
    loopback address); the operator has no RBAC for them, so they are reported apart."""
    after = Counter({("endpoints", "", "PUT", "422"): 2, ("endpointslices", "", "PUT", "200"): 1})
    writes = attribute(after, Counter(), Counter())
    assert (writes["other"], writes["refused"], writes["apiserver_own"]) == (0, 0, 3)
    assert writes["refused_by"] == {"endpoints 422": 2}
