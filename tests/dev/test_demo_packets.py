"""The demo's drift window: what a run of probes says about how long a deleted deny-all let
traffic through (pure functions; the demo's e2e test runs them on real packets)."""

from __future__ import annotations

from dpo_dev.demo_packets import _settled, _window, describe


def samples(verdicts: str, every: float = 0.02) -> list[tuple[float, bool]]:
    """``"..oo."``: one probe every ``every`` seconds, ``o`` open and ``.`` blocked."""
    return [(i * every, mark == "o") for i, mark in enumerate(verdicts)]


def test_window_runs_from_the_first_open_probe_to_the_first_blocked_one_after_the_last() -> None:
    window = _window(samples("..oo.o.."), restored=0.03)
    assert (window.first_open_s, round(window.open_s, 3)) == (0.04, 0.08)
    assert (window.probes, window.open_probes, round(window.every_ms)) == (8, 3, 20)


def test_no_open_probe_is_a_zero_window_and_says_the_repair_came_first() -> None:
    window = _window(samples("....."), restored=0.01)
    assert (window.first_open_s, window.open_s) == (None, 0.0)
    assert "was OPEN for 0 ms" in describe(window)
    assert "before it had applied the deletion" in describe(window)


def test_a_flow_still_open_at_the_end_counts_until_the_last_probe() -> None:
    window = _window(samples("..ooo"), restored=None)
    assert round(window.open_s, 3) == 0.04
    assert "back in the API never" in describe(window)
    assert "the repair never came" in describe(window)


def test_settled_once_blocked_for_a_second_after_both_the_repair_and_the_last_opening() -> None:
    assert not _settled(samples("oo" + "." * 49), restored=0.0)  # 1 s after the repair only
    assert _settled(samples("oo" + "." * 51), restored=0.0)
    assert not _settled(samples("." * 60), restored=0.5)
