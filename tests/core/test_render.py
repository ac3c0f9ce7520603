"""Rendering profiles: built-in objects, the output allow-list, the sandbox and its budgets."""

from __future__ import annotations

import functools
import json
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from default_policy_operator.core.calico_selector import ALL, parse
from default_policy_operator.core.labels import (
    MANAGED_BY,
    MANAGED_BY_VALUE,
    POLICY_LABEL,
    PROFILE_LABEL,
)
from default_policy_operator.core.model import Profile, parse_profile
from default_policy_operator.core.objects import GLOBAL_NETWORK_POLICY, NETWORK_POLICY, ObjectKey
from default_policy_operator.core.render import (
    MAX_OUTPUT_CHARS,
    TRIAL_VALUE,
    RenderedObject,
    Renderer,
    RenderError,
)

CALICO = "CalicoGlobalNetworkPolicy"
NP_HEAD = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
GNP_HEAD = "apiVersion: crd.projectcalico.org/v1\nkind: GlobalNetworkPolicy\n"
#: A NetworkPolicy whose one label value is the expression under test.
PROBE = NP_HEAD + "metadata:\n  labels:\n    probe: {expr}\nspec:\n  policyTypes: [Ingress]\n"
NAMESPACE = {
    "name": "team-a",
    "labels": {"team": "a", "kubernetes.io/metadata.name": "team-a"},
    "annotations": {"owner": "alice"},
}


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer()


def make(name: str = "base", uid: str = "uid-1", **spec: Any) -> Profile:
    metadata = {"name": name, **({"uid": uid} if uid else {})}
    return parse_profile({"metadata": metadata, "spec": spec})


def custom(template: str, name: str = "custom", **spec: Any) -> Profile:
    """A profile with every built-in off and one custom policy."""
    policies = {
        "denyAll": {"enabled": False},
        "allowDNS": {"enabled": False},
        "allowKubeSystem": {"enabled": False},
    }
    return make(customPolicies=[{"name": name, "template": template}], policies=policies, **spec)


def render_one(renderer: Renderer, template: str, namespace: Any = None) -> RenderedObject:
    (obj,) = renderer.render_namespace(custom(template), namespace or NAMESPACE)
    return obj


def render_error(renderer: Renderer, template: str, namespace: Any = None) -> str:
    with pytest.raises(RenderError) as info:
        renderer.render_namespace(custom(template), namespace or NAMESPACE)
    assert info.value.policy == "custom"
    assert str(info.value).startswith("policy 'custom': ")
    return info.value.message


def value_of(renderer: Renderer, expr: str) -> Any:
    """What ``{{ expr }}`` puts into the rendered document."""
    context = {"namespace": NAMESPACE, "profile": {"name": "p", "priority": 0}, "params": {}}
    document = renderer.render_document("value: {{ " + expr + " }}\n", "probe", context)
    return document["value"]


def by_policy(objects: list[RenderedObject]) -> dict[str, RenderedObject]:
    out = {o.policy: o for o in objects}
    assert len(out) == len(objects)
    return out


# -- built-ins, NetworkPolicy flavor ----------------------------------------------------------


def test_builtin_network_policies(renderer: Renderer) -> None:
    profile = make(policies={"allowSameNamespace": {"enabled": True}})
    objects = by_policy(renderer.render_namespace(profile, NAMESPACE))
    assert list(objects) == ["deny-all", "allow-dns", "allow-kube-system", "allow-same-namespace"]
    for policy, obj in objects.items():
        assert obj.key == ObjectKey(NETWORK_POLICY, "team-a", f"dpo-{policy}")
        assert obj.body["apiVersion"] == "networking.k8s.io/v1"
        assert obj.body["kind"] == "NetworkPolicy"
        assert obj.body["metadata"] == {
            "name": f"dpo-{policy}",
            "namespace": "team-a",
            "labels": {MANAGED_BY: MANAGED_BY_VALUE, PROFILE_LABEL: "base", POLICY_LABEL: policy},
            "ownerReferences": [
                {
                    "apiVersion": "defaultpolicy.dev/v1alpha1",
                    "kind": "DefaultPolicyProfile",
                    "name": "base",
                    "uid": "uid-1",
                    "controller": True,
                    "blockOwnerDeletion": False,
                }
            ],
        }
        assert obj.body["spec"]["podSelector"] == {}
    kube_system = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}
    }
    assert objects["deny-all"].body["spec"] == {
        "podSelector": {},
        "policyTypes": ["Ingress", "Egress"],
    }
    assert objects["allow-dns"].body["spec"] == {
        "podSelector": {},
        "policyTypes": ["Egress"],
        "egress": [
            {
                "to": [{**kube_system, "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
                "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
            }
        ],
    }
    assert objects["allow-kube-system"].body["spec"] == {
        "podSelector": {},
        "policyTypes": ["Ingress"],
        "ingress": [{"from": [kube_system]}],
    }
    assert objects["allow-same-namespace"].body["spec"] == {
        "podSelector": {},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [{"from": [{"podSelector": {}}]}],
        "egress": [{"to": [{"podSelector": {}}]}],
    }


def test_builtin_parameters_reach_the_templates(renderer: Renderer) -> None:
    profile = make(
        policies={
            "denyAll": {"ingress": False},
            "allowDNS": {
                "namespace": "dns",
                "podSelector": {"matchExpressions": [{"key": "app", "operator": "Exists"}]},
                "ports": [{"protocol": "UDP", "port": 5353, "endPort": 5354}],
            },
            "allowKubeSystem": {"ingress": False, "egress": True},
        }
    )
    objects = by_policy(renderer.render_namespace(profile, {"name": "x"}))
    assert objects["deny-all"].body["spec"]["policyTypes"] == ["Egress"]
    (rule,) = objects["allow-dns"].body["spec"]["egress"]
    assert rule["to"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "dns"}},
            "podSelector": {"matchExpressions": [{"key": "app", "operator": "Exists"}]},
        }
    ]
    assert rule["ports"] == [{"protocol": "UDP", "port": 5353, "endPort": 5354}]
    spec = objects["allow-kube-system"].body["spec"]
    assert spec["policyTypes"] == ["Egress"]
    assert "ingress" not in spec
    assert spec["egress"] == [
        {
            "to": [
                {
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}
                    }
                }
            ]
        }
    ]


def test_no_owner_reference_without_a_uid(renderer: Renderer) -> None:
    for obj in renderer.render_namespace(make(uid=""), {"name": "x"}):
        assert "ownerReferences" not in obj.body["metadata"]


def test_rendering_does_not_share_mutable_state(renderer: Renderer) -> None:
    first = renderer.render_namespace(make(), {"name": "a"})
    first[0].body["spec"]["policyTypes"].append("Bogus")
    first[0].body["metadata"]["labels"]["x"] = "y"
    second = renderer.render_namespace(make(), {"name": "a"})
    assert second[0].body["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert "x" not in second[0].body["metadata"]["labels"]


# -- built-ins, Calico flavor -----------------------------------------------------------------


def test_builtin_calico_policies(renderer: Renderer) -> None:
    profile = make("cal", flavor=CALICO)
    objects = by_policy(renderer.render_calico(profile, parse('team == "a"')))
    assert list(objects) == ["deny-all", "allow-dns", "allow-kube-system"]
    for policy, obj in objects.items():
        name = f"default.dpo-3-cal-{policy}"
        assert obj.key == ObjectKey(GLOBAL_NETWORK_POLICY, "", name)
        assert obj.body["apiVersion"] == "crd.projectcalico.org/v1"
        assert obj.body["kind"] == "GlobalNetworkPolicy"
        meta = obj.body["metadata"]
        assert meta["name"] == name
        assert "namespace" not in meta
        assert meta["labels"] == {
            MANAGED_BY: MANAGED_BY_VALUE,
            PROFILE_LABEL: "cal",
            POLICY_LABEL: policy,
        }
        assert meta["ownerReferences"][0]["uid"] == "uid-1"
        spec = obj.body["spec"]
        assert spec["order"] == 2000
        assert spec["selector"] == "all()"
        assert spec["namespaceSelector"] == 'team == "a"'
    assert objects["deny-all"].body["spec"]["types"] == ["Ingress", "Egress"]
    dns = objects["allow-dns"].body["spec"]
    assert dns["types"] == ["Egress"]
    assert [r["protocol"] for r in dns["egress"]] == ["UDP", "TCP"]
    for rule in dns["egress"]:
        assert rule["action"] == "Allow"
        assert rule["destination"] == {
            "namespaceSelector": 'projectcalico.org/name == "kube-system"',
            "selector": 'k8s-app == "kube-dns"',
            "ports": [53],
        }
    kube = objects["allow-kube-system"].body["spec"]
    assert kube["types"] == ["Ingress"]
    assert kube["ingress"] == [
        {
            "action": "Allow",
            "source": {"namespaceSelector": 'projectcalico.org/name == "kube-system"'},
        }
    ]
    assert "egress" not in kube


def test_calico_allow_dns_keeps_port_ranges(renderer: Renderer) -> None:
    """A NetworkPolicy ``endPort`` is Calico's ``"start:end"`` port string, not dropped."""
    profile = make(
        "cal",
        flavor=CALICO,
        policies={
            "allowDNS": {
                "ports": [
                    {"protocol": "UDP", "port": 5353, "endPort": 5360},
                    {"protocol": "TCP", "port": 53},
                    {"protocol": "TCP", "port": "dns-tcp"},
                ]
            }
        },
    )
    dns = by_policy(renderer.render_calico(profile, ALL))["allow-dns"].body["spec"]
    assert [(r["protocol"], r["destination"]["ports"]) for r in dns["egress"]] == [
        ("UDP", ["5353:5360"]),
        ("TCP", [53]),
        ("TCP", ["dns-tcp"]),
    ]


def test_calico_order_and_api_version(renderer: Renderer) -> None:
    profile = make(
        "cal",
        flavor=CALICO,
        calico={"order": 150, "apiVersion": "projectcalico.org/v3"},
        policies={"allowKubeSystem": {"egress": True}},
    )
    objects = by_policy(renderer.render_calico(profile, ALL))
    for obj in objects.values():
        assert obj.body["spec"]["order"] == 150
        assert obj.body["apiVersion"] == "projectcalico.org/v3"
    kube = objects["allow-kube-system"].body["spec"]
    assert kube["types"] == ["Ingress", "Egress"]
    assert kube["egress"] == [
        {
            "action": "Allow",
            "destination": {"namespaceSelector": 'projectcalico.org/name == "kube-system"'},
        }
    ]


def test_calico_custom_selector_is_anded_with_the_namespace_selector(renderer: Renderer) -> None:
    template = (
        GNP_HEAD + 'spec:\n  types: [Ingress]\n  namespaceSelector: {{ "tier == \\"web\\"" }}\n'
    )
    (obj,) = renderer.render_calico(custom(template, flavor=CALICO), parse('env == "prod"'))
    assert obj.body["spec"]["namespaceSelector"] == 'env == "prod" && tier == "web"'
    assert obj.body["spec"]["order"] == 2000
    assert obj.key.name == "default.dpo-4-base-custom"


# -- custom templates: what works -------------------------------------------------------------


def test_custom_template_sees_namespace_and_profile(renderer: Renderer) -> None:
    template = NP_HEAD + textwrap.dedent(
        """\
        metadata:
          name: ignored
          labels:
            team: {{ namespace.labels.team }}
            owner: {{ namespace.annotations.owner }}
            where: {{ namespace.name ~ '/' ~ profile.name }}
            {{ 'app.kubernetes.io/managed-by' }}: someone-else
        spec:
          podSelector:
            matchLabels:
              team: {{ namespace.labels.team }}
          policyTypes: [Ingress]
          ingress:
        {% for port in [80, 443] %}
            - ports: [{port: {{ port }}}]
        {% endfor %}
        """
    )
    obj = render_one(renderer, template)
    assert obj.key == ObjectKey(NETWORK_POLICY, "team-a", "dpo-custom")
    assert obj.body["metadata"]["name"] == "dpo-custom"  # the operator names objects
    assert obj.body["metadata"]["labels"] == {
        "team": "a",
        "owner": "alice",
        "where": "team-a/base",
        MANAGED_BY: MANAGED_BY_VALUE,  # operator-set labels win
        PROFILE_LABEL: "base",
        POLICY_LABEL: "custom",
    }
    assert obj.body["spec"] == {
        "podSelector": {"matchLabels": {"team": "a"}},
        "policyTypes": ["Ingress"],
        "ingress": [{"ports": [{"port": 80}]}, {"ports": [{"port": 443}]}],
    }


def test_custom_template_may_name_its_own_namespace(renderer: Renderer) -> None:
    template = NP_HEAD + "metadata:\n  namespace: {{ namespace.name }}\nspec: {}\n"
    assert render_one(renderer, template).body["metadata"]["namespace"] == "team-a"


def test_custom_template_without_api_version_gets_the_allowed_one(renderer: Renderer) -> None:
    obj = render_one(renderer, "kind: NetworkPolicy\nspec: {}\n")
    assert obj.body["apiVersion"] == "networking.k8s.io/v1"
    assert obj.body["spec"] == {"podSelector": {}}


# -- custom templates: what is refused --------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "message"),
    [
        (NP_HEAD + "spec: {% if %}\n", "template syntax error on line 3"),
        (NP_HEAD + "spec: {{ 1 +  }}\n", "template syntax error on line 3"),
        (NP_HEAD + "spec: {% for x in y %}\n", "template syntax error"),
        (NP_HEAD + "spec: {{ 1|nosuchfilter }}\n", "No filter named 'nosuchfilter'"),
        (NP_HEAD + "spec: {{ nosuchvar }}\n", "undefined variable: 'nosuchvar' is undefined"),
        (NP_HEAD + "spec: {{ namespace.labels.missing }}\n", "undefined variable"),
        (NP_HEAD + "spec: {{ params.anything }}\n", "undefined variable"),
        (
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\n"
            "roleRef: {kind: ClusterRole, name: cluster-admin}\nsubjects: []\n",
            "unexpected top-level field(s): roleRef, subjects",
        ),
        (
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nspec: {}\n",
            "renders rbac.authorization.k8s.io/v1/ClusterRoleBinding, but this profile may only "
            "create networking.k8s.io/v1/NetworkPolicy",
        ),
        ("apiVersion: v1\nkind: NetworkPolicy\nspec: {}\n", "renders v1/NetworkPolicy"),
        (
            "kind: GlobalNetworkPolicy\nspec: {}\n",
            "may only create networking.k8s.io/v1/NetworkPolicy",
        ),
        ("spec: {}\n", "renders networking.k8s.io/v1/None"),
        (
            NP_HEAD + "metadata:\n  namespace: kube-system\nspec: {}\n",
            "renders into namespace 'kube-system', must be namespace 'team-a'",
        ),
        (NP_HEAD + "spec: {}\n---\n" + NP_HEAD + "spec: {}\n", "exactly one document, got 2"),
        ("# nothing\n", "exactly one document, got 0"),
        (NP_HEAD + "spec: {}\n...\n---\nkind: Secret\n", "exactly one document, got 2"),
        (
            NP_HEAD + "spec:\n  podSelector: {}\n  ingressClassName: x\n",
            "spec may not set ingressClassName",
        ),
        (NP_HEAD + "spec:\n  b: 1\n  a: 2\n", "spec may not set a, b"),
        (
            NP_HEAD + "metadata:\n  annotations: {a: b}\nspec: {}\n",
            "metadata may not set annotations",
        ),
        (
            NP_HEAD + "metadata:\n  ownerReferences: []\nspec: {}\n",
            "metadata may not set ownerReferences",
        ),
        (NP_HEAD + "metadata: [1]\nspec: {}\n", "metadata must be a mapping"),
        (
            NP_HEAD + "metadata:\n  labels: {a: 1}\nspec: {}\n",
            "metadata.labels must map strings to strings",
        ),
        (
            NP_HEAD + "metadata:\n  labels: [a]\nspec: {}\n",
            "metadata.labels must map strings to strings",
        ),
        (NP_HEAD + "spec: [1]\n", "spec must be a mapping"),
        (NP_HEAD, "spec must be a mapping"),
        (NP_HEAD + "spec: {}\nstatus: {}\n", "unexpected top-level field(s): status"),
        ("- a\n- b\n", "must render a YAML mapping"),
        ("just a string\n", "must render a YAML mapping"),
        (NP_HEAD + "spec: {a: [}\n", "output is not valid YAML"),
        (
            NP_HEAD + "spec: {{ namespace.labels.team|int(0) // 0 }}\n",
            "template failed: ZeroDivisionError",
        ),
    ],
)
def test_custom_template_errors(renderer: Renderer, template: str, message: str) -> None:
    assert message in render_error(renderer, template)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("spec:\n  selector: all()\n", "a GlobalNetworkPolicy must list spec.types explicitly"),
        ("spec:\n  types: []\n", "a GlobalNetworkPolicy must list spec.types explicitly"),
        ("spec:\n  types: [Ingress]\n  doNotTrack: true\n", "spec may not set doNotTrack"),
        ("spec:\n  types: [Ingress]\n  preDNAT: true\n", "spec may not set preDNAT"),
        ("spec:\n  types: [Ingress]\n  applyOnForward: true\n", "spec may not set applyOnForward"),
        (
            "metadata:\n  namespace: default\nspec:\n  types: [Ingress]\n",
            "renders into namespace 'default', must be no namespace (cluster-scoped)",
        ),
    ],
)
def test_custom_calico_template_errors(renderer: Renderer, body: str, message: str) -> None:
    with pytest.raises(RenderError) as info:
        renderer.render_calico(custom(GNP_HEAD + body, flavor=CALICO), ALL)
    assert message in info.value.message


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ("{types: [Ingress], namespaceSelector: 'all()) || (all()'}", "spec.namespaceSelector"),
        ("{types: [Ingress], selector: 'app = web'}", "spec.selector"),
        ("{types: [Ingress], selector: 'global()'}", "spec.selector"),
        ("{types: [Ingress], serviceAccountSelector: 'has(x'}", "spec.serviceAccountSelector"),
        (
            "{types: [Ingress], ingress: [{action: Allow, source: {selector: 'a b'}}]}",
            "spec.ingress[0].source.selector",
        ),
        (
            "{types: [Egress], egress: [{action: Allow}, {action: Allow, destination: "
            "{namespaceSelector: 'global() || all()'}}]}",
            "spec.egress[1].destination.namespaceSelector",
        ),
    ],
)
def test_calico_selectors_that_calico_would_refuse_fail_the_trial(
    renderer: Renderer, spec: str, field: str
) -> None:
    """Refused before anything is written, naming the template (policy) and the field."""
    profile = custom(GNP_HEAD + f"spec: {spec}\n", flavor=CALICO)
    with pytest.raises(RenderError) as info:
        renderer.trial(profile)
    assert info.value.policy == "custom"
    assert info.value.message.startswith(field), info.value.message


def test_calico_profile_may_not_render_a_network_policy(renderer: Renderer) -> None:
    with pytest.raises(
        RenderError, match=r"may only create crd\.projectcalico\.org/v1/GlobalNetwork"
    ):
        renderer.render_calico(custom(NP_HEAD + "spec: {}\n", flavor=CALICO), ALL)
    v3 = custom(
        GNP_HEAD + "spec: {types: [Ingress]}\n",
        flavor=CALICO,
        calico={"apiVersion": "projectcalico.org/v3"},
    )
    with pytest.raises(
        RenderError, match=r"may only create projectcalico\.org/v3/GlobalNetworkPolicy"
    ):
        renderer.render_calico(v3, ALL)


def test_first_failing_policy_is_named(renderer: Renderer) -> None:
    profile = make(
        customPolicies=[
            {"name": "good", "template": NP_HEAD + "spec: {}\n"},
            {"name": "bad", "template": NP_HEAD + "spec: {{ oops }}\n"},
        ]
    )
    with pytest.raises(RenderError) as info:
        renderer.render_namespace(profile, NAMESPACE)
    assert info.value.policy == "bad"


# -- data stays data --------------------------------------------------------------------------

INJECTIONS = [
    "x\nkind: ClusterRoleBinding",
    "a\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {}",
    'a", "kind": "ClusterRoleBinding',
    "a}\nkind: ClusterRoleBinding\nspec: {",
    "{{ 7 * 7 }}",
    "{% raw %}",
    "&anchor !!python/object:os.system",
    "key: value",
    "'quoted' \"both\" \\backslash",
    "",
    "null",
    "true",
    "123",
    "- item",
    "# comment",
    "\u2028line\u2029separators\x85",
]


@pytest.mark.parametrize("value", INJECTIONS)
def test_namespace_data_cannot_change_the_document(renderer: Renderer, value: str) -> None:
    template = NP_HEAD + textwrap.dedent(
        """\
        metadata:
          labels:
            from-label: {{ namespace.labels.evil }}
            from-annotation: {{ namespace.annotations.evil }}
            composed: {{ 'team-' ~ namespace.labels.evil }}
        spec:
          podSelector:
            matchLabels:
              evil: {{ namespace.annotations.evil }}
          policyTypes: [Ingress]
        """
    )
    namespace = {"name": "team-a", "labels": {"evil": value}, "annotations": {"evil": value}}
    obj = render_one(renderer, template, namespace)
    assert obj.body["kind"] == "NetworkPolicy"
    labels = obj.body["metadata"]["labels"]
    assert labels["from-label"] == value
    assert labels["from-annotation"] == value
    assert labels["composed"] == "team-" + value
    assert obj.body["spec"] == {
        "podSelector": {"matchLabels": {"evil": value}},
        "policyTypes": ["Ingress"],
    }


@pytest.mark.parametrize(
    ("expr", "value"),
    [
        ("namespace.labels", {"team": "a", "kubernetes.io/metadata.name": "team-a"}),
        ("[1, 'two', none, true]", [1, "two", None, True]),
        ("3.5", 3.5),
        ("'x' * 3", "xxx"),
        ("namespace.name|upper", "TEAM-A"),
        ("range(3)|list", [0, 1, 2]),
        ("'%s-%s'|format('a', 'b')", "a-b"),
        ("'{}-{}'.format('a', 'b')", "a-b"),
        ("2 ** 10", 1024),
        ("10 ** 64 > 1", True),
    ],
)
def test_expressions_are_emitted_as_json_values(renderer: Renderer, expr: str, value: Any) -> None:
    assert value_of(renderer, expr) == value


# -- the sandbox ------------------------------------------------------------------------------

ESCAPES = [
    "''.__class__.__mro__[1].__subclasses__()",
    "''.__class__",
    "().__class__.__bases__[0].__subclasses__()",
    "cycler.__init__.__globals__",
    "joiner.__init__.__globals__",
    "range.__self__",
    "dict.__init__.__globals__",
    "lipsum.__globals__",
    "self._TemplateReference__context",
    "self.__init__.__globals__",
    "self",
    "'{0.__class__}'.format(namespace)",
    "'{0.__class__.__mro__}'.format('')",
    "'{x.__class__}'.format_map({'x': ''})",
    "'{0.__globals__}'.format(cycler.__init__)",
    "namespace.labels.update({})",
    "namespace.labels.pop('team')",
    "namespace.labels.clear()",
    "namespace.labels.__setitem__('a', 'b')",
    "[].append(1)",
    "namespace.name.__len__",
    "''|attr('__class__')",
    "'{0.__class__}'|attr('format')",
    "namespace.labels|pprint",
    "namespace.labels|xmlattr",
    "namespace.name|urlize",
    "config",
    "request.application",
    "__import__('os')",
    "self.__dict__",
    "namespace.__class__",
    "profile.__class__",
    "params.__class__.__base__",
]


#: How a refused template may fail; anything else (a YAML or allow-list complaint) would mean
#: the expression itself went through.
SANDBOX_REFUSALS = (
    "blocked by the template sandbox: ",
    "undefined variable: ",
    "template syntax error on line ",
    "template failed: TemplateRuntimeError: ",
)


def sandbox_refusal(renderer: Renderer, template: str) -> str:
    context = {"namespace": NAMESPACE, "profile": {"name": "p", "priority": 0}, "params": {}}
    with pytest.raises(RenderError) as info:
        renderer.render_document(template, "probe", context)
    assert info.value.message.startswith(SANDBOX_REFUSALS), info.value.message
    return info.value.message


@pytest.mark.parametrize("expr", ESCAPES)
def test_sandbox_escapes_are_blocked(renderer: Renderer, expr: str) -> None:
    sandbox_refusal(renderer, "value: {{ " + expr + " }}\n")


@pytest.mark.parametrize(
    "template",
    [
        "{% set f = '{0.__class__}'.format %}{{ f('') }}",  # CVE-2024-56326: indirect format
        "{% set f = '{x.__class__}'.format_map %}{{ f({'x': ''}) }}",
        "{% set x = namespace.labels %}{% set x.team = 'b' %}{{ 1 }}",
        "{% for k in namespace.labels %}{{ namespace.labels.pop(k) }}{% endfor %}",
        "{{ namespace.labels.setdefault('x', 'y') }}",
        "{% set ns = dict(a=1) %}{{ ns.__class__ }}",
    ],
)
def test_sandbox_escapes_in_statements_are_blocked(renderer: Renderer, template: str) -> None:
    sandbox_refusal(renderer, "value: " + template + "\n")


def test_immutable_context_is_left_untouched(renderer: Renderer) -> None:
    namespace = {"name": "x", "labels": {"team": "a"}, "annotations": {}}
    render_error(
        renderer, PROBE.format(expr="{{ namespace.labels.update({'team': 'b'}) }}"), namespace
    )
    assert namespace["labels"] == {"team": "a"}


def test_sandbox_message_says_what_was_blocked(renderer: Renderer) -> None:
    message = render_error(renderer, PROBE.format(expr="{{ ''.__class__ }}"))
    assert message.startswith("blocked by the template sandbox: ")
    assert "__class__" in message


# -- budgets ----------------------------------------------------------------------------------


BUDGETS = [
    ("{{ 'a' * 100000000 }}", "a value longer than 65536 characters"),
    ("{{ 100000000 * 'a' }}", "a value longer than 65536 characters"),
    ("{{ [1] * 100000000 }}", "a value longer than 65536 characters"),
    ("{{ 'a' * 60000 + 'b' * 60000 }}", "a value longer than 65536 characters"),
    ("{{ range(100000)|list|string }}", "a value longer than 65536 characters"),
    ("{{ 'x'|center(100000000) }}", "a filter argument above 1000000"),
    ("{{ 'x'|indent(100000000) }}", "a filter argument above 1000000"),
    ("{{ 'x'.center(100000000) }}", "a call argument above 1000000"),
    ("{{ '{:>100000000}'.format(1) }}", "a format width above 1000000"),
    ("{{ '%100000000d' % 1 }}", "a format width above 1000000"),
    ("{{ '%*d' % (100000000, 1) }}", "a format width above 1000000"),
    ("{{ ('x\n' * 30000)|indent(1000) }}", "a value longer than 65536 characters"),
    ("{{ ('a' * 60000)|wordwrap(1) }}", "a value longer than 65536 characters"),
    ("{{ ('{0}' * 100).format('x' * 1000) }}", "a value longer than 65536 characters"),
    ("{{ ('%s' * 100) % (('x' * 1000,) * 100) }}", "a value longer than 65536 characters"),
    ("{{ ('x' * 1000) ~ ('y' * 65000) }}", "a value longer than 65536 characters"),
    ("{{ range(10000)|join('x' * 10) }}", "a value longer than 65536 characters"),
    ("{{ range(20000)|list|tojson(4) }}", "a value longer than 65536 characters"),
    (
        "{% macro m() %}{% for i in range(1000) %}{{ 'x' * 1000 }}{% endfor %}{% endmacro %}"
        "{{ m()|length }}",
        f"{MAX_OUTPUT_CHARS} characters of output",
    ),
    (
        "{% set s %}{% for i in range(1000) %}" + "x" * 1000 + "{% endfor %}{% endset %}{{ 1 }}",
        f"{MAX_OUTPUT_CHARS} characters of output",
    ),
    (
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "the time limit",
    ),
    ("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", "recursed too deeply"),
    ("{% macro f(n) %}{{ f(n + 1) ~ f(n + 1) }}{% endmacro %}{{ f(1) }}", "recursed too deeply"),
    (
        "{% for i in range(100000) %}{% for j in range(1000) %}xxxxxxxxxx{% endfor %}{% endfor %}",
        f"{MAX_OUTPUT_CHARS} characters of output",
    ),
    ("{% for i in range(100000) %}{{ i }}{% endfor %}", "characters of output"),
    ("{{ range(100000000)|list }}", "Range too big"),
    ("{{ 10 ** 100 }}", "an exponent above 64"),
    ("{{ 10 ** 64 ** 64 ** 64 ** 64 }}", "an integer above"),  # left-associative: 10**(64**4)
    ("{{ (10 ** 64 ** 64) * (10 ** 64 ** 64) }}", "an integer above"),
    (  # squaring 30 times in a row: each step doubles the digits
        "{% macro sq(x, n) %}{{ sq(x * x, n - 1) if n else 1 }}{% endmacro %}"
        "{{ sq(10 ** 64, 30) }}",
        "an integer above",
    ),
    ("{{ cycler(1, 2) }}", "undefined variable"),
    ("{{ lipsum(100000) }}", "undefined variable"),  # ran 10 s inside one call
    ("{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}", "template nests too deeply"),
    ("{{ " + "not " * 4000 + "1 }}", "template nests too deeply"),
    ("{% for i in [1] %}" * 25 + "{% endfor %}" * 25, "template nests too deeply"),
    ("{% if 1 %}" * 100 + "{% endif %}" * 100, "template nests too deeply"),
]


@pytest.mark.parametrize(("expr", "message"), BUDGETS)
def test_resource_exhaustion_ends_in_a_render_error_quickly(
    renderer: Renderer, expr: str, message: str
) -> None:
    start = time.monotonic()
    found = render_error(renderer, PROBE.format(expr=expr))
    elapsed = time.monotonic() - start
    assert message in found
    assert elapsed < 3.0


def test_time_limit_is_per_render() -> None:
    slow = Renderer(time_limit=0.05)
    template = PROBE.format(
        expr="{% for i in range(100000) %}{% for j in range(10) %}{% endfor %}{% endfor %}{{ 'x' }}"
    )
    with pytest.raises(RenderError, match="the time limit"):
        slow.render_namespace(custom(template), NAMESPACE)
    # the deadline is reset: the next render of a cheap template works
    (obj,) = slow.render_namespace(custom(PROBE.format(expr="{{ 'x' }}")), NAMESPACE)
    assert obj.body["metadata"]["labels"]["probe"] == "x"


@pytest.mark.parametrize("sequence", ["range(1500)", "'a' * 1500", "range(1500)|list"])
def test_time_limit_holds_in_loops_that_call_nothing(sequence: str) -> None:
    slow = Renderer(time_limit=0.05)
    expr = (
        "{% set seq = " + sequence + " %}"
        "{% for a in seq %}{% for b in seq %}{% endfor %}{% endfor %}{{ 'x' }}"
    )
    start = time.monotonic()
    with pytest.raises(RenderError, match="the time limit"):
        slow.render_namespace(custom(PROBE.format(expr=expr)), NAMESPACE)
    assert time.monotonic() - start < 1.0


CALL_FREE_LOOPS = [
    "{% set seq = range(1500) %}{% for a in seq %}{% for b in seq %}{% endfor %}{% endfor %}",
    "{% set seq = range(1500)|list %}"
    "{% for a in seq %}{% for b in seq if b is none %}{% endfor %}{% endfor %}",
    "{% set seq = range(1500) %}{% for a in seq %}"
    "{% for b in seq %}{% if 0 %}{{ loop.length }}{% endif %}{% endfor %}{% endfor %}",
    "{% set seq = [range(1500)|list] * 1500 %}"
    "{% for a in seq recursive %}{% if a is iterable %}{{ loop(a) }}{% endif %}{% endfor %}",
]


def in_worker_thread(func: Callable[[], Any]) -> Any:
    """Run ``func`` in another thread (no alarm there); return its result or raise its error."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append((True, func()))
        except BaseException as exc:
            outcome.append((False, exc))

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive()
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


@pytest.mark.parametrize("expr", CALL_FREE_LOOPS)
def test_time_limit_holds_outside_the_main_thread(expr: str) -> None:
    """Only the main thread gets the wall-clock alarm; elsewhere each loop item checks."""
    slow = Renderer(time_limit=0.05)
    profile = custom(PROBE.format(expr=expr + "{{ 'x' }}"))
    start = time.monotonic()
    with pytest.raises(RenderError, match="the time limit"):
        in_worker_thread(lambda: slow.render_namespace(profile, NAMESPACE))
    assert time.monotonic() - start < 1.0


def test_the_alarm_is_cleaned_up_and_never_fires_late() -> None:
    fired: list[int] = []
    previous = signal.signal(signal.SIGALRM, lambda signum, frame: fired.append(signum))
    try:
        handler = signal.getsignal(signal.SIGALRM)
        quick = Renderer(time_limit=0.05)
        for _ in range(20):  # renders that finish in time ...
            quick.render_namespace(make(), NAMESPACE)
        with pytest.raises(RenderError, match="the time limit"):  # ... and one that does not
            quick.render_namespace(custom(PROBE.format(expr=CALL_FREE_LOOPS[0])), NAMESPACE)
        assert signal.getsignal(signal.SIGALRM) is handler
        assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
        time.sleep(0.15)  # longer than the time limit: nothing may go off now
        assert fired == []
        # a timer somebody else had running survives a render, and still goes off
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        quick.render_namespace(make(), NAMESPACE)
        assert 0 < signal.getitimer(signal.ITIMER_REAL)[0] <= 0.2
        time.sleep(0.3)
        assert fired == [signal.SIGALRM]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("threaded", [False, True], ids=["main-thread", "worker-thread"])
def test_nested_renders_keep_the_outer_time_limit(threaded: bool) -> None:
    """A render inside a render (through a context callable here) is safe: the outer deadline
    holds again once the inner render returned, and bounds the inner render too."""

    def run(func: Callable[[], Any]) -> Any:
        return in_worker_thread(func) if threaded else func()

    renderer = Renderer(time_limit=0.2)
    context = {
        "inner": lambda: renderer.render_document("value: {{ 'in' }}\n", "inner", {})["value"],
    }
    document = run(lambda: renderer.render_document("value: {{ inner() }}\n", "outer", context))
    assert document == {"value": "in"}
    start = time.monotonic()
    with pytest.raises(RenderError, match="the time limit"):
        run(lambda: renderer.render_document("{{ inner() }}" + CALL_FREE_LOOPS[0], "x", context))
    assert time.monotonic() - start < 1.0
    context = {"inner": lambda: renderer.render_document(CALL_FREE_LOOPS[0], "inner", {})}
    start = time.monotonic()
    with pytest.raises(RenderError, match="the time limit"):
        run(lambda: renderer.render_document("{{ inner() }}", "outer", context))
    assert time.monotonic() - start < 1.0
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


@pytest.mark.parametrize(
    ("expr", "value"),
    [
        ("30000|string", "30000"),
        ("1000000|string", "1000000"),
        ("123456789|string", "123456789"),  # the value filtered is data, not a width
        ("'%d-%d'|format(30000, 32767)", "30000-32767"),
        ("'%d' % 30000", "30000"),
        ("'{}'.format(30000)", "30000"),
        ("'{:>8}'.format(30000)", "   30000"),
        ("[30000, 32767]|max", 32767),
        ("range(30000, 30003)|list", [30000, 30001, 30002]),
        ("'x'|center(30000)|length", 30000),
        ("'x'.center(30000)|length", 30000),
        ("'x'.zfill(60000)|length", 60000),
        ("[{'port': 30000, 'endPort': 32767}]", [{"port": 30000, "endPort": 32767}]),
        ("'a-b'|replace('-', '--')", "a--b"),
        ("['a', 'b']|join(', ')", "a, b"),
        ("'\\t'.expandtabs(4)", "    "),
        ("'\\t'.expandtabs(tabsize=2)", "  "),
        ("'{0!r:>5}'.format('a')", "  'a'"),
        ("'%.2f|%5s' % (2.5, 'x')", "2.50|    x"),
        ("('%s' * 300) % ((1,) * 300)", "1" * 300),
        ("'ab'.translate({97: 'xy'})", "xyb"),
        ("[[1], [2]]|sum(start=[])", [1, 2]),
        ("'a\\nb'|indent(2)", "a\n  b"),
        ("'{x}'.format_map({'x': 1})", "1"),
        ("'%(a)s=%(b)s' % {'a': 1, 'b': 2}", "1=2"),
        ("namespace.labels|tojson", '{"kubernetes.io/metadata.name": "team-a", "team": "a"}'),
        ("'x' ~ 1 ~ [2]", "x1[2]"),
    ],
)
def test_ordinary_numbers_and_strings_pass_the_budgets(
    renderer: Renderer, expr: str, value: Any
) -> None:
    assert value_of(renderer, expr) == value


#: Amplification inside one operation: the guards must refuse before allocating, not rely on a
#: MemoryError (in a pod, the kernel's OOM killer comes first). Run in a child process whose
#: address space is capped, so a failure cannot hurt the machine.
AMPLIFIERS: dict[str, str] = {
    "string-repeat": "{{ 'a' * 10000000000 }}",
    "filter-argument": "{{ 'x'|center(10000000000) }}",
    "replace": "{{ ('a' * 60000)|replace('a', 'b' * 60000) }}",
    "join": "{{ range(100000)|join('x' * 60000) }}",
    "concat-doubling": "{% set a = 'a' * 60000 %}" + "{% set a = a ~ a %}" * 14 + "{{ 1 }}",
    "nested-list-output": "{% set a = ['x' * 60000] %}" + "{% set a = [a, a] %}" * 14 + "{{ a }}",
    "str-method-width": "{{ 'x'.center(10000000000) }}",
    "format-width": "{{ '{:>10000000000}'.format(1) }}",
    "percent-width": "{{ '%010000000000d' % 1 }}",
    # output collected by a macro or block grows until it is joined
    "macro-output": "{% macro m() %}{% for i in range(100000) %}{{ 'x' * 60000 }}{% endfor %}"
    "{% endmacro %}{{ m()|length }}",
    "macro-constant": "{% macro m() %}{% for i in range(100000) %}" + "x" * 8000 + "{% endfor %}"
    "{% endmacro %}{{ m()|length }}",
    "block-set": "{% set s %}{% for i in range(100000) %}{{ 'x' * 60000 }}{% endfor %}"
    "{% endset %}{{ s|length }}",
    "filter-block": "{% filter length %}{% for i in range(100000) %}{{ 'x' * 60000 }}"
    "{% endfor %}{% endfilter %}",
    # one call, many lines or repetitions
    "indent-lines": "{{ ('x\\n' * 30000)|indent(1000000) }}",
    "indent-string": "{{ ('x\\n' * 30000)|indent('y' * 60000) }}",
    "wordwrap-wrapstring": "{{ ('a' * 60000)|wordwrap(1, wrapstring='x' * 60000) }}",
    "format-repeat": "{{ ('{0}' * 20000).format('x' * 60000) }}",
    "percent-repeat": "{{ ('%s' * 20000) % (('x' * 60000,) * 20000) }}",
    "percent-mapping": "{{ ('%(a)s' * 10000) % {'a': 'x' * 60000} }}",
    "percent-star": "{{ ('%*s' * 10000) % ((1000000, 'x') * 10000) }}",
    "format-filter-repeat": "{{ ('%s' * 20000)|format(*(('x' * 60000,) * 20000)) }}",
    "tojson-indent": "{{ (range(60000)|list)|tojson(1000000) }}",
    "tojson-deep": "{% set a = [1] %}" + "{% set a = [a] %}" * 200 + "{{ a|tojson(1000000) }}",
    "expandtabs": "{{ ('\\t' * 60000).expandtabs(1000000) }}",
    "translate": "{{ ('a' * 60000).translate({97: 'b' * 60000}) }}",
    "str-join": "{{ ('x' * 60000).join(range(100000)|map('string')) }}",
    "join-generator": "{{ range(100000)|map('center', 60000)|join }}",
    "bytes-replace": "{{ ('a' * 60000).encode().replace('a'.encode(), ('b' * 60000).encode()) }}",
    "sum-lists": "{{ ([range(60000)|list] * 60000)|sum(start=[]) }}",
    # a value that shares its parts, spelt out
    "string-of-nested": "{% set a = ['x' * 60000] %}"
    + "{% set a = [a, a] %}" * 14
    + "{{ a|string|length }}",
    "concat-nested": "{% set a = ['x' * 60000] %}"
    + "{% set a = [a, a] %}" * 14
    + "{{ (a ~ '')|length }}",
    "format-nested": "{% set a = ['x' * 60000] %}"
    + "{% set a = [a, a] %}" * 14
    + "{{ '{}'.format(a)|length }}",
    "format-nested-repr": "{% set a = ['x' * 60000] %}"
    + "{% set a = [a, a] %}" * 14
    + "{% set f = '{0!r:.1}'.format %}{{ f(a) }}",
    "expandtabs-keyword": "{{ ('\\t' * 60000).expandtabs(tabsize=1000000) }}",
    # constant folding while compiling
    "folded-output": "{{ 'a'|center(60000) }}" * 600,
}
_CHILD = r"""
import json, resource, sys
limit = 192 * 1024 * 1024
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from default_policy_operator.core.render import Renderer, RenderError
from default_policy_operator.core.model import parse_profile
cases, probe = json.loads(sys.stdin.read())
renderer = Renderer()
results = {}
for name, expr in cases.items():
    profile = parse_profile({"metadata": {"name": "p"}, "spec": {
        "policies": {"denyAll": {"enabled": False}, "allowDNS": {"enabled": False},
                     "allowKubeSystem": {"enabled": False}},
        "customPolicies": [{"name": "c", "template": probe.replace("{expr}", expr)}]}})
    try:
        renderer.render_namespace(profile, {"name": "n"})
        results[name] = "rendered"
    except RenderError as exc:
        results[name] = exc.message
    except BaseException as exc:
        results[name] = f"{type(exc).__name__}: {exc}"
print(json.dumps(results))
"""


@functools.cache
def _amplifier_results() -> dict[str, str]:
    result = subprocess.run(
        [sys.executable, "-c", _CHILD],
        input=json.dumps([AMPLIFIERS, PROBE]),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    results: dict[str, str] = json.loads(result.stdout)
    return results


@pytest.mark.parametrize("name", AMPLIFIERS)
def test_amplification_is_refused_before_allocating(name: str) -> None:
    message = _amplifier_results()[name]
    assert message.startswith("template exceeded "), message


# -- trial ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "profile",
    [
        make(),
        make(policies={"allowSameNamespace": {"ingress": True}}),
        make(flavor=CALICO),
        make(flavor=CALICO, calico={"apiVersion": "projectcalico.org/v3", "order": 10}),
    ],
)
def test_trial_accepts_the_builtins(renderer: Renderer, profile: Profile) -> None:
    renderer.trial(profile)


@pytest.mark.parametrize(
    ("template", "message"),
    [
        (NP_HEAD + "spec: {% if %}\n", "template syntax error"),
        (NP_HEAD + "spec: {{ ''.__class__ }}\n", "blocked by the template sandbox"),
        (
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nspec: {}\n",
            "ClusterRoleBinding",
        ),
        (NP_HEAD + "metadata: {namespace: other}\nspec: {}\n", "renders into namespace 'other'"),
        (NP_HEAD + "spec: {}\n---\n" + NP_HEAD + "spec: {}\n", "exactly one document"),
        (NP_HEAD + "spec: {hostNetwork: true}\n", "spec may not set hostNetwork"),
        (NP_HEAD + "spec: {{ nosuchvar }}\n", "undefined variable"),
        (
            NP_HEAD + "spec: {% for i in range(100000) %}{% for j in range(100000) %}"
            "{% endfor %}{% endfor %}{}\n",
            "time limit",
        ),
    ],
)
def test_trial_rejects_bad_templates(template: str, message: str) -> None:
    with pytest.raises(RenderError) as info:
        Renderer(time_limit=0.1).trial(custom(template))
    assert message in info.value.message


def test_trial_tolerates_a_missing_namespace_label(renderer: Renderer) -> None:
    template = NP_HEAD + (
        "spec:\n  podSelector:\n    matchLabels:\n      team: {{ namespace.labels.team }}\n"
    )
    profile = custom(template)
    renderer.trial(profile)  # the sample namespace has no labels: data-dependent, not a bug
    with pytest.raises(RenderError, match="undefined variable"):
        renderer.render_namespace(profile, {"name": "bare"})
    (obj,) = renderer.render_namespace(profile, NAMESPACE)
    assert obj.body["spec"]["podSelector"] == {"matchLabels": {"team": "a"}}


def test_trial_tolerates_a_missing_annotation(renderer: Renderer) -> None:
    template = (
        NP_HEAD + "metadata:\n  labels:\n    o: {{ namespace.annotations.owner }}\nspec: {}\n"
    )
    renderer.trial(custom(template))


@pytest.mark.parametrize(
    "expr",
    [
        "namespace.labels.team",
        "namespace.labels['app.kubernetes.io/name']",
        "namespace.annotations.owner|upper",
        "namespace.labels.get('team', 'none')",
        "namespace.labels.team|default('x')",
        "namespace.labels|length",
    ],
)
def test_trial_reads_missing_namespace_data_as_a_placeholder(expr: str) -> None:
    """The trial renders the whole template, past the labels the sample namespace lacks."""
    trial = Renderer()
    seen: list[Any] = []
    trial._stamp = lambda profile, policy, document, namespace: seen.append(document)  # type: ignore[method-assign]
    trial.trial(custom(PROBE.format(expr="{{ " + expr + " }}")))
    assert seen[0]["metadata"]["labels"]["probe"] in (TRIAL_VALUE, TRIAL_VALUE.upper(), "none", 0)


@pytest.mark.parametrize(
    "expr",
    [
        "namespace.labels.team ~ parms.port",  # the undefined name comes after a missing label
        "namespace.annotations.owner ~ namespace.nme",
        "namespace.labels.team.nosuchattr",  # a label is a string, everywhere
        "[namespace.labels.team, nosuchvar]",
    ],
)
def test_trial_rejects_undefined_names_next_to_missing_namespace_data(
    renderer: Renderer, expr: str
) -> None:
    with pytest.raises(RenderError, match="undefined variable"):
        renderer.trial(custom(PROBE.format(expr="{{ " + expr + " }}")))


def test_trial_rejects_calico_templates_that_read_namespace(renderer: Renderer) -> None:
    """A GlobalNetworkPolicy is rendered without any namespace: it would fail every time."""
    template = (
        GNP_HEAD + "metadata:\n  labels:\n    n: {{ namespace.name }}\nspec: {types: [Ingress]}\n"
    )
    profile = custom(template, flavor=CALICO)
    with pytest.raises(RenderError, match="undefined variable"):
        renderer.render_calico(profile, ALL)
    with pytest.raises(RenderError, match="undefined variable"):
        renderer.trial(profile)


def test_trial_rejects_a_misspelt_variable_next_to_namespace_data(renderer: Renderer) -> None:
    template = NP_HEAD + (
        "metadata:\n  labels:\n    n: {{ namespace.name }}\n    p: {{ parms.port }}\nspec: {}\n"
    )
    with pytest.raises(RenderError):
        renderer.render_namespace(custom(template), NAMESPACE)  # fails everywhere ...
    with pytest.raises(RenderError):
        renderer.trial(custom(template))  # ... so admission should refuse it


def test_compile_cache_reuses_and_reports_namespace_use(renderer: Renderer) -> None:
    first = renderer.compile(NP_HEAD + "spec: {{ namespace.name }}\n", "x")
    again = renderer.compile(NP_HEAD + "spec: {{ namespace.name }}\n", "x")
    assert first[0] is again[0]
    assert first[1] is True
    assert renderer.compile(NP_HEAD + "spec: {{ params }}\n", "x")[1] is False
