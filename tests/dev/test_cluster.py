"""The local control plane: real binaries, real schemas, real RBAC, and no leftover process.

Everything else in the end-to-end suite trusts this fixture, so these tests pin down the
properties the others rely on without re-checking them: the version we built, the CRD schemas
rejecting bad objects, authentication and authorization being enforced, and start/stop
(including a failed start and a detached ``up``/``down``) cleaning up after itself.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from dpo_dev import cluster
from dpo_dev.cluster import ControlPlane, ControlPlaneError

e2e = pytest.mark.e2e

PROFILE_CRD = (
    cluster.default_manifests_dir() / "crd" / "defaultpolicy.dev_defaultpolicyprofiles.yaml"
)


def _running(pid: int) -> bool:
    """Whether a live (not zombie) process has this PID."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _processes_mentioning(workdir: Path) -> list[int]:
    """Live processes whose command line names the work directory (our etcd / apiserver)."""
    needle = str(workdir.resolve()).encode()
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if needle in (proc / "cmdline").read_bytes() and _running(int(proc.name)):
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def _recorded_pids(workdir: Path) -> list[int]:
    state = json.loads((workdir / "pids.json").read_text())
    return [int(item["pid"]) for item in state["processes"]]


@e2e
def test_serves_the_built_version(control_plane: ControlPlane) -> None:
    status, body = control_plane.request("GET", "/version")
    assert status == 200
    assert body["gitVersion"] == cluster.KUBERNETES_VERSION


@e2e
def test_kubeconfig_reaches_the_apiserver(control_plane: ControlPlane) -> None:
    """The kubeconfig verifies TLS with the embedded CA and carries an admin credential."""
    config = yaml.safe_load(control_plane.kubeconfig.read_text())
    assert config["clusters"][0]["cluster"]["server"] == control_plane.server
    assert "insecure-skip-tls-verify" not in config["clusters"][0]["cluster"]
    result = control_plane.kubectl("auth", "can-i", "*", "*")
    assert result.stdout.strip() == "yes"


def _gnp(name: str, order: object, types: list[str]) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "crd.projectcalico.org/v1",
            "kind": "GlobalNetworkPolicy",
            "metadata": {"name": name},
            "spec": {"order": order, "selector": "all()", "types": types},
        }
    )


@e2e
def test_calico_global_network_policy_schema(control_plane: ControlPlane, unique_name: str) -> None:
    name = f"default.{unique_name}"
    control_plane.apply_yaml(_gnp(name, 2000, ["Ingress", "Egress"]))
    try:
        stored = json.loads(
            control_plane.kubectl(
                "get", "globalnetworkpolicies.crd.projectcalico.org", name, "-o", "json"
            ).stdout
        )
        assert stored["spec"]["order"] == 2000
        assert stored["spec"]["types"] == ["Ingress", "Egress"]

        rejected = control_plane.kubectl(
            "create", "-f", "-", input=_gnp(f"{name}-bad", "first", ["Ingress"]), check=False
        )
        assert rejected.returncode != 0
        assert "is invalid" in rejected.stderr
        assert "spec.order" in rejected.stderr
        assert "must be of type number" in rejected.stderr
    finally:
        control_plane.kubectl(
            "delete", "globalnetworkpolicies.crd.projectcalico.org", name, "--ignore-not-found"
        )


@e2e
def test_calico_tier_crd_is_served(control_plane: ControlPlane) -> None:
    status, body = control_plane.request(
        "GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/tiers.crd.projectcalico.org"
    )
    assert status == 200, body


def _profile(name: str, spec: dict[str, object]) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "defaultpolicy.dev/v1alpha1",
            "kind": "DefaultPolicyProfile",
            "metadata": {"name": name},
            "spec": spec,
        }
    )


@e2e
@pytest.mark.skipif(not PROFILE_CRD.exists(), reason=f"{PROFILE_CRD} not written yet")
def test_default_policy_profile_schema(control_plane: ControlPlane, unique_name: str) -> None:
    control_plane.apply_yaml(_profile(unique_name, {}))
    try:
        rejected = control_plane.kubectl(
            "create", "-f", "-", input=_profile(f"{unique_name}-bad", {"mode": "Sideways"}),
            check=False,
        )  # fmt: skip
        assert rejected.returncode != 0
        assert "is invalid" in rejected.stderr
        assert "spec.mode" in rejected.stderr
    finally:
        control_plane.kubectl(
            "delete", "defaultpolicyprofiles.defaultpolicy.dev", unique_name, "--ignore-not-found",
            "--wait=false",
        )  # fmt: skip


@e2e
def test_ensure_binaries_is_cached(
    control_plane: ControlPlane, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With the binaries built, no `go` (or anything else on PATH) is needed and it is quick."""
    monkeypatch.setenv("PATH", str(tmp_path))
    started = time.monotonic()
    binaries = cluster.ensure_binaries()
    assert time.monotonic() - started < 5
    assert binaries == control_plane.binaries


@e2e
def test_rejects_unknown_token(control_plane: ControlPlane) -> None:
    status, body = control_plane.request(
        "GET", "/api/v1/namespaces", headers={"Authorization": "Bearer not-a-token"}
    )
    assert status == 401, body


@e2e
def test_rbac_forbids_an_unprivileged_user(control_plane: ControlPlane) -> None:
    status, _ = control_plane.request("GET", "/api/v1/namespaces")
    assert status == 200
    status, body = control_plane.request(
        "GET", "/api/v1/namespaces", headers={"Impersonate-User": "nobody"}
    )
    assert status == 403, body
    assert body["reason"] == "Forbidden"


@e2e
def test_second_control_plane_stops_cleanly(control_plane: ControlPlane, tmp_path: Path) -> None:
    """A second plane runs beside the session one and leaves nothing behind when stopped."""
    workdir = tmp_path / "second"
    with ControlPlane(workdir) as plane:
        assert plane.server != control_plane.server
        assert plane.request("GET", "/readyz")[0] == 200
        pids = _recorded_pids(workdir)
        assert len(pids) == 2
        assert all(_running(pid) for pid in pids)
    assert not any(_running(pid) for pid in pids)
    assert _processes_mentioning(workdir) == []
    assert not (workdir / "pids.json").exists()
    assert cluster.down(workdir) is False
    assert control_plane.request("GET", "/readyz")[0] == 200


def _gone(plane: ControlPlane, path: str) -> bool:
    status, body = plane.request("GET", path)
    assert status in (200, 404), body
    return status == 404


def _wait_gone(plane: ControlPlane, path: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not _gone(plane, path):
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} still there after {timeout:.0f} s")
        time.sleep(0.1)


def _config_map(name: str, owner: dict[str, object] | None = None) -> dict[str, object]:
    meta: dict[str, object] = {"name": name}
    if owner is not None:
        meta["ownerReferences"] = [owner]
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta}


@e2e
def test_a_deleted_namespace_is_emptied_and_disappears(
    controller_plane: ControlPlane, unique_name: str
) -> None:
    """The namespace controller removes a deleted namespace's content (a NetworkPolicy and a
    custom resource among it), then the namespace itself, as a real cluster does."""
    plane = controller_plane
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": unique_name}}
    assert plane.request("POST", "/api/v1/namespaces", body=namespace)[0] == 201
    policy = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "dpo-deny-all"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
    }
    calico = {
        "apiVersion": "crd.projectcalico.org/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "default.deny"},
        "spec": {"selector": "all()", "types": ["Ingress"]},
    }
    paths = {
        f"/apis/networking.k8s.io/v1/namespaces/{unique_name}/networkpolicies": policy,
        f"/apis/crd.projectcalico.org/v1/namespaces/{unique_name}/networkpolicies": calico,
        f"/api/v1/namespaces/{unique_name}/configmaps": _config_map("c"),
    }
    created = [plane.request("POST", path, body=body) for path, body in paths.items()]
    assert [status for status, _ in created] == [201, 201, 201], created
    status, body = plane.request("DELETE", f"/api/v1/namespaces/{unique_name}")
    assert status == 200, body
    _wait_gone(plane, f"/api/v1/namespaces/{unique_name}")


@e2e
def test_garbage_collector_deletes_dependents_of_a_deleted_owner(
    controller_plane: ControlPlane, unique_name: str
) -> None:
    """An object whose ownerReference names a deleted owner is deleted; others stay."""
    plane = controller_plane
    base = "/api/v1/namespaces/default/configmaps"
    status, owner = plane.request("POST", base, body=_config_map(f"{unique_name}-owner"))
    assert status == 201, owner
    reference = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
    }
    dependent = _config_map(f"{unique_name}-dependent", reference)
    assert plane.request("POST", base, body=dependent)[0] == 201
    assert plane.request("POST", base, body=_config_map(f"{unique_name}-bystander"))[0] == 201
    assert plane.request("DELETE", f"{base}/{unique_name}-owner")[0] == 200
    _wait_gone(plane, f"{base}/{unique_name}-dependent")
    assert not _gone(plane, f"{base}/{unique_name}-bystander")
    plane.request("DELETE", f"{base}/{unique_name}-bystander")


@e2e
def test_controller_manager_is_stopped_with_the_plane(tmp_path: Path) -> None:
    """It is recorded in pids.json, runs as its own user, and stops with the rest."""
    workdir = tmp_path / "with-controllers"
    with ControlPlane(workdir, controller_manager=True) as plane:
        state = json.loads((workdir / "pids.json").read_text())
        names = [item["name"] for item in state["processes"]]
        assert names == ["etcd", "kube-apiserver", "kube-controller-manager"]
        pids = _recorded_pids(workdir)
        assert all(_running(pid) for pid in pids)
        config = yaml.safe_load(plane.controller_kubeconfig.read_text())
        assert config["users"][0]["name"] == cluster.CONTROLLER_MANAGER_USER
    assert not any(_running(pid) for pid in pids)
    assert _processes_mentioning(workdir) == []


@e2e
def test_failed_start_leaves_no_process(tmp_path: Path) -> None:
    """A CRD the apiserver rejects fails start() after both processes are up: both must go."""
    manifests = tmp_path / "manifests"
    (manifests / "crd").mkdir(parents=True)
    broken = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "other.example.com", "names": {"plural": "widgets", "kind": "Widget"},
                 "scope": "Cluster", "versions": []},
    }  # fmt: skip
    (manifests / "crd" / "broken.yaml").write_text(yaml.safe_dump(broken))
    workdir = tmp_path / "failing"
    with pytest.raises(ControlPlaneError, match=r"widgets\.example\.com"):
        ControlPlane(workdir, manifests_dir=manifests).start()
    assert (workdir / "kube-apiserver.log").stat().st_size > 0  # it did get that far
    assert _processes_mentioning(workdir) == []
    assert not (workdir / "pids.json").exists()


@e2e
def test_up_survives_its_process_and_down_stops_it(tmp_path: Path) -> None:
    """`dpo cluster up` exits while the plane keeps running; `down` from elsewhere stops it."""
    workdir = tmp_path / "detached"
    script = "import sys, pathlib; from dpo_dev import cluster; " \
             "cluster.up(pathlib.Path(sys.argv[1]))"  # fmt: skip
    subprocess.run([sys.executable, "-c", script, str(workdir)], check=True, timeout=180)
    pids = _recorded_pids(workdir)
    try:
        assert all(_running(pid) for pid in pids)
        kubeconfig = yaml.safe_load((workdir / "kubeconfig").read_text())
        assert kubeconfig["current-context"] == "dpo"
        crds = subprocess.run(
            [str(cluster.binary_paths().kubectl), f"--kubeconfig={workdir / 'kubeconfig'}",
             "get", "crd", "reports.openreports.io", "clusterreports.openreports.io", "-o", "name"],
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout.split()  # fmt: skip
        assert len(crds) == 2  # for `dpo run --audit-reports`
    finally:
        assert cluster.down(workdir) is True
    assert not any(_running(pid) for pid in pids)
    assert _processes_mentioning(workdir) == []
    assert cluster.down(workdir) is False


def test_down_ignores_a_reused_pid(tmp_path: Path) -> None:
    """A stale pids.json naming an unrelated live process must not get it killed."""
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        record = {"name": "etcd", "pid": sleeper.pid, "exe": "/nonexistent/etcd", "start_ticks": 0}
        (tmp_path / "pids.json").write_text(json.dumps({"processes": [record]}))
        assert cluster.down(tmp_path) is False
        assert sleeper.poll() is None
        assert not (tmp_path / "pids.json").exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_go_skips_the_checksum_database_for_calico_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Calico's pseudo-versions are unknown to sum.golang.org; the user's own entries stay."""
    monkeypatch.setenv("GONOSUMDB", "example.com/private,github.com/projectcalico/api")
    assert cluster._go_env()["GONOSUMDB"].split(",") == [
        "example.com/private",
        "github.com/projectcalico/api",
        "github.com/projectcalico/calico",
    ]


def test_kubernetes_wrapper_directives() -> None:
    """Staging replaces become published-module replaces; godebug lines are kept."""
    upstream = (
        "module k8s.io/kubernetes\n\ngo 1.26.0\n\ngodebug default=go1.26\n\n"
        "replace (\n\tk8s.io/api => ./staging/src/k8s.io/api\n"
        "\tk8s.io/client-go => ./staging/src/k8s.io/client-go\n)\n"
        "replace k8s.io/kubectl => ./staging/src/k8s.io/kubectl\n"
        "require github.com/kylelemons/godebug v1.1.0 // indirect\n"
    )
    assert cluster._kubernetes_wrapper_directives(upstream, "v1.36.3").splitlines() == [
        "godebug default=go1.26",
        "replace k8s.io/api => k8s.io/api v0.36.3",
        "replace k8s.io/client-go => k8s.io/client-go v0.36.3",
        "replace k8s.io/kubectl => k8s.io/kubectl v0.36.3",
    ]


def _tiny_module(root: Path, token: str) -> list[str]:
    """A main package importing two packages of its own, each with ``token`` in its source so
    that the Go build cache has never seen them; returns the module's own import paths."""
    (root / "a").mkdir()
    (root / "b").mkdir()
    (root / "go.mod").write_text("module example.com/tiny\n\ngo 1.26\n")
    (root / "a" / "a.go").write_text(f'package a\n\nconst Token = "{token}"\n')
    (root / "b" / "b.go").write_text(
        'package b\n\nimport "example.com/tiny/a"\n\nfunc Token() string { return a.Token }\n'
    )
    (root / "main.go").write_text(
        'package main\n\nimport (\n\t"os"\n\n\t"example.com/tiny/b"\n)\n\nvar version = "dev"\n\n'
        'func main() {\n\tif len(os.Args) > 1 {\n\t\tos.Stdout.WriteString(version + " "'
        ' + b.Token() + "\\n")\n\t}\n}\n'
    )
    return ["example.com/tiny", "example.com/tiny/a", "example.com/tiny/b"]


@pytest.mark.skipif(shutil.which("go") is None, reason="needs the Go toolchain")
def test_a_build_reports_the_packages_it_compiles(tmp_path: Path) -> None:
    """The build's count is go's own: the stale packages `go list` names, each counted when
    `go build -v` compiles it; afterwards nothing is left to compile."""
    work, out = tmp_path / "tiny", tmp_path / "bin" / "tiny"
    work.mkdir()
    out.parent.mkdir()
    own = _tiny_module(work, secrets.token_hex(8))
    flags = ["-trimpath", "-ldflags", "-s -w -X main.version=v1.2.3"]
    linked, stale = cluster._to_compile(".", flags, work)
    assert set(own) <= stale  # the standard library's packages are stale too if never built
    log: list[str] = []
    cluster._build_binary("tiny", ".", "v1.2.3", flags[2], out, work, ["-v"], log.append,
                          step=(2, 3))  # fmt: skip
    assert (
        log[0] == f"building tiny v1.2.3 (2/3): {len(stale)} of its {linked} packages to compile..."
    )
    assert log[1].startswith("built tiny v1.2.3 in ")
    assert f"({len(stale)} packages compiled) -> {out}" in log[1]
    assert cluster._to_compile(".", flags, work) == (linked, frozenset())
    assert subprocess.run(
        [out, "-v"], capture_output=True, text=True, check=True
    ).stdout.startswith("v1.2.3 ")
