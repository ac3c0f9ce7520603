"""Rendering profiles: built-in objects, the output allow-list, validation, the sandbox.

Templates that behave render here in the test's own process (the rules are pure); hostile ones
(time, memory, recursion) go through the render pool's worker processes, as in the operator:
``tests/rendering/test_pool.py`` covers the pool itself.
"""

from __future__ import annotations

import functools
import json
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import pytest

from default_policy_operator.core import render
from default_policy_operator.core.labels import (
    MANAGED_BY,
    MANAGED_BY_VALUE,
    POLICY_LABEL,
    PROFILE_LABEL,
)
from default_policy_operator.core.model import Profile, parse_profile
from default_policy_operator.core.objects import (
    GLOBAL_NETWORK_POLICY,
    NETWORK_POLICY,
    ObjectKey,
    RenderedObject,
)
from default_policy_operator.core.render import (
    MAX_OUTPUT_CHARS,
    TRIAL_VALUE,
    Renderer,
    RenderError,
    trial_tasks,
)
from default_policy_operator.core.selector import valid_label_value
from default_policy_operator.rendering.pool import PoolSettings, RenderPool
from tests.inline_render import render_calico, render_namespace, trial

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


@pytest.fixture(scope="module")
def pool() -> Iterator[RenderPool]:
    with RenderPool(PoolSettings(size=2, time_limit=1.0)) as pool:
        yield pool


def make(name: str = "base", uid: str = "uid-1", **spec: Any) -> Profile:
    metadata = {"name": name, **({"uid": uid} if uid else {})}
    # An operator configured for the API version the profile names (they must agree).
    api = (spec.get("calico") or {}).get("apiVersion", "crd.projectcalico.org/v1")
    return parse_profile({"metadata": metadata, "spec": spec}, calico_api_version=api)


def custom(template: str, name: str = "custom", **spec: Any) -> Profile:
    """A profile with every built-in off and one custom policy."""
    policies = {
        "denyAll": {"enabled": False},
        "allowDNS": {"enabled": False},
        "allowKubeSystem": {"enabled": False},
    }
    return make(customPolicies=[{"name": name, "template": template}], policies=policies, **spec)


def render_one(renderer: Renderer, template: str, namespace: Any = None) -> RenderedObject:
    (obj,) = render_namespace(custom(template), namespace or NAMESPACE)
    return obj


def render_error(renderer: Renderer, template: str, namespace: Any = None) -> str:
    with pytest.raises(RenderError) as info:
        render_namespace(custom(template), namespace or NAMESPACE)
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
    objects = by_policy(render_namespace(profile, NAMESPACE))
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
    objects = by_policy(render_namespace(profile, {"name": "x"}))
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
    for obj in render_namespace(make(uid=""), {"name": "x"}):
        assert "ownerReferences" not in obj.body["metadata"]


def test_rendering_does_not_share_mutable_state(renderer: Renderer) -> None:
    first = render_namespace(make(), {"name": "a"})
    first[0].body["spec"]["policyTypes"].append("Bogus")
    first[0].body["metadata"]["labels"]["x"] = "y"
    second = render_namespace(make(), {"name": "a"})
    assert second[0].body["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert "x" not in second[0].body["metadata"]["labels"]


# -- built-ins, Calico flavor -----------------------------------------------------------------


def test_builtin_calico_policies(renderer: Renderer) -> None:
    profile = make("cal", flavor=CALICO)
    objects = by_policy(render_calico(profile, 'team == "a"'))
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
    dns = by_policy(render_calico(profile, "all()"))["allow-dns"].body["spec"]
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
    objects = by_policy(render_calico(profile, "all()"))
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
    (obj,) = render_calico(custom(template, flavor=CALICO), 'env == "prod"')
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
            where: {{ namespace.name ~ '.' ~ profile.name }}
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
        "where": "team-a.base",
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
        (
            NP_HEAD + "spec: {podSelector: {matchLabels: {a: {{ namespace.labels.missing }}}}}\n",
            "undefined variable",
        ),
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
            "renders into namespace 'kube-system', must be the namespace it is rendered for",
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
        (
            "spec:\n  selector: all()\n",
            "a Calico GlobalNetworkPolicy must list spec.types explicitly",
        ),
        ("spec:\n  types: []\n", "a Calico GlobalNetworkPolicy must list spec.types explicitly"),
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
        render_calico(custom(GNP_HEAD + body, flavor=CALICO), "all()")
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
        trial(profile)
    assert info.value.policy == "custom"
    assert info.value.message.startswith(field), info.value.message


def test_calico_profile_may_not_render_a_network_policy(renderer: Renderer) -> None:
    with pytest.raises(
        RenderError, match=r"may only create crd\.projectcalico\.org/v1/GlobalNetwork"
    ):
        render_calico(custom(NP_HEAD + "spec: {}\n", flavor=CALICO), "all()")
    v3 = custom(
        GNP_HEAD + "spec: {types: [Ingress]}\n",
        flavor=CALICO,
        calico={"apiVersion": "projectcalico.org/v3"},
    )
    with pytest.raises(
        RenderError, match=r"may only create projectcalico\.org/v3/GlobalNetworkPolicy"
    ):
        render_calico(v3, "all()")


def test_first_failing_policy_is_named(renderer: Renderer) -> None:
    profile = make(
        customPolicies=[
            {"name": "good", "template": NP_HEAD + "spec: {}\n"},
            {"name": "bad", "template": NP_HEAD + "spec: {{ oops }}\n"},
        ]
    )
    with pytest.raises(RenderError) as info:
        render_namespace(profile, NAMESPACE)
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
    """Each injected value stays one string where it was put (the YAML document as parsed,
    before validation, which then refuses the values that are no valid label values)."""
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
    context = {
        "namespace": {"name": "team-a", "labels": {"evil": value}, "annotations": {"evil": value}},
        "profile": {"name": "p", "priority": 0},
        "params": {},
    }
    document = renderer.render_document(template, "custom", context)
    assert document == {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "labels": {"from-label": value, "from-annotation": value, "composed": "team-" + value}
        },
        "spec": {"podSelector": {"matchLabels": {"evil": value}}, "policyTypes": ["Ingress"]},
    }
    namespace = {"name": "team-a", "labels": {"evil": value}, "annotations": {"evil": value}}
    if valid_label_value(value) and valid_label_value("team-" + value):
        assert render_one(renderer, template, namespace).body["kind"] == "NetworkPolicy"
    else:
        assert "is not a valid label value" in render_error(renderer, template, namespace)


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


# -- budgets: enforced by the worker processes' limits -----------------------------------------

#: (template expression, what the RenderError says). Exhaustion the worker's OS limits stop
#: (time, memory) says "template exceeded ..." whichever limit a given machine hits first.
BUDGETS = [
    ("{{ 'a' * 100000000 }}", "template exceeded"),
    ("{{ 100000000 * 'a' }}", "template exceeded"),
    ("{{ [1] * 100000000 }}", "template exceeded"),
    ("{{ 'a' * 60000 + 'b' * 60000 }}", "a value longer than 65536 characters"),
    ("{{ range(100000)|list|string }}", "a value longer than 65536 characters"),
    ("{{ 'x'|center(100000000) }}", "template exceeded"),
    ("{{ 'x'.center(100000000) }}", "template exceeded"),
    ("{{ '{:>100000000}'.format(1) }}", "template exceeded"),
    ("{{ '%100000000d' % 1 }}", "template exceeded"),
    ("{{ '%*d' % (100000000, 1) }}", "template exceeded"),
    ("{{ ('x\n' * 30000)|indent(1000) }}", "template exceeded"),
    ("{{ ('a' * 60000)|wordwrap(1) }}", "template exceeded"),
    ("{{ ('{0}' * 100).format('x' * 1000) }}", "a value longer than 65536 characters"),
    ("{{ ('%s' * 100) % (('x' * 1000,) * 100) }}", "a value longer than 65536 characters"),
    ("{{ ('x' * 1000) ~ ('y' * 65000) }}", "a value longer than 65536 characters"),
    ("{{ range(10000)|join('x' * 10) }}", "a value longer than 65536 characters"),
    ("{{ range(20000)|list|tojson(4) }}", "a value longer than 65536 characters"),
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
    ("{{ 10 ** 64 ** 64 ** 64 ** 64 }}", "template exceeded"),  # left-associative: 10**(64**4)
    ("{{ (10 ** 64 ** 64) * (10 ** 64 ** 64) }}", "(4300 digits) for integer string conversion"),
    (  # squaring 30 times in a row: each step doubles the digits
        "{% macro sq(x, n) %}{{ sq(x * x, n - 1) if n else 1 }}{% endmacro %}"
        "{{ sq(10 ** 64, 30) }}",
        "template exceeded",
    ),
    ("{{ cycler(1, 2) }}", "undefined variable"),
    ("{{ lipsum(100000) }}", "undefined variable"),  # ran 10 s inside one call
    ("{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}", "template nests too deeply"),
    ("{{ " + "not " * 4000 + "1 }}", "template nests too deeply"),
    ("{% for i in [1] %}" * 25 + "{% endfor %}" * 25, "template nests too deeply"),
    ("{% if 1 %}" * 100 + "{% endif %}" * 100, "template nests too deeply"),
]


def pool_errors(pool: RenderPool, templates: list[str]) -> list[str]:
    """Trial-render one custom policy per template, all in one request to the pool; the
    RenderError message of each (or "rendered")."""
    profiles = [custom(template) for template in templates]
    results = pool.render_blocking([t for p in profiles for t in trial_tasks(p)])
    return [r.message if isinstance(r, RenderError) else "rendered" for r in results]


@functools.cache
def _budget_results(pool: RenderPool) -> tuple[list[str], float]:
    started = time.monotonic()
    messages = pool_errors(pool, [PROBE.format(expr=expr) for expr, _ in BUDGETS])
    return messages, time.monotonic() - started


@pytest.mark.parametrize(("index", "message"), [(i, m) for i, (_, m) in enumerate(BUDGETS)])
def test_resource_exhaustion_ends_in_a_render_error(
    pool: RenderPool, index: int, message: str
) -> None:
    found, _ = _budget_results(pool)
    assert message in found[index], found[index]


def test_exhaustion_costs_each_template_about_its_limit(pool: RenderPool) -> None:
    """A stuck render costs its time limit twice at most (the second time in a worker that
    answers each task at once, to know which one stalled), plus a worker restart."""
    _, elapsed = _budget_results(pool)
    stalled = sum(1 for m in _budget_results(pool)[0] if "time limit" in m)
    assert elapsed < 5.0 + stalled * (2 * pool.settings.time_limit + 3.0)


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


#: Amplification inside one operation: what used to be refused from its arguments before it ran
#: is now bounded by the worker's address-space limit, and ends in a RenderError all the same.
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


@functools.cache
def _amplifier_results(pool: RenderPool) -> dict[str, str]:
    messages = pool_errors(pool, [PROBE.format(expr=expr) for expr in AMPLIFIERS.values()])
    return dict(zip(AMPLIFIERS, messages, strict=True))


@pytest.mark.parametrize("name", AMPLIFIERS)
def test_amplification_ends_in_a_render_error(pool: RenderPool, name: str) -> None:
    message = _amplifier_results(pool)[name]
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
    trial(profile)


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
def test_trial_rejects_bad_templates(pool: RenderPool, template: str, message: str) -> None:
    (found,) = pool_errors(pool, [template])
    assert message in found


#: Renders that parse as YAML but are no NetworkPolicy (issue 10.1): the trial names the field.
MALFORMED = [
    ("egress: [{ports: [53]}]", "spec.egress[0].ports[0]: must be a mapping, not an integer"),
    ("ingress: allow", "spec.ingress: must be a list, not a string"),
    ("podSelector: {matchLabels: {since: 2024-01-01}}",
     "spec.podSelector.matchLabels['since']: must be a string, not a date"),
    ("podSelector: {matchLabels: {key: !!binary aGVsbG8=}}",
     "spec.podSelector.matchLabels['key']: must be a string, not a bytes"),
    ("policyTypes: [Ingress, Sideways]", "spec.policyTypes[1]: unsupported value 'Sideways'"),
    ("ingress: [{from: [{ipBlock: {cidr: 10.0.0.1/8}}]}]",
     "spec.ingress[0].from[0].ipBlock.cidr: '10.0.0.1/8' is not a valid CIDR"),
    ("egress: [{to: [{podSelector: {}, ipBlock: {cidr: 10.0.0.0/8}}]}]",
     "spec.egress[0].to[0]: may not specify both ipBlock and another peer"),
    ("egress: [{ports: [{port: 53, protocol: ICMP}]}]",
     "spec.egress[0].ports[0].protocol: unsupported value 'ICMP'"),
    ("egress: [{ports: [{port: dns, endPort: 60}]}]",
     "spec.egress[0].ports[0].endPort: may not be set when port is a name"),
    ("ingress: [{form: []}]", "spec.ingress[0].form: unknown field"),
]  # fmt: skip


@pytest.mark.parametrize(("spec", "message"), MALFORMED)
def test_trial_validates_the_object_and_names_the_field(spec: str, message: str) -> None:
    template = NP_HEAD + "spec:\n  " + spec + "\n"
    with pytest.raises(RenderError) as info:
        trial(custom(template))
    assert info.value.policy == "custom"
    assert message in info.value.message
    assert str(info.value).startswith("policy 'custom': invalid object: spec")


def test_trial_validates_namespace_dependent_templates_structurally() -> None:
    """Reading ``namespace`` does not excuse a wrong shape: that fails on every namespace."""
    template = NP_HEAD + "spec:\n  ingress: {{ namespace.name }}\n"
    with pytest.raises(RenderError, match=r"spec\.ingress: must be a list, not a string"):
        trial(custom(template))


def test_a_value_from_namespace_data_is_judged_per_namespace() -> None:
    """A port read from a label is only known per namespace: the trial passes (the sample
    reads "dpo-trial"), each namespace renders or fails on its own value."""
    template = NP_HEAD + (
        "spec:\n  ingress: [{ports: [{port: {{ namespace.labels.port|int }}}]}]\n"
    )
    profile = custom(template)
    assert trial(profile).dependent == ("custom",)
    (obj,) = render_namespace(profile, {"name": "a", "labels": {"port": "8080"}})
    assert obj.body["spec"]["ingress"] == [{"ports": [{"port": 8080}]}]
    with pytest.raises(RenderError, match=r"ports\[0\]\.port: must be between 1 and 65535"):
        render_namespace(profile, {"name": "b", "labels": {"port": "70000"}})


def test_trial_tolerates_a_missing_namespace_label(renderer: Renderer) -> None:
    template = NP_HEAD + (
        "spec:\n  podSelector:\n    matchLabels:\n      team: {{ namespace.labels.team }}\n"
    )
    profile = custom(template)
    trial(profile)  # the sample namespace has no labels: data-dependent, not a bug
    with pytest.raises(RenderError, match="undefined variable"):
        render_namespace(profile, {"name": "bare"})
    (obj,) = render_namespace(profile, NAMESPACE)
    assert obj.body["spec"]["podSelector"] == {"matchLabels": {"team": "a"}}


def test_trial_tolerates_a_missing_annotation(renderer: Renderer) -> None:
    template = (
        NP_HEAD + "metadata:\n  labels:\n    o: {{ namespace.annotations.owner }}\nspec: {}\n"
    )
    trial(custom(template))


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
def test_trial_reads_missing_namespace_data_as_a_placeholder(
    expr: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trial renders the whole template, past the labels the sample namespace lacks."""
    seen: list[Any] = []
    monkeypatch.setattr(
        render, "stamp", lambda profile, policy, document, *_, **__: seen.append(document)
    )
    (task,) = trial_tasks(custom(PROBE.format(expr="{{ " + expr + " }}")))
    Renderer().run(task)
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
        trial(custom(PROBE.format(expr="{{ " + expr + " }}")))


def test_trial_rejects_calico_templates_that_read_namespace(renderer: Renderer) -> None:
    """A GlobalNetworkPolicy is rendered without any namespace: it would fail every time."""
    template = (
        GNP_HEAD + "metadata:\n  labels:\n    n: {{ namespace.name }}\nspec: {types: [Ingress]}\n"
    )
    profile = custom(template, flavor=CALICO)
    with pytest.raises(RenderError, match="undefined variable"):
        render_calico(profile, "all()")
    with pytest.raises(RenderError, match="undefined variable"):
        trial(profile)


def test_trial_rejects_a_misspelt_variable_next_to_namespace_data(renderer: Renderer) -> None:
    template = NP_HEAD + (
        "metadata:\n  labels:\n    n: {{ namespace.name }}\n    p: {{ parms.port }}\nspec: {}\n"
    )
    with pytest.raises(RenderError):
        render_namespace(custom(template), NAMESPACE)  # fails everywhere ...
    with pytest.raises(RenderError):
        trial(custom(template))  # ... so admission should refuse it


def test_compile_cache_reuses_and_reports_namespace_use(renderer: Renderer) -> None:
    first = renderer.compile(NP_HEAD + "spec: {{ namespace.name }}\n", "x")
    again = renderer.compile(NP_HEAD + "spec: {{ namespace.name }}\n", "x")
    assert first[0] is again[0]
    assert first[1] is True
    assert renderer.compile(NP_HEAD + "spec: {{ params }}\n", "x")[1] is False


def test_restamped_copies_share_the_spec_but_not_the_metadata() -> None:
    """Every namespace's copy of a shared policy carries its own metadata (a change to one
    namespace's labels is that namespace's alone) and the render's spec itself: no copy per
    namespace, which is safe because nothing changes a rendered spec in place."""
    profile = make()
    shared = trial(profile).shared["deny-all"]
    before = json.dumps(shared.body, sort_keys=True)
    a, b = (render.restamp(shared, name) for name in ("team-a", "team-b"))
    assert (a.key.namespace, b.key.namespace) == ("team-a", "team-b")
    assert a.body["metadata"]["namespace"] == "team-a"
    assert list(a.body["metadata"])[:2] == ["name", "namespace"]
    assert a.body["spec"] is shared.body["spec"] is b.body["spec"]
    a.body["metadata"]["labels"]["extra"] = "x"
    assert "extra" not in b.body["metadata"]["labels"]
    assert json.dumps(shared.body, sort_keys=True) == before
