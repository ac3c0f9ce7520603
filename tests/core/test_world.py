"""The in-memory world: governance, planning per namespace and for Calico, status counts."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from default_policy_operator.core.calico_selector import to_text
from default_policy_operator.core.governance import Namespace, Standing, protected_namespaces
from default_policy_operator.core.labels import (
    CALICO_NAME_LABEL,
    EXEMPT_LABEL,
    LAST_VALID_SPEC_ANNOTATION,
    NAMESPACE_NAME_LABEL,
    POLICY_LABEL,
    PROFILE_LABEL,
)
from default_policy_operator.core.normalize import state_of
from default_policy_operator.core.objects import GLOBAL_NETWORK_POLICY, NETWORK_POLICY, ObjectKey
from default_policy_operator.core.plan import Action, Verb
from default_policy_operator.core.world import ProfileCounts, ScopePlan, World
from tests.calico_selector import evaluate
from tests.inline_render import InlineWorld

BUILTINS = ("deny-all", "allow-dns", "allow-kube-system")
CALICO = "CalicoGlobalNetworkPolicy"
OWNER_TEMPLATE = (
    "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
    "metadata:\n  labels:\n    owner: {{ namespace.annotations.owner }}\n"
    "spec:\n  policyTypes: [Ingress]\n"
)


def profile_body(name: str, generation: int = 1, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "uid": f"uid-{name}", "generation": generation},
        "spec": spec,
    }


def ns(name: str, annotations: dict[str, str] | None = None, **labels: str) -> Namespace:
    return Namespace(
        name, {NAMESPACE_NAME_LABEL: name, **labels}, annotations or {}
    )  # like the API server


def make_world(*namespaces: Namespace) -> World:
    world = InlineWorld(protected_namespaces("dpo-system"))
    for namespace in namespaces:
        world.set_namespace(namespace)
    return world


def apply(world: World, actions: list[Action]) -> None:
    """What the reconciler does once the API server accepted each action."""
    for action in actions:
        if action.verb is Verb.DELETE:
            world.remove_object(action.key)
        else:
            assert action.body is not None
            world.set_object(state_of(action.body))


def converge(world: World) -> None:
    """Plan and apply every scope until nothing is left to write or wait for: a handover
    takes more than one pass (the new cover lands before the old one goes), and a namespace
    whose Calico cover the last Calico plan had not yet counted is planned again after the
    next one, as the reconciler does with ``waiting_for_calico``."""
    for _ in range(5):
        busy = False
        for name in list(world.namespaces) + sorted(world.namespaces_with_objects()):
            result = world.plan_namespace(name)
            apply(world, result.actions)
            busy |= bool(result.actions) or result.withheld
        result = world.plan_calico()
        apply(world, result.actions)
        if not (busy or result.actions or result.withheld):
            return
        world.waiting_for_calico.clear()


def no_actions_left(world: World) -> bool:
    """Nothing to write and nothing held back waiting for a cover, in any scope."""
    scopes = set(world.namespaces) | world.namespaces_with_objects()
    plans = [world.plan_namespace(s) for s in scopes] + [world.plan_calico()]
    return not any(p.actions or p.withheld for p in plans)


def verbs(result: ScopePlan) -> list[tuple[Verb, str]]:
    return [(a.verb, a.key.name) for a in result.actions]


def np_key(namespace: str, policy: str) -> ObjectKey:
    return ObjectKey(NETWORK_POLICY, namespace, f"dpo-{policy}")


# -- which namespaces get what ----------------------------------------------------------------


@pytest.fixture
def world() -> World:
    w = make_world(
        ns("team-a", env="prod"),
        ns("dev", env="dev"),
        ns("kube-system", env="prod"),
        ns("dpo-system", env="prod"),
        ns("skipper", env="prod", **{EXEMPT_LABEL: "true"}),
        ns("legacy", env="prod"),
        ns("sandbox-1", env="prod"),
    )
    entry = w.update_profile(
        profile_body(
            "base",
            namespaceSelector={"matchLabels": {"env": "prod"}},
            excludeNamespaces=["legacy", "sandbox-*"],
        )
    )
    assert entry.error is None
    return w


def test_governed_namespace_gets_the_builtins(world: World) -> None:
    result = world.plan_namespace("team-a")
    assert verbs(result) == [(Verb.CREATE, f"dpo-{p}") for p in BUILTINS]
    assert result.errors == []
    assert result.audit_findings == []
    for action in result.actions:
        assert action.key.namespace == "team-a"
        assert action.profile == "base"
        assert action.body is not None
        assert action.body["metadata"]["labels"][PROFILE_LABEL] == "base"


@pytest.mark.parametrize(
    "name", ["dev", "kube-system", "dpo-system", "skipper", "legacy", "sandbox-1", "nonexistent"]
)
def test_nothing_in_namespaces_the_profile_does_not_govern(world: World, name: str) -> None:
    result = world.plan_namespace(name)
    assert result.actions == []
    assert result.audit_findings == []


@pytest.mark.parametrize(
    "change",
    [
        {"env": "dev"},  # stops matching the selector
        {"env": "prod", EXEMPT_LABEL: "true"},  # becomes exempt
    ],
)
def test_a_namespace_that_stops_being_governed_loses_its_policies(
    world: World, change: dict[str, str]
) -> None:
    converge(world)
    assert set(world.objects_in("team-a")) == {np_key("team-a", p) for p in BUILTINS}
    world.set_namespace(ns("team-a", **change))
    assert sorted(verbs(world.plan_namespace("team-a"))) == sorted(
        (Verb.DELETE, f"dpo-{p}") for p in BUILTINS
    )


def test_objects_of_a_removed_namespace_are_planned_away(world: World) -> None:
    converge(world)
    world.remove_namespace("team-a")
    assert {v for v, _ in verbs(world.plan_namespace("team-a"))} == {Verb.DELETE}


def test_zero_actions_once_actual_equals_desired(world: World) -> None:
    converge(world)
    assert no_actions_left(world)
    assert len(world.objects) == 3


# -- handover ---------------------------------------------------------------------------------


def test_priority_handover_updates_in_place(world: World) -> None:
    converge(world)
    before = set(world.objects_in("team-a"))
    world.update_profile(profile_body("strict", priority=10))
    result = world.plan_namespace("team-a")
    assert sorted(verbs(result)) == sorted((Verb.UPDATE, f"dpo-{p}") for p in BUILTINS)
    for action in result.actions:
        assert action.profile == "strict"
        assert action.body is not None
        assert action.body["metadata"]["labels"][PROFILE_LABEL] == "strict"
        assert action.body["metadata"]["ownerReferences"][0]["uid"] == "uid-strict"
        assert action.resource_version == world.objects[action.key].resource_version
    apply(world, result.actions)
    assert set(world.objects_in("team-a")) == before
    assert world.plan_namespace("team-a").actions == []
    # and back again, when the stricter profile goes away
    world.remove_profile("strict")
    assert sorted(verbs(world.plan_namespace("team-a"))) == sorted(
        (Verb.UPDATE, f"dpo-{p}") for p in BUILTINS
    )


def test_handover_to_a_profile_with_fewer_policies(world: World) -> None:
    """The new governor's objects land first; the old one's extra policy goes afterwards."""
    converge(world)
    world.update_profile(
        profile_body("minimal", priority=5, policies={"allowDNS": {"enabled": False}})
    )
    first = world.plan_namespace("team-a")
    assert first.withheld
    assert sorted(verbs(first)) == [
        (Verb.UPDATE, "dpo-allow-kube-system"),
        (Verb.UPDATE, "dpo-deny-all"),
    ]
    apply(world, first.actions)
    second = world.plan_namespace("team-a")
    assert verbs(second) == [(Verb.DELETE, "dpo-allow-dns")]
    assert not second.withheld


def test_handover_to_a_calico_profile_keeps_network_policies_until_calico_covers(
    world: World,
) -> None:
    """NetworkPolicy -> Calico: the namespace's objects go only once the GNPs select it."""
    converge(world)
    world.update_profile(profile_body("cal", priority=5, flavor=CALICO))
    early = world.plan_namespace("team-a")
    assert early.actions == []
    assert early.withheld
    calico = world.plan_calico()
    assert sorted(verbs(calico)) == sorted(
        (Verb.CREATE, f"default.dpo-3-cal-{p}") for p in BUILTINS
    )
    assert world.plan_namespace("team-a").actions == []  # planned, not yet written
    apply(world, calico.actions)
    assert {v for v, _ in verbs(world.plan_namespace("team-a"))} == {Verb.DELETE}


def test_handover_to_a_calico_profile_that_dropped_a_policy_completes(world: World) -> None:
    """Review find: a policy a Calico profile no longer has stayed among the objects its cover
    check waited for, so NetworkPolicies of a namespace handed to it later were withheld for
    ever (the check waited for a GlobalNetworkPolicy that had been deleted)."""
    nowhere = {"matchLabels": {"env": "nowhere"}}
    world.update_profile(profile_body("cal", priority=5, flavor=CALICO, namespaceSelector=nowhere))
    converge(world)
    world.update_profile(
        profile_body(
            "cal",
            generation=2,
            priority=5,
            flavor=CALICO,
            namespaceSelector=nowhere,
            policies={"allowKubeSystem": {"ingress": False}},
        )
    )
    converge(world)
    converge(world)  # its allow-kube-system GlobalNetworkPolicy is gone now
    world.update_profile(
        profile_body(
            "cal", generation=3, priority=5, flavor=CALICO,
            policies={"allowKubeSystem": {"ingress": False}},
        )
    )  # fmt: skip
    for _ in range(3):
        converge(world)
    assert world.objects_in("team-a") == {}


def test_handover_from_calico_keeps_the_namespace_selected_until_its_policies_land(
    world: World,
) -> None:
    """Calico -> NetworkPolicy: the GNP selector lets a namespace go only once it is covered."""
    world.update_profile(profile_body("cal", priority=5, flavor=CALICO))
    converge(world)
    assert "team-a" in world.calico_covered["cal"]
    world.update_profile(profile_body("np", priority=10))
    selector = to_text(world.calico_selector(world.profiles["cal"].profile))  # type: ignore[arg-type]
    assert evaluate(
        selector, {NAMESPACE_NAME_LABEL: "team-a", CALICO_NAME_LABEL: "team-a", "env": "prod"}
    )
    apply(world, world.plan_calico().actions)
    apply(world, world.plan_namespace("team-a").actions)
    assert world.network_policies_cover(world.profiles["np"].profile, "team-a")  # type: ignore[arg-type]
    selector = to_text(world.calico_selector(world.profiles["cal"].profile))  # type: ignore[arg-type]
    assert not evaluate(
        selector, {NAMESPACE_NAME_LABEL: "team-a", CALICO_NAME_LABEL: "team-a", "env": "prod"}
    )


def test_a_deleted_calico_profile_keeps_its_objects_until_the_successor_covers(
    world: World,
) -> None:
    world.update_profile(profile_body("cal", priority=5, flavor=CALICO))
    converge(world)
    world.remove_profile("cal")
    calico = world.plan_calico()
    assert calico.actions == []  # team-a is not yet covered by "base"
    apply(world, world.plan_namespace("team-a").actions)
    for name in list(world.namespaces):
        apply(world, world.plan_namespace(name).actions)
    assert {v for v, _ in verbs(world.plan_calico())} == {Verb.DELETE}


def test_a_namespace_relabelled_out_of_a_calico_selector_is_no_longer_counted_as_covered() -> None:
    """Calico evaluates the selector on live labels: a namespace that stops matching it is
    dropped at once, whoever governs it now. Counting it as still covered would hold a
    handover that can never complete (here the new governor is in Audit and never covers),
    and would keep the profile's objects after the profile is deleted."""
    world = make_world(ns("b", env="1"))
    world.update_profile(
        profile_body("p", flavor=CALICO, namespaceSelector={"matchLabels": {"env": "1"}})
    )
    world.update_profile(profile_body("q", flavor=CALICO, mode="Audit"))
    converge(world)
    assert "b" in world.calico_covered["p"]
    world.set_namespace(ns("b", env="2"))
    calico = world.plan_calico()
    assert "b" not in world.calico_covered["p"]
    assert not calico.withheld
    world.remove_profile("p")
    assert sorted(v for v, _ in verbs(world.plan_calico())) == [Verb.DELETE] * 3


# -- deletion ---------------------------------------------------------------------------------


def test_a_deletion_seen_first_is_not_undone_by_an_older_event_of_the_profile() -> None:
    """kopf's watch can see a profile's deletion before our informer delivers an older event of
    it (the echo of our own status write). Deletion is irreversible: that event must not make the
    profile govern again, or the objects its Orphan finalizer releases are written back with our
    labels, and deleted once the profile is gone (CI saw them still labelled)."""
    world = make_world(ns("team-a", env="prod"))
    body = profile_body(
        "base", namespaceSelector={"matchLabels": {"env": "prod"}}, deletionPolicy="Orphan"
    )
    world.update_profile(body)
    converge(world)
    assert world.objects_in("team-a")
    world.mark_deleting("base")  # kopf's handler, ahead of our informer
    world.update_profile(body)  # the older event: same object, no deletionTimestamp yet
    assert not world.profiles["base"].active
    for key in world.objects_in("team-a"):
        world.remove_object(key)  # what the Orphan finalizer releases
    assert world.plan_namespace("team-a").actions == []


def test_a_profile_recreated_under_the_same_name_is_not_taken_for_the_deleted_one(
    world: World,
) -> None:
    world.mark_deleting("base")
    recreated = profile_body("base", namespaceSelector={"matchLabels": {"env": "prod"}})
    recreated["metadata"]["uid"] = "uid-base-2"
    world.update_profile(recreated)
    assert world.profiles["base"].deleting is False


# -- audit ------------------------------------------------------------------------------------


def test_audit_profile_reports_and_writes_nothing() -> None:
    world = make_world(ns("team-a"))
    world.update_profile(profile_body("watch", mode="Audit"))
    result = world.plan_namespace("team-a")
    assert result.actions == []
    assert sorted(verbs(ScopePlan(actions=result.audit_findings))) == sorted(
        (Verb.CREATE, f"dpo-{p}") for p in BUILTINS
    )


def test_audit_profile_never_deletes() -> None:
    world = make_world(ns("team-a"))
    world.update_profile(profile_body("watch", mode="Audit"))
    stray = state_of(
        {
            "kind": NETWORK_POLICY,
            "metadata": {
                "name": "dpo-old",
                "namespace": "team-a",
                "labels": {PROFILE_LABEL: "watch", POLICY_LABEL: "old"},
            },
            "spec": {},
        }
    )
    world.set_object(stray)
    result = world.plan_namespace("team-a")
    assert result.actions == []
    assert all(a.verb is Verb.CREATE for a in result.audit_findings)
    world.set_namespace(ns("team-a", **{EXEMPT_LABEL: "true"}))  # no longer governed
    assert world.plan_namespace("team-a").actions == []  # Audit profile's objects stay


def test_audit_calico_profile() -> None:
    world = make_world(ns("team-a"))
    world.update_profile(profile_body("cal", mode="Audit", flavor=CALICO))
    result = world.plan_calico()
    assert result.actions == []
    assert len(result.audit_findings) == 3


# -- invalid profiles -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ({"mode": "Sometimes"}, "invalid spec: spec.mode must be one of"),
        (
            {"customPolicies": [{"name": "x", "template": "kind: {% if %}"}]},
            "invalid template: policy 'x': template syntax error",
        ),
        (
            {"customPolicies": [{"name": "x", "template": "kind: ClusterRoleBinding\nspec: {}\n"}]},
            "invalid template: policy 'x': renders",
        ),
    ],
)
def test_invalid_edit_keeps_the_last_valid_profile(
    world: World, spec: dict[str, Any], error: str
) -> None:
    converge(world)
    good = world.profiles["base"].profile
    assert good is not None
    entry = world.update_profile(
        profile_body("base", generation=2, **{**spec, "namespaceSelector": {}})
    )
    assert entry.profile is good  # fail static
    assert entry.error is not None
    assert entry.error.startswith(error), entry.error
    assert entry.generation == 2
    # still governs as before (the invalid edit's wider selector is not in force)
    assert world.plan_namespace("team-a").actions == []
    assert world.plan_namespace("dev").actions == []
    # a later valid edit clears the error
    fixed = world.update_profile(profile_body("base", generation=3))
    assert fixed.error is None
    assert fixed.profile is not good
    assert verbs(world.plan_namespace("dev")) == [(Verb.CREATE, f"dpo-{p}") for p in BUILTINS]


def test_the_last_good_version_keeps_planning_while_an_edit_awaits_its_trial(
    world: World,
) -> None:
    """Found by the full suite: an edit dropped the renders of the version in force, so until
    the new version's trial came back (forever, for an invalid one) every scope planned as
    'renders missing' and was re-marked at once: a hot loop, and nothing planned."""
    converge(world)
    entry = World.update_profile(world, profile_body("base", generation=2, priority=3))
    assert entry.trial is not None  # the trial has not run yet
    result = world.plan_namespace("team-a")
    assert not result.incomplete
    assert result.actions == []
    assert world.missing_renders("team-a") == []


def test_the_last_valid_spec_survives_a_restart_as_a_recorded_annotation() -> None:
    """Fail static across restarts: a new process meets the profile already invalid."""
    good_spec = {"policies": {"allowDNS": {"enabled": False}}}
    first = make_world(ns("team-a"))
    entry = first.update_profile(profile_body("base", **good_spec))
    assert entry.record_due
    recorded = entry.valid_spec
    bad = profile_body("base", generation=2, customPolicies=[{"name": "x", "template": "{% if %}"}])
    bad["metadata"]["annotations"] = {LAST_VALID_SPEC_ANNOTATION: recorded}
    bad["spec"]["priority"] = 0
    restarted = make_world(ns("team-a"))
    restarted.update_profile(profile_body("fallback", priority=-5))
    entry = restarted.update_profile(bad)
    assert entry.error is not None
    assert entry.profile is not None
    assert list(entry.profile.policy_names()) == ["deny-all", "allow-kube-system"]
    assert not entry.record_due  # nothing to write: the record is the version in force
    namespace = restarted.namespaces["team-a"]
    governor = restarted.governor(namespace)
    assert governor is not None
    assert governor.name == "base"


def test_a_recorded_spec_that_does_not_validate_is_ignored() -> None:
    world = make_world(ns("team-a"))
    bad = profile_body("base", customPolicies=[{"name": "x", "template": "{% if %}"}])
    bad["metadata"]["annotations"] = {LAST_VALID_SPEC_ANNOTATION: '{"priority": "high"}'}
    entry = world.update_profile(bad)
    assert entry.profile is None
    assert entry.error is not None


def test_profile_that_never_validated_governs_nothing_and_deletes_nothing(world: World) -> None:
    converge(world)
    entry = world.update_profile(profile_body("broken", priority=99, mode="Sometimes"))
    assert entry.profile is None
    assert entry.error is not None
    assert not entry.active
    assert world.plan_namespace("team-a").actions == []


# -- a template that fails for one namespace --------------------------------------------------


def test_template_failing_in_one_namespace_holds_that_policy_there() -> None:
    world = make_world(ns("a", {"owner": "alice"}), ns("b", {"owner": "bob"}))
    entry = world.update_profile(
        profile_body("base", customPolicies=[{"name": "owner", "template": OWNER_TEMPLATE}])
    )
    assert entry.error is None  # the trial forgives data-dependent failures
    converge(world)
    assert np_key("b", "owner") in world.objects
    world.set_namespace(ns("b"))  # the annotation is removed
    result = world.plan_namespace("b")
    assert result.actions == []  # dpo-owner is held, not deleted; the rest is in sync
    ((profile, error),) = result.errors
    assert profile == "base"
    assert error.policy == "owner"
    assert "undefined variable" in error.message
    assert world.plan_namespace("a").actions == []
    assert world.plan_namespace("a").errors == []


def test_new_namespace_without_the_data_still_gets_the_other_policies() -> None:
    world = make_world(ns("a"))
    world.update_profile(
        profile_body("base", customPolicies=[{"name": "owner", "template": OWNER_TEMPLATE}])
    )
    result = world.plan_namespace("a")
    assert verbs(result) == [(Verb.CREATE, f"dpo-{p}") for p in BUILTINS]
    assert [e.policy for _, e in result.errors] == ["owner"]


def test_each_plan_gets_its_own_body_of_a_namespace_render() -> None:
    """A namespace's renders are cached between plans; a plan's action bodies go to the API
    client, so changing one must not change what the next plan wants."""
    world = make_world(ns("a", {"owner": "alice"}))
    world.update_profile(
        profile_body("base", customPolicies=[{"name": "owner", "template": OWNER_TEMPLATE}])
    )
    (first,) = [a for a in world.plan_namespace("a").actions if a.key.name == "dpo-owner"]
    assert first.body is not None
    wanted = first.body["spec"]
    first.body["spec"] = {"podSelector": {"matchLabels": {"changed": "by a caller"}}}
    (second,) = [a for a in world.plan_namespace("a").actions if a.key.name == "dpo-owner"]
    assert second.body is not None
    assert second.body["spec"] == wanted


# -- conflicts --------------------------------------------------------------------------------


def test_conflicting_key_is_never_written(world: World) -> None:
    world.conflicts[np_key("team-a", "deny-all")] = "held by a NetworkPolicy we did not create"
    world.blocked = {np_key("team-a", "deny-all")}
    assert verbs(world.plan_namespace("team-a")) == [
        (Verb.CREATE, "dpo-allow-dns"),
        (Verb.CREATE, "dpo-allow-kube-system"),
    ]


# -- Calico -----------------------------------------------------------------------------------


def calico_world() -> World:
    world = make_world(
        ns("web", env="prod"),
        ns("api", env="prod", team="x"),
        ns("pay", env="prod", team="payments"),
        ns("legacy", env="prod"),
        ns("sandbox-7", env="prod"),
        ns("skip", env="prod", **{EXEMPT_LABEL: "true"}),
        ns("kube-system", env="prod"),
        ns("dpo-system", env="prod"),
        ns("dev", env="dev"),
        ns("bare"),
    )
    for body in (
        profile_body(
            "cal",
            flavor=CALICO,
            namespaceSelector={
                "matchLabels": {"env": "prod"},
                "matchExpressions": [{"key": "team", "operator": "NotIn", "values": ["x"]}],
            },
            excludeNamespaces=["legacy", "sandbox-*", 'odd"name', "a\\b"],
        ),
        profile_body(
            "payments", priority=10, namespaceSelector={"matchLabels": {"team": "payments"}}
        ),
    ):
        entry = world.update_profile(body)
        assert entry.error is None, entry.error
    return world


def calico_labels(namespace: Namespace) -> dict[str, str]:
    return {**namespace.labels, CALICO_NAME_LABEL: namespace.name}


def test_calico_selector_selects_exactly_the_governed_namespaces() -> None:
    world = calico_world()
    cal = world.profiles["cal"].profile
    assert cal is not None
    selector = to_text(world.calico_selector(cal))
    governed = set()
    for namespace in world.namespaces.values():
        governor = world.governor(namespace)
        selected = evaluate(selector, calico_labels(namespace))
        assert selected is (governor is not None and governor.name == "cal"), namespace.name
        if selected:
            governed.add(namespace.name)
    assert governed == {"web"}


@pytest.mark.parametrize(
    ("namespace", "selected"),
    [
        (ns("legacy", env="prod"), False),  # excluded by name before it even exists
        (ns("new", env="prod"), True),
        (ns("new", env="prod", **{EXEMPT_LABEL: "true"}), False),  # by label, at once
        (ns("new", env="prod", team="x"), False),
        (ns("kube-public", env="prod"), False),  # protected
    ],
)
def test_calico_selector_for_namespaces_it_has_not_seen_yet(
    namespace: Namespace, selected: bool
) -> None:
    world = calico_world()
    cal = world.profiles["cal"].profile
    assert cal is not None
    assert evaluate(to_text(world.calico_selector(cal)), calico_labels(namespace)) is selected


def test_plan_calico_creates_stamped_policies_and_then_nothing() -> None:
    world = calico_world()
    result = world.plan_calico()
    assert sorted(verbs(result)) == sorted(
        (Verb.CREATE, f"default.dpo-3-cal-{p}") for p in BUILTINS
    )
    cal = world.profiles["cal"].profile
    assert cal is not None
    for action in result.actions:
        assert action.key.kind == GLOBAL_NETWORK_POLICY
        assert action.body is not None
        assert action.body["spec"]["namespaceSelector"] == to_text(world.calico_selector(cal))
    apply(world, result.actions)
    assert world.plan_calico().actions == []
    # a new selected-but-shadowed namespace is named in every policy's selector: three updates
    world.set_namespace(ns("pay2", env="prod", team="payments"))
    updates = world.plan_calico().actions
    assert sorted(v for v, _ in verbs(ScopePlan(actions=updates))) == [Verb.UPDATE] * 3
    assert all('"pay2"' in (a.body or {})["spec"]["namespaceSelector"] for a in updates)
    apply(world, updates)
    assert world.plan_calico().actions == []
    # the shadowing profile goes: 'pay' and 'pay2' are governed by 'cal' now
    world.remove_profile("payments")
    updates = world.plan_calico().actions
    assert sorted(v for v, _ in verbs(ScopePlan(actions=updates))) == [Verb.UPDATE] * 3
    selector = (updates[0].body or {})["spec"]["namespaceSelector"]
    assert evaluate(selector, calico_labels(world.namespaces["pay2"]))


def test_calico_objects_of_a_deleted_profile_are_removed() -> None:
    world = calico_world()
    apply(world, world.plan_calico().actions)
    world.remove_profile("cal")
    assert sorted(v for v, _ in verbs(world.plan_calico())) == [Verb.DELETE] * 3


# -- counts and coverage ----------------------------------------------------------------------


def test_counts() -> None:
    world = calico_world()
    world.update_profile(profile_body("base", priority=-1))  # everything not otherwise governed
    converge(world)
    world.conflicts[np_key("pay", "deny-all")] = "someone else's"
    world.audit_findings["base"] = {np_key("x", "deny-all"): "missing"}
    counts = world.counts()
    assert set(counts) == {"cal", "payments", "base"}
    # cal governs web; pay is selected too (team NotIn [x] holds) but payments governs it
    assert (counts["cal"].governed, counts["cal"].shadowed) == (1, 1)
    assert counts["cal"].excluded == 5  # legacy, sandbox-7, skip, kube-system, dpo-system
    assert counts["cal"].managed == 3
    assert (counts["payments"].governed, counts["payments"].shadowed) == (1, 0)
    assert counts["payments"].managed == 3
    assert counts["payments"].conflict_keys == [str(np_key("pay", "deny-all"))]
    # base selects everything: governs what nobody above governs
    assert counts["base"].governed == len({"api", "legacy", "sandbox-7", "dev", "bare"})
    assert counts["base"].shadowed == 2  # web (cal), pay (payments)
    assert counts["base"].excluded == 3  # skip, kube-system, dpo-system
    assert counts["base"].managed == 3 * counts["base"].governed
    assert counts["base"].drifted == 1
    assert counts["base"].conflict_keys == []
    assert counts["cal"].conflict_keys == []


def test_calico_conflicts_are_counted_for_their_profile() -> None:
    world = calico_world()
    key = ObjectKey(GLOBAL_NETWORK_POLICY, "", "default.dpo-3-cal-deny-all")
    world.conflicts[key] = "exists and was not created by the operator"
    world.blocked = {key}
    assert (Verb.CREATE, key.name) not in verbs(world.plan_calico())  # blocked, as it should be
    assert world.counts()["cal"].conflict_keys == [str(key)]


def test_standings_and_coverage() -> None:
    world = calico_world()
    standings = world.standings(world.namespaces["pay"])
    assert standings == {"payments": Standing.GOVERNED, "cal": Standing.SHADOWED}
    assert world.standings(world.namespaces["legacy"])["cal"] is Standing.EXCLUDED
    assert world.standings(world.namespaces["dev"])["cal"] is Standing.UNSELECTED
    assert world.coverage() == Counter(
        {"governed": 2, "protected": 2, "exempt": 1, "excluded": 2, "uncovered": 3}
    )


# -- property ---------------------------------------------------------------------------------


@st.composite
def worlds(draw: st.DrawFn) -> World:
    world = make_world()
    for name in draw(st.lists(st.sampled_from(["a", "b", "c", "kube-system"]), unique=True)):
        labels = {
            k: draw(st.sampled_from(["1", "2"])) for k in ("env", "team") if draw(st.booleans())
        }
        if draw(st.integers(0, 4)) == 0:
            labels[EXEMPT_LABEL] = "true"
        world.set_namespace(ns(name, **labels))
    for name in draw(st.lists(st.sampled_from(["p", "q", "r"]), unique=True, max_size=3)):
        spec: dict[str, Any] = {"priority": draw(st.integers(0, 2))}
        if draw(st.booleans()):
            spec["namespaceSelector"] = {"matchLabels": {"env": draw(st.sampled_from(["1", "2"]))}}
        if draw(st.booleans()):
            spec["mode"] = "Audit"
        if draw(st.booleans()):
            spec["flavor"] = CALICO
        if draw(st.booleans()):
            spec["excludeNamespaces"] = [draw(st.sampled_from(["a", "b*"]))]
        if draw(st.booleans()):
            spec["policies"] = {"allowDNS": {"enabled": False}}
        assert world.update_profile(profile_body(name, **spec)).error is None
    return world


@settings(max_examples=25, deadline=None)
@given(world=worlds(), relabel=st.sampled_from(["a", "b", "c"]))
def test_converged_worlds_plan_nothing(world: World, relabel: str) -> None:
    converge(world)
    assert no_actions_left(world)
    # change one namespace, converge again: still nothing left to do
    if relabel in world.namespaces:
        world.set_namespace(ns(relabel, env="2"))
        converge(world)
        assert no_actions_left(world)


def recounted(world: World) -> tuple[dict[str, ProfileCounts], Counter[str]]:
    """Counts and coverage from scratch: a World holding the same namespaces, profiles and
    objects, built anew, has nothing kept from earlier answers."""
    fresh = make_world(*world.namespaces.values())
    for entry in world.profiles.values():
        fresh.set_profile(entry)
    for state in world.objects.values():
        fresh.set_object(state)
    fresh.audit_findings = world.audit_findings
    return fresh.counts(), fresh.coverage()


@st.composite
def changes(draw: st.DrawFn) -> list[tuple[str, str, Any]]:
    """A sequence of what the informers report: namespaces, profiles and objects coming,
    changing and going, in any order."""
    steps: list[tuple[str, str, Any]] = []
    for _ in range(draw(st.integers(1, 20))):
        kind = draw(st.sampled_from(["namespace", "gone", "profile", "deleting", "removed",
                                     "converge", "object gone"]))  # fmt: skip
        name = draw(st.sampled_from(["a", "b", "kube-system", "p", "q"]))
        value = draw(st.sampled_from(["1", "2", "exempt", "terminating"]))
        steps.append((kind, name, value))
    return steps


def change(world: World, kind: str, name: str, value: str) -> None:
    if kind == "namespace":
        labels = {EXEMPT_LABEL: "true"} if value == "exempt" else {"env": value}
        world.set_namespace(replace(ns(name, **labels), terminating=value == "terminating"))
    elif kind == "gone":
        world.remove_namespace(name)
    elif kind == "profile":
        selector = {"matchLabels": {"env": value}} if value in "12" else {}
        known = world.profiles.get(name)
        generation = known.generation + 1 if known else 1  # a new spec, not a status update
        world.update_profile(profile_body(name, generation, priority=ord(name[0]) % 3,
                                          namespaceSelector=selector))  # fmt: skip
    elif kind == "deleting":
        world.mark_deleting(name)
    elif kind == "removed":
        world.remove_profile(name)
    elif kind == "converge":
        converge(world)
    elif world.objects:
        world.remove_object(sorted(world.objects)[0])


@settings(max_examples=150, deadline=None)
@given(steps=changes())
def test_counts_and_coverage_kept_between_changes_match_a_fresh_count(
    steps: list[tuple[str, str, Any]],
) -> None:
    """The status loop asks for counts once a second; they are kept until a namespace or a
    profile changes (objects are counted as they come and go). After every change the kept
    answer is the one counted from scratch."""
    world = make_world()
    for step in steps:
        world.counts(), world.coverage()  # kept from here on, unless the change drops them
        change(world, *step)
        assert (world.counts(), world.coverage()) == recounted(world), step


# -- the DNS namespace is protected like kube-system (issue 10.5) ----------------------------


def test_a_profiles_dns_namespace_is_never_governed() -> None:
    """With ``allowDNS.namespace: coredns`` and the default (empty) selector, the DNS pods'
    namespace must not get a deny-all: every pod in the cluster would lose name resolution."""
    world = make_world(ns("coredns"), ns("team-a"))
    world.update_profile(profile_body("base", policies={"allowDNS": {"namespace": "coredns"}}))
    assert world.governor(world.namespaces["coredns"]) is None
    assert world.namespace_state(world.namespaces["coredns"]) == "protected"
    assert world.plan_namespace("coredns").actions == []
    assert world.standings(world.namespaces["coredns"]) == {"base": Standing.PROTECTED}
    assert world.plan_namespace("team-a").actions  # everything else is governed as before


def test_another_profiles_dns_namespace_is_protected_too() -> None:
    """A DNS namespace serves every namespace: no profile may lock it out, not only its own."""
    world = make_world(ns("coredns", env="prod"), ns("team-a", env="prod"))
    world.update_profile(
        profile_body(
            "dns-elsewhere",
            namespaceSelector={"matchLabels": {"team": "none"}},
            policies={"allowDNS": {"namespace": "coredns"}},
        )
    )
    world.update_profile(profile_body("wide", priority=10))
    assert world.governor(world.namespaces["coredns"]) is None
    governor = world.governor(world.namespaces["team-a"])
    assert governor is not None
    assert governor.name == "wide"


def test_a_namespace_that_becomes_the_dns_namespace_loses_its_policies() -> None:
    world = make_world(ns("coredns"))
    world.update_profile(profile_body("base"))
    converge(world)
    assert world.objects_in("coredns")
    world.update_profile(
        profile_body("base", generation=2, policies={"allowDNS": {"namespace": "coredns"}})
    )
    assert {a.verb for a in world.plan_namespace("coredns").actions} == {Verb.DELETE}
    converge(world)
    assert not world.objects_in("coredns")


def test_calico_selector_leaves_out_the_dns_namespace() -> None:
    world = make_world(ns("coredns"), ns("web"))
    world.update_profile(
        profile_body("cal", flavor=CALICO, policies={"allowDNS": {"namespace": "coredns"}})
    )
    cal = world.profiles["cal"].profile
    assert cal is not None
    selector = to_text(world.calico_selector(cal))
    assert not evaluate(selector, calico_labels(world.namespaces["coredns"]))
    assert evaluate(selector, calico_labels(world.namespaces["web"]))


def test_a_calico_profile_with_a_conflict_still_removes_a_policy_it_dropped() -> None:
    """Review find: the cover check counted a key held by a foreign object, which never goes
    live as ours, so a profile in conflict could never delete a policy it no longer has."""
    world = make_world(ns("web", env="prod"))
    world.update_profile(profile_body("cal", flavor=CALICO))
    conflicted = ObjectKey(GLOBAL_NETWORK_POLICY, "", "default.dpo-3-cal-allow-dns")
    world.conflicts[conflicted] = "exists and was not created by the operator"
    world.blocked = {conflicted}
    converge(world)
    assert conflicted not in world.objects
    dropped = ObjectKey(GLOBAL_NETWORK_POLICY, "", "default.dpo-3-cal-allow-kube-system")
    assert dropped in world.objects
    world.update_profile(
        profile_body(
            "cal", generation=2, flavor=CALICO, policies={"allowKubeSystem": {"enabled": False}}
        )
    )
    converge(world)
    assert dropped not in world.objects


def test_a_calico_profile_switched_to_no_policies_removes_its_objects() -> None:
    """Found by the Felix switch matrix: with every built-in off, the profile wanted nothing,
    its cover check waited for objects it would never have, and the old deny-all stayed."""
    world = make_world(ns("team-a", env="prod"), ns("kube-system"))
    selector = {"matchLabels": {"env": "prod"}}
    world.update_profile(profile_body("p", 1, namespaceSelector=selector, flavor=CALICO))
    converge(world)
    assert world.calico_objects()
    off = {
        "denyAll": {"ingress": False, "egress": False},
        "allowDNS": {"enabled": False},
        "allowKubeSystem": {"ingress": False, "egress": False},
    }
    world.update_profile(
        profile_body("p", 2, namespaceSelector=selector, flavor=CALICO, policies=off)
    )
    converge(world)
    assert world.calico_objects() == {}
