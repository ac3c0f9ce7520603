"""The Kyverno peer's policies and its side-by-side table (the run itself: `make bench --peer`)."""

from __future__ import annotations

import re
from typing import Any

from bench.peer_kyverno import GENERATED, cluster_policy, generating_policy
from bench.report import peer_table


def test_the_cluster_policy_generates_the_three_policies_in_selected_namespaces() -> None:
    policy = cluster_policy({"bench": "yes"})
    rules = policy["spec"]["rules"]
    assert [r["name"] for r in rules] == list(GENERATED)
    for rule in rules:
        (match,) = rule["match"]["any"]
        assert match["resources"] == {"kinds": ["Namespace"],
                                      "selector": {"matchLabels": {"bench": "yes"}}}  # fmt: skip
        generate = rule["generate"]
        assert generate["synchronize"] is generate["generateExisting"] is True
        assert generate["data"]["spec"] == GENERATED[rule["name"]]


def test_the_generating_policy_selects_by_label_and_applies_all_three() -> None:
    spec = generating_policy({"bench": "yes"})["spec"]
    (condition,) = spec["matchConditions"]
    assert condition["expression"] == 'object.metadata.?labels[?"bench"].orValue(\'\') == "yes"'
    (generate,) = spec["generate"]
    assert generate["expression"].startswith("generator.apply(object.metadata.name, [")
    for name in GENERATED:
        assert f'"name": "{name}"' in generate["expression"]
    assert spec["evaluation"]["synchronize"] == {"enabled": True}


def _writes(**by_resource: int) -> dict[str, Any]:
    return {"by_resource": by_resource}


def _run(seconds: float, p50: float, peak: float) -> dict[str, Any]:
    return {"seconds": seconds, "objects": 300,
            "writes_convergence": _writes(networkpolicies=300, leases=50, updaterequests=300),
            "latency_create": {"p50": p50, "p99": 2 * p50},
            "drift": {"p50": p50, "p99": p50, "count": 10,
                      "writes": _writes(networkpolicies=10, leases=7)},
            "peak_mb": {"admission": peak / 2, "background": peak / 2}}  # fmt: skip


def test_the_table_puts_kyverno_beside_the_operator_as_ratios_leases_apart() -> None:
    ours = {
        "convergence": {"seconds": 2.0, "objects": 300},
        "writes_first_convergence": _writes(networkpolicies=300, leases=1),
        "latency_create": {"p50": 0.01, "p99": 0.02},
        "drift": {"p50": 0.01, "p99": 0.01, "count": 10,
                  "writes": _writes(networkpolicies=10, events=1)},
        "memory": {"peak_mb": 100.0},
        "peer": {"kyverno": {"rate": 20, "duration": 15,
                             "ClusterPolicy": _run(40.0, 0.5, 400.0),
                             "GeneratingPolicy": _run(20.0, 0.05, 300.0)}},
    }  # fmt: skip
    cells = [re.split(r"\s{2,}", line.strip()) for line in peer_table(ours).splitlines()]
    rows = {row[0]: row[1:] for row in cells}
    assert rows["figure"] == ["operator", "Kyverno ClusterPolicy", "Kyverno GeneratingPolicy"]
    assert rows["converge 3N objects (s)"] == ["2.0", "40.0 (20.0 x)", "20.0 (10.0 x)"]
    assert rows["writes per object, converging (no leases)"] == ["1.00", "2.00 (2.0 x)",
                                                                 "2.00 (2.0 x)"]  # fmt: skip
    assert rows["writes per repair (every resource but leases)"] == ["1.10", "1.00 (0.9 x)",
                                                                     "1.00 (0.9 x)"]  # fmt: skip
    assert rows["new namespace -> policies p50 (ms)"] == ["10", "500 (50.0 x)", "50 (5.0 x)"]
    assert rows["peak RSS (MB, all processes)"] == ["100", "400 (4.0 x)", "300 (3.0 x)"]


def test_the_repair_rows_compare_deletions_with_deletions() -> None:
    """Kyverno's drift phase only deletes; the operator's also edits, which costs a read-back
    and a replace: its deletions alone go beside Kyverno's."""
    ours = {
        "convergence": {"seconds": 2.0, "objects": 300},
        "writes_first_convergence": _writes(networkpolicies=300),
        "latency_create": {"p50": 0.01, "p99": 0.02},
        "drift": {"p50": 0.02, "p99": 0.08, "count": 10,
                  "deleted": {"p50": 0.01, "p99": 0.04, "count": 5},
                  "edited": {"p50": 0.03, "p99": 0.08, "count": 5},
                  "writes": _writes(networkpolicies=10)},
        "memory": {"peak_mb": 100.0},
        "peer": {"kyverno": {"rate": 20, "duration": 15,
                             "GeneratingPolicy": _run(20.0, 0.02, 300.0)}},
    }  # fmt: skip
    cells = [re.split(r"\s{2,}", line.strip()) for line in peer_table(ours).splitlines()]
    rows = {row[0]: row[1:] for row in cells}
    assert rows["drift repair (a deleted policy) p50 (ms)"] == ["10", "20 (2.0 x)"]
    assert rows["drift repair p99 (ms)"] == ["40", "20 (0.5 x)"]
