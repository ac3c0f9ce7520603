"""Label selectors: parsing, Kubernetes matching semantics, and the Calico translation."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from default_policy_operator.core.selector import (
    LabelSelector,
    Requirement,
    SelectorError,
    parse_selector,
    to_calico,
)
from tests.calico_selector import CalicoSelectorError, evaluate


def sel(**raw: Any) -> LabelSelector:
    return parse_selector(raw)


def expr(key: str, operator: str, *values: str) -> dict[str, Any]:
    out: dict[str, Any] = {"key": key, "operator": operator}
    if values:
        out["values"] = list(values)
    return out


# -- matching ---------------------------------------------------------------------------------


def test_match_labels_need_every_pair() -> None:
    s = sel(matchLabels={"env": "prod", "team": "a"})
    assert s.matches({"env": "prod", "team": "a", "other": "x"})
    assert not s.matches({"env": "prod"})
    assert not s.matches({"env": "prod", "team": "b"})
    assert not s.matches({})


def test_match_labels_with_empty_value_needs_the_key() -> None:
    s = sel(matchLabels={"flag": ""})
    assert s.matches({"flag": ""})
    assert not s.matches({})
    assert not s.matches({"flag": "x"})


def test_in() -> None:
    s = sel(matchExpressions=[expr("env", "In", "prod", "staging")])
    assert s.matches({"env": "prod"})
    assert s.matches({"env": "staging"})
    assert not s.matches({"env": "dev"})
    assert not s.matches({})


def test_not_in_matches_a_missing_key() -> None:
    s = sel(matchExpressions=[expr("env", "NotIn", "prod")])
    assert s.matches({})
    assert s.matches({"other": "prod"})
    assert s.matches({"env": "dev"})
    assert not s.matches({"env": "prod"})


def test_exists_and_does_not_exist() -> None:
    exists = sel(matchExpressions=[expr("team", "Exists")])
    missing = sel(matchExpressions=[expr("team", "DoesNotExist")])
    for labels, present in (({"team": ""}, True), ({"team": "a"}, True), ({"x": "team"}, False)):
        assert exists.matches(labels) is present
        assert missing.matches(labels) is not present


def test_terms_are_anded() -> None:
    s = sel(
        matchLabels={"env": "prod"},
        matchExpressions=[expr("team", "Exists"), expr("tier", "NotIn", "db")],
    )
    assert s.matches({"env": "prod", "team": "a"})
    assert not s.matches({"env": "prod", "team": "a", "tier": "db"})
    assert not s.matches({"env": "prod"})
    assert not s.matches({"team": "a"})


@pytest.mark.parametrize("raw", [None, {}, {"matchLabels": {}, "matchExpressions": []}])
def test_empty_selector_matches_everything(raw: Any) -> None:
    s = parse_selector(raw)
    assert s.empty
    assert s == LabelSelector()
    assert s.matches({})
    assert s.matches({"anything": "at-all"})
    assert to_calico(s) == "all()"
    assert s.as_k8s() == {}


def test_parsed_form() -> None:
    s = sel(matchLabels={"b": "2", "a": "1"}, matchExpressions=[expr("k", "In", "x", "y")])
    assert s.match_labels == (("a", "1"), ("b", "2"))
    assert s.match_expressions == (Requirement("k", "In", ("x", "y")),)
    assert not s.empty
    assert s.as_k8s() == {
        "matchLabels": {"a": "1", "b": "2"},
        "matchExpressions": [{"key": "k", "operator": "In", "values": ["x", "y"]}],
    }


# -- parse errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("env=prod", "must be an object"),
        (["env"], "must be an object"),
        ({"matchLabel": {"a": "b"}}, "unknown selector field(s): matchLabel"),
        ({"matchLabels": {}, "zzz": 1, "aaa": 2}, "unknown selector field(s): aaa, zzz"),
        ({"matchLabels": {"a": 1}}, "matchLabels must map strings to strings"),
        ({"matchLabels": {"a": True}}, "matchLabels must map strings to strings"),
        ({"matchLabels": {"a": None}}, "matchLabels must map strings to strings"),
        ({"matchLabels": ["a"]}, "matchLabels must map strings to strings"),
        ({"matchExpressions": ["a"]}, "matchExpressions[0] must be an object"),
        ({"matchExpressions": [{"operator": "Exists"}]}, "matchExpressions[0].key is required"),
        ({"matchExpressions": [expr("a", "Equals", "b")]}, "operator must be one of"),
        ({"matchExpressions": [expr("a", "in", "b")]}, "operator must be one of"),
        ({"matchExpressions": [{"key": "a"}]}, "operator must be one of"),
        ({"matchExpressions": [expr("a", "In")]}, "In needs at least one value"),
        ({"matchExpressions": [expr("a", "NotIn")]}, "NotIn needs at least one value"),
        ({"matchExpressions": [expr("a", "Exists", "x")]}, "Exists takes no values"),
        ({"matchExpressions": [expr("a", "DoesNotExist", "x")]}, "DoesNotExist takes no values"),
        (
            {"matchExpressions": [{"key": "a", "operator": "In", "values": [1]}]},
            "values must be a list of strings",
        ),
        (
            {"matchExpressions": [{"key": "a", "operator": "In", "values": "b"}]},
            "values must be a list of strings",
        ),
        (
            {"matchExpressions": [expr("a", "Exists"), expr("b", "Bogus")]},
            "matchExpressions[1].operator",
        ),
    ],
)
def test_parse_errors(raw: Any, message: str) -> None:
    with pytest.raises(SelectorError) as info:
        parse_selector(raw)
    assert message in str(info.value)


@pytest.mark.parametrize(
    "key",
    [
        "x) || all() || has(y",  # would otherwise be spliced into a Calico selector unquoted
        "with space",
        "a/b/c",
        "/a",
        "a/",
        "UPPER.example.com/a",
        "-a",
        "a-",
        "a" * 64,
        "é",
    ],
)
def test_invalid_label_keys_are_rejected(key: str) -> None:
    with pytest.raises(SelectorError, match="not a valid label key"):
        parse_selector({"matchLabels": {key: "v"}})
    with pytest.raises(SelectorError, match="not a valid label key"):
        parse_selector({"matchExpressions": [expr(key, "Exists")]})


@pytest.mark.parametrize("value", ['a"b', "a\\b", "é", "with space", "-a", "a" * 64, "a\n"])
def test_invalid_label_values_are_rejected(value: str) -> None:
    """Kubernetes rejects them too; quoted into a Calico selector they would not survive."""
    with pytest.raises(SelectorError, match="not a valid label value"):
        parse_selector({"matchLabels": {"k": value}})
    with pytest.raises(SelectorError, match="not a valid label value"):
        parse_selector({"matchExpressions": [expr("k", "In", "ok", value)]})


@pytest.mark.parametrize(
    "key", ["a", "A", "k8s-app", "a.b_c-D", "example.com/app", "a.b.example/Name", "a" * 63]
)
def test_valid_label_keys_are_accepted(key: str) -> None:
    assert parse_selector({"matchLabels": {key: ""}}).matches({key: ""})


# -- Calico translation -----------------------------------------------------------------------


def test_to_calico_spelling() -> None:
    s = sel(
        matchLabels={"env": "prod"},
        matchExpressions=[
            expr("tier", "In", "web", "api"),
            expr("zone", "NotIn", "b"),
            expr("team", "Exists"),
            expr("legacy", "DoesNotExist"),
        ],
    )
    assert to_calico(s) == (
        'env == "prod" && tier in {"api", "web"} && zone not in {"b"} && has(team) && !has(legacy)'
    )


def test_calico_evaluator_semantics() -> None:
    """The test's own evaluator, on Calico's documented cases."""
    assert evaluate("", {})
    assert evaluate("all()", {"a": "b"})
    assert evaluate('a == "x"', {"a": "x"})
    assert not evaluate('a == "x"', {})
    assert evaluate('a != "x"', {})
    assert not evaluate('a != "x"', {"a": "x"})
    assert evaluate('a in {"x", "y"}', {"a": "y"})
    assert not evaluate('a in {"x"}', {})
    assert evaluate('a not in {"x"}', {})
    assert evaluate('a notin {"x"}', {"a": "z"})
    assert evaluate("has(a) && !has(b)", {"a": ""})
    assert evaluate('(a == "1" || b == "2") && !(c == "3")', {"b": "2"})
    assert not evaluate('(a == "1" || b == "2") && !(c == "3")', {"b": "2", "c": "3"})
    assert evaluate("!!has(a)", {"a": "1"})
    assert evaluate("in == 'x'", {"in": "x"})  # operators are only words after a label


@pytest.mark.parametrize(
    "text",
    ['a = "x"', "a == x", 'a == "x', '(a == "x"', "a", 'a in "x"', 'a == "x" b', "has(a", "&&"],
)
def test_calico_evaluator_rejects_what_calico_rejects(text: str) -> None:
    with pytest.raises(CalicoSelectorError):
        evaluate(text, {})


# -- properties -------------------------------------------------------------------------------

KEY_POOL = ["app", "env", "team", "example.com/tier", "k8s-app", "in", "notin", "has", "all"]
VALUE_POOL = ["", "a", "b", "prod", "x.y-z_1", "in"]
ALNUM = "abxzABZ019"
names = st.sampled_from(ALNUM) | st.builds(
    lambda first, middle, last: first + middle + last,
    st.sampled_from(ALNUM),
    st.text("az09-_.", max_size=4),
    st.sampled_from(ALNUM),
)
keys = st.sampled_from(KEY_POOL) | st.builds(
    lambda prefix, name: prefix + name, st.sampled_from(["", "a.example/", "x/"]), names
)
values = st.sampled_from(VALUE_POOL) | names
label_sets = st.dictionaries(keys, values, max_size=6)


@st.composite
def raw_selectors(draw: st.DrawFn) -> dict[str, Any]:
    raw: dict[str, Any] = {}
    if draw(st.booleans()):
        raw["matchLabels"] = draw(st.dictionaries(keys, values, max_size=3))
    if draw(st.booleans()):
        expressions = []
        for _ in range(draw(st.integers(0, 4))):
            op = draw(st.sampled_from(["In", "NotIn", "Exists", "DoesNotExist"]))
            vals = draw(st.lists(values, min_size=1, max_size=3)) if op in ("In", "NotIn") else []
            expressions.append(expr(draw(keys), op, *vals))
        raw["matchExpressions"] = expressions
    return raw


def reference_matches(raw: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """metav1.LabelSelector semantics, written out independently of the code under test."""
    for key, value in (raw.get("matchLabels") or {}).items():
        if key not in labels or labels[key] != value:
            return False
    for e in raw.get("matchExpressions") or []:
        key, op, vals = e["key"], e["operator"], e.get("values") or []
        present = key in labels
        if op == "In":
            ok = present and labels[key] in vals
        elif op == "NotIn":
            ok = not present or labels[key] not in vals
        elif op == "Exists":
            ok = present
        elif op == "DoesNotExist":
            ok = not present
        else:  # pragma: no cover - the strategy only draws the four operators
            raise AssertionError(op)
        if not ok:
            return False
    return True


def biased_labels(raw: Mapping[str, Any], data: st.DataObject) -> dict[str, str]:
    """Random labels, often reusing the selector's own keys and values so terms can hold."""
    used_keys = list((raw.get("matchLabels") or {}).keys())
    used_values = list((raw.get("matchLabels") or {}).values())
    for e in raw.get("matchExpressions") or []:
        used_keys.append(e["key"])
        used_values.extend(e.get("values") or [])
    key_choice = st.sampled_from(used_keys) | keys if used_keys else keys
    value_choice = st.sampled_from(used_values) | values if used_values else values
    return data.draw(st.dictionaries(key_choice, value_choice, max_size=6))


@settings(max_examples=100, deadline=None)
@given(raw=raw_selectors(), data=st.data())
def test_matches_agrees_with_the_kubernetes_reference(
    raw: dict[str, Any], data: st.DataObject
) -> None:
    labels = biased_labels(raw, data)
    assert parse_selector(raw).matches(labels) is reference_matches(raw, labels)


@settings(max_examples=100, deadline=None)
@given(raw=raw_selectors(), data=st.data())
def test_to_calico_selects_exactly_what_matches_selects(
    raw: dict[str, Any], data: st.DataObject
) -> None:
    labels = biased_labels(raw, data)
    selector = parse_selector(raw)
    assert evaluate(to_calico(selector), labels) is selector.matches(labels)


@settings(max_examples=50, deadline=None)
@given(raw=raw_selectors())
def test_as_k8s_round_trips(raw: dict[str, Any]) -> None:
    selector = parse_selector(raw)
    assert parse_selector(selector.as_k8s()) == selector


@settings(max_examples=50, deadline=None)
@given(labels=label_sets)
def test_empty_selector_and_all_match_any_labels(labels: dict[str, str]) -> None:
    assert LabelSelector().matches(labels)
    assert evaluate(to_calico(LabelSelector()), labels)
