"""A small, independent evaluator of Calico's selector language, for tests.

It follows the grammar of Calico's own tokenizer and parser (``libcalico-go/lib/selector``):

* ``||`` binds loosest, then ``&&``, then any number of leading ``!``; parentheses group;
* operations: ``all()``, ``global()``, ``has(key)``, ``key == "v"``, ``key != "v"``,
  ``key in {"a", "b"}``, ``key not in {..}`` (also spelled ``notin``), ``contains``,
  ``starts with``, ``ends with``;
* string literals run from a quote (``"`` or ``'``) to the next identical quote. Calico has no
  escape sequences, so JSON-quoting a value is faithful exactly when the value holds no ``"``,
  ``\\`` or non-ASCII character -- always true of a valid Kubernetes label value;
* the empty selector selects everything.

Label semantics are Calico's: ``k != "v"`` and ``k not in {..}`` are true when ``k`` is absent,
``k == "v"`` and ``k in {..}`` are false. ``global()`` evaluates like ``all()``, as Calico's own
evaluator does (only a rule's namespaceSelector gives it the meaning "no namespace", by rewriting
it before evaluation).

Deliberately written without looking at the operator's code, so that end-to-end tests can use
it to check what a Calico selector the operator wrote really selects.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

__all__ = ["CalicoSelectorError", "evaluate", "parse"]

MAX_LABEL_LENGTH = 512
_IDENT_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_./-")

Labels = Mapping[str, str]
Predicate = Callable[[Labels], bool]


class CalicoSelectorError(ValueError):
    """A selector Calico would refuse to parse."""


@dataclass(frozen=True)
class _Token:
    kind: str  # "label", "string", "has", "all", "op", or a punctuation mark
    value: str = ""


def _word_boundary(rest: str) -> bool:
    return not rest or rest[0] not in _IDENT_CHARS


def _cut_ident(text: str) -> tuple[str, str]:
    end = 0
    while end < len(text) and text[end] in _IDENT_CHARS:
        end += 1
    ident = text[:end]
    if not ident:
        raise CalicoSelectorError(f"expected a label at {text[:20]!r}")
    if len(ident) > MAX_LABEL_LENGTH:
        raise CalicoSelectorError("label too long")
    return ident, text[end:]


def _cut_words(text: str, *words: str) -> str | None:
    """``text`` after ``words`` (blanks allowed between them), or None.

    Only the last word needs a word boundary after it: "notin" is accepted like "not in".
    """
    rest = text
    for i, word in enumerate(words):
        if not rest.startswith(word):
            return None
        rest = rest[len(word) :]
        if i < len(words) - 1:
            rest = rest.lstrip(" \t")
    return rest if _word_boundary(rest) else None


def tokenize(selector: str) -> list[_Token]:
    tokens: list[_Token] = []
    text = selector
    while True:
        text = text.lstrip(" \t")
        if not text:
            tokens.append(_Token("eof"))
            return tokens
        first = text[0]
        if first in "(){},":
            tokens.append(_Token(first))
            text = text[1:]
        elif first in "\"'":
            end = text.find(first, 1)
            if end < 0:
                raise CalicoSelectorError("unterminated string")
            tokens.append(_Token("string", text[1:end]))
            text = text[end + 1 :]
        elif text.startswith("=="):
            tokens.append(_Token("op", "=="))
            text = text[2:]
        elif first == "=":
            raise CalicoSelectorError("expected ==")
        elif text.startswith("!="):
            tokens.append(_Token("op", "!="))
            text = text[2:]
        elif first == "!":
            tokens.append(_Token("!"))
            text = text[1:]
        elif text.startswith("&&"):
            tokens.append(_Token("&&"))
            text = text[2:]
        elif text.startswith("||"):
            tokens.append(_Token("||"))
            text = text[2:]
        elif first in "&|":
            raise CalicoSelectorError(f"expected {first * 2}")
        elif tokens and tokens[-1].kind == "label":
            # After a label only a word operator may follow.
            for words, op in (
                (("contains",), "contains"),
                (("starts", "with"), "starts with"),
                (("ends", "with"), "ends with"),
                (("not", "in"), "not in"),
                (("in",), "in"),
            ):
                rest = _cut_words(text, *words)
                if rest is not None:
                    tokens.append(_Token("op", op))
                    text = rest
                    break
            else:
                raise CalicoSelectorError(f"expected an operator after {tokens[-1].value!r}")
        elif text.startswith("has("):
            ident, rest = _cut_ident(text[4:].lstrip(" \t"))
            rest = rest.lstrip(" \t")
            if not rest.startswith(")"):
                raise CalicoSelectorError("no closing ')' after has(")
            tokens.append(_Token("has", ident))
            text = rest[1:]
        elif text.startswith(("all(", "global(")):
            word = text[: text.index("(")]
            rest = text[len(word) + 1 :].lstrip(" \t")
            if not rest.startswith(")"):
                raise CalicoSelectorError(f"no closing ')' after {word}(")
            tokens.append(_Token("all"))  # global() evaluates as all()
            text = rest[1:]
        else:
            ident, text = _cut_ident(text)
            tokens.append(_Token("label", ident))


class _Parser:
    def __init__(self, tokens: list[_Token]) -> None:
        self.tokens = tokens
        self.pos = 0

    def peek(self) -> _Token:
        return self.tokens[self.pos]

    def take(self, kind: str) -> _Token:
        token = self.peek()
        if token.kind != kind:
            raise CalicoSelectorError(f"expected {kind!r}, found {token.kind!r} {token.value!r}")
        self.pos += 1
        return token

    def or_expression(self) -> Predicate:
        terms = [self.and_expression()]
        while self.peek().kind == "||":
            self.pos += 1
            terms.append(self.and_expression())
        if len(terms) == 1:
            return terms[0]
        return lambda labels: any(term(labels) for term in terms)

    def and_expression(self) -> Predicate:
        terms = [self.operation()]
        while self.peek().kind == "&&":
            self.pos += 1
            terms.append(self.operation())
        if len(terms) == 1:
            return terms[0]
        return lambda labels: all(term(labels) for term in terms)

    def operation(self) -> Predicate:
        negated = False
        while self.peek().kind == "!":
            negated = not negated
            self.pos += 1
        token = self.peek()
        self.pos += 1
        result: Predicate
        if token.kind == "all":
            result = _always
        elif token.kind == "has":
            result = _has(token.value)
        elif token.kind == "(":
            result = self.or_expression()
            self.take(")")
        elif token.kind == "label":
            result = self.comparison(token.value)
        else:
            raise CalicoSelectorError(f"unexpected token {token.kind!r} {token.value!r}")
        return _negate(result) if negated else result

    def comparison(self, key: str) -> Predicate:
        op = self.take("op").value
        if op in ("in", "not in"):
            self.take("{")
            values: set[str] = set()
            while self.peek().kind == "string":
                values.add(self.take("string").value)
                if self.peek().kind != ",":
                    break
                self.pos += 1
            self.take("}")
            frozen = frozenset(values)
            if op == "in":
                return lambda labels: key in labels and labels[key] in frozen
            return lambda labels: key not in labels or labels[key] not in frozen
        value = self.take("string").value
        if op == "==":
            return lambda labels: key in labels and labels[key] == value
        if op == "!=":
            return lambda labels: key not in labels or labels[key] != value
        if op == "contains":
            return lambda labels: key in labels and value in labels[key]
        if op == "starts with":
            return lambda labels: key in labels and labels[key].startswith(value)
        return lambda labels: key in labels and labels[key].endswith(value)


def _always(labels: Labels) -> bool:
    return True


def _has(key: str) -> Predicate:
    return lambda labels: key in labels


def _negate(predicate: Predicate) -> Predicate:
    return lambda labels: not predicate(labels)


def parse(selector: str) -> Predicate:
    """Compile ``selector``; raises :class:`CalicoSelectorError` where Calico would refuse it."""
    parser = _Parser(tokenize(selector))
    if parser.peek().kind == "eof":
        return _always
    predicate = parser.or_expression()
    if parser.peek().kind != "eof":
        token = parser.peek()
        raise CalicoSelectorError(f"unexpected content at the end: {token.kind} {token.value!r}")
    return predicate


def evaluate(selector: str, labels: Mapping[str, str]) -> bool:
    """Whether an object with ``labels`` is selected by the Calico ``selector``."""
    return parse(selector)(labels)
