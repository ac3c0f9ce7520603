"""The bench's reading of an operator's /metrics page."""

from __future__ import annotations

import asyncio

import pytest
from bench.harness import (
    RESYNC_COUNT,
    RESYNC_FINISHED,
    RESYNC_SECONDS,
    metric_value,
    resync_in_window,
)

PAGE = """\
# HELP dpo_reconcile_duration_seconds Time to plan and write one scope.
# TYPE dpo_reconcile_duration_seconds histogram
dpo_reconcile_duration_seconds_count{trigger="bulk"} 7.0
dpo_reconcile_duration_seconds_sum{trigger="bulk"} 0.5
# HELP dpo_api_writes_total Writes by verb and resource.
# TYPE dpo_api_writes counter
dpo_api_writes_total{resource="networkpolicies",verb="create"} 3.0
dpo_api_writes_total{resource="networkpolicies",verb="update"} 2.0
dpo_api_writes_total{resource="events",verb="create"} 1.0
"""


def test_a_sample_is_summed_over_the_labels_not_named() -> None:
    assert metric_value(PAGE, "dpo_api_writes_total", resource="networkpolicies") == 5.0
    assert metric_value(PAGE, "dpo_reconcile_duration_seconds_count", trigger="bulk") == 7.0


def test_a_series_not_observed_yet_reads_zero() -> None:
    assert metric_value(PAGE, "dpo_reconcile_duration_seconds_count", trigger="resync") == 0.0


def test_a_family_the_page_does_not_have_is_an_error_not_a_zero() -> None:
    with pytest.raises(KeyError, match="dpo_reconcile_seconds_count"):
        metric_value(PAGE, "dpo_reconcile_seconds_count", trigger="resync")
    with pytest.raises(KeyError):
        metric_value(PAGE, "dpo_api_write_total")


class FakeOperator:
    """A /metrics page whose resync figures a test moves while the bench waits."""

    def __init__(self, finished: float, count: float = 0.0, seconds: float = 0.0) -> None:
        self.values = {RESYNC_FINISHED: finished, RESYNC_COUNT: count, RESYNC_SECONDS: seconds}

    def metric(self, name: str, **labels: str) -> float:
        return self.values[name]


async def waiting(operator: FakeOperator, later: dict[str, float], grace: float = 1.0) -> bool:
    """``resync_in_window`` for a window that ended at 1010, with ``later`` happening while it
    polls (after its first look)."""
    asking = asyncio.ensure_future(
        resync_in_window(operator, 1000.0, window_end=1010.0, grace=grace, poll=0.01)
    )
    await asyncio.sleep(0.05)
    operator.values.update(later)
    return await asking


async def test_a_resync_finished_inside_the_window_is_seen() -> None:
    operator = FakeOperator(finished=1005.0)
    assert await resync_in_window(operator, 1000.0, window_end=1010.0, grace=1, poll=0.01)


async def test_a_resync_that_began_inside_the_window_and_ended_after_is_seen() -> None:
    operator = FakeOperator(finished=1000.0, count=2, seconds=3.0)
    # finished at 1014 after 6 s: began at 1008, inside the window
    assert await waiting(operator, {RESYNC_FINISHED: 1014.0, RESYNC_COUNT: 3, RESYNC_SECONDS: 9.0})


async def test_a_resync_that_began_after_the_window_or_none_is_not_counted() -> None:
    operator = FakeOperator(finished=1000.0, count=2, seconds=3.0)
    # finished at 1020 after 6 s: began at 1014, after the window
    later = {RESYNC_FINISHED: 1020.0, RESYNC_COUNT: 3, RESYNC_SECONDS: 9.0}
    assert not await waiting(operator, later)
    assert not await waiting(FakeOperator(finished=1000.0), {}, grace=0.2)


async def test_two_resyncs_finishing_after_the_window_count_as_one_inside() -> None:
    operator = FakeOperator(finished=1000.0, count=2, seconds=3.0)
    assert await waiting(operator, {RESYNC_FINISHED: 1040.0, RESYNC_COUNT: 4, RESYNC_SECONDS: 9.0})
