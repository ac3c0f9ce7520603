"""The world's renders, done synchronously: for ``dpo render``, ``dpo diff`` and ``dpo audit``.

The operator renders asynchronously (the reconciler); the command line simply waits for the
same pool, so it plans with the same trial, the same validation and the same OS limits.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from default_policy_operator.core.world import ProfileEntry, World
from default_policy_operator.rendering.pool import RenderPool


def admit(world: World, pool: RenderPool, body: Mapping[str, Any]) -> ProfileEntry:
    """``world.update_profile`` plus the trial of the new version, if it parsed."""
    entry = world.update_profile(body)
    for candidate, tasks in world.pending_trials():
        if candidate.name == entry.name:
            entry = world.finish_trial(candidate, pool.render_blocking(tasks)) or entry
    return entry


def render_scopes(world: World, pool: RenderPool, scopes: Iterable[str]) -> None:
    """Render whatever planning ``scopes`` needs, in one request to the pool."""
    tasks = [task for scope in scopes for task in world.missing_renders(scope)]
    if tasks:
        world.store_renders(tasks, pool.render_blocking(tasks))
