"""Kubernetes label selectors: parsing, matching, and translation to Calico's selector language.

Pure functions over plain data, so that the operator, ``dpo render`` and the tests agree on
which namespace a selector picks. Semantics follow ``metav1.LabelSelector``: every term must
hold; ``NotIn`` and ``DoesNotExist`` also match objects that lack the key; an empty selector
matches everything.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from default_policy_operator.core.calico_selector import (
    Compare,
    Has,
    InSet,
    Node,
    Not,
    conjoin,
    to_text,
)

OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def valid_label_key(key: str) -> bool:
    """Kubernetes' rule for label keys: ``[dns-subdomain/]name``, name at most 63 characters.

    It also keeps keys safe to write unquoted into a Calico selector.
    """
    prefix, slash, name = key.rpartition("/")
    if slash and not (len(prefix) <= 253 and _DNS_SUBDOMAIN.fullmatch(prefix)):
        return False
    return _LABEL_NAME.fullmatch(name) is not None


def valid_label_value(value: str) -> bool:
    """Kubernetes' rule for label values (at most 63 characters, may be empty)."""
    return value == "" or _LABEL_NAME.fullmatch(value) is not None


class SelectorError(ValueError):
    """A selector that Kubernetes itself would reject."""


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "In":
            return labels.get(self.key) in self.values
        if self.operator == "NotIn":
            return labels.get(self.key) not in self.values
        if self.operator == "Exists":
            return self.key in labels
        return self.key not in labels  # DoesNotExist


@dataclass(frozen=True)
class LabelSelector:
    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[Requirement, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.match_labels and not self.match_expressions

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels) and all(
            r.matches(labels) for r in self.match_expressions
        )

    def conjoin(self, requirements: tuple[Requirement, ...]) -> LabelSelector:
        """This selector AND ``requirements``."""
        return LabelSelector(self.match_labels, (*self.match_expressions, *requirements))

    def as_k8s(self) -> dict[str, Any]:
        """The selector as the API server spells it (used inside rendered policies)."""
        out: dict[str, Any] = {}
        if self.match_labels:
            out["matchLabels"] = dict(self.match_labels)
        if self.match_expressions:
            out["matchExpressions"] = [
                {
                    "key": r.key,
                    "operator": r.operator,
                    **({"values": list(r.values)} if r.values else {}),
                }
                for r in self.match_expressions
            ]
        return out


def parse_selector(raw: Any) -> LabelSelector:
    """Parse a ``metav1.LabelSelector`` dict; ``None`` or ``{}`` selects everything."""
    if raw is None:
        return LabelSelector()
    if not isinstance(raw, Mapping):
        raise SelectorError("a label selector must be an object")
    unknown = set(raw) - {"matchLabels", "matchExpressions"}
    if unknown:
        raise SelectorError(f"unknown selector field(s): {', '.join(sorted(unknown))}")
    labels = raw.get("matchLabels") or {}
    if not isinstance(labels, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise SelectorError("matchLabels must map strings to strings")
    for k, v in labels.items():
        if not valid_label_key(k):
            raise SelectorError(f"matchLabels: {k!r} is not a valid label key")
        if not valid_label_value(v):
            raise SelectorError(f"matchLabels: {v!r} is not a valid label value")
    expressions = []
    for i, expr in enumerate(raw.get("matchExpressions") or []):
        if not isinstance(expr, Mapping):
            raise SelectorError(f"matchExpressions[{i}] must be an object")
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if not isinstance(key, str) or not key:
            raise SelectorError(f"matchExpressions[{i}].key is required")
        if not valid_label_key(key):
            raise SelectorError(f"matchExpressions[{i}].key {key!r} is not a valid label key")
        if op not in OPERATORS:
            raise SelectorError(
                f"matchExpressions[{i}].operator must be one of {', '.join(OPERATORS)}"
            )
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise SelectorError(f"matchExpressions[{i}].values must be a list of strings")
        bad = [v for v in values if not valid_label_value(v)]
        if bad:
            raise SelectorError(
                f"matchExpressions[{i}].values: {bad[0]!r} is not a valid label value"
            )
        if op in ("In", "NotIn") and not values:
            raise SelectorError(f"matchExpressions[{i}]: {op} needs at least one value")
        if op in ("Exists", "DoesNotExist") and values:
            raise SelectorError(f"matchExpressions[{i}]: {op} takes no values")
        expressions.append(Requirement(key=key, operator=op, values=tuple(values)))
    return LabelSelector(
        match_labels=tuple(sorted(labels.items())), match_expressions=tuple(expressions)
    )


def to_calico_tree(selector: LabelSelector) -> Node:
    """The equivalent Calico selector, as a tree (``all()`` for the empty selector)."""
    terms: list[Node] = [Compare(k, "==", v) for k, v in selector.match_labels]
    for r in selector.match_expressions:
        if r.operator in ("In", "NotIn"):
            terms.append(InSet(r.key, r.values, negated=r.operator == "NotIn"))
        elif r.operator == "Exists":
            terms.append(Has(r.key))
        else:
            terms.append(Not(Has(r.key)))
    return conjoin(*terms)


def to_calico(selector: LabelSelector) -> str:
    """Translate a label selector into an equivalent Calico selector expression."""
    return to_text(to_calico_tree(selector))


def conjoin_k8s(own: Mapping[str, Any], governed: LabelSelector) -> dict[str, Any]:
    """A ``metav1.LabelSelector`` (as a template wrote it, checked) AND ``governed``: every
    term of both, the template's ``matchLabels`` as ``In`` terms so that no key can clash.
    It can only narrow what ``governed`` selects, never widen it."""
    out = governed.as_k8s()
    terms = [
        {"key": key, "operator": "In", "values": [value]}
        for key, value in (own.get("matchLabels") or {}).items()
    ]
    terms += list(own.get("matchExpressions") or [])
    if terms:
        out["matchExpressions"] = [*out.get("matchExpressions", []), *terms]
    return out
