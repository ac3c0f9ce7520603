"""The README's other commands, as a newcomer runs them: the demo, and the benchmark's smoke run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dpo_dev.cluster import down

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def test_demo_shows_the_operator_at_work(tmp_path: Path) -> None:
    """`make demo` runs this module; --once stops after the demonstration instead of Ctrl-C."""
    result = subprocess.run(
        [sys.executable, "-m", "dpo_dev.demo", "--once", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, out[-3000:] + result.stderr[-3000:]
    table = out.split("Which profile governs each namespace")[1].split("NAME ")[0]
    rows = {line.split()[0]: line.split() for line in table.splitlines()[1:] if line.strip()}
    assert rows["shop-search"][2] == "baseline"
    assert rows["shop-payments"][2] == "strict-payments"
    assert rows["sandbox-alice"][2] == "-"  # excluded by glob
    assert rows["legacy-batch"][2] == "-"  # exempt
    assert "dpo_drift_repaired_total: 0 -> 1" in out
    assert "stopped the operator, kube-apiserver and etcd" in out
    assert down(tmp_path) is False, "the demo left its control plane running"


def test_bench_smoke_run_prints_and_writes_figures(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (report,) = tmp_path.glob("bench-*-quick.json")
    data = json.loads(report.read_text())
    (run,) = data["results"]
    assert run["W"]["W"] > 0
    assert run["convergence"]["objects"] == 3 * run["namespaces"]
    assert run["writes_first_convergence"]["networkpolicies"] == 3 * run["namespaces"]
    assert run["writes_first_convergence"]["namespaces"] == 0
    assert run["writes_noop_resync"]["networkpolicies"] == 0
    assert run["writes_restart"]["networkpolicies"] == 0
    assert run["drift"]["writes_per_repair"] == 1.0
    assert "converge 3N objects" in result.stdout
