"""The README's Performance tables, generated from a committed results file.

``python -m bench.readme bench/results/bench-<time>.json [...]`` prints the Markdown tables the
README quotes: every figure against its target, memory phase by phase, Kyverno beside the operator
(when the run had ``--peer kyverno``) and the cluster-scoped flavors' selector growth. The
README is then pasted from it, so each figure there traces back to a file and a command.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.report import PEER_KINDS, peer_rows

Result = dict[str, Any]
X = "\u00d7"  # the multiplication sign, as the README writes ratios


def _ms(s: dict[str, Any]) -> str:
    return f"{s['p50'] * 1000:.0f} / {s['p99'] * 1000:.0f} ms"


def _times(c: dict[str, Any]) -> str:
    ratio = f" ({c['ratio_to_W']:.2f} {X} objects/W)" if c.get("ratio_to_W") else ""
    return f"{c['objects']:,} in {c['seconds']:.1f} s{ratio}"


def _writes(w: dict[str, Any]) -> str:
    refused = f", {w['refused']} refused" if w["refused"] else ""
    return f"{w['networkpolicies']:,} / {w['events']} / {w['other']}{refused}"


def _per(w: dict[str, Any]) -> str:
    return f"{w['networkpolicies']:.2f} / {w['events']:.2f}"


def _arrivals(r: Result) -> str:
    latency = r["rollout"]["latency_create"]
    return f"{_ms(latency)} ({latency['count']:,}; max {latency['max']:.1f} s)"


def _takeover(c: dict[str, Any]) -> str:
    return (f"{c['gnp_seconds']:.1f} / {c['networkpolicy_cleanup_seconds']:.1f} / "
            f"{c['handback_seconds']:.1f} s")  # fmt: skip


def _memory(r: Result) -> str:
    m = r["memory"]
    return f"{m['peak_mb']:.0f} / {m['rss_mb_converged']:.0f} / {m['rss_mb_ready_empty']:.0f} MB"


def _cpu(r: Result) -> str:
    resync = " (a resync ran)" if r.get("cpu_idle_window_had_resync") else ""
    during = r["convergence"].get("resyncs")  # (results before it have no count)
    inside = "" if during is None else f" ({during:.0f} resync{'' if during == 1 else 's'})"
    idle = f"{r['cpu_idle_percent']:.1f} %{resync}"
    return f"{r['convergence']['cpu_seconds']:.1f} s{inside} / {idle}"


def _own_objects(r: Result) -> str:
    """The client-go floor creating what the operator writes, and convergence against it."""
    own, ratio = (
        r["W"].get("W_operator_objects"),
        r["convergence"].get("ratio_to_W_operator_objects"),
    )
    return "-" if not own or not ratio else f"{own:,.0f} creates/s, {ratio:.2f} {X} objects/W"


def _floors(r: Result) -> str:
    """W (watched, the target's), the same unwatched (results before it have none), W_py."""
    unwatched = r["W"].get("W_unobserved")
    middle = f"{unwatched:,.0f}" if unwatched else "-"
    return f"{r['W']['W'] or 0:,.0f} / {middle} / {r['W_py']['W']:,.0f}"


def _unwatched(r: Result) -> str:
    ratio = r["convergence"].get("ratio_to_W_unobserved")
    return "-" if ratio is None else f"{ratio:.2f} {X} objects/W"


def _target(r: Result) -> str:
    target = r["convergence"]["target_seconds"]
    return "-" if target is None else f"{target:.1f} s"


FIGURES: list[tuple[str, Callable[[Result], str], str]] = [
    ("W client-go watched / unwatched / W_py (creates/s)", _floors, "floors"),
    ("converge 3N objects", lambda r: _times(r["convergence"]),
     f"1.5 {X} objects/W + 2 s"),
    ("  the target, in seconds", _target, ""),
    ("  ratio to objects/W unwatched", _unwatched, "(context)"),
    ("  W and ratio for the operator's own objects", _own_objects, "(context)"),
    ("Compact layout: converge N objects", lambda r: _times(r["compact"]), "(same)"),
    ("writes, first convergence (policies / Events / other)",
     lambda r: _writes(r["writes_first_convergence"]), "one per object"),
    ("writes, no-op resync / restart (policies)",
     lambda r: f"{r['writes_noop_resync']['networkpolicies']} / "
               f"{r['writes_restart']['networkpolicies']}", "0"),
    ("restart to ready", lambda r: f"{r['restart_seconds_to_ready']:.1f} s", ""),
    ("new namespace → policies p50 / p99 (idle)", lambda r: _ms(r["latency_create"]),
     "250 ms / 1 s"),
    ("relabelled namespace p50 / p99 (idle)", lambda r: _ms(r["latency_relabel"]),
     "250 ms / 1 s"),
    ("rollout (a new policy + an edit each): namespaces, time to Ready",
     lambda r: f"{r['rollout']['namespaces']:,} in {r['rollout']['seconds']:.1f} s", ""),
    ("new namespace p50 / p99 **during** that rollout (arrivals)", _arrivals,
     "250 ms / 1 s"),
    ("drift repair one at a time p50 / p99", lambda r: _ms(r["drift"]), "p99 1 s"),
    ("  writes per repair (policies / Events)",
     lambda r: _per(r["drift"]["writes_per_repair"]), "one write"),
    ("drift burst of 100: all repaired in / p99",
     lambda r: f"{r['drift_burst']['all_repaired_seconds']:.2f} s / "
               f"{r['drift_burst']['p99'] * 1000:.0f} ms", ""),
    ("  writes per repair (policies / Events)",
     lambda r: _per(r["drift_burst"]["writes_per_repair"]), "one write"),
    ("template that reads the namespace", lambda r: _times(r["templated"]), ""),
    ("CalicoGlobalNetworkPolicy: 3 objects / NetworkPolicies gone / back",
     lambda r: _takeover(r["calico"]), ""),
    ("ClusterNetworkPolicy: the same", lambda r: _takeover(r["cluster_network_policy"]), ""),
    ("peak RSS (VmHWM, one process, every phase) / converged / empty", _memory,
     "150 MB at 5,000, 400 MB at 20,000"),
    ("CPU converging (full resyncs re-listed inside) / idle for 10 s after Ready", _cpu,
     "≈ 0 at idle"),
]  # fmt: skip


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def figures(results: list[Result]) -> str:
    header = ["figure", *(f"N = {r['namespaces']:,}" for r in results), "target"]
    rows = [[label, *(fn(r) for r in results), target] for label, fn, target in FIGURES]
    return _table(header, rows)


def memory(results: list[Result]) -> str:
    phases = list(results[0]["memory"]["peak_by_phase"])
    header = ["peak so far, after", *(f"N = {r['namespaces']:,}" for r in results)]
    rows = [[p.replace("_", " "),
             *(f"{r['memory']['peak_by_phase'][p]:.0f} MB" for r in results)]
            for p in phases]  # fmt: skip
    rows.append(["namespaces present at the peak",
                 *(f"{r['memory']['namespaces_at_peak']:,}" for r in results)])  # fmt: skip
    return _table(header, rows)


def peer(result: Result) -> str:
    header = ["figure", "operator", *(f"Kyverno {k} ({X} operator)" for k in PEER_KINDS)]
    return _table(header, peer_rows(result, X))


def peer_writes(result: Result) -> str:
    """Kyverno's writes while converging, by resource (its bookkeeping objects included)."""
    kyverno = result["peer"]["kyverno"]
    kinds = PEER_KINDS
    written = [kyverno[k]["writes_convergence"]["by_resource"] for k in kinds]
    ours = result["writes_first_convergence"]["by_resource"]
    rows = [[res, str(ours.get(res, 0)),
             *(str(kyverno[k]["writes_convergence"]["by_resource"].get(res, 0)) for k in kinds)]
            for res in sorted(set(ours).union(*written))]  # fmt: skip
    return _table(["resource written, converging", "operator", *kinds], rows)


def selectors(results: list[Result]) -> str:
    header = ["flavor", "N", "left out", "selector chars", "bytes per plan (3 objects)",
              "plan time"]  # fmt: skip
    rows = [[row["flavor"], f"{row['namespaces']:,}", f"{row['left_out']:,}",
             f"{row['selector_chars']:,}", f"{row['bytes_per_plan']:,}",
             f"{row['plan_ms']:.0f} ms"]
            for r in results if r["namespaces"] >= 5000
            for row in r["selector_growth"]]  # fmt: skip
    return _table(header, rows)


def main(paths: list[Path]) -> str:
    """The tables for every size in ``paths`` (results files), in the order given."""
    reports = [(path, json.loads(path.read_text())) for path in paths]
    results = [r for _, report in reports for r in report["results"]]
    sources = [f"<!-- {path.name}: {report['command']} -->" for path, report in reports]
    parts = ["\n".join(sources), figures(results), memory(results)]
    parts += [peer(r) + "\n\n" + peer_writes(r) for r in results if "peer" in r]
    parts.append(selectors(results))
    return "\n\n".join(parts)


if __name__ == "__main__":
    print(main([Path(arg) for arg in sys.argv[1:]]))
