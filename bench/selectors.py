"""How a cluster-scoped flavor's objects grow with N and with the namespaces they leave out.

A CalicoGlobalNetworkPolicy or ClusterNetworkPolicy profile writes O(profiles) objects, not
O(namespaces): the cost moves into each object's selector, which names every namespace the
profile selects but does not govern (shadowed by a higher-priority profile, excluded,
protected). This measures it with the operator's own planner, in this process (no apiserver):
the selector's length, the bytes of every object one plan writes (what each rewrite sends and
every policy engine receives), and the planner's time for that plan.

Left-out namespaces are made the way they arise: the first k namespaces also carry a label that
a higher-priority NetworkPolicy profile selects, so they are governed by it and shadowed here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from default_policy_operator.core.governance import Namespace, protected_namespaces
from default_policy_operator.core.render import Renderer
from default_policy_operator.core.world import World

FLAVORS = ("CalicoGlobalNetworkPolicy", "ClusterNetworkPolicy")
#: etcd refuses a request above 1.5 MiB (its default --max-request-bytes): a bigger object
#: cannot be written at all
ETCD_REQUEST_LIMIT = 1536 * 1024


def left_out_counts(n: int) -> list[int]:
    """0, 10, 100, 1,000 ... and half of N: the shapes a platform team meets."""
    counts = [k for k in (0, 10, 100, 1000, 10000) if k < n]
    return sorted({*counts, n // 2})


def selector_growth(n: int, counts: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """One row per flavor and left-out count, for ``n`` namespaces the profile selects."""
    renderer = Renderer()
    return [
        _measure(renderer, flavor, n, k) for flavor in FLAVORS for k in counts or left_out_counts(n)
    ]


def _measure(renderer: Renderer, flavor: str, n: int, left_out: int) -> dict[str, Any]:
    world = World(protected_namespaces("dpo-system"))
    for i in range(n):
        name = f"app-{i:05d}"
        labels = {"kubernetes.io/metadata.name": name, "bench": "yes"}
        world.set_namespace(Namespace(name, {**labels, **({"own": "yes"} if i < left_out else {})}))
    _admit(world, renderer, "teams", {"namespaceSelector": {"matchLabels": {"own": "yes"}},
                                      "priority": 20})  # fmt: skip
    _admit(world, renderer, "cluster", {"namespaceSelector": {"matchLabels": {"bench": "yes"}},
                                        "priority": 10, "flavor": flavor})  # fmt: skip
    started = time.perf_counter()
    plan = world.plan_calico()
    seconds = time.perf_counter() - started
    bodies = [a.body for a in plan.actions if a.body is not None and a.profile == "cluster"]
    sizes = [len(json.dumps(body, separators=(",", ":"))) for body in bodies]
    return {
        "flavor": flavor, "namespaces": n, "left_out": left_out, "objects": len(bodies),
        "selector_chars": max(len(_selector(body)) for body in bodies),
        "bytes_per_plan": sum(sizes), "largest_object_bytes": max(sizes),
        "fits_etcd": max(sizes) < ETCD_REQUEST_LIMIT, "plan_ms": seconds * 1000,
    }  # fmt: skip


def _admit(world: World, renderer: Renderer, name: str, spec: dict[str, Any]) -> None:
    """A profile admitted as the operator admits one: parsed, then trial-rendered."""
    world.update_profile({"metadata": {"name": name, "uid": f"uid-{name}", "generation": 1},
                          "spec": spec})  # fmt: skip
    while pending := world.pending_trials():
        for candidate, tasks in pending:
            world.finish_trial(candidate, [renderer.run(task) for task in tasks])
    entry = world.profiles[name]
    if entry.error or entry.profile is None:
        raise RuntimeError(f"bench profile {name} refused: {entry.error}")


def _selector(body: dict[str, Any]) -> str:
    """The part that names the namespaces: Calico's namespaceSelector, or the
    ClusterNetworkPolicy's subject."""
    spec = body["spec"]
    if "namespaceSelector" in spec:
        return str(spec["namespaceSelector"])
    return json.dumps(spec["subject"], separators=(",", ":"))


def table(rows: list[dict[str, Any]]) -> str:
    header = ("flavor", "N", "left out", "objects", "selector chars", "bytes/plan", "plan ms")
    lines = [header] + [
        (r["flavor"], str(r["namespaces"]), str(r["left_out"]), str(r["objects"]),
         f"{r['selector_chars']:,}", f"{r['bytes_per_plan']:,}" + ("" if r["fits_etcd"] else " !"),
         f"{r['plan_ms']:.0f}")
        for r in rows
    ]  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines]
    if not all(r["fits_etcd"] for r in rows):
        text.append("! an object above etcd's 1.5 MiB request limit: it cannot be written")
    return "\n".join(text)
