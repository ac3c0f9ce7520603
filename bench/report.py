"""The bench's table: one row per figure, one column per size; ratios against the Go floor W."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Row = tuple[str, ...]


def _num(value: float | None, fmt: str = ".0f") -> str:
    return "-" if value is None else format(value, fmt)


def _ms(summary: dict[str, Any], keys: tuple[str, ...] = ("p50", "p99", "max")) -> str:
    return "/".join(f"{summary[k] * 1000:.0f}" for k in keys)


def _writes(w: dict[str, Any]) -> str:
    """NetworkPolicies / Events / other resources, and refused attempts after a plus."""
    return f"{w['networkpolicies']}/{w['events']}/{w['other']} +{w['refused']} refused"


def _per(w: dict[str, float]) -> str:
    return f"{w['networkpolicies']:.2f}/{w['events']:.2f}/{w['other']:.2f} +{w['refused']:.2f}"


def _ratio(c: dict[str, Any]) -> str:
    return f"{_num(c['ratio_to_W'], '.2f')} (W_py: {c['ratio_to_W_py']:.2f})"


def _templated(r: dict[str, Any]) -> str:
    return f"{r['templated']['objects']} in {r['templated']['seconds']:.1f}"


def _takeover(c: dict[str, Any]) -> str:
    """Seconds until the flavor's objects exist, the NetworkPolicies are gone, and are back."""
    return (
        f"{c['gnp_seconds']:.1f} / {c['networkpolicy_cleanup_seconds']:.1f}"
        f" / {c['handback_seconds']:.1f}"
    )


def _memory(r: dict[str, Any]) -> str:
    m = r["memory"]
    return f"{m['peak_mb']:.0f} / {m['rss_mb_converged']:.0f} / {m['rss_mb_ready_empty']:.0f}"


def _per_1000(r: dict[str, Any]) -> str:
    m = r["memory"]
    return f"{m['mb_per_1000_namespaces']:.1f} ({m['mb_per_1000_namespaces_above_empty']:.1f})"


def _rollout(r: dict[str, Any]) -> str:
    return f"{r['rollout']['namespaces']} / {r['rollout']['seconds']:.1f}"


def _rollout_latency(r: dict[str, Any]) -> str:
    latency = r["rollout"]["latency_create"]
    return f"{_ms(latency, ('p50', 'p99'))}, {latency['count']}"


def sizing(results: list[dict[str, Any]]) -> str | None:
    """With two sizes or more: the peak's slope per 1,000 namespaces between the extremes."""
    if len(results) < 2:
        return None
    low, high = (min(results, key=lambda r: r["namespaces"]),
                 max(results, key=lambda r: r["namespaces"]))  # fmt: skip
    rise = high["memory"]["peak_mb"] - low["memory"]["peak_mb"]
    run = high["memory"]["namespaces_at_peak"] - low["memory"]["namespaces_at_peak"]
    base = low["memory"]["peak_mb"] - rise / run * low["memory"]["namespaces_at_peak"]
    return f"sizing: peak RSS ~ {base:.0f} MB + {rise / run * 1000:.1f} MB per 1,000 namespaces"


ROWS: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
    ("W client-go floor (creates/s, best workers)",
     lambda r: f"{_num(r['W']['W'])} ({r['W'].get('best_workers', 'skipped')})"),
    ("  the same, the operator's own objects", lambda r: _num(r["W"].get("W_operator_objects"))),
    ("  W unobserved (no watch receiving)", lambda r: _num(r["W"].get("W_unobserved"))),
    ("W_py Python floor (creates/s)", lambda r: f"{r['W_py']['W']:.0f}"),
    ("converge 3N objects (s)", lambda r: f"{r['convergence']['seconds']:.1f}"),
    ("  target 1.5*objects/W+2 (s)", lambda r: _num(r["convergence"]["target_seconds"], ".1f")),
    ("  ratio to objects/W (to objects/W_py)", lambda r: _ratio(r["convergence"])),
    ("  ratio to objects/W unobserved",
     lambda r: _num(r["convergence"].get("ratio_to_W_unobserved"), ".2f")),
    ("  ratio to objects/W of the operator's own objects",
     lambda r: _num(r["convergence"].get("ratio_to_W_operator_objects"), ".2f")),
    ("Compact layout: converge N objects (s)", lambda r: f"{r['compact']['seconds']:.1f}"),
    ("  target 1.5*objects/W+2 (s)", lambda r: _num(r["compact"]["target_seconds"], ".1f")),
    ("  ratio to objects/W (to objects/W_py)", lambda r: _ratio(r["compact"])),
    ("  writes np/events/other +refused", lambda r: _writes(r["compact"]["writes"])),
    ("writes: np/events/other +refused", lambda r: ""),
    ("  first convergence", lambda r: _writes(r["writes_first_convergence"])),
    ("  no-op resync", lambda r: _writes(r["writes_noop_resync"])),
    ("  restart", lambda r: _writes(r["writes_restart"])),
    ("restart to ready (s)", lambda r: f"{r['restart_seconds_to_ready']:.1f}"),
    ("new ns -> policies p50/p99 (ms)", lambda r: _ms(r["latency_create"], ("p50", "p99"))),
    ("relabel -> policies p50/p99 (ms)", lambda r: _ms(r["latency_relabel"], ("p50", "p99"))),
    ("rollout: namespaces / seconds to Ready", _rollout),
    ("  new ns during it p50/p99 (ms), count", _rollout_latency),
    ("drift one at a time p50/p99/max (ms)", lambda r: _ms(r["drift"])),
    ("  writes per repair np/ev/other +refused", lambda r: _per(r["drift"]["writes_per_repair"])),
    ("drift burst p50/p99/max (ms)", lambda r: _ms(r["drift_burst"])),
    ("  burst size / all repaired (s)",
     lambda r: f"{r['drift_burst']['count']} / {r['drift_burst']['all_repaired_seconds']:.2f}"),
    ("  writes per repair np/ev/other +refused",
     lambda r: _per(r["drift_burst"]["writes_per_repair"])),
    ("RSS MB: peak (VmHWM, one process) / converged / empty", _memory),
    ("  peak MB per 1k namespaces (above empty)", _per_1000),
    ("CPU converging (s) / idle (%, * = a resync ran)",
     lambda r: f"{r['convergence']['cpu_seconds']:.1f} / {r['cpu_idle_percent']:.1f}"
               + ("*" if r.get("cpu_idle_window_had_resync") else "")),
    ("namespace-reading template: N objects (s)", _templated),
    ("  ratio to objects/W (to objects/W_py)", lambda r: _ratio(r["templated"])),
    ("  writes np/events/other +refused", lambda r: _writes(r["templated"]["writes"])),
    ("  removed again (s)", lambda r: f"{r['templated']['removed_seconds']:.1f}"),
    ("Calico GNP: 3 objects / NPs gone / back (s)", lambda r: _takeover(r["calico"])),
    ("  writes to take over np/events/other", lambda r: _writes(r["calico"]["takeover_writes"])),
    ("ClusterNetworkPolicy: the same (s)", lambda r: _takeover(r["cluster_network_policy"])),
    ("  writes to take over np/events/other",
     lambda r: _writes(r["cluster_network_policy"]["takeover_writes"])),
]  # fmt: skip


def table(results: list[dict[str, Any]]) -> str:
    rows: list[Row] = [("figure", *(f"N={r['namespaces']}" for r in results))]
    rows += [(label, *(fn(r) for r in results)) for label, fn in ROWS]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    skipped = {r["W"].get("skipped") for r in results} - {None}
    notes = [f"note: client-go floor skipped: {s}; ratios to W_py only" for s in skipped]
    notes += [line for line in (sizing(results),) if line]
    notes += [
        f"note: N={r['namespaces']}: the bench's own policy watch was resumed "
        f"{r['bench_watch_restarts']} time(s); latencies around a resume include its gap"
        for r in results
        if r.get("bench_watch_restarts")
    ]
    return "\n".join(lines + notes)


def _total(writes: dict[str, Any]) -> int:
    """Accepted writes of every resource but leases (refused attempts apart): lease renewals
    follow the clock, not the work, and the apiserver's own cannot be told from a client's."""
    return int(sum(v for k, v in writes["by_resource"].items() if k != "leases"))


def _deletions(result: dict[str, Any]) -> dict[str, Any]:
    """The operator's repairs of deleted policies: Kyverno's drift phase only deletes. Results
    files before the split hold deletions and edits together, and only that is shown for them."""
    drift: dict[str, Any] = result["drift"]
    deletions: dict[str, Any] = drift.get("deleted", drift)
    return deletions


#: (figure, ours, theirs): each a number (for the ratio) from the operator's result or from one
#: of Kyverno's runs, and the format to print it in.
PEER_ROWS: list[tuple[str, Callable[[dict[str, Any]], float], Callable[[dict[str, Any]], float],
                      str]] = [
    ("converge 3N objects (s)", lambda r: r["convergence"]["seconds"], lambda k: k["seconds"],
     ".1f"),
    ("writes per object, converging (no leases)",
     lambda r: _total(r["writes_first_convergence"]) / r["convergence"]["objects"],
     lambda k: _total(k["writes_convergence"]) / k["objects"], ".2f"),
    ("new namespace -> policies p50 (ms)", lambda r: 1000 * r["latency_create"]["p50"],
     lambda k: 1000 * k["latency_create"]["p50"], ".0f"),
    ("new namespace -> policies p99 (ms)", lambda r: 1000 * r["latency_create"]["p99"],
     lambda k: 1000 * k["latency_create"]["p99"], ".0f"),
    ("drift repair (a deleted policy) p50 (ms)", lambda r: 1000 * _deletions(r)["p50"],
     lambda k: 1000 * k["drift"]["p50"], ".0f"),
    ("drift repair p99 (ms)", lambda r: 1000 * _deletions(r)["p99"],
     lambda k: 1000 * k["drift"]["p99"], ".0f"),
    ("writes per repair (every resource but leases)",
     lambda r: _total(r["drift"]["writes"]) / r["drift"]["count"],
     lambda k: _total(k["drift"]["writes"]) / k["drift"]["count"], ".2f"),
    ("peak RSS (MB, all processes)", lambda r: r["memory"]["peak_mb"],
     lambda k: sum(k["peak_mb"].values()), ".0f"),
]  # fmt: skip


PEER_KINDS = ("ClusterPolicy", "GeneratingPolicy")


def peer_rows(result: dict[str, Any], times: str = "x") -> list[list[str]]:
    """One row per :data:`PEER_ROWS` figure: its label, the operator's value, and each of
    Kyverno's runs as "value (ratio ``times``)", the ratio being Kyverno / operator."""
    kyverno = result["peer"]["kyverno"]
    rows = []
    for label, ours, theirs, fmt in PEER_ROWS:
        mine = ours(result)
        cells = []
        for kind in (k for k in PEER_KINDS if k in kyverno):
            value = theirs(kyverno[kind])
            ratio = f" ({value / mine:.1f} {times})" if mine else ""
            cells.append(format(value, fmt) + ratio)
        rows.append([label, format(mine, fmt), *cells])
    return rows


def peer_table(result: dict[str, Any]) -> str:
    """The operator beside each of Kyverno's runs, with Kyverno / operator as a ratio."""
    kyverno = result["peer"]["kyverno"]
    kinds = [k for k in PEER_KINDS if k in kyverno]
    rows: list[Row] = [("figure", "operator", *(f"Kyverno {k}" for k in kinds))]
    rows += [tuple(row) for row in peer_rows(result)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    notes = [
        f"note: Kyverno's new namespaces at {kyverno['rate']:g}/s for {kyverno['duration']:g} s; "
        "the operator's latency and drift phases are longer (see the table above); the "
        "operator's peak RSS covers every phase of the bench, Kyverno's its own run"
    ]
    return "\n".join(lines + notes)
