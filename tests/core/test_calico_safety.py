"""What the Calico flavor writes can never reach a namespace its profile does not govern.

Checked on the planner's output (the bodies it would write), with the independent evaluator in
``tests/calico_selector.py`` as the judge. Written against the World's public API only, so
every test here also runs against the code before the fixes it guards (and failed there).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from default_policy_operator.core import objects
from default_policy_operator.core.governance import Namespace, protected_namespaces
from default_policy_operator.core.labels import (
    CALICO_NAME_LABEL,
    EXEMPT_LABEL,
    NAMESPACE_NAME_LABEL,
    POLICY_LABEL,
)
from default_policy_operator.core.plan import Verb
from default_policy_operator.core.world import World
from tests.calico_selector import CalicoSelectorError, evaluate
from tests.inline_render import InlineWorld

CALICO = "CalicoGlobalNetworkPolicy"
GNP_HEAD = "apiVersion: crd.projectcalico.org/v1\nkind: GlobalNetworkPolicy\n"
OPERATOR_NAMESPACE = "dpo-system"

#: Text a template might put in spec.namespaceSelector to break out of "(ours) && (theirs)".
ADVERSARIAL = [
    "all()) || (all()",
    'all()) || (projectcalico.org/name == "kube-system"',
    ") || all() || (",
    "has(x)) || !(has(x)",
    'a == "b") || (a != "b"',
    'x == "1" || all()',  # legal: the OR must stay inside its own parentheses
    "!has(team) || has(team)",
    "global()",
    "all()",
    "",
]


def ns(name: str, **labels: str) -> Namespace:
    return Namespace(name, {NAMESPACE_NAME_LABEL: name, **labels}, {})


def calico_labels(namespace: Namespace) -> dict[str, str]:
    """A namespace's labels as Calico sees them (it adds the name)."""
    return {**namespace.labels, CALICO_NAME_LABEL: namespace.name}


def custom_template(namespace_selector: str, selector: str = "all()") -> str:
    """A GNP template whose selectors are the given text, spelled as Jinja string literals."""
    return GNP_HEAD + (
        "spec:\n  types: [Ingress, Egress]\n"
        f"  selector: {{{{ {json.dumps(selector)} }}}}\n"
        f"  namespaceSelector: {{{{ {json.dumps(namespace_selector)} }}}}\n"
    )


def profile_body(name: str, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "uid": f"uid-{name}", "generation": 1}, "spec": spec}


def calico_profile(name: str, template_selector: str, **spec: Any) -> dict[str, Any]:
    return profile_body(
        name,
        flavor=CALICO,
        customPolicies=[{"name": "custom", "template": custom_template(template_selector)}],
        **spec,
    )


def written_selectors(world: World, profile: str) -> list[str]:
    """The namespaceSelector of every GlobalNetworkPolicy the planner would write for it."""
    return [
        action.body["spec"]["namespaceSelector"]
        for action in world.plan_calico().actions
        if action.body is not None and action.profile == profile
    ]


def make_world(*namespaces: Namespace) -> World:
    world = InlineWorld(protected_namespaces(OPERATOR_NAMESPACE))
    for namespace in namespaces:
        world.set_namespace(namespace)
    return world


def assert_only_governed(world: World, profile: str, extra: Sequence[Namespace] = ()) -> None:
    """No selector written for ``profile`` selects a namespace it does not govern, nor a host
    endpoint (an endpoint without namespace labels)."""
    for selector in written_selectors(world, profile):
        assert not evaluate(selector, {}), f"{selector!r} selects host endpoints"
        for namespace in [*world.namespaces.values(), *extra]:
            governor = world.governor(namespace)
            if governor is not None and governor.name == profile:
                continue
            assert not evaluate(selector, calico_labels(namespace)), (
                f"{selector!r} selects {namespace.name}, which {profile} does not govern"
            )


@pytest.mark.parametrize("template_selector", ADVERSARIAL)
def test_a_template_namespace_selector_never_widens_the_governed_set(
    template_selector: str,
) -> None:
    world = make_world(
        ns("kube-system"),
        ns(OPERATOR_NAMESPACE),
        ns("web", env="prod"),
        ns("legacy", env="prod"),
        ns("skip", env="prod", **{EXEMPT_LABEL: "true"}),
        ns("pay", env="prod", team="payments"),
        ns("dev", env="dev"),
    )
    world.update_profile(
        profile_body(
            "payments",
            priority=10,
            namespaceSelector={"matchLabels": {"team": "payments"}},
        )
    )
    world.update_profile(
        calico_profile(
            "cal",
            template_selector,
            namespaceSelector={"matchLabels": {"env": "prod"}},
            excludeNamespaces=["legacy"],
        )
    )
    assert_only_governed(world, "cal")
    if template_selector in ("", "all()"):  # harmless text is written, and selects "web"
        selectors = written_selectors(world, "cal")
        assert len(selectors) == 4  # three built-ins and the custom policy
        assert all(evaluate(s, calico_labels(world.namespaces["web"])) for s in selectors)


def test_a_selector_that_does_not_parse_is_refused_naming_template_and_field() -> None:
    world = make_world(ns("web"))
    entry = world.update_profile(calico_profile("cal", "all()) || (all()"))
    assert entry.error is not None
    assert "'custom'" in entry.error
    assert "spec.namespaceSelector" in entry.error


def test_host_endpoints_are_never_selected() -> None:
    """``!=`` and ``not in`` hold for an endpoint without the label: only has() stops that."""
    world = make_world(ns("web", env="prod"), ns("kube-system"))
    world.update_profile(
        profile_body(
            "cal",
            flavor=CALICO,
            namespaceSelector={
                "matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["dev"]}]
            },
        )
    )
    selectors = written_selectors(world, "cal")
    assert len(selectors) == 3
    for selector in selectors:
        assert evaluate(selector, calico_labels(world.namespaces["web"]))
        assert not evaluate(selector, {}), selector
        assert not evaluate(selector, {"env": "prod"}), selector  # a host endpoint's own labels


def namespace_selectors(value: Any) -> list[str]:
    """Every ``namespaceSelector`` anywhere in a spec (policy level and rules)."""
    if isinstance(value, dict):
        own = [value["namespaceSelector"]] if "namespaceSelector" in value else []
        return own + [s for v in value.values() for s in namespace_selectors(v)]
    if isinstance(value, list):
        return [s for v in value for s in namespace_selectors(v)]
    return []


def test_no_namespace_selector_the_built_ins_write_matches_a_host_endpoint() -> None:
    world = make_world(ns("web"), ns("kube-system"))
    world.update_profile(
        profile_body(
            "cal", flavor=CALICO, policies={"allowKubeSystem": {"ingress": True, "egress": True}}
        )
    )
    found = [
        selector
        for action in world.plan_calico().actions
        for selector in namespace_selectors((action.body or {}).get("spec"))
    ]
    assert len(found) == 3 + 2 + 2  # one per policy, two DNS rules, two kube-system rules
    for selector in found:
        assert not evaluate(selector, {}), selector


# -- property: any namespaces, profiles and template text ---------------------------------------

names = st.sampled_from(
    ["kube-system", "kube-public", OPERATOR_NAMESPACE, "web", "api", "legacy", "pay", "dev", "x1"]
)
label_values = st.sampled_from(["prod", "dev", "true", "payments", ""])
namespaces = st.builds(
    lambda name, labels, exempt: ns(
        name, **labels, **({EXEMPT_LABEL: exempt} if exempt is not None else {})
    ),
    names,
    st.dictionaries(st.sampled_from(["env", "team"]), label_values, max_size=2),
    st.none() | st.sampled_from(["true", "false"]),
)
label_selectors = st.one_of(
    st.just({}),
    st.builds(lambda k, v: {"matchLabels": {k: v}}, st.sampled_from(["env", "team"]), label_values),
    st.builds(
        lambda k, op, v: {"matchExpressions": [{"key": k, "operator": op, "values": [v]}]},
        st.sampled_from(["env", "team"]),
        st.sampled_from(["In", "NotIn"]),
        st.sampled_from(["prod", "dev", "payments"]),
    ),
    st.builds(
        lambda k, op: {"matchExpressions": [{"key": k, "operator": op}]},
        st.sampled_from(["env", "team"]),
        st.sampled_from(["Exists", "DoesNotExist"]),
    ),
)
#: Fragments of selector text, glued at random: mostly garbage, sometimes a clever escape.
fragments = st.sampled_from(
    [
        "all()", "global()", "has(env)", "!", "(", ")", " || ", " && ", 'env == "prod"',
        'env != "prod"', 'projectcalico.org/name == "kube-system"', 'team in {"payments"}',
        'team not in {"x"}', f'{EXEMPT_LABEL} == "true"', '"', "'", "{", "}", ",", " ",
    ]
)  # fmt: skip
template_selectors = st.one_of(
    st.sampled_from(ADVERSARIAL),
    st.lists(fragments, max_size=10).map("".join),
    st.text(alphabet="()|&! a=\"'{}", max_size=12),
)
others = st.lists(
    st.fixed_dictionaries(
        {
            "name": st.sampled_from(["other-a", "other-b"]),
            "priority": st.integers(-2, 2),
            "flavor": st.sampled_from(["NetworkPolicy", CALICO]),
            "selector": label_selectors,
        }
    ),
    max_size=2,
    unique_by=lambda o: o["name"],
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    present=st.lists(namespaces, max_size=7, unique_by=lambda n: n.name),
    unseen=st.lists(namespaces, max_size=4),
    selector=label_selectors,
    excluded=st.lists(names, max_size=2),
    template_selector=template_selectors,
    rivals=others,
    priority=st.integers(-2, 2),
)
def test_the_written_selector_never_selects_what_the_profile_does_not_govern(
    present: list[Namespace],
    unseen: list[Namespace],
    selector: dict[str, Any],
    excluded: list[str],
    template_selector: str,
    rivals: list[dict[str, Any]],
    priority: int,
) -> None:
    world = make_world(*present)
    for rival in rivals:
        world.update_profile(
            profile_body(
                rival["name"],
                priority=rival["priority"],
                flavor=rival["flavor"],
                namespaceSelector=rival["selector"],
            )
        )
    world.update_profile(
        calico_profile(
            "cal",
            template_selector,
            priority=priority,
            namespaceSelector=selector,
            excludeNamespaces=excluded,
        )
    )
    # Namespaces the world has not seen yet: protected, exempt or excluded ones stay out at once.
    never = [n for n in unseen if n.name in world.protected or n.exempt or n.name in excluded]
    assert_only_governed(world, "cal", never)


def test_the_evaluator_refuses_what_calico_refuses() -> None:
    """The judge itself: the escape attempt is not a selector at all."""
    with pytest.raises(CalicoSelectorError):
        evaluate("all()) || (all()", {})


# -- names: one object per (profile, policy) ----------------------------------------------------


def test_profile_and_policy_names_that_concatenate_alike_get_distinct_objects() -> None:
    """``a`` + ``deny-all`` and ``a-deny`` + ``all`` once both became ``default.dpo-a-deny-all``."""
    world = make_world(ns("web", env="prod"))
    world.update_profile(profile_body("a", flavor=CALICO))
    world.update_profile(
        profile_body(
            "a-deny",
            flavor=CALICO,
            policies={
                "denyAll": {"enabled": False},
                "allowDNS": {"enabled": False},
                "allowKubeSystem": {"enabled": False},
            },
            customPolicies=[{"name": "all", "template": custom_template("")}],
        )
    )
    creates = [a for a in world.plan_calico().actions if a.verb is Verb.CREATE]
    assert len(creates) == 4  # three built-ins of a, one custom of a-deny
    assert len({a.key for a in creates}) == 4
    by_owner = {(a.profile, (a.body or {})["metadata"]["labels"][POLICY_LABEL]) for a in creates}
    assert ("a", "deny-all") in by_owner
    assert ("a-deny", "all") in by_owner
    assert world.counts()["a"].conflict_keys == world.counts()["a-deny"].conflict_keys == []


def test_a_key_two_profiles_want_is_a_conflict_of_both_and_written_by_neither(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Defence in depth: should names ever clash, nobody silently wins."""
    monkeypatch.setattr(objects, "calico_policy_name", lambda profile, policy: f"default.{policy}")
    world = make_world(ns("web", env="prod"))
    for name in ("one", "two"):
        world.update_profile(profile_body(name, flavor=CALICO))
    actions = world.plan_calico().actions
    assert actions == []  # every built-in name is wanted by both
    counts = world.counts()
    for name in ("one", "two"):
        assert len(counts[name].conflict_keys) == 3, counts[name].conflict_keys
        assert all("one, two" in key for key in counts[name].conflict_keys)


#: Calico's ``globalNetworkPolicyNameRegex`` (libcalico-go validator, the same in v3.29-v3.32).
CALICO_GNP_NAME = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
dns_labels = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,8}[a-z0-9])?", fullmatch=True)
profile_names = (
    st.lists(dns_labels, min_size=1, max_size=4).map(".".join).filter(lambda n: len(n) <= 40)
)


def decode(name: str) -> tuple[str, str]:
    """(profile, policy) back from a Calico object name: proof that the naming is injective."""
    rest = name.removeprefix("default.dpo-")
    head, _, rest = rest.partition("-")
    length, *dots = head.split("d")
    profile = list(rest[: int(length)])
    for position in dots:
        assert profile[int(position)] == "-"
        profile[int(position)] = "."
    assert rest[int(length)] == "-"
    return "".join(profile), rest[int(length) + 1 :]


@settings(max_examples=300, deadline=None)
@given(profile=profile_names, policy=dns_labels)
def test_calico_names_are_valid_for_calico_and_decode_back(profile: str, policy: str) -> None:
    name = objects.calico_policy_name(profile, policy)
    assert CALICO_GNP_NAME.fullmatch(name), name
    assert name.startswith(objects.CALICO_TIER_PREFIX)
    assert len(name) <= 253
    assert decode(name) == (profile, policy)
