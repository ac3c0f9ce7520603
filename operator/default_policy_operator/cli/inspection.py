"""``dpo diff`` and ``dpo audit``: the operator's planning, run read-only against a live cluster.

They build the same :class:`World` the operator builds from the same lists and ask it the same
questions, so what they print is what the operator would do -- without a single write.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any

import yaml

from default_policy_operator.controller.reconciler import CALICO_SCOPE
from default_policy_operator.core.governance import Namespace, protected_namespaces
from default_policy_operator.core.normalize import state_of
from default_policy_operator.core.objects import (
    CLUSTER_POLICY_APIS,
    STAGED_KINDS,
    ObjectKey,
    is_managed,
    key_of,
)
from default_policy_operator.core.plan import Action, Verb
from default_policy_operator.core.world import World
from default_policy_operator.kube.client import (
    NAMESPACES,
    NETWORK_POLICIES,
    PROFILES,
    ApiError,
    KubeApi,
    calico_namespaced_resource,
    calico_resource,
    calico_staged_resource,
    cluster_network_policy_resource,
)
from default_policy_operator.kube.credentials import load_credentials
from default_policy_operator.rendering.offline import admit, render_scopes
from default_policy_operator.rendering.pool import RenderPool


@dataclass
class Inspection:
    """The operator's view of a live cluster, and the plan it would make there."""

    world: World
    #: scope -> (actions Enforce would take, findings of Audit profiles), conflicts left out
    plans: dict[str, tuple[list[Action], list[Action]]]
    #: keys the plan wants that an object the operator did not create holds (it would not
    #: write them; each is what the operator reports as a Conflict)
    conflicts: list[Action]


async def inspect_cluster(
    kubeconfig: str | None,
    calico_api_version: str,
    operator_namespace: str,
    context: str | None = None,
) -> Inspection:
    """List namespaces, profiles and every policy (ours and others'), then plan."""
    async with KubeApi(await load_credentials(kubeconfig, context=context)) as api:
        world, foreign = await _load_world(api, calico_api_version, operator_namespace)
    plans: dict[str, tuple[list[Action], list[Action]]] = {}
    conflicts: list[Action] = []
    for scope, (actions, findings) in plan_everything(world).items():
        # A create meets a foreign object only where it holds a name the operator would write:
        # that is a conflict; any other foreign policy (a team's own) is none of our business.
        held = {a.key for a in [*actions, *findings] if a.verb is Verb.CREATE and a.key in foreign}
        conflicts += [a for a in [*actions, *findings] if a.key in held]
        plans[scope] = (
            [a for a in actions if a.key not in held],
            [a for a in findings if a.key not in held],
        )
    for action in conflicts:
        print(f"warning: {action.key} is held by an object the operator did not create; "
              "it would be left untouched", file=sys.stderr)  # fmt: skip
    return Inspection(world, plans, conflicts)


async def _load_world(
    api: KubeApi, calico_api_version: str, operator_namespace: str
) -> tuple[World, set[ObjectKey]]:
    """The World the operator would build, and the keys of policies it did not create."""
    cluster_api = await _served_cluster_api(api)
    world = World(
        protected_namespaces(operator_namespace),
        calico_api_version=calico_api_version,
        cluster_api_version=cluster_api,
    )
    print("listing namespaces, profiles and policies...", file=sys.stderr)
    for body in await api.list_objects(NAMESPACES):
        meta = body["metadata"]
        world.set_namespace(
            Namespace(
                meta["name"], dict(meta.get("labels") or {}), dict(meta.get("annotations") or {})
            )
        )
    profiles = await api.list_objects(PROFILES)
    # Every policy, not only labelled ones: a foreign holder of a managed name blocks a create,
    # and an object of ours whose label was removed is still ours (by its ownerReference).
    policies = await api.list_objects(NETWORK_POLICIES)
    optional = [calico_namespaced_resource(calico_api_version), calico_resource(calico_api_version)]
    optional += [calico_staged_resource(calico_api_version, k) for k in STAGED_KINDS.values()]
    for resource in [*optional, cluster_network_policy_resource(cluster_api)]:
        try:
            policies += await api.list_objects(resource)
        except ApiError as exc:
            if exc.status != 404:  # Calico, or the CRD, is not installed
                raise
    foreign = set()
    for body in policies:
        if is_managed(body):
            world.set_object(state_of(body))
        else:
            foreign.add(key_of(body))
    with RenderPool() as pool:  # trials and per-namespace renders, as the operator does them
        for body in profiles:
            admit(world, pool, body)
        render_scopes(world, pool, sorted(world.namespaces))
    return world, foreign


async def _served_cluster_api(api: KubeApi) -> str:
    """The ClusterNetworkPolicy API version the server prefers (the default where none)."""
    try:
        group = await api.request("GET", "/apis/policy.networking.k8s.io")
    except ApiError:
        return CLUSTER_POLICY_APIS[0]
    return str((group.get("preferredVersion") or {}).get("groupVersion", CLUSTER_POLICY_APIS[0]))


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


async def diff(
    kubeconfig: str | None,
    output: str,
    calico_api_version: str,
    operator_namespace: str,
    context: str | None = None,
) -> int:
    """Print what the operator would change; exit 1 when it would change anything."""
    seen = await inspect_cluster(kubeconfig, calico_api_version, operator_namespace, context)
    rows = []
    for actions, findings in seen.plans.values():
        rows += [_action_row(a, "Enforce") for a in actions]
        rows += [_action_row(a, "Audit") for a in findings]
    _print(rows, output, ["verb", "kind", "namespace", "name", "profile", "mode"])
    return 1 if rows else 0


async def audit(
    kubeconfig: str | None,
    output: str,
    calico_api_version: str,
    operator_namespace: str,
    context: str | None = None,
) -> int:
    """Every namespace with its governing profile and what is missing, drifted or blocked.

    Exits 1 when a namespace is uncovered or anything is missing, drifted or in conflict
    (including the cluster-scoped Calico objects, counted for the namespaces they cover).
    """
    seen = await inspect_cluster(kubeconfig, calico_api_version, operator_namespace, context)
    world = seen.world
    rows = []
    for name in sorted(world.namespaces):
        namespace = world.namespaces[name]
        governor = world.governor(namespace)
        if governor is not None and not governor.flavor.namespaced:
            counts = _tally(seen, CALICO_SCOPE, governor.name)
        else:
            counts = _tally(seen, name, None)
        rows.append(
            {
                "namespace": name,
                "state": world.namespace_state(namespace),
                "profile": governor.name if governor else "",
                "missing": counts[0],
                "drifted": counts[1],
                "conflicts": counts[2],
            }
        )
    _print(rows, output, ["namespace", "state", "profile", "missing", "drifted", "conflicts"])
    failing = any(r["state"] == "uncovered" or r["missing"] or r["drifted"] for r in rows)
    calico = _tally(seen, CALICO_SCOPE, None)  # also what covers no namespace (yet)
    return 1 if failing or seen.conflicts or any(calico) else 0


def _tally(seen: Inspection, scope: str, profile: str | None) -> tuple[int, int, int]:
    """(missing, drifted -- to update or remove --, in conflict) in one scope, for one
    profile or all."""
    actions, findings = seen.plans.get(scope, ([], []))
    mine = [a for a in [*actions, *findings] if profile is None or a.profile == profile]
    held = [
        a
        for a in seen.conflicts
        if (a.key.namespace or CALICO_SCOPE) == scope and profile in (None, a.profile)
    ]
    missing = sum(1 for a in mine if a.verb is Verb.CREATE)
    return missing, len(mine) - missing, len(held)


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
