"""``dpo diff`` and ``dpo audit``: the operator's planning, run read-only against a live cluster.

They build the same :class:`World` the operator builds from the same lists and ask it the same
questions, so what they print is what the operator would do -- without a single write.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import yaml

from default_policy_operator.controller.reconciler import CALICO_SCOPE
from default_policy_operator.core.governance import Namespace, protected_namespaces
from default_policy_operator.core.labels import MANAGED_SELECTOR
from default_policy_operator.core.normalize import state_of
from default_policy_operator.core.objects import is_managed, key_of
from default_policy_operator.core.plan import Action
from default_policy_operator.core.world import World
from default_policy_operator.kube.client import (
    NAMESPACES,
    NETWORK_POLICIES,
    PROFILES,
    ApiError,
    KubeApi,
    calico_resource,
    load_credentials,
)
from default_policy_operator.rendering.offline import admit, render_scopes
from default_policy_operator.rendering.pool import RenderPool


async def load_world(api: KubeApi, calico_api_version: str, *, with_foreign: bool) -> World:
    """List namespaces, profiles and managed objects (and, for audit, foreign holders)."""
    world = World(protected_namespaces(None))
    print("listing namespaces, profiles and policies...", file=sys.stderr)
    for body in await api.list_objects(NAMESPACES):
        meta = body["metadata"]
        world.set_namespace(
            Namespace(
                meta["name"], dict(meta.get("labels") or {}), dict(meta.get("annotations") or {})
            )
        )
    profiles = await api.list_objects(PROFILES)
    policies = await api.list_objects(
        NETWORK_POLICIES, label_selector="" if with_foreign else MANAGED_SELECTOR
    )
    try:
        policies += await api.list_objects(calico_resource(calico_api_version))
    except ApiError as exc:
        if exc.status != 404:
            raise
    for body in policies:
        if is_managed(body):
            world.set_object(state_of(body))
        elif with_foreign:
            world.conflicts[key_of(body)] = "not created by the operator"
    with RenderPool() as pool:  # trials and per-namespace renders, as the operator does them
        for body in profiles:
            admit(world, pool, body)
        render_scopes(world, pool, sorted(world.namespaces))
    return world


def plan_everything(world: World) -> dict[str, tuple[list[Action], list[Action]]]:
    """scope -> (actions Enforce would take, findings of Audit profiles)."""
    out = {}
    scopes = sorted({*world.namespaces, *world.namespaces_with_objects()})
    for scope in [*scopes, CALICO_SCOPE]:
        result = world.plan_calico() if scope == CALICO_SCOPE else world.plan_namespace(scope)
        for profile, error in result.errors:
            print(f"warning: profile {profile}: {error}", file=sys.stderr)
        out[scope] = (result.actions, result.audit_findings)
    return out


def _action_row(action: Action, mode: str) -> dict[str, Any]:
    return {
        "verb": str(action.verb),
        "kind": action.key.kind,
        "namespace": action.key.namespace,
        "name": action.key.name,
        "profile": action.profile,
        "mode": mode,
    }


async def diff(kubeconfig: str | None, output: str, calico_api_version: str) -> int:
    """Print what the operator would change; exit 1 when it would change anything."""
    async with KubeApi(load_credentials(kubeconfig)) as api:
        world = await load_world(api, calico_api_version, with_foreign=False)
    rows = []
    for actions, findings in plan_everything(world).values():
        rows += [_action_row(a, "Enforce") for a in actions]
        rows += [_action_row(a, "Audit") for a in findings]
    _print(rows, output, ["verb", "kind", "namespace", "name", "profile", "mode"])
    return 1 if rows else 0


async def audit(kubeconfig: str | None, output: str, calico_api_version: str) -> int:
    """Every namespace with its governing profile and what is missing, drifted or blocked."""
    async with KubeApi(load_credentials(kubeconfig)) as api:
        world = await load_world(api, calico_api_version, with_foreign=True)
    plans = plan_everything(world)
    rows = []
    failing = False
    for name in sorted(world.namespaces):
        namespace = world.namespaces[name]
        governor = world.governor(namespace)
        actions, findings = plans.get(name, ([], []))
        pending = [*actions, *findings]
        missing = sum(1 for a in pending if a.verb == "create")
        drifted = sum(1 for a in pending if a.verb == "update")
        conflicts = sum(1 for k in world.conflicts if k.namespace == name and governor)
        state = world.namespace_state(namespace)
        failing |= state == "uncovered" or bool(missing or drifted or conflicts)
        rows.append(
            {
                "namespace": name,
                "state": state,
                "profile": governor.name if governor else "",
                "missing": missing,
                "drifted": drifted,
                "conflicts": conflicts,
            }
        )
    _print(rows, output, ["namespace", "state", "profile", "missing", "drifted", "conflicts"])
    return 1 if failing else 0


def _print(rows: list[dict[str, Any]], output: str, columns: list[str]) -> None:
    if output == "json":
        print(json.dumps(rows, indent=2))
    elif output == "yaml":
        print(yaml.safe_dump(rows, sort_keys=False), end="")
    else:
        widths = [max([len(c), *(len(str(r[c])) for r in rows)]) for c in columns]
        print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)))
        for row in rows:
            print("  ".join(str(row[c]).ljust(w) for c, w in zip(columns, widths, strict=True)))
