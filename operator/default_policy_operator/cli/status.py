"""``dpo status`` (``kubectl dpo status``): one line per profile, from the status it carries.

It reads only what the operator already wrote to each profile's ``.status`` (one list call,
no planning), so it is cheap on any cluster and shows exactly what ``kubectl get dpp -o yaml``
would, in columns. A status the operator has not caught up with yet (``observedGeneration``
behind ``metadata.generation``) or never wrote is shown as not known to be ready, never as the
old verdict.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from default_policy_operator.kube.client import PROFILES, ApiError, KubeApi
from default_policy_operator.kube.credentials import CredentialsError, load_credentials

COLUMNS = (
    "name", "flavor", "mode", "governed", "shadowed", "drifted", "conflicts", "ready", "reason",
)  # fmt: skip
#: REASON when the operator has not written a status for this profile at all.
PENDING = "Pending"
#: REASON when the status describes an older generation of the spec.
STALE = "Stale"


def _conditions(status: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {c.get("type", ""): c for c in status.get("conditions") or []}


def _verdict(profile: Mapping[str, Any]) -> tuple[str, str]:
    """(READY, REASON): the Degraded reason when degraded, else the Ready reason."""
    status = profile.get("status") or {}
    conditions = _conditions(status)
    if "Ready" not in conditions:
        return "Unknown", PENDING
    if status.get("observedGeneration") != profile["metadata"].get("generation"):
        return "Unknown", STALE
    degraded = conditions.get("Degraded") or {}
    reason = degraded.get("reason") if degraded.get("status") == "True" else None
    ready = conditions["Ready"]
    return str(ready.get("status", "Unknown")), str(reason or ready.get("reason", ""))


def row(profile: Mapping[str, Any]) -> dict[str, Any]:
    """One profile's line; counts the operator has not reported yet are 0."""
    spec, status = profile.get("spec") or {}, profile.get("status") or {}
    ready, reason = _verdict(profile)
    return {
        "name": profile["metadata"]["name"],
        "flavor": spec.get("flavor", "NetworkPolicy"),
        "mode": spec.get("mode", "Enforce"),
        "governed": int(status.get("governedNamespaces", 0)),
        "shadowed": int(status.get("shadowedNamespaces", 0)),
        "drifted": int(status.get("driftedObjects", 0)),
        "conflicts": int(status.get("conflicts", 0)),
        "ready": ready,
        "reason": reason,
    }


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] = COLUMNS) -> str:
    """kubectl's look: upper-case headers, columns padded to their widest cell."""
    widths = [max([len(c), *(len(str(r[c])) for r in rows)]) for c in columns]
    lines = [[c.upper() for c in columns], *([str(r[c]) for c in columns] for r in rows)]
    return "\n".join(
        "   ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def render(rows: Sequence[Mapping[str, Any]], output: str) -> str:
    if output == "json":
        return json.dumps(list(rows), indent=2)
    if output == "yaml":
        return yaml.safe_dump(list(rows), sort_keys=False).rstrip("\n")
    return table(rows)


def _explain(exc: ApiError) -> str:
    """The client reports no response (connection, credentials) as status 0, like client-go."""
    if exc.status == 0:
        return f"cannot reach the cluster: {exc.reason}: {exc.message}"
    hint = " (is the DefaultPolicyProfile CRD installed?)" if exc.status == 404 else ""
    return f"listing DefaultPolicyProfiles: {exc}{hint}"


async def status(kubeconfig: str | None, context: str | None, output: str) -> int:
    """Print the table (or JSON/YAML); exit 1 when the cluster cannot be asked."""
    try:
        credentials = await load_credentials(kubeconfig, context=context)
        async with KubeApi(credentials) as api:
            profiles = await api.list_objects(PROFILES)
    except (CredentialsError, OSError) as exc:
        print(f"error: cannot load credentials: {exc}", file=sys.stderr)
        return 1
    except ApiError as exc:
        print(f"error: {_explain(exc)}", file=sys.stderr)
        return 1
    rows = [row(p) for p in sorted(profiles, key=lambda p: str(p["metadata"]["name"]))]
    print(render(rows, output))
    return 0
