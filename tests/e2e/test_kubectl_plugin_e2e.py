"""``kubectl dpo``: the real kubectl finds the ``kubectl-dpo`` entry point on PATH and runs it.

The profiles' status is written by the session's operator, so ``kubectl dpo status`` is checked
against what the operator really reported. The kubeconfig's current context points at a closed
port: only ``--context`` leads to the control plane, so a plugin that ignored the flag fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from dpo_dev.cluster import ControlPlane
from tests.support import Api, OperatorProcess, condition, free_port, wait_for

pytestmark = pytest.mark.e2e

GOOD = "dpo-local"


@pytest.fixture(scope="module")
def kubeconfig(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The plane's kubeconfig with its context renamed GOOD and a dead current context."""
    config: dict[str, Any] = yaml.safe_load(control_plane.kubeconfig.read_text())
    (context,) = config["contexts"]
    (cluster,) = config["clusters"]
    context["name"] = GOOD
    dead = {**cluster["cluster"], "server": f"https://127.0.0.1:{free_port()}"}
    config["clusters"].append({"name": "dead", "cluster": dead})
    config["contexts"].append(
        {"name": "dead", "context": {**context["context"], "cluster": "dead"}}
    )
    config["current-context"] = "dead"
    path = tmp_path_factory.mktemp("plugin") / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path


def kubectl(plane: ControlPlane, *args: str) -> subprocess.CompletedProcess[str]:
    """kubectl with only the venv's bin and the system's on PATH: discovery must find us there."""
    path = os.pathsep.join([str(Path(sys.executable).parent), "/usr/bin", "/bin"])
    return subprocess.run(
        [str(plane.binaries.kubectl), *args],
        env={**os.environ, "PATH": path},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_kubectl_discovers_the_plugin(control_plane: ControlPlane) -> None:
    listed = kubectl(control_plane, "plugin", "list")
    assert str(Path(sys.executable).parent / "kubectl-dpo") in listed.stdout, listed.stderr


def test_status_honours_context_and_shows_what_the_operator_reported(
    control_plane: ControlPlane,
    api: Api,
    operator_process: OperatorProcess,
    kubeconfig: Path,
    unique_name: str,
) -> None:
    selector = {"matchLabels": {"plugin-test": unique_name}}
    for suffix in ("a", "b"):
        api.namespace(f"{unique_name}-{suffix}", {"plugin-test": unique_name})
    winner, shadowed = f"{unique_name}-win", f"{unique_name}-low"
    api.profile(winner, {"namespaceSelector": selector, "priority": 10})
    api.profile(shadowed, {"namespaceSelector": selector, "mode": "Audit"})

    def reported() -> list[Any] | None:
        bodies = [api.get_profile(winner), api.get_profile(shadowed)]
        settled = all(
            condition(b, "Ready").get("status") == "True"
            and b["status"].get("observedGeneration") == b["metadata"]["generation"]
            for b in bodies
        )
        # and the counts final: a status can say Ready before the other profile is known
        final = (bodies[0]["status"].get("governedNamespaces"), bodies[1]["status"].get(
            "shadowedNamespaces")) == (2, 2) if settled else False  # fmt: skip
        return bodies if final else None

    bodies = wait_for(reported, timeout=60)

    flags = ("--kubeconfig", str(kubeconfig))
    refused = kubectl(control_plane, "dpo", "status", *flags)
    assert refused.returncode == 1
    assert "cannot reach" in refused.stderr
    shown = kubectl(control_plane, "dpo", "status", *flags, "--context", GOOD)
    assert shown.returncode == 0, shown.stderr
    header, *lines = shown.stdout.splitlines()
    assert header.split() == [
        "NAME", "FLAVOR", "MODE", "GOVERNED", "SHADOWED", "DRIFTED", "CONFLICTS", "READY",
        "REASON",
    ]  # fmt: skip
    rows = {line.split()[0]: line.split() for line in lines}
    for body in bodies:
        status = body["status"]
        assert rows[body["metadata"]["name"]] == [
            body["metadata"]["name"], body["spec"]["flavor"], body["spec"]["mode"],
            str(status["governedNamespaces"]), str(status["shadowedNamespaces"]),
            str(status["driftedObjects"]), str(status["conflicts"]), "True",
            condition(body, "Ready")["reason"],
        ]  # fmt: skip
    assert rows[winner][3:5] == ["2", "0"]  # governs both namespaces
    assert rows[shadowed][3:5] == ["0", "2"]  # selects both, outranked on both


def test_audit_and_diff_honour_context(control_plane: ControlPlane, kubeconfig: Path) -> None:
    for command in ("audit", "diff"):
        flags = ("--kubeconfig", str(kubeconfig), "-o", "json")
        assert kubectl(control_plane, "dpo", command, *flags).returncode != 0
        shown = kubectl(control_plane, "dpo", command, *flags, "--context", GOOD)
        assert shown.stdout.startswith("["), shown.stderr
