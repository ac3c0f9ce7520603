"""Repair tracking: drift, fights, failed writes and conflict episodes, with time passed in."""

from __future__ import annotations

from default_policy_operator.controller.repairs import (
    CONFLICT_FIRST_RETRY,
    CONFLICT_MAX_RETRY,
    FIGHT_THRESHOLD,
    MAX_BACKOFF,
    THROTTLED_RETRY,
    ConflictTracker,
    RepairTracker,
)
from default_policy_operator.core.objects import NETWORK_POLICY, ObjectKey
from default_policy_operator.core.plan import Action, Verb

KEY = ObjectKey(NETWORK_POLICY, "team-a", "dpo-deny-all")
OTHER = ObjectKey(NETWORK_POLICY, "team-b", "dpo-deny-all")


def repair(key: ObjectKey = KEY) -> Action:
    return Action(Verb.UPDATE, key, {"spec": {}}, "1", profile="base")


def test_an_action_without_drift_is_admitted_as_is() -> None:
    admission = RepairTracker().admit([repair()], "team-a", now=0.0)
    assert admission.admitted == [(repair(), None)]
    assert admission.backed_off == []


def test_drift_travels_with_its_repair_once() -> None:
    tracker = RepairTracker()
    tracker.observed(KEY, "deleted", 5.0)
    [(_action, drift)] = tracker.admit([repair()], "team-a", now=5.1).admitted
    assert drift is not None
    assert (drift.kind, drift.detected) == ("deleted", 5.0)
    [(_, again)] = tracker.admit([repair()], "team-a", now=5.2).admitted
    assert again is None


def test_a_rival_controller_is_backed_off_exponentially() -> None:
    tracker = RepairTracker()
    now = 0.0
    for _ in range(FIGHT_THRESHOLD):
        tracker.observed(KEY, "modified", now)
        assert tracker.admit([repair()], "team-a", now).admitted
        now += 1.0
    tracker.observed(KEY, "modified", now)
    admission = tracker.admit([repair()], "team-a", now)
    assert admission.admitted == []
    assert admission.backed_off == [(repair(), 2.0)]
    assert tracker.contested(now, lambda k: "base", "base") == [str(KEY)]
    assert tracker.admit([repair()], "team-a", now + 1.0).admitted == []  # still blocked
    [(_, drift)] = tracker.admit([repair()], "team-a", now + 2.5).admitted  # backoff over
    assert drift is not None


def test_drift_that_needs_no_write_is_forgotten() -> None:
    tracker = RepairTracker()
    tracker.observed(KEY, "modified", 0.0)
    tracker.admit([], "team-a", now=1.0)  # reverted by someone: nothing to write
    assert tracker.size() == 0


def test_failed_writes_back_off_and_a_success_resets() -> None:
    tracker = RepairTracker()
    assert [tracker.failed(KEY) for _ in range(3)] == [2.0, 4.0, 8.0]
    tracker.succeeded(KEY)
    assert tracker.failed(KEY) == 2.0


def test_a_write_refused_for_load_is_retried_soon_however_often_it_was_refused() -> None:
    tracker = RepairTracker()
    delays = [tracker.failed(KEY, throttled=True) for _ in range(10)]
    assert delays[:2] == [2.0, THROTTLED_RETRY]
    assert max(delays) == THROTTLED_RETRY
    # The same object failing for its own reasons (403, 422, a webhook's 500) backs off far.
    assert tracker.failed(KEY) == MAX_BACKOFF


def test_state_of_a_deleted_namespace_is_dropped() -> None:
    tracker = RepairTracker()
    tracker.observed(KEY, "deleted", 0.0)
    tracker.observed(OTHER, "deleted", 0.0)
    tracker.failed(KEY)
    tracker.forget_scope("team-a")
    assert tracker.size() == 1  # team-b's drift stays


def test_conflict_is_new_once_per_episode_and_retried_with_growing_delays() -> None:
    conflicts = ConflictTracker()
    new, delay = conflicts.detected(KEY, now=0.0)
    assert new
    assert delay == CONFLICT_FIRST_RETRY
    assert conflicts.blocked(0.5) == {KEY}
    assert conflicts.blocked(CONFLICT_FIRST_RETRY + 0.1) == set()  # retry due
    delays = [conflicts.detected(KEY, now=10.0)[1] for _ in range(10)]
    assert delays[:3] == [2.0, 4.0, 8.0]
    assert max(delays) == CONFLICT_MAX_RETRY
    assert not any(conflicts.detected(KEY, now=20.0)[0] for _ in range(3))  # same episode
    assert conflicts.held() == {KEY}


def test_conflict_episode_ends_when_resolved_and_a_new_one_is_reported() -> None:
    conflicts = ConflictTracker()
    conflicts.detected(KEY, now=0.0)
    assert conflicts.resolved(KEY)
    assert not conflicts.resolved(KEY)
    assert conflicts.detected(KEY, now=1.0) == (True, CONFLICT_FIRST_RETRY)


def test_conflicts_of_a_deleted_namespace_are_dropped() -> None:
    conflicts = ConflictTracker()
    conflicts.detected(KEY, 0.0)
    conflicts.detected(OTHER, 0.0)
    conflicts.forget_scope("team-a")
    assert conflicts.held() == {OTHER}
