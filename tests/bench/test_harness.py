"""The bench's reading of an operator's /metrics page."""

from __future__ import annotations

import pytest
from bench.harness import metric_value

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
