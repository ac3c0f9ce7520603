"""The CalicoNetworkPolicy flavor: Calico's namespaced NetworkPolicy in each governed namespace
(issue #12, items 1 and 2): built-ins, the output allow-list and custom templates."""

from __future__ import annotations

from typing import Any

import pytest

from default_policy_operator.core.labels import MANAGED_BY, MANAGED_BY_VALUE, PROFILE_LABEL
from default_policy_operator.core.model import Profile, parse_profile
from default_policy_operator.core.normalize import state_of
from default_policy_operator.core.objects import (
    CALICO_NETWORK_POLICY,
    NETWORK_POLICY,
    ObjectKey,
    RenderedObject,
    key_of,
)
from default_policy_operator.core.render import RenderError
from tests.inline_render import render_namespace

FLAVOR = "CalicoNetworkPolicy"
HEAD = "apiVersion: crd.projectcalico.org/v1\nkind: NetworkPolicy\n"
NAMESPACE = {"name": "team-a", "labels": {"team": "a"}, "annotations": {}}
KUBE_SYSTEM = 'projectcalico.org/name == "kube-system"'


def make(**spec: Any) -> Profile:
    # An operator configured for the API version the profile names (they must agree).
    api = (spec.get("calico") or {}).get("apiVersion", "crd.projectcalico.org/v1")
    return parse_profile(
        {"metadata": {"name": "base", "uid": "uid-1"}, "spec": spec}, calico_api_version=api
    )


def custom(template: str, **spec: Any) -> Profile:
    off = {"enabled": False}
    policies = {"denyAll": off, "allowDNS": off, "allowKubeSystem": off}
    return make(
        flavor=FLAVOR,
        customPolicies=[{"name": "custom", "template": template}],
        policies=policies,
        **spec,
    )


def rendered(profile: Profile) -> dict[str, RenderedObject]:
    return {o.policy: o for o in render_namespace(profile, NAMESPACE)}


def test_builtins_are_calico_network_policies_in_the_namespace() -> None:
    objects = rendered(make(flavor=FLAVOR, policies={"allowSameNamespace": {"ingress": True}}))
    assert list(objects) == ["deny-all", "allow-dns", "allow-kube-system", "allow-same-namespace"]
    for policy, obj in objects.items():
        assert obj.key == ObjectKey(CALICO_NETWORK_POLICY, "team-a", f"default.dpo-{policy}")
        body = obj.body
        assert (body["apiVersion"], body["kind"]) == ("crd.projectcalico.org/v1", "NetworkPolicy")
        assert body["metadata"]["namespace"] == "team-a"
        assert body["metadata"]["labels"][MANAGED_BY] == MANAGED_BY_VALUE
        assert body["metadata"]["labels"][PROFILE_LABEL] == "base"
        assert body["spec"]["order"] == 2000
        assert body["spec"]["selector"] == "all()"
        assert "namespaceSelector" not in body["spec"]
    assert objects["deny-all"].body["spec"]["types"] == ["Ingress", "Egress"]
    dns = objects["allow-dns"].body["spec"]
    assert dns["types"] == ["Egress"]
    assert [r["destination"]["namespaceSelector"] for r in dns["egress"]] == [KUBE_SYSTEM] * 2
    assert objects["allow-kube-system"].body["spec"]["ingress"] == [
        {"action": "Allow", "source": {"namespaceSelector": KUBE_SYSTEM}}
    ]
    # No namespaceSelector: in a namespaced Calico policy, that means this namespace only.
    assert objects["allow-same-namespace"].body["spec"]["ingress"] == [
        {"action": "Allow", "source": {"selector": "all()"}}
    ]
    assert objects["allow-same-namespace"].body["spec"]["types"] == ["Ingress"]


def test_order_and_api_version_come_from_the_profile() -> None:
    objects = rendered(
        make(flavor=FLAVOR, calico={"order": 2500, "apiVersion": "projectcalico.org/v3"})
    )
    assert {o.body["spec"]["order"] for o in objects.values()} == {2500}
    assert {o.body["apiVersion"] for o in objects.values()} == {"projectcalico.org/v3"}


def test_keys_tell_calico_from_kubernetes_network_policies() -> None:
    (obj,) = rendered(make(flavor=FLAVOR, policies={"allowDNS": {"enabled": False},
                                                    "allowKubeSystem": {"enabled": False}})
                      ).values()  # fmt: skip
    live = {**obj.body, "metadata": {**obj.body["metadata"], "resourceVersion": "7"}}
    assert key_of(live) == obj.key
    assert state_of(live).spec_hash == obj.spec_hash
    kubernetes = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                  "metadata": {"name": "default.dpo-deny-all", "namespace": "team-a"}}  # fmt: skip
    assert key_of(kubernetes).kind == NETWORK_POLICY


def test_a_reference_architecture_example_works_as_a_custom_template() -> None:
    """Calico's ``allow-redis-nodejs``: a service-label selector, ports, action Allow."""
    template = HEAD + (
        "spec:\n"
        "  selector: service == 'redis'\n"
        "  types: [Ingress]\n"
        "  ingress:\n"
        "    - action: Allow\n"
        "      protocol: TCP\n"
        "      source:\n"
        "        selector: service == 'nodejs'\n"
        "      destination:\n"
        "        ports: [6379]\n"
    )
    (obj,) = rendered(custom(template)).values()
    assert obj.key == ObjectKey(CALICO_NETWORK_POLICY, "team-a", "default.dpo-custom")
    assert obj.body["spec"]["selector"] == "service == 'redis'"
    assert obj.body["spec"]["order"] == 2000


@pytest.mark.parametrize(
    ("template", "message"),
    [
        (
            "apiVersion: crd.projectcalico.org/v1\nkind: GlobalNetworkPolicy\nspec: {}\n",
            "may only create crd.projectcalico.org/v1/NetworkPolicy",
        ),
        (
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nspec: {}\n",
            "may only create crd.projectcalico.org/v1/NetworkPolicy",
        ),
        (HEAD + "metadata: {namespace: kube-system}\nspec: {types: [Ingress]}\n",
         "renders into namespace 'kube-system', must be the namespace it is rendered for"),
        (HEAD + "spec: {types: [Ingress], namespaceSelector: all()}\n",
         "spec may not set namespaceSelector"),
        (HEAD + "spec: {selector: all()}\n",
         "a Calico NetworkPolicy must list spec.types explicitly"),
        (HEAD + "spec: {types: [Ingress], selector: 'a ==== b'}\n", "spec.selector: not a Calico"),
        (HEAD + "spec:\n  types: [Ingress]\n  ingress: [{action: Maybe}]\n",
         "spec.ingress[0].action"),
    ],
)  # fmt: skip
def test_the_output_allow_list_holds_for_the_namespaced_kind(template: str, message: str) -> None:
    with pytest.raises(RenderError) as info:
        rendered(custom(template))
    assert message in info.value.message
