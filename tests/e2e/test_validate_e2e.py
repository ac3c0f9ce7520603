"""Our validator refuses a NetworkPolicy spec if and only if the API server does.

Every spec of the unit tests' corpus (``tests/core/test_validate.py``) that can travel as JSON,
plus more edge cases, is sent to the real kube-apiserver as a dry-run create
(``?dryRun=All&fieldValidation=Strict``: nothing is stored, unknown fields are errors as for
us). Where we are deliberately stricter (``null`` as a list element, which Go reads as an empty
rule or port), the test says so and checks that the API server indeed accepts it.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from default_policy_operator.core.validate import network_policy_spec, problems
from tests.core.test_validate import INVALID_NETWORK_POLICIES, VALID_NETWORK_POLICIES
from tests.support import Api, ApiStatus

pytestmark = pytest.mark.e2e

DRY_RUN = "/apis/networking.k8s.io/v1/namespaces/default/networkpolicies"
DRY_RUN += "?dryRun=All&fieldValidation=Strict"

EXTRA: list[dict[str, Any]] = [
    {"podSelector": {"matchLabels": {"k" * 63: "v" * 63}}},
    {"podSelector": {"matchLabels": {"k" * 64: "v"}}},
    {"podSelector": {"matchLabels": {"example.com/" + "k" * 63: "v"}}},
    {"podSelector": {"matchLabels": {"Example.com/k": "v"}}},
    {"podSelector": {"matchLabels": {"a": "v_1.x-Y"}}},
    {"podSelector": {"matchLabels": {"a": "v_"}}},
    {"podSelector": {"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["-"]}]}},
    {"podSelector": {"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}},
    {"ingress": [{"ports": [{"port": 1}, {"port": 65535}, {"port": "a"}, {"port": "a-1"}]}]},
    {"ingress": [{"ports": [{"port": "a" * 15}]}]},
    {"ingress": [{"ports": [{"port": 80, "endPort": 80}]}]},
    {"ingress": [{"ports": [{"port": -1}]}]},
    {"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.0.0.0/9"]}}]}]},
    {"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.0.0.1/32"]}}]}]},
    {"egress": [{"to": [{"ipBlock": {"cidr": "2001:db8::/32", "except": ["2001:db8::/48"]}}]}]},
    {"egress": [{"to": [{"ipBlock": {"cidr": "2001:DB8::/32"}}]}]},
    {"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": []}}]}]},
    {"egress": [{"to": [{"ipBlock": {"cidr": ""}}]}]},
    {"egress": [{"to": [{"ipBlock": {"cidr": " 10.0.0.0/8"}}]}]},
    {"policyTypes": []},
    {"policyTypes": [""]},
    {"egress": []},
    {"egress": [{"to": []}]},
    {"egress": [{"to": [{"namespaceSelector": {"matchLabels": {}}}]}]},
    {"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": [None]}}]}]},
    {"policyTypes": [None]},
]
#: (spec, why we refuse what the API server accepts)
STRICTER: list[tuple[dict[str, Any], str]] = [
    ({"ingress": [None]}, "null rule: Go reads an empty rule (allow all)"),
    ({"ingress": [{"ports": [None]}]}, "null port: Go reads an empty port (any port)"),
]


def json_safe(spec: Any) -> bool:
    try:
        json.dumps(spec, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


CORPUS = [
    spec
    for spec in [*VALID_NETWORK_POLICIES, *(s for s, _ in INVALID_NETWORK_POLICIES), *EXTRA]
    if json_safe(spec) and spec not in [s for s, _ in STRICTER]
]


def apiserver_refuses(api: Api, spec: dict[str, Any], index: int) -> str | None:
    body = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": f"probe-{index}"},
        "spec": spec,
    }
    try:
        api.request("POST", DRY_RUN, body)
    except ApiStatus as exc:
        refusal = exc
    else:
        return None
    assert 400 <= refusal.code < 500, refusal  # a refusal, not a failure of the server
    return str(refusal)


@pytest.mark.parametrize("index", range(len(CORPUS)))
def test_we_refuse_exactly_what_the_apiserver_refuses(api: Api, index: int) -> None:
    spec = CORPUS[index]
    ours = [str(p) for p in problems(network_policy_spec, spec)]
    theirs = apiserver_refuses(api, spec, index)
    assert bool(ours) == bool(theirs), f"{spec}\n  ours: {ours}\n  apiserver: {theirs}"


@pytest.mark.parametrize(("spec", "why"), STRICTER)
def test_where_we_are_stricter_the_apiserver_accepts(
    api: Api, spec: dict[str, Any], why: str
) -> None:
    assert problems(network_policy_spec, spec), why
    assert apiserver_refuses(api, spec, 0) is None, why
