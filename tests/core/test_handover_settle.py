"""A handover between kinds holds for a policy engine that sees each kind on its own stream.

Felix, kube-router and every other engine watch each kind of policy separately: each stream
keeps its own order, but nothing orders one stream against another, so an engine can apply the
old kind's delete before the new kind's create (seen on Felix: a DNS answer lost while a
Calico NetworkPolicy handed over to GlobalNetworkPolicies). The simulation below runs the
reconciler over the pure core on a fake clock and gives each kind its own delay, drawn below
``handover_settle``; at every moment the engine's view changes, a namespace that has a deny-all
in force must also have its allow-dns, and the deny-all must never be missing.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from default_policy_operator.core.governance import Namespace, protected_namespaces
from default_policy_operator.core.labels import NAMESPACE_NAME_LABEL
from default_policy_operator.core.labels import PROFILE_LABEL as PROFILE
from default_policy_operator.core.model import Flavor
from default_policy_operator.core.objects import ObjectKey
from default_policy_operator.core.plan import Action, Verb
from tests.handover import KIND_OF, TEAM, Cluster, allows_dns, denies_all
from tests.inline_render import InlineWorld

SETTLE = 3.0
PAIRS = list(itertools.permutations(Flavor, 2))


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


class Engine(Cluster):
    """What the API server holds, and when each change happened (for the engine's view)."""

    def __init__(self, world: InlineWorld, clock: Clock) -> None:
        super().__init__(world)
        self.clock = clock
        self.history: list[tuple[float, Action]] = []

    def apply(self, action: Action) -> None:
        self.history.append((self.clock.now, action))
        super().apply(action)

    def gaps(self, start: Mapping[ObjectKey, dict[str, Any]], lag: Mapping[str, float]) -> list:
        """Moments the view of an engine whose stream of kind K runs ``lag[K]`` behind lacks a
        deny-all, or has one without an allow-dns."""
        seen = sorted(
            (at + lag[action.key.kind], index, action)
            for index, (at, action) in enumerate(self.history)
        )
        view = dict(start)
        found = []
        for at, _, action in seen:
            if action.verb is Verb.DELETE:
                view.pop(action.key, None)
            else:
                assert action.body is not None
                view[action.key] = action.body
            if not denies_all(view) or not allows_dns(view):
                found.append((round(at - self.history[0][0], 3), str(action.verb), action.key))
        return found


def profile(name: str, flavor: Flavor, priority: int, generation: int = 1) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "uid": f"uid-{name}", "generation": generation},
        "spec": {
            "namespaceSelector": {"matchLabels": {"env": "prod"}},
            "flavor": str(flavor),
            "priority": priority,
        },
    }


def run(engine: Engine, data: st.DataObject) -> None:
    """Plan both scopes in a drawn order until nothing is left to do; writes land one by one
    in a drawn order, some milliseconds apart; when only a settling cover is awaited, the
    clock moves on to the moment it has settled. A Calico plan with nothing to write sends the
    namespaces waiting for it back to planning, as the reconciler does."""
    world, clock = engine.world, engine.clock
    for _ in range(40):
        wrote, retry, again = False, [], False
        for scope in data.draw(st.permutations(["", TEAM])):
            result = world.plan_calico() if scope == "" else world.plan_namespace(scope)
            if result.retry_in is not None:
                retry.append(result.retry_in)
            if scope == "" and not result.actions and world.waiting_for_calico:
                world.waiting_for_calico.clear()  # as the reconciler does: plan them again
                again = True
            for action in data.draw(st.permutations(result.actions)):
                clock.now += data.draw(st.sampled_from([0.0, 0.001, 0.02]))
                engine.apply(action)
                wrote = True
        if not wrote and not retry and not again:
            return
        clock.now += min(retry) if retry and not wrote else 0.01
    raise AssertionError("the handover never finished")


def setup(before: Flavor, data: st.DataObject) -> Engine:
    clock = Clock()
    world = InlineWorld(protected_namespaces("dpo-system"), handover_settle=SETTLE, clock=clock)
    world.set_namespace(Namespace(TEAM, {NAMESPACE_NAME_LABEL: TEAM, "env": "prod"}, {}))
    engine = Engine(world, clock)
    world.update_profile(profile("old", before, 1))
    run(engine, data)
    assert denies_all(engine.live)
    assert allows_dns(engine.live)
    clock.now += 60
    engine.history.clear()
    return engine


def assert_handed_over(engine: Engine) -> None:
    """The new profile's deny-all and allow-dns are in force, and nothing of the old one (a
    cluster-scoped profile keeps its objects, selecting none of its former namespaces)."""
    new = {k: b for k, b in engine.live.items() if b["metadata"]["labels"][PROFILE] == "new"}
    old = {k: b for k, b in engine.live.items() if k not in new}
    assert denies_all(new)
    assert allows_dns(new)
    assert not denies_all(old)
    assert not allows_dns(old)


lags = st.lists(st.sampled_from([0.0, 0.5, 1.5, 2.9]), min_size=4, max_size=4)


def lag_of(drawn: list[float]) -> dict[str, float]:
    kinds = ("NetworkPolicy", "CalicoNetworkPolicy", "GlobalNetworkPolicy", "ClusterNetworkPolicy")
    return dict(zip(kinds, drawn, strict=True))


@pytest.mark.parametrize(("before", "after"), PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
@settings(max_examples=20, deadline=None)
@given(data=st.data(), drawn=lags)
def test_a_flavor_switch_holds_for_an_engine_with_a_stream_per_kind(
    before: Flavor, after: Flavor, data: st.DataObject, drawn: list[float]
) -> None:
    engine = setup(before, data)
    start = dict(engine.live)
    engine.world.update_profile(profile("old", after, 1, generation=2))
    run(engine, data)
    assert {k.kind for k in engine.live} == {KIND_OF[after]}, "the switch did not complete"
    assert engine.gaps(start, lag_of(drawn)) == []


@pytest.mark.parametrize(("before", "after"), PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
@settings(max_examples=20, deadline=None)
@given(data=st.data(), drawn=lags)
def test_a_priority_handover_holds_for_an_engine_with_a_stream_per_kind(
    before: Flavor, after: Flavor, data: st.DataObject, drawn: list[float]
) -> None:
    engine = setup(before, data)
    start = dict(engine.live)
    engine.world.update_profile(profile("new", after, 5))
    run(engine, data)
    assert_handed_over(engine)
    assert engine.gaps(start, lag_of(drawn)) == []


@pytest.mark.parametrize("flavor", list(Flavor))
@settings(max_examples=5, deadline=None)
@given(data=st.data())
def test_within_one_kind_the_old_cover_goes_without_waiting(
    flavor: Flavor, data: st.DataObject
) -> None:
    """One stream keeps its order: a handover within a kind needs no settling time."""
    engine = setup(flavor, data)
    engine.world.update_profile(profile("new", flavor, 5))
    run(engine, data)
    assert_handed_over(engine)
    took = engine.history[-1][0] - engine.history[0][0]
    assert took < 1.0, f"a same-kind handover took {took:.2f} s of settling"


NAMESPACED = [f for f in Flavor if f.namespaced]
CLUSTER_SCOPED = [f for f in Flavor if not f.namespaced]


@pytest.mark.parametrize("before", NAMESPACED)
@pytest.mark.parametrize("after", CLUSTER_SCOPED)
@settings(max_examples=10, deadline=None)
@given(data=st.data())
def test_a_relabel_into_a_cluster_scoped_profile_waits_too(
    before: Flavor, after: Flavor, data: st.DataObject
) -> None:
    """The namespace moves from a namespaced profile to a cluster-scoped one by a label change:
    the cluster-scoped objects are not written at all (their selector already matches the new
    label), and an engine learns of the relabel on its namespace stream. The old policies must
    still wait ``handover_settle`` from the moment the namespace came into the new cover."""
    clock = Clock()
    world = InlineWorld(protected_namespaces("dpo-system"), handover_settle=SETTLE, clock=clock)
    world.set_namespace(Namespace(TEAM, {NAMESPACE_NAME_LABEL: TEAM, "team": "a"}, {}))
    engine = Engine(world, clock)
    old = profile("old", before, 5)
    old["spec"]["namespaceSelector"] = {"matchLabels": {"team": "a"}}
    world.update_profile(old)
    world.update_profile(profile("new", after, 1))  # selects env=prod: nothing yet
    run(engine, data)
    clock.now += 60
    engine.history.clear()
    relabelled = clock.now
    world.set_namespace(Namespace(TEAM, {NAMESPACE_NAME_LABEL: TEAM, "env": "prod"}, {}))
    run(engine, data)
    deletes = [at for at, action in engine.history if action.verb is Verb.DELETE]
    assert deletes, "the old policies were never removed"
    assert min(deletes) - relabelled >= SETTLE
