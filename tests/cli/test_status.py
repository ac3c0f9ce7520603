"""``dpo status``'s columns, from profile bodies as the apiserver returns them (no cluster)."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from default_policy_operator.cli.status import COLUMNS, PENDING, STALE, render, row, table


def profile(name: str = "baseline", generation: int = 3, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "generation": generation},
        "spec": {"flavor": "CalicoGlobalNetworkPolicy", "mode": "Audit"},
        "status": status,
    }


def conditions(ready: str, ready_reason: str, degraded: str, degraded_reason: str) -> list[Any]:
    return [
        {"type": "Ready", "status": ready, "reason": ready_reason},
        {"type": "Degraded", "status": degraded, "reason": degraded_reason},
    ]


def test_counts_and_verdict_come_from_the_status() -> None:
    body = profile(
        observedGeneration=3, governedNamespaces=12, shadowedNamespaces=2, driftedObjects=5,
        conflicts=1, conditions=conditions("True", "Audited", "False", "AsExpected"),
    )  # fmt: skip
    assert row(body) == {
        "name": "baseline", "flavor": "CalicoGlobalNetworkPolicy", "mode": "Audit",
        "governed": 12, "shadowed": 2, "drifted": 5, "conflicts": 1,
        "ready": "True", "reason": "Audited",
    }  # fmt: skip


def test_a_degraded_profile_shows_why() -> None:
    body = profile(
        observedGeneration=3, conditions=conditions("True", "Reconciled", "True", "Conflict")
    )
    assert (row(body)["ready"], row(body)["reason"]) == ("True", "Conflict")


def test_no_status_yet_is_pending_not_ready() -> None:
    body = {"metadata": {"name": "new", "generation": 1}, "spec": {}}
    assert row(body) == {
        "name": "new", "flavor": "NetworkPolicy", "mode": "Enforce", "governed": 0,
        "shadowed": 0, "drifted": 0, "conflicts": 0, "ready": "Unknown", "reason": PENDING,
    }  # fmt: skip


def test_a_status_of_an_older_spec_is_stale() -> None:
    body = profile(generation=4, observedGeneration=3,
                   conditions=conditions("True", "Reconciled", "False", "AsExpected"))  # fmt: skip
    assert (row(body)["ready"], row(body)["reason"]) == ("Unknown", STALE)


def test_table_has_kubectl_headers_and_aligned_columns() -> None:
    rows = [row(profile("a", observedGeneration=3, governedNamespaces=1234)), row(profile("bb"))]
    lines = table(rows).splitlines()
    assert lines[0].split() == [c.upper() for c in COLUMNS]
    assert [line.split()[0] for line in lines[1:]] == ["a", "bb"]
    starts = {line.index(cell) for line, cell in zip(lines, ["GOVERNED", "1234", "0"], strict=True)}
    assert len(starts) == 1


@given(st.lists(st.text(alphabet="abcdefghij-", min_size=1, max_size=40), max_size=5))
def test_every_output_format_has_one_entry_per_profile(names: list[str]) -> None:
    rows = [row(profile(name)) for name in names]
    assert len(table(rows).splitlines()) == 1 + len(names)
    assert render(rows, "json").count('"name"') == len(names)
    assert render(rows, "yaml").count("name:") == len(names)
