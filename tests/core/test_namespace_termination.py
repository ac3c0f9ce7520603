"""A namespace being deleted is left to the namespace controller (issue 10, item 6).

Once a namespace has a ``deletionTimestamp`` the namespace controller deletes everything in it
and NamespaceLifecycle admission refuses every create there. So the plan for such a namespace is
empty whatever its objects look like -- nothing to create (it would be refused), nothing to
delete (the controller does) -- and it leaves the Calico selector alone, so a namespace's own
deletion causes no write at all.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from default_policy_operator.core.governance import Namespace
from default_policy_operator.core.world import World
from tests.core.test_world import (
    BUILTINS,
    CALICO,
    converge,
    make_world,
    np_key,
    ns,
    profile_body,
    worlds,
)


def terminating(namespace: Namespace) -> Namespace:
    return dataclasses.replace(namespace, terminating=True)


def governed_world(**spec: object) -> World:
    world = make_world(ns("team-a", env="prod"), ns("team-b", env="prod"))
    entry = world.update_profile(
        profile_body("base", namespaceSelector={"matchLabels": {"env": "prod"}}, **spec)
    )
    assert entry.error is None
    converge(world)
    return world


def test_a_terminating_namespace_keeps_its_objects_without_a_write() -> None:
    world = governed_world()
    world.set_namespace(terminating(world.namespaces["team-a"]))
    assert set(world.objects_in("team-a")) == {np_key("team-a", p) for p in BUILTINS}
    result = world.plan_namespace("team-a")
    assert (result.actions, result.audit_findings, result.errors) == ([], [], [])


def test_objects_the_namespace_controller_deleted_are_not_recreated() -> None:
    world = governed_world()
    world.set_namespace(terminating(world.namespaces["team-a"]))
    for key in list(world.objects_in("team-a")):
        world.remove_object(key)
    assert world.plan_namespace("team-a").actions == []
    assert world.plan_namespace("team-b").actions == []  # its neighbour is untouched


def test_a_namespace_first_seen_terminating_gets_nothing() -> None:
    world = governed_world()
    world.set_namespace(terminating(ns("team-c", env="prod")))
    assert world.plan_namespace("team-c").actions == []


def test_audit_mode_reports_no_finding_for_a_terminating_namespace() -> None:
    world = governed_world(mode="Audit")
    assert world.plan_namespace("team-a").audit_findings  # the control: Audit reports here
    world.set_namespace(terminating(world.namespaces["team-a"]))
    assert world.plan_namespace("team-a").audit_findings == []


def test_the_calico_selector_does_not_change_while_a_namespace_terminates() -> None:
    world = governed_world(flavor=CALICO)
    assert world.plan_calico().actions == []
    world.set_namespace(terminating(world.namespaces["team-a"]))
    assert world.plan_calico().actions == []


def test_the_deletion_timestamp_is_a_change_the_reconciler_sees() -> None:
    """namespace_event skips versions equal to the known one: termination must not be equal."""
    namespace = ns("team-a", env="prod")
    assert terminating(namespace) != namespace


def test_a_terminating_namespace_is_counted_as_terminating_only() -> None:
    """Not "uncovered" (no alert for a namespace its owner deleted), not "governed" (nothing is
    applied there any more), and in no profile's governed/shadowed/excluded count."""
    world = governed_world()
    world.set_namespace(terminating(world.namespaces["team-a"]))
    world.set_namespace(terminating(ns("stray")))  # selected by nobody: would be "uncovered"
    assert world.coverage() == Counter({"governed": 1, "terminating": 2})
    counts = world.counts()["base"]
    assert (counts.governed, counts.shadowed, counts.excluded) == (1, 0, 0)
    assert world.namespace_state(world.namespaces["stray"]) == "terminating"


def test_a_conflict_in_a_terminating_namespace_is_not_reported() -> None:
    """The foreign object goes with the namespace: no Degraded/Conflict for a namespace that
    its owner is deleting."""
    world = governed_world()
    world.conflicts[np_key("team-a", "deny-all")] = "exists and was not created by the operator"
    assert world.counts()["base"].conflict_keys  # the control
    world.set_namespace(terminating(world.namespaces["team-a"]))
    assert world.counts()["base"].conflict_keys == []


@pytest.mark.parametrize("name", ["kube-system", "dpo-system"])
def test_a_protected_namespace_stays_protected(name: str) -> None:
    world = make_world(terminating(ns(name)))
    assert world.namespace_state(world.namespaces[name]) == "protected"


@settings(max_examples=40, deadline=None)
@given(world=worlds(), name=st.sampled_from(["a", "b", "c"]), emptied=st.booleans())
def test_no_world_plans_a_write_for_a_terminating_namespace(
    world: World, name: str, emptied: bool
) -> None:
    converge(world)
    known = world.namespaces.get(name)
    world.set_namespace(terminating(known or ns(name)))
    if emptied:  # the namespace controller has been through it
        for key in list(world.objects_in(name)):
            world.remove_object(key)
    result = world.plan_namespace(name)
    assert (result.actions, result.audit_findings) == ([], [])
    if known is not None:  # (a namespace never seen before may still change a selector)
        assert world.plan_calico().actions == []
    assert world.namespace_state(world.namespaces[name]) in ("terminating", "protected")
