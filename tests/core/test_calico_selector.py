"""Calico selectors as trees: the parser agrees with Calico, printing round-trips, AND is AND.

The judge is ``tests/calico_selector.py``, an evaluator written independently of the operator's
parser; fixed cases come from Calico's own parser tests (libcalico-go/lib/selector/parser).
"""

from __future__ import annotations

import copy
import string
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from default_policy_operator.core.calico_selector import (
    ALL,
    And,
    CalicoSelectorError,
    Compare,
    Global,
    Has,
    InSet,
    Node,
    Not,
    Or,
    check_policy_selectors,
    conjoin,
    parse,
    to_text,
)
from tests import calico_selector as oracle

# -- fixed cases from Calico's parser_test.go -----------------------------------------------------

#: Calico's ``badSelectors``, plus whitespace Calico does not skip and grammar edge cases.
BAD = [
    "b == b",
    "b contains b",
    "b starts with b",
    "b ends with b",
    "'b1' == b",
    "b",
    "a b",
    "!",
    'foo == "bar" &',
    'foo == "bar" |',
    "foo != ||",
    'foo in {"", ||',
    'foo in ""',
    '"FOO',
    "\"FOO'",
    "'FOO",
    "(",
    '(a == "foo"',
    ")",
    "()",
    "%",
    'a == "b" && %',
    'a == "b" || %',
    "a ",
    "has(foo) &&",
    'a == "b"\n',  # only spaces and tabs are blanks
    "has(a",
    "has()",
    "all(x)",
    "global( x)",
    'a = "b"',
    'a in {"b" "c"}',
    "a in {,}",
    "x" * 513 + ' == "y"',
    'a startsx with "b"',
    'a not "b"',
    'a inn {"b"}',
    "all()) || (all()",
]

#: Calico's ``canonicalisationTests``: input, Calico's String(); same tree when parsed.
CANONICAL = [
    ("", "all()"),
    (" all() ", "all()"),
    (" (all() )", "all()"),
    ("! (has( b)||! has(a ))", "!(has(b) || !has(a))"),
    ('! (a == "b"&&! c != "d")', '!(a == "b" && !c != "d")'),
    ('a == "\'"', 'a == "\'"'),
    ("a == '\"'", "a == '\"'"),
    ("a contains '\"'", "a contains '\"'"),
    ('a contains "\'"', 'a contains "\'"'),
    ("a startswith '\"'", "a starts with '\"'"),
    ('a endswith "\'"', 'a ends with "\'"'),
    ("a!='\"'", "a != '\"'"),
    ('a in {"d"}', 'a in {"d"}'),
    ('a in {"d", "a", "b"}', 'a in {"a", "b", "d"}'),
    ('a in {"z", "z", "x", "y", "x", "a"}', 'a in {"a", "x", "y", "z"}'),
    ("a notin {}", "a not in {}"),
    ('a in {"x",}', 'a in {"x"}'),
    ("\tglobal( )", "global()"),
]


@pytest.mark.parametrize("text", BAD)
def test_what_calico_refuses_does_not_parse(text: str) -> None:
    with pytest.raises(CalicoSelectorError):
        parse(text)
    with pytest.raises(oracle.CalicoSelectorError):  # and the judge agrees
        oracle.parse(text)


@pytest.mark.parametrize(("text", "canonical"), CANONICAL)
def test_canonical_text(text: str, canonical: str) -> None:
    tree = parse(text)
    assert tree == parse(canonical)
    assert to_text(tree) == canonical


def test_tree_shapes() -> None:
    assert parse('a == "x" && b == "y" || !has(c)') == Or(
        (And((Compare("a", "==", "x"), Compare("b", "==", "y"))), Not(Has("c")))
    )
    assert parse("!!has(a)") == Has("a")  # leading !s collapse, as in Calico
    assert parse("!(!has(a))") == Not(Not(Has("a")))
    assert parse("all() && global()") == And((ALL, Global()))
    assert parse('k8s-app.io/x_y notin {"b", "a"}') == InSet("k8s-app.io/x_y", ("a", "b"), True)


def test_printing_keeps_grouping_the_precedence_rules_would_lose() -> None:
    for text in ["(a == \"1\" && b == \"2\") && c == \"3\"", "(has(a) || has(b)) || has(c)",
                 "!(!has(a))", "!(has(a) && has(b))", "(has(a) || has(b)) && has(c)"]:  # fmt: skip
        assert to_text(parse(text)) == text


def test_trees_refuse_what_cannot_be_printed() -> None:
    with pytest.raises(CalicoSelectorError):
        Compare("a", "==", 'it\'s "quoted"')
    with pytest.raises(CalicoSelectorError):
        Has("a b")
    with pytest.raises(CalicoSelectorError):
        Compare("a", "=", "b")
    with pytest.raises(CalicoSelectorError):
        And((Has("a"),))


def test_deep_nesting_and_long_selectors_are_cheap_errors_or_fine() -> None:
    """A template may emit up to 256 KiB: never a RecursionError, never quadratic time."""
    with pytest.raises(CalicoSelectorError, match="nested"):
        parse("(" * 5000 + "all()" + ")" * 5000)
    assert parse("(" * 100 + "all()" + ")" * 100) == ALL
    long = " && ".join(f'k{i} == "v"' for i in range(20_000))  # about 250 KB
    started = time.monotonic()
    tree = parse(long)
    assert isinstance(tree, And)
    assert len(tree.operands) == 20_000
    assert time.monotonic() - started < 5


def test_conjoin() -> None:
    assert conjoin() == ALL
    assert conjoin(ALL, ALL) == ALL
    assert conjoin(Has("a")) == Has("a")
    assert conjoin(And((Has("a"), Has("b"))), ALL, Has("c")) == And((Has("a"), Has("b"), Has("c")))
    escape = parse('x == "1" || all()')  # an OR stays inside its own operand
    assert to_text(conjoin(Has("ns"), escape)) == 'has(ns) && (x == "1" || all())'


# -- properties ------------------------------------------------------------------------------------

KEYS = ["a", "b", "k8s-app", "projectcalico.org/name", "x_y.z/w-1"]
VALUES = ["", "a", "b", "ab", "'", '"', "a b", "é"]
keys = st.sampled_from(KEYS)
values = st.sampled_from(VALUES)
labels = st.dictionaries(keys, values, max_size=4)

leaves = st.one_of(
    st.just(ALL),
    st.just(Global()),
    st.builds(Has, keys),
    st.builds(Compare, keys, st.sampled_from(["==", "!=", "contains", "starts with", "ends with"]),
              values),
    st.builds(lambda k, v, n: InSet(k, tuple(v), n), keys, st.lists(values, max_size=3),
              st.booleans()),
)  # fmt: skip
trees: st.SearchStrategy[Node] = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.builds(Not, inner),
        st.builds(lambda xs: And(tuple(xs)), st.lists(inner, min_size=2, max_size=3)),
        st.builds(lambda xs: Or(tuple(xs)), st.lists(inner, min_size=2, max_size=3)),
    ),
    max_leaves=8,
)
#: Selector text: tokens and near-tokens glued together, with or without blanks.
pieces = st.sampled_from(
    ["a", "b", "projectcalico.org/name", "==", "!=", "=", "!", "&&", "||", "&", "|", "(", ")",
     "{", "}", ",", '"a"', "'b'", '"', "'", "in", "not", "notin", "not in", "contains",
     "starts", "with", "startswith", "ends with", "has(a)", "has( b )", "has(", "all()",
     "all( )", "global()", "\t", "%", "\n"]
)  # fmt: skip
texts = st.lists(st.tuples(pieces, st.sampled_from(["", " "])), max_size=12).map(
    lambda parts: "".join(p + sep for p, sep in parts)
)


@st.composite
def spelled(draw: st.DrawFn, tree: Node) -> str:
    """``tree`` written the way a person might: any blanks, either quote, ``notin``, extra
    parentheses and double negations, so the parser meets every legal spelling."""

    def blank() -> str:
        return draw(st.sampled_from(["", " ", "  ", "\t"]))

    def quote(value: str) -> str:
        options = [q for q in "\"'" if q not in value]
        q = draw(st.sampled_from(options))
        return f"{q}{value}{q}"

    def spell(node: Node) -> str:
        if isinstance(node, Has):
            text = f"has({blank()}{node.key}{blank()})"
        elif isinstance(node, Compare):
            op = {"starts with": "starts with", "ends with": "ends with"}.get(node.op, node.op)
            if " " in op and draw(st.booleans()):
                op = op.replace(" ", "")
            text = f"{node.key}{blank() or ' '}{op}{blank() or ' '}{quote(node.value)}"
        elif isinstance(node, InSet):
            op = draw(st.sampled_from(["not in", "notin", "not  in"])) if node.negated else "in"
            items = f",{blank()}".join(quote(v) for v in node.values)
            if node.values and draw(st.booleans()):
                items += ","
            text = f"{node.key} {op}{blank()}{{{blank()}{items}{blank()}}}"
        elif isinstance(node, Not):
            text = "!" + blank() + f"({blank()}{spell(node.operand)}{blank()})"
        elif isinstance(node, And | Or):
            sep = "&&" if isinstance(node, And) else "||"
            text = f"{blank()}{sep}{blank()}".join(
                f"({spell(o)})" if isinstance(o, And | Or) else spell(o) for o in node.operands
            )
        else:
            text = to_text(node).replace("(", "(" + blank())
        if draw(st.integers(0, 5)) == 0:
            text = f"({blank()}{text}{blank()})"
        if draw(st.integers(0, 5)) == 0:
            text = f"!!{blank()}({text})"
        return text

    return blank() + spell(tree) + blank()


@st.composite
def mutated(draw: st.DrawFn, text: str) -> str:
    """``text`` with one character deleted, doubled, replaced or inserted: near misses."""
    if not text:
        return text
    i = draw(st.integers(0, len(text) - 1))
    how = draw(st.sampled_from(["delete", "double", "replace", "insert"]))
    if how == "delete":
        return text[:i] + text[i + 1 :]
    if how == "double":
        return text[: i + 1] + text[i:]
    other = draw(st.sampled_from(list("()!&|= \"'{},a\n\t%")))
    return text[:i] + other + text[i + (how == "replace") :]


written = trees.flatmap(spelled)


def _oracle_accepts(text: str) -> bool:
    try:
        oracle.parse(text)
    except oracle.CalicoSelectorError:
        return False
    return True


def assert_agrees_with_calico(text: str, sample: list[dict[str, str]]) -> None:
    """Accepted exactly when the judge accepts it, meaning the same once printed back."""
    try:
        tree = parse(text)
    except CalicoSelectorError:
        assert not _oracle_accepts(text), text
        return
    assert _oracle_accepts(text), text
    printed = to_text(tree)
    assert parse(printed) == tree
    for labels_ in sample:
        assert oracle.evaluate(printed, labels_) is oracle.evaluate(text, labels_), (text, labels_)


@settings(max_examples=300, deadline=None)
@given(tree=trees, data=st.data(), sample=st.lists(labels, min_size=1, max_size=4))
def test_every_legal_spelling_parses_to_its_tree(
    tree: Node, data: st.DataObject, sample: list[dict[str, str]]
) -> None:
    text = data.draw(spelled(tree))
    assert parse(text) == tree
    assert_agrees_with_calico(text, sample)


@settings(max_examples=600, deadline=None)
@given(text=written.flatmap(mutated), sample=st.lists(labels, min_size=1, max_size=4))
def test_near_misses_are_refused_exactly_when_calico_refuses_them(
    text: str, sample: list[dict[str, str]]
) -> None:
    assert_agrees_with_calico(text, sample)


@settings(max_examples=600, deadline=None)
@given(text=texts, sample=st.lists(labels, min_size=1, max_size=4))
def test_token_soup_is_refused_exactly_when_calico_refuses_it(
    text: str, sample: list[dict[str, str]]
) -> None:
    assert_agrees_with_calico(text, sample)


@settings(max_examples=300, deadline=None)
@given(tree=trees)
def test_printing_round_trips(tree: Node) -> None:
    text = to_text(tree)
    assert parse(text) == tree
    assert to_text(parse(text)) == text


@settings(max_examples=300, deadline=None)
@given(left=trees, right=trees, sample=st.lists(labels, min_size=1, max_size=4))
def test_conjoin_is_logical_and(left: Node, right: Node, sample: list[dict[str, str]]) -> None:
    combined = to_text(conjoin(left, right))
    for labels_ in sample:
        expected = oracle.evaluate(to_text(left), labels_) and oracle.evaluate(
            to_text(right), labels_
        )
        assert oracle.evaluate(combined, labels_) is expected


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet=string.printable, max_size=30))
def test_arbitrary_text_parses_only_if_calico_would(text: str) -> None:
    try:
        parse(text)
    except CalicoSelectorError:
        assert not _oracle_accepts(text)
    else:
        assert _oracle_accepts(text)


# -- policy fields ---------------------------------------------------------------------------------


def test_every_selector_field_of_a_policy_is_checked() -> None:
    good: dict[str, Any] = {
        "selector": "all()",
        "namespaceSelector": 'a == "b"',
        "serviceAccountSelector": "has(x)",
        "ingress": [
            {
                "action": "Allow",
                "source": {
                    "selector": "has(a)",
                    "notSelector": "has(b)",
                    "namespaceSelector": "global()",
                    "serviceAccounts": {"selector": "has(c)"},
                },
            }
        ],
        "egress": [{"action": "Allow", "destination": {"namespaceSelector": None}}],
    }
    check_policy_selectors(good)
    for path, bad in [
        (("selector",), "all()) || (all()"),
        (("namespaceSelector",), "a == b"),
        (("serviceAccountSelector",), 7),
        (("ingress", 0, "source", "selector"), "("),
        (("ingress", 0, "source", "notSelector"), "a"),
        (("ingress", 0, "source", "namespaceSelector"), "has(x"),
        (("ingress", 0, "source", "serviceAccounts", "selector"), "%"),
    ]:
        spec = _with(good, path, bad)
        with pytest.raises(CalicoSelectorError) as info:
            check_policy_selectors(spec)
        dotted = "spec." + ".".join(
            f"{p}" if isinstance(p, str) else f"[{p}]" for p in path
        ).replace(".[", "[")
        assert str(info.value).startswith(dotted), (str(info.value), dotted)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("namespaceSelector",), "global()"),
        (("selector",), "global()"),
        (("selector",), 'a == "global("'),  # Calico's CEL rule tests the substring
        (("ingress", 0, "source", "selector"), "global()"),
        (("ingress", 0, "source", "namespaceSelector"), "!global()"),
        (("ingress", 0, "source", "namespaceSelector"), "(global())"),
        (("ingress", 0, "source", "namespaceSelector"), 'global() && a == "b"'),
    ],
)
def test_global_only_alone_in_a_rule_namespace_selector(
    path: tuple[str | int, ...], value: str
) -> None:
    spec = {"ingress": [{"action": "Allow", "source": {}}]}
    with pytest.raises(CalicoSelectorError, match="global"):
        check_policy_selectors(_with(spec, path, value))


def _with(spec: dict[str, Any], path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    """A deep copy of ``spec`` with ``value`` at ``path``."""
    out = copy.deepcopy(spec)
    node: Any = out
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return out
