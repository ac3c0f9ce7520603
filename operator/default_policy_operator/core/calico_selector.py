"""Calico's selector language as syntax trees: parse, print, combine, check.

The operator narrows what a Calico policy applies to by ANDing its own "governed namespaces"
selector with whatever a template wrote. Joining the two as text is unsafe: a template
``namespaceSelector`` of ``all()) || (all()`` turns ``(ours) && (theirs)`` into an OR that
selects kube-system. So selectors are parsed into trees, combined as trees (:func:`conjoin`)
and printed back (:func:`to_text`); text that does not parse is refused, never spliced.

The grammar is a faithful port of Calico's own tokenizer and parser
(``libcalico-go/lib/selector/{tokenizer,parser}``, unchanged from v3.29 to v3.32), so we
accept exactly what Felix and the Calico API server accept:

* blanks are spaces and tabs only (a newline is an error);
* ``||`` binds loosest, then ``&&``, then any number of leading ``!`` (an even number cancels
  out); parentheses group; the empty selector means ``all()``;
* operations: ``all()``, ``global()``, ``has(key)``, ``key == "v"``, ``key != "v"``,
  ``key contains "v"``, ``key starts with "v"``, ``key ends with "v"``, ``key in {"a", "b"}``,
  ``key not in {..}`` (the words of two-word operators may be written together, ``notin``);
  a set may be empty or end with a comma;
* a key is 1-512 of ``[A-Za-z0-9_./-]``; a string runs from ``"`` or ``'`` to the next identical
  quote, with no escapes (so a value cannot hold both quote characters).

One deliberate difference: at most ``MAX_NESTING`` levels of parentheses.

:func:`check_policy_selectors` applies the same parser to every selector field of a rendered
GlobalNetworkPolicy, plus Calico's rule that ``global()`` may only stand alone in a rule's
``namespaceSelector``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

__all__ = [
    "ALL",
    "All",
    "And",
    "CalicoSelectorError",
    "Compare",
    "Global",
    "Has",
    "InSet",
    "Node",
    "Not",
    "Or",
    "check_policy_selectors",
    "conjoin",
    "parse",
    "to_text",
]

MAX_LABEL_LENGTH = 512
#: Calico has no limit; ours keeps a hostile template's ``((((...`` from exhausting Python's
#: recursion limit (far beyond anything a person writes).
MAX_NESTING = 100
_IDENT_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_./-")
_BLANKS = " \t"
#: Comparison operators taking one string, as Calico prints them.
COMPARISONS = ("==", "!=", "contains", "starts with", "ends with")


class CalicoSelectorError(ValueError):
    """Text Calico would refuse as a selector, or a tree that cannot be printed faithfully."""


# -- the tree -----------------------------------------------------------------------------------


def _check_key(key: str) -> None:
    if not key or len(key) > MAX_LABEL_LENGTH or not set(key) <= _IDENT_CHARS:
        raise CalicoSelectorError(f"{key!r} is not a Calico label key")


def _check_value(value: str) -> None:
    if '"' in value and "'" in value:
        raise CalicoSelectorError(f"{value!r} holds both quote characters: Calico cannot spell it")


@dataclass(frozen=True)
class All:
    """``all()``: true for everything."""


@dataclass(frozen=True)
class Global:
    """``global()``: in a rule's namespaceSelector, "no namespace" (host endpoints, network sets).

    Anywhere else Calico evaluates it as true; :func:`check_policy_selectors` refuses it there.
    """


@dataclass(frozen=True)
class Has:
    key: str

    def __post_init__(self) -> None:
        _check_key(self.key)


@dataclass(frozen=True)
class Compare:
    """``key <op> "value"``; ``!=`` is true when the key is absent, the others false."""

    key: str
    op: str
    value: str

    def __post_init__(self) -> None:
        _check_key(self.key)
        _check_value(self.value)
        if self.op not in COMPARISONS:
            raise CalicoSelectorError(f"unknown comparison {self.op!r}")


@dataclass(frozen=True)
class InSet:
    """``key in {..}``, or ``key not in {..}`` (``negated``: true when the key is absent).

    Values are kept sorted and unique, as Calico keeps them, so equal sets compare equal.
    """

    key: str
    values: tuple[str, ...]
    negated: bool = False

    def __post_init__(self) -> None:
        _check_key(self.key)
        for value in self.values:
            _check_value(value)
        object.__setattr__(self, "values", tuple(sorted(set(self.values))))


@dataclass(frozen=True)
class Not:
    operand: Node


@dataclass(frozen=True)
class And:
    operands: tuple[Node, ...]

    def __post_init__(self) -> None:
        if len(self.operands) < 2:
            raise CalicoSelectorError("an && needs at least two operands")


@dataclass(frozen=True)
class Or:
    operands: tuple[Node, ...]

    def __post_init__(self) -> None:
        if len(self.operands) < 2:
            raise CalicoSelectorError("an || needs at least two operands")


Node: TypeAlias = All | Global | Has | Compare | InSet | Not | And | Or
ALL = All()


def conjoin(*nodes: Node) -> Node:
    """The AND of ``nodes``: a tree, so no operand can reach outside its own subtree.

    Nested ANDs are flattened and ``all()`` operands dropped (both change nothing a selector
    selects); no operand at all means ``all()``.
    """
    operands: list[Node] = []
    for node in nodes:
        if isinstance(node, And):
            operands.extend(node.operands)
        elif not isinstance(node, All):
            operands.append(node)
    if not operands:
        return ALL
    if len(operands) == 1:
        return operands[0]
    return And(tuple(operands))


# -- printing -----------------------------------------------------------------------------------


def _quote(value: str) -> str:
    """Calico's own choice: double quotes unless the value holds one."""
    return f"'{value}'" if '"' in value else f'"{value}"'


def _grouped(node: Node, group: tuple[type, ...]) -> str:
    text = to_text(node)
    return f"({text})" if isinstance(node, group) else text


def to_text(node: Node) -> str:
    """Canonical text: single spaces, sorted sets, parentheses only where the tree needs them.

    ``parse(to_text(tree)) == tree`` for every tree, including nested groups that the
    precedence rules alone would flatten (``(a && b) && c``) and double negations.
    """
    if isinstance(node, All):
        return "all()"
    if isinstance(node, Global):
        return "global()"
    if isinstance(node, Has):
        return f"has({node.key})"
    if isinstance(node, Compare):
        return f"{node.key} {node.op} {_quote(node.value)}"
    if isinstance(node, InSet):
        op = "not in" if node.negated else "in"
        return f"{node.key} {op} {{{', '.join(_quote(v) for v in node.values)}}}"
    if isinstance(node, Not):
        return "!" + _grouped(node.operand, (And, Or, Not))
    if isinstance(node, And):
        return " && ".join(_grouped(o, (And, Or)) for o in node.operands)
    return " || ".join(_grouped(o, (Or,)) for o in node.operands)


# -- tokenizer (libcalico-go/lib/selector/tokenizer) --------------------------------------------


@dataclass(frozen=True)
class _Token:
    kind: str  # "label", "string", "has", "all", "global", "op", "eof" or a punctuation mark
    value: str = ""


#: Word operators allowed right after a label, in the order Calico tries them.
_WORD_OPERATORS = (
    (("contains",), "contains"),
    (("starts", "with"), "starts with"),
    (("ends", "with"), "ends with"),
    (("not", "in"), "not in"),
    (("in",), "in"),
)
#: Symbols, longest first; a lone "=", "&" or "|" is an error.
_SYMBOLS = (
    ("==", "op"),
    ("!=", "op"),
    ("&&", "&&"),
    ("||", "||"),
    ("!", "!"),
    ("(", "("),
    (")", ")"),
    ("{", "{"),
    ("}", "}"),
    (",", ","),
)


def _skip_blanks(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _BLANKS:
        pos += 1
    return pos


def _cut_ident(text: str, pos: int) -> tuple[str, int]:
    end = pos
    while end < len(text) and text[end] in _IDENT_CHARS:
        end += 1
    if end == pos:
        raise CalicoSelectorError(f"expected a label at {text[pos : pos + 20]!r}")
    if end - pos > MAX_LABEL_LENGTH:
        raise CalicoSelectorError(f"label longer than {MAX_LABEL_LENGTH} characters")
    return text[pos:end], end


def _cut_words(text: str, pos: int, words: tuple[str, ...]) -> int | None:
    """The position after the operator ``words``, or None (Calico's ``cut*PrefixCheckBreak``).

    A one-word operator needs a word boundary right after it. Between and after the words of a
    two-word operator blanks are skipped first ("notin" reads like "not in").
    """
    for word in words:
        if not text.startswith(word, pos):
            return None
        pos += len(word)
        if len(words) > 1:
            pos = _skip_blanks(text, pos)
    return pos if pos == len(text) or text[pos] not in _IDENT_CHARS else None


def _cut_call(text: str, pos: int, name: str) -> tuple[str, int] | None:
    """``name(`` [argument] ``)`` at ``pos``: (argument, position after it), or None."""
    if not text.startswith(name + "(", pos):
        return None
    pos = _skip_blanks(text, pos + len(name) + 1)
    argument = ""
    if name == "has":
        argument, pos = _cut_ident(text, pos)
        pos = _skip_blanks(text, pos)
    if not text.startswith(")", pos):
        raise CalicoSelectorError(f"no closing ')' after {name}(")
    return argument, pos + 1


def _next_token(text: str, pos: int, previous: str) -> tuple[_Token, int]:
    """The token at ``pos`` (not a blank) and the position after it; ``previous`` is the last
    token's kind. Positions, never slices: a long selector tokenizes in linear time."""
    first = text[pos]
    if first in "\"'":
        end = text.find(first, pos + 1)
        if end < 0:
            raise CalicoSelectorError("unterminated string")
        return _Token("string", text[pos + 1 : end]), end + 1
    for symbol, kind in _SYMBOLS:
        if text.startswith(symbol, pos):
            return _Token(kind, symbol if kind == "op" else ""), pos + len(symbol)
    if first in "=&|":
        raise CalicoSelectorError(f"expected {'==' if first == '=' else first * 2}")
    if previous == "label":  # after a label only a word operator may follow
        for words, op in _WORD_OPERATORS:
            after = _cut_words(text, pos, words)
            if after is not None:
                return _Token("op", op), after
        raise CalicoSelectorError("expected an operator after a label")
    for name in ("has", "all", "global"):
        call = _cut_call(text, pos, name)
        if call is not None:
            return _Token(name, call[0]), call[1]
    ident, pos = _cut_ident(text, pos)
    return _Token("label", ident), pos


def _tokenize(selector: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    while True:
        pos = _skip_blanks(selector, pos)
        if pos == len(selector):
            tokens.append(_Token("eof"))
            return tokens
        token, pos = _next_token(selector, pos, tokens[-1].kind if tokens else "")
        tokens.append(token)


# -- parser (libcalico-go/lib/selector/parser) --------------------------------------------------


class _Parser:
    def __init__(self, tokens: list[_Token]) -> None:
        self.tokens = tokens
        self.pos = 0
        self.depth = 0

    def peek(self) -> _Token:
        return self.tokens[self.pos]

    def take(self, kind: str, what: str) -> _Token:
        token = self.peek()
        if token.kind != kind:
            raise CalicoSelectorError(f"expected {what}, found {_describe(token)}")
        self.pos += 1
        return token

    def or_expression(self) -> Node:
        terms = [self.and_expression()]
        while self.peek().kind == "||":
            self.pos += 1
            terms.append(self.and_expression())
        return terms[0] if len(terms) == 1 else Or(tuple(terms))

    def and_expression(self) -> Node:
        terms = [self.operation()]
        while self.peek().kind == "&&":
            self.pos += 1
            terms.append(self.operation())
        return terms[0] if len(terms) == 1 else And(tuple(terms))

    def operation(self) -> Node:
        negated = False
        while self.peek().kind == "!":
            negated = not negated
            self.pos += 1
        token = self.peek()
        self.pos += 1
        node: Node
        if token.kind == "all":
            node = ALL
        elif token.kind == "global":
            node = Global()
        elif token.kind == "has":
            node = Has(token.value)
        elif token.kind == "(":
            self.depth += 1
            if self.depth > MAX_NESTING:
                raise CalicoSelectorError(f"more than {MAX_NESTING} nested parentheses")
            node = self.or_expression()
            self.take(")", "')'")
            self.depth -= 1
        elif token.kind == "label":
            node = self.comparison(token.value)
        else:
            raise CalicoSelectorError(f"unexpected {_describe(token)}")
        return Not(node) if negated else node

    def comparison(self, key: str) -> Node:
        op = self.take("op", "an operator").value
        if op in ("in", "not in"):
            self.take("{", "a set literal '{'")
            values: list[str] = []
            while self.peek().kind == "string":
                values.append(self.take("string", "a string").value)
                if self.peek().kind != ",":
                    break
                self.pos += 1
            self.take("}", "'}'")
            return InSet(key, tuple(values), negated=op == "not in")
        return Compare(key, op, self.take("string", "a quoted string").value)


def _describe(token: _Token) -> str:
    if token.kind == "eof":
        return "the end of the selector"
    if token.kind in ("label", "string", "op"):
        return f"{token.kind} {token.value!r}"
    return f"{token.kind!r}"


def parse(selector: str) -> Node:
    """The tree of ``selector``; :class:`CalicoSelectorError` where Calico would refuse it."""
    parser = _Parser(_tokenize(selector))
    if parser.peek().kind == "eof":
        return ALL
    node = parser.or_expression()
    if parser.peek().kind != "eof":
        raise CalicoSelectorError(f"unexpected {_describe(parser.peek())} after a full selector")
    return node


# -- policy fields ------------------------------------------------------------------------------

#: Selector fields of a (Global)NetworkPolicy spec, and of each rule's source and destination.
SPEC_SELECTOR_FIELDS = ("selector", "namespaceSelector", "serviceAccountSelector")
ENTITY_SELECTOR_FIELDS = ("selector", "notSelector", "namespaceSelector")


def _selector_fields(spec: Mapping[str, Any]) -> Iterator[tuple[str, Any, bool]]:
    """(path, value, may use global()) for every selector field present in ``spec``.

    A null value counts as absent, as it does for the API server. Containers of the wrong
    shape are skipped: the structural check reports those.
    """
    for name in SPEC_SELECTOR_FIELDS:
        if spec.get(name) is not None:
            yield f"spec.{name}", spec[name], False
    for direction in ("ingress", "egress"):
        rules = spec.get(direction)
        for i, rule in enumerate(rules if isinstance(rules, list) else []):
            for side in ("source", "destination"):
                entity = rule.get(side) if isinstance(rule, Mapping) else None
                if not isinstance(entity, Mapping):
                    continue
                path = f"spec.{direction}[{i}].{side}"
                for name in ENTITY_SELECTOR_FIELDS:
                    if entity.get(name) is not None:
                        yield f"{path}.{name}", entity[name], name == "namespaceSelector"
                accounts = entity.get("serviceAccounts")
                if isinstance(accounts, Mapping) and accounts.get("selector") is not None:
                    yield f"{path}.serviceAccounts.selector", accounts["selector"], False


def check_policy_selectors(spec: Mapping[str, Any]) -> None:
    """Refuse a policy spec with a selector Calico would not accept, naming the field.

    ``global()`` is allowed only as the whole of a rule's ``namespaceSelector``; elsewhere the
    Calico API refuses any text containing ``global(`` (its CEL rules test the substring), and
    so do we, so both API versions see the same rules.
    """
    for path, value, may_be_global in _selector_fields(spec):
        if not isinstance(value, str):
            raise CalicoSelectorError(f"{path} must be a string")
        try:
            tree = parse(value)
        except CalicoSelectorError as exc:
            raise CalicoSelectorError(f"{path}: not a Calico selector ({exc}): {value!r}") from None
        if "global(" not in value:
            continue
        if not may_be_global:
            raise CalicoSelectorError(f"{path}: global() is only for a rule's namespaceSelector")
        if tree != Global() or len(_tokenize(value)) > 2:  # Calico's own test: one token
            raise CalicoSelectorError(f"{path}: global() cannot be combined with other terms")
