"""Profile conditions: Ready and Degraded, their reasons, priorities and stability."""

from __future__ import annotations

from typing import Any

import pytest

from default_policy_operator.core.conditions import (
    MAX_EXAMPLES,
    MAX_MESSAGE,
    SELECTS_ALL,
    Check,
    Observations,
    checks,
    condition,
    examples,
)

T0 = "2026-01-01T00:00:00Z"
T1 = "2026-01-01T00:05:00Z"


def observe(**overrides: Any) -> Observations:
    values: dict[str, Any] = {
        "spec_error": None,
        "errors": {},
        "conflicts": [],
        "contested": [],
        "pending": 0,
        "audit_findings": [],
        "audit": False,
    }
    values.update(overrides)
    return Observations(**values)


def by_type(obs: Observations) -> dict[str, Check]:
    found = checks(obs)
    assert [c.type for c in found] == ["Ready", "Degraded", SELECTS_ALL]
    return {c.type: c for c in found}


def summary(obs: Observations) -> tuple[bool, str, bool, str]:
    c = by_type(obs)
    return c["Ready"].status, c["Ready"].reason, c["Degraded"].status, c["Degraded"].reason


# -- reasons ----------------------------------------------------------------------------------


def test_all_good() -> None:
    c = by_type(observe())
    assert summary(observe()) == (True, "Reconciled", False, "AsExpected")
    assert c["Degraded"].message == "no problems"


def test_an_empty_selector_is_said_in_an_informational_condition() -> None:
    """Governing every namespace is legitimate but must be visible: True with its reason while
    the selector is empty, whatever else holds, and no effect on Ready or Degraded."""
    for overrides in ({}, {"spec_error": "bad"}, {"audit": True}, {"pending": 2}):
        wide = by_type(observe(selects_all=True, **overrides))
        narrow = by_type(observe(selects_all=False, **overrides))
        assert (wide[SELECTS_ALL].status, wide[SELECTS_ALL].reason) == (
            True,
            "EmptyNamespaceSelector",
        )
        assert "every namespace" in wide[SELECTS_ALL].message
        assert (narrow[SELECTS_ALL].status, narrow[SELECTS_ALL].reason) == (
            False,
            "NamespaceSelector",
        )
        assert summary(observe(selects_all=True, **overrides)) == summary(
            observe(selects_all=False, **overrides)
        )


def test_pending_changes() -> None:
    c = by_type(observe(pending=3))
    assert summary(observe(pending=3)) == (False, "Reconciling", False, "AsExpected")
    assert c["Ready"].message == "3 change(s) being applied"


def test_invalid_spec() -> None:
    obs = observe(spec_error="invalid spec: spec.mode must be one of Enforce, Audit")
    c = by_type(obs)
    assert summary(obs) == (False, "InvalidSpec", True, "InvalidSpec")
    assert c["Degraded"].message.startswith("invalid spec: spec.mode must be one of")
    assert "the last valid version stays in force" in c["Degraded"].message
    assert c["Ready"].message == c["Degraded"].message


def test_render_error() -> None:
    obs = observe(errors={"policy owner": "undefined variable: 'owner' is undefined"})
    c = by_type(obs)
    assert summary(obs) == (False, "RenderError", True, "RenderError")
    assert "policy owner: undefined variable: 'owner' is undefined" in c["Degraded"].message
    assert "existing objects stay" in c["Degraded"].message


def test_apply_failure() -> None:
    obs = observe(errors={"NetworkPolicy a/dpo-deny-all": "403 Forbidden"})
    assert summary(obs) == (False, "ApplyFailed", True, "ApplyFailed")
    assert "NetworkPolicy a/dpo-deny-all: 403 Forbidden" in by_type(obs)["Degraded"].message


def test_render_errors_outrank_apply_failures() -> None:
    obs = observe(errors={"NetworkPolicy a/dpo-x": "403", "policy x": "syntax error"})
    assert summary(obs)[3] == "RenderError"


def test_conflict_degrades_but_stays_ready() -> None:
    obs = observe(conflicts=["NetworkPolicy a/dpo-deny-all"])
    c = by_type(obs)
    assert summary(obs) == (True, "Reconciled", True, "Conflict")
    assert c["Degraded"].message.startswith("1 managed name(s) held by objects")
    assert "NetworkPolicy a/dpo-deny-all" in c["Degraded"].message


def test_contested() -> None:
    obs = observe(contested=["NetworkPolicy a/dpo-deny-all", "NetworkPolicy b/dpo-deny-all"])
    c = by_type(obs)
    assert summary(obs) == (True, "Reconciled", True, "Contested")
    assert "reverting 2 object(s)" in c["Degraded"].message


def test_audit() -> None:
    assert summary(observe(audit=True)) == (True, "Audited", False, "AsExpected")
    assert by_type(observe(audit=True))["Ready"].message.endswith("all in place")
    obs = observe(audit=True, audit_findings=["create NetworkPolicy a/dpo-deny-all"], pending=2)
    c = by_type(obs)
    assert summary(obs) == (True, "Audited", False, "AsExpected")  # Audit never pends
    assert "1 object(s) missing or drifted: create NetworkPolicy a/dpo-deny-all" in (
        c["Ready"].message
    )


@pytest.mark.parametrize(
    ("overrides", "degraded"),
    [
        ({"spec_error": "bad", "errors": {"policy x": "e"}}, "InvalidSpec"),
        ({"spec_error": "bad", "conflicts": ["c"], "contested": ["d"]}, "InvalidSpec"),
        ({"errors": {"policy x": "e"}, "conflicts": ["c"]}, "RenderError"),
        ({"errors": {"x": "e"}, "conflicts": ["c"]}, "ApplyFailed"),
        ({"conflicts": ["c"], "contested": ["d"]}, "Conflict"),
        ({"contested": ["d"], "pending": 1}, "Contested"),
        ({"spec_error": "bad", "audit": True}, "InvalidSpec"),
    ],
)
def test_degraded_priorities(overrides: dict[str, Any], degraded: str) -> None:
    assert by_type(observe(**overrides))["Degraded"].reason == degraded


@pytest.mark.parametrize(
    ("overrides", "ready"),
    [
        ({"spec_error": "bad", "audit": True, "pending": 1}, "InvalidSpec"),
        ({"errors": {"policy x": "e"}, "audit": True}, "RenderError"),
        ({"audit": True, "pending": 4}, "Audited"),
        ({"pending": 4, "conflicts": ["c"]}, "Reconciling"),
    ],
)
def test_ready_priorities(overrides: dict[str, Any], ready: str) -> None:
    assert by_type(observe(**overrides))["Ready"].reason == ready


# -- bounded, stable messages -----------------------------------------------------------------


def test_examples() -> None:
    assert examples([]) == ""
    assert examples(["b", "a"]) == "a, b"
    items = [f"n{i:02}" for i in range(12)]
    assert examples(items) == "n00, n01, n02, n03, n04 and 7 more"
    assert examples(items[: MAX_EXAMPLES + 1]).endswith(" and 1 more")
    assert " more" not in examples(items[:MAX_EXAMPLES])


def test_messages_do_not_depend_on_input_order() -> None:
    names = [f"NetworkPolicy ns-{i}/dpo-deny-all" for i in range(20)]
    forward = checks(observe(conflicts=names, audit=True, audit_findings=names))
    backward = checks(observe(conflicts=names[::-1], audit=True, audit_findings=names[::-1]))
    assert forward == backward
    errors = {f"policy p{i}": "boom" for i in range(20)}
    assert checks(observe(errors=errors)) == checks(observe(errors=dict(reversed(errors.items()))))


def test_messages_are_bounded() -> None:
    huge = [f"NetworkPolicy namespace-{i:05}/dpo-{'x' * 200}" for i in range(10_000)]
    obs = observe(
        errors={f"policy p{i}": "e" * 10_000 for i in range(100)},
        conflicts=huge,
        contested=huge,
        audit_findings=huge,
    )
    for check in checks(obs):
        cond = condition(check, 1, [], T0)
        assert len(cond["message"]) <= MAX_MESSAGE
        assert cond["message"] == check.message[:MAX_MESSAGE]
    conflict = checks(observe(conflicts=huge))[1]
    assert conflict.message.endswith(f"and {len(huge) - MAX_EXAMPLES} more")
    assert conflict.message.startswith("10000 managed name(s)")
    assert len(conflict.message) < 5_000  # bounded by construction, before truncation
    audited = checks(observe(audit=True, audit_findings=huge))[0]
    assert audited.message.endswith(f"and {len(huge) - MAX_EXAMPLES} more")


# -- condition --------------------------------------------------------------------------------


def test_condition_shape() -> None:
    cond = condition(Check("Ready", True, "Reconciled", "fine"), 4, [], T0)
    assert cond == {
        "type": "Ready",
        "status": "True",
        "reason": "Reconciled",
        "message": "fine",
        "observedGeneration": 4,
        "lastTransitionTime": T0,
    }
    assert condition(Check("Degraded", False, "AsExpected", "ok"), 4, [], T0)["status"] == "False"


def test_last_transition_time_is_kept_while_the_status_holds() -> None:
    first = condition(Check("Ready", True, "Reconciled", "fine"), 1, [], T0)
    # same status, even with a new reason, message and generation: the time stays
    second = condition(Check("Ready", True, "Audited", "other"), 2, [first], T1)
    assert second["lastTransitionTime"] == T0
    assert (second["reason"], second["message"], second["observedGeneration"]) == (
        "Audited",
        "other",
        2,
    )
    # an unchanged cluster gives an identical condition: nothing to write
    assert condition(Check("Ready", True, "Reconciled", "fine"), 1, [first], T1) == first


def test_last_transition_time_moves_with_the_status() -> None:
    first = condition(Check("Ready", True, "Reconciled", "fine"), 1, [], T0)
    flipped = condition(Check("Ready", False, "Reconciling", "1 change(s)"), 1, [first], T1)
    assert flipped["lastTransitionTime"] == T1


def test_only_the_same_type_counts_as_previous() -> None:
    degraded = {"type": "Degraded", "status": "True", "lastTransitionTime": T0}
    ready = condition(Check("Ready", True, "Reconciled", "fine"), 1, [degraded], T1)
    assert ready["lastTransitionTime"] == T1


def test_previous_condition_without_a_time_gets_now() -> None:
    old = {"type": "Ready", "status": "True"}
    assert (
        condition(Check("Ready", True, "Reconciled", "x"), 1, [old], T1)["lastTransitionTime"] == T1
    )


def test_full_status_round_trip_is_stable() -> None:
    obs = observe(conflicts=["NetworkPolicy a/dpo-deny-all"])
    first = [condition(c, 3, [], T0) for c in checks(obs)]
    again = [condition(c, 3, first, T1) for c in checks(obs)]
    assert again == first
