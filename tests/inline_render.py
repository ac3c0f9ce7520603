"""A World that renders in the test's own process, at once: for unit tests of planning.

The operator never does this (templates run in the render pool's worker processes); unit tests
of governance and planning only need the renders to be there.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from default_policy_operator.core.calico_selector import parse
from default_policy_operator.core.governance import Namespace
from default_policy_operator.core.model import Profile
from default_policy_operator.core.objects import RenderedObject
from default_policy_operator.core.render import (
    ProfileRender,
    Renderer,
    RenderError,
    RenderResult,
    RenderTask,
    namespace_task,
    restamp,
    trial_result,
    trial_tasks,
)
from default_policy_operator.core.world import (
    ProfileEntry,
    ScopePlan,
    World,
    with_namespace_selector,
)

RENDERER = Renderer()  # compiled templates are cached per renderer: share one


def render_now(tasks: list[RenderTask]) -> list[RenderResult]:
    return [RENDERER.run(task) for task in tasks]


class InlineWorld(World):
    def update_profile(self, body: Mapping[str, Any]) -> ProfileEntry:
        entry = super().update_profile(body)
        while pending := self.pending_trials():  # a failed trial may queue the recorded version
            for candidate, tasks in pending:
                self.finish_trial(candidate, render_now(tasks))
        return self.profiles.get(entry.name, entry)

    def plan_namespace(self, name: str) -> ScopePlan:
        tasks = self.missing_renders(name)
        if tasks:
            self.store_renders(tasks, render_now(tasks))
        return super().plan_namespace(name)


def trial(profile: Profile) -> ProfileRender:
    """The profile's trial, in this process; raises its first RenderError."""
    return trial_result(profile, render_now(trial_tasks(profile)))


def render_namespace(profile: Profile, namespace: Namespace | Mapping[str, Any]) -> list[Any]:
    """Every NetworkPolicy ``profile`` wants in ``namespace``, as the operator would plan it
    (trial first, then the namespace-dependent renders); raises the first RenderError."""
    if not isinstance(namespace, Namespace):
        namespace = Namespace(
            str(namespace["name"]),
            dict(namespace.get("labels") or {}),
            dict(namespace.get("annotations") or {}),
        )
    render = trial(profile)
    objects = []
    for policy in profile.policy_names():
        shared = render.shared.get(policy)
        if shared is not None:
            objects.append(restamp(shared, namespace.name))
            continue
        (result,) = render_now([namespace_task(profile, policy, namespace)])
        if isinstance(result, RenderError):
            raise result
        objects.append(result)
    return objects


def render_calico(profile: Profile, selector: str) -> list[RenderedObject]:
    """Every GlobalNetworkPolicy ``profile`` wants, limited to ``selector``'s namespaces."""
    governed = parse(selector)
    return [with_namespace_selector(obj, governed) for obj in trial(profile).shared.values()]
