"""Planning: diff(desired, actual) into create / update / delete, and nothing more."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from default_policy_operator.core.labels import (
    MANAGED_BY,
    MANAGED_BY_VALUE,
    POLICY_LABEL,
    PROFILE_LABEL,
)
from default_policy_operator.core.normalize import ObjectState, spec_hash, state_of
from default_policy_operator.core.objects import NETWORK_POLICY, ObjectKey, RenderedObject
from default_policy_operator.core.plan import Action, Desired, Verb, in_sync, plan, writes_first


def key(name: str, namespace: str = "ns") -> ObjectKey:
    return ObjectKey(NETWORK_POLICY, namespace, f"dpo-{name}")


def body(
    name: str,
    spec: dict[str, Any] | None = None,
    profile: str = "p",
    owner: str = "uid-p",
    extra_labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": f"dpo-{name}",
        "namespace": "ns",
        "labels": {
            **(extra_labels or {}),
            MANAGED_BY: MANAGED_BY_VALUE,
            PROFILE_LABEL: profile,
            POLICY_LABEL: name,
        },
    }
    if owner:
        meta["ownerReferences"] = [{"uid": owner}]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": NETWORK_POLICY,
        "metadata": meta,
        "spec": spec if spec is not None else {"podSelector": {}, "policyTypes": ["Ingress"]},
    }


def desired(name: str, **kwargs: Any) -> Desired:
    whole = body(name, **kwargs)
    obj = RenderedObject(key(name), name, whole, spec_hash(NETWORK_POLICY, whole.get("spec")))
    return Desired.of(obj)


def stored(name: str, resource_version: str = "7", **kwargs: Any) -> ObjectState:
    """The object as read back from the API server (with server-side defaults filled in)."""
    b = body(name, **kwargs)
    b["metadata"]["uid"] = f"obj-{name}"
    b["metadata"]["resourceVersion"] = resource_version
    return state_of(b)


def index(*items: Any) -> dict[ObjectKey, Any]:
    return {item.key: item for item in items}


def always(state: ObjectState) -> bool:
    return True


def never(state: ObjectState) -> bool:
    return False


# -- examples ---------------------------------------------------------------------------------


def test_desired_of() -> None:
    d = desired("deny-all")
    assert d.key == key("deny-all")
    assert (d.policy, d.profile, d.owner_uid) == ("deny-all", "p", "uid-p")
    assert d.spec_hash == spec_hash(NETWORK_POLICY, d.body["spec"])
    assert d.labels[POLICY_LABEL] == "deny-all"
    assert desired("x", owner="").owner_uid == ""


def test_create_when_missing() -> None:
    want = desired("deny-all")
    (action,) = plan(index(want), {}, may_delete=always)
    assert action == Action(Verb.CREATE, want.key, want.body, profile="p")


def test_nothing_when_in_sync() -> None:
    assert (
        plan(index(desired("a"), desired("b")), index(stored("a"), stored("b")), may_delete=always)
        == []
    )


def test_nothing_when_only_apiserver_defaults_differ() -> None:
    want = desired("a", spec={"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}]})
    have = stored(
        "a",
        spec={
            "podSelector": {},
            "policyTypes": ["Ingress"],
            "ingress": [{"ports": [{"port": 80, "protocol": "TCP"}]}],
        },
    )
    assert plan(index(want), index(have), may_delete=always) == []


def test_extra_labels_on_the_live_object_are_tolerated() -> None:
    have = stored("a", extra_labels={"someone": "else"})
    assert plan(index(desired("a")), index(have), may_delete=always) == []


def test_update_on_spec_drift_carries_the_resource_version() -> None:
    want = desired("a")
    have = stored("a", resource_version="99", spec={"podSelector": {}, "policyTypes": ["Egress"]})
    (action,) = plan(index(want), index(have), may_delete=always)
    assert action == Action(Verb.UPDATE, want.key, want.body, "99", profile="p")


def test_update_on_label_drift() -> None:
    have = stored("a", profile="other")  # e.g. a new governing profile took over
    (action,) = plan(index(desired("a")), index(have), may_delete=always)
    assert action.verb is Verb.UPDATE
    assert action.profile == "p"


def test_update_on_missing_owner_reference() -> None:
    (action,) = plan(index(desired("a")), index(stored("a", owner="")), may_delete=always)
    assert action.verb is Verb.UPDATE
    (action,) = plan(index(desired("a")), index(stored("a", owner="other")), may_delete=always)
    assert action.verb is Verb.UPDATE


def test_no_owner_wanted_accepts_any_owner() -> None:
    assert (
        plan(index(desired("a", owner="")), index(stored("a", owner="x")), may_delete=always) == []
    )


def test_delete_unwanted_objects() -> None:
    have = stored("old", resource_version="5", profile="gone")
    (action,) = plan({}, index(have), may_delete=always)
    assert action == Action(Verb.DELETE, have.key, None, "5", profile="gone")


def test_may_delete_is_asked_per_object() -> None:
    keep, drop = stored("keep", profile="audit"), stored("drop", profile="enforce")
    asked: list[ObjectKey] = []

    def may_delete(state: ObjectState) -> bool:
        asked.append(state.key)
        return state.profile == "enforce"

    actions = plan(index(desired("a")), index(keep, drop), may_delete=may_delete)
    assert [(a.verb, a.key) for a in actions] == [(Verb.CREATE, key("a")), (Verb.DELETE, drop.key)]
    assert sorted(asked) == sorted([keep.key, drop.key])  # never asked about wanted objects


def test_blocked_keys_are_never_created() -> None:
    a, b = desired("a"), desired("b")
    actions = plan(index(a, b), {}, may_delete=always, blocked={a.key})
    assert [(x.verb, x.key) for x in actions] == [(Verb.CREATE, b.key)]


def test_mixed_plan_orders_writes_before_deletes() -> None:
    actions = plan(
        index(desired("new"), desired("drift"), desired("same")),
        index(
            stored("drift", spec={"podSelector": {"matchLabels": {"x": "y"}}}),
            stored("same"),
            stored("old"),
        ),
        may_delete=always,
    )
    assert [(a.verb, a.key.name) for a in actions] == [
        (Verb.CREATE, "dpo-new"),
        (Verb.UPDATE, "dpo-drift"),
        (Verb.DELETE, "dpo-old"),
    ]


def test_in_sync() -> None:
    assert in_sync(desired("a"), stored("a"))
    assert not in_sync(desired("a"), stored("a", spec={"podSelector": {}, "egress": [{}]}))
    assert not in_sync(desired("a"), stored("a", profile="q"))


def apply_to_state(
    actions: list[Action], actual: dict[ObjectKey, ObjectState]
) -> dict[ObjectKey, ObjectState]:
    """What ``actual`` becomes once ``actions`` succeed (as the reconciler's index does)."""
    result = dict(actual)
    for action in actions:
        if action.verb is Verb.DELETE:
            result.pop(action.key, None)
        else:
            assert action.body is not None
            result[action.key] = state_of(action.body)
    return result


def test_writes_first_withholds_deletes_while_a_scope_still_writes() -> None:
    """The handover rule: a scope's new cover lands before its old objects go."""
    mixed = plan(
        index(desired("new"), desired("drift")),
        index(stored("drift", spec={"podSelector": {"matchLabels": {"x": "y"}}}), stored("old")),
        may_delete=always,
    )
    actions, withheld = writes_first(mixed)
    assert withheld
    assert [(a.verb, a.key.name) for a in actions] == [
        (Verb.CREATE, "dpo-new"),
        (Verb.UPDATE, "dpo-drift"),
    ]
    deletes_only = plan(
        index(desired("new")), index(stored("new"), stored("old")), may_delete=always
    )
    assert writes_first(deletes_only) == (deletes_only, False)
    assert writes_first([]) == ([], False)


# -- properties -------------------------------------------------------------------------------

NAMES = ["a", "b", "c", "d", "e"]
SPECS: list[dict[str, Any]] = [
    {"podSelector": {}, "policyTypes": ["Ingress"]},
    {"podSelector": {}},  # same as the first once defaulted
    {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
    {"podSelector": {}, "ingress": [{}]},
    {"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}]},
    {"podSelector": {}, "ingress": [{"ports": [{"port": 80, "protocol": "TCP"}]}]},
    {"podSelector": {"matchLabels": {"app": "x"}}},
]
specs = st.sampled_from(SPECS)
profiles = st.sampled_from(["p", "q"])
owners = st.sampled_from(["", "uid-p", "uid-q"])


@st.composite
def desired_states(draw: st.DrawFn) -> dict[ObjectKey, Desired]:
    names = draw(st.lists(st.sampled_from(NAMES), unique=True))
    return index(
        *(desired(n, spec=draw(specs), profile=draw(profiles), owner=draw(owners)) for n in names)
    )


@st.composite
def actual_states(draw: st.DrawFn) -> dict[ObjectKey, ObjectState]:
    names = draw(st.lists(st.sampled_from(NAMES), unique=True))
    return index(
        *(
            stored(
                n,
                resource_version=str(draw(st.integers(1, 9))),
                spec=draw(specs),
                profile=draw(profiles),
                owner=draw(owners),
                extra_labels=draw(st.sampled_from([None, {"x": "y"}])),
            )
            for n in names
        )
    )


deletable_profiles = st.sets(st.sampled_from(["p", "q"]))
blocked_keys = st.sets(st.sampled_from([key(n) for n in NAMES]), max_size=2)


@settings(max_examples=120, deadline=None)
@given(
    want=desired_states(),
    have=actual_states(),
    deletable=deletable_profiles,
    blocked=blocked_keys,
)
def test_applying_a_plan_then_planning_again_yields_nothing(
    want: dict[ObjectKey, Desired],
    have: dict[ObjectKey, ObjectState],
    deletable: set[str],
    blocked: set[ObjectKey],
) -> None:
    # ``actual`` holds only managed objects, so a blocked key (someone else's) is never in it
    have = {k: v for k, v in have.items() if k not in blocked}

    def may_delete(state: ObjectState) -> bool:
        return state.profile in deletable

    actions = plan(want, have, may_delete=may_delete, blocked=blocked)
    assert len({a.key for a in actions}) == len(actions)  # at most one action per object
    after = apply_to_state(actions, have)
    assert plan(want, after, may_delete=may_delete, blocked=blocked) == []

    # and the result is what was asked for
    for k, d in want.items():
        if k in blocked:
            assert k not in after
        else:
            assert in_sync(d, after[k])
    for k, state in after.items():
        if k not in want:
            assert state is have.get(k)
            assert not may_delete(state)


@settings(max_examples=100, deadline=None)
@given(want=desired_states())
def test_planning_when_actual_equals_desired_yields_nothing(
    want: dict[ObjectKey, Desired],
) -> None:
    actual = {k: state_of(d.body) for k, d in want.items()}
    assert plan(want, actual, may_delete=always) == []
    assert plan(want, actual, may_delete=never, blocked=set(want)) == []


@settings(max_examples=100, deadline=None)
@given(have=actual_states())
def test_empty_desire_deletes_exactly_what_may_go(have: dict[ObjectKey, ObjectState]) -> None:
    actions = plan({}, have, may_delete=lambda s: s.profile == "p")
    assert {a.key for a in actions} == {k for k, s in have.items() if s.profile == "p"}
    assert all(a.verb is Verb.DELETE and a.body is None for a in actions)
    assert plan({}, have, may_delete=never) == []
