"""The bench's selector-growth figures come from the operator's real plan, not a model of it."""

from __future__ import annotations

from bench.selectors import FLAVORS, left_out_counts, selector_growth


def test_each_namespace_left_out_adds_its_name_to_every_object_and_nothing_else() -> None:
    rows = selector_growth(200, [0, 50])
    assert [(r["flavor"], r["left_out"], r["objects"]) for r in rows] == [
        (flavor, k, 3) for flavor in FLAVORS for k in (0, 50)
    ]
    for flavor in FLAVORS:
        none, fifty = (r for r in rows if r["flavor"] == flavor)
        # a quoted name and a separator each: `"app-00000", ` in Calico, `"app-00000",` in JSON
        grown = fifty["selector_chars"] - none["selector_chars"]
        assert 50 * len('"app-00000",') <= grown <= 50 * len('"app-00000", ')
        assert 3 * grown <= fifty["bytes_per_plan"] - none["bytes_per_plan"]


def test_left_out_counts_stay_below_n_and_include_half() -> None:
    assert left_out_counts(5000) == [0, 10, 100, 1000, 2500]
    assert left_out_counts(50) == [0, 10, 25]
