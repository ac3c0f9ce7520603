"""A local Kubernetes control plane (etcd + kube-apiserver [+ kube-controller-manager]).

Used by the CLI, the tests and the demo.

Why not kind, k3d or envtest: the machines this project runs on have no Docker and can download
nothing but registry packages, so the only way to a real apiserver is to build it from source
through the Go module proxy. A real apiserver matters because the operator's objects have to
pass the real OpenAPI/CEL schemas of our CRD and of Calico's, Pod Security admission and RBAC;
a fake would accept what a cluster rejects.

The module has two halves:

* :func:`ensure_binaries` / :func:`calico_crd_files` / :func:`report_crd_files` build (once,
  10-20 minutes on two cores) and cache everything keyed by version, so every later call is a
  few ``stat`` calls and never runs ``go``.
* :class:`ControlPlane` runs etcd and kube-apiserver on free loopback ports in a private work
  directory, writes a kubeconfig, installs the CRDs, and records its PIDs in ``pids.json`` so
  another process (``dpo cluster down``) can stop what ``dpo cluster up`` left running.

With ``controller_manager=True`` (always for ``dpo cluster up``) it also runs
kube-controller-manager with exactly two controllers: the namespace controller (a deleted
namespace is emptied and then disappears, as in a real cluster) and the garbage collector
(objects whose ``ownerReferences`` name a deleted owner are deleted). Nothing else runs: no
kubelet, no scheduler, no ServiceAccount token controller, so pods never start and the
ServiceAccount admission plugin stays off.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from dpo_dev.progress import Progress, numbered, run_reporting, say

KUBERNETES_VERSION = "v1.36.3"
ETCD_VERSION = "v3.6.16"
ETCD_MODULE = "go.etcd.io/etcd/server/v3"
#: Helm for the chart tests (charts/), built from its Go module like the control plane.
HELM_VERSION = "v4.3.2"
HELM_MODULE = "helm.sh/helm/v4"
CALICO_MODULE = "github.com/projectcalico/calico"
#: Calico's own tags are not valid Go module versions (no /v3 suffix), so the proxy only serves
#: pseudo-versions: this one is v3.31.0 (its checksum is not in the checksum database, hence
#: GONOSUMDB in :func:`_go_env`). It has every crd.projectcalico.org CRD, the staged kinds too.
CALICO_MODULE_VERSION = "v0.0.0-20251021213802-b1f3c43f8437"
#: The Calico storage CRDs (``crd.projectcalico.org/v1``) the operator's Calico flavors touch.
CALICO_CRD_FILES = (
    "crd.projectcalico.org_globalnetworkpolicies.yaml",
    "crd.projectcalico.org_networkpolicies.yaml",
    "crd.projectcalico.org_stagedkubernetesnetworkpolicies.yaml",
    "crd.projectcalico.org_stagednetworkpolicies.yaml",
    "crd.projectcalico.org_stagedglobalnetworkpolicies.yaml",
    "crd.projectcalico.org_tiers.yaml",
    "crd.projectcalico.org_globalnetworksets.yaml",
    "crd.projectcalico.org_networksets.yaml",
)
_CALICO_CRD_SUBDIR = "libcalico-go/config/crd"
#: The upstream ClusterNetworkPolicy CRD (policy.networking.k8s.io v1alpha2 and v1beta1), for
#: the ClusterNetworkPolicy flavor: the module's standard channel, as Calico 3.32 ships it.
NETWORK_POLICY_API_MODULE = "sigs.k8s.io/network-policy-api"
NETWORK_POLICY_API_VERSION = "v0.3.0"
_NETWORK_POLICY_API_CRD = "config/crd/standard/policy.networking.k8s.io_clusternetworkpolicies.yaml"
#: The policy-report APIs ``dpo run --audit-reports`` writes to: name -> (Go module, version,
#: directory, CRD files). OpenReports' own module has its CRDs; the wgpolicyk8s.io ones, whose
#: own repository is not served as a module, come from Kyverno's, which ships them.
REPORT_CRDS: dict[str, tuple[str, str, str, tuple[str, ...]]] = {
    "openreports": (
        "github.com/openreports/reports-api", "v0.2.1", "config/crd",
        ("openreports.io_reports.yaml", "openreports.io_clusterreports.yaml"),
    ),
    "wgpolicyk8s": (
        "github.com/kyverno/kyverno", "v1.19.1", "config/crds/policyreport",
        ("wgpolicyk8s.io_policyreports.yaml", "wgpolicyk8s.io_clusterpolicyreports.yaml"),
    ),
}  # fmt: skip

SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc"
ADMIN_USER = "dpo-admin"
#: The controller-manager's own identity (in ``system:masters``: the namespace controller and the
#: garbage collector delete any kind of object, our CRDs' included), distinct from the admin's
#: so that audit logs and apiserver metrics tell its requests apart.
CONTROLLER_MANAGER_USER = "system:kube-controller-manager"
#: The two controllers that make deletion behave as in a real cluster; every other one either
#: needs kubelets, a cloud or pods, or would write objects tests do not expect.
CONTROLLERS = ("namespace-controller", "garbage-collector-controller")

#: How long start() waits for /readyz; a warm start takes a few seconds, a loaded CI box more.
READY_TIMEOUT = 90.0
#: SIGTERM grace period before SIGKILL when stopping a process.
STOP_TIMEOUT = 10.0
_START_ATTEMPTS = 3

Log = Callable[[str], None]


def _stderr_log(message: str) -> None:
    """Progress goes to stderr so that stdout stays clean for ``eval $(dpo cluster up)``."""
    say(message, sys.stderr)


class ClusterError(RuntimeError):
    """Anything this module reports; the CLI prints it without a traceback."""


class BuildError(ClusterError):
    """A step of building or fetching the control-plane binaries failed."""


class ControlPlaneError(ClusterError):
    """The control plane could not be started or stopped."""


class KubectlError(subprocess.CalledProcessError):
    """A kubectl call failed; unlike CalledProcessError, str() shows what kubectl said."""

    def __str__(self) -> str:
        return f"{super().__str__()}\n{_tail(self.stderr or self.stdout or '')}"


# --------------------------------------------------------------------------------------------
# Locations
# --------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """``$DPO_CACHE_DIR`` or ``~/.cache/default-policy-operator``: survives clones and CI runs."""
    configured = os.environ.get("DPO_CACHE_DIR")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "default-policy-operator"


def repo_root() -> Path:
    """The source checkout this module lives in (``<repo>/dev/dpo_dev``).

    Only meaningful for a source or editable install; an installed copy passes explicit paths.
    """
    return Path(__file__).resolve().parents[2]


def default_manifests_dir() -> Path:
    """``<repo>/manifests``, whose ``crd/`` holds the CRDs every start installs."""
    return repo_root() / "manifests"


def default_calico_fallback_dir() -> Path:
    """Unmodified upstream copies beside the repository, used when the Go module lacks a file."""
    return repo_root().parent / "shared" / "crds" / "calico"


# --------------------------------------------------------------------------------------------
# Building binaries
# --------------------------------------------------------------------------------------------


#: The commands built from k8s.io/kubernetes, all in one wrapper module (see
#: :func:`_kubernetes_wrapper`) so they share its go.sum and Go's build cache.
KUBERNETES_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kubectl")


@dataclass(frozen=True)
class Binaries:
    kube_apiserver: Path
    kube_controller_manager: Path
    etcd: Path
    kubectl: Path


def binary_paths(root: Path | None = None) -> Binaries:
    """Where the binaries live in the cache; the version in the name is the cache key."""
    bin_dir = (root or cache_dir()) / "bin"
    return Binaries(
        kube_apiserver=bin_dir / f"kube-apiserver-{KUBERNETES_VERSION}",
        kube_controller_manager=bin_dir / f"kube-controller-manager-{KUBERNETES_VERSION}",
        etcd=bin_dir / f"etcd-{ETCD_VERSION}",
        kubectl=bin_dir / f"kubectl-{KUBERNETES_VERSION}",
    )


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def ensure_binaries(log: Log = _stderr_log) -> Binaries:
    """Return the cached binaries, building the missing ones from source first.

    The fast path only stats four files, so callers may invoke this on every start. Builds are
    serialised by a lock file (two test sessions or a test run and ``dpo cluster up`` would
    otherwise compile the same thing twice on a two-core box) and each binary is written under a
    temporary name and renamed, so an interrupted build never leaves a half binary behind.
    """
    binaries = binary_paths()
    if not _missing(binaries):
        return binaries
    bin_dir = binaries.etcd.parent
    bin_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(bin_dir / ".build.lock", log):
        missing = _missing(binaries)  # another process may have built them meanwhile
        for stale in bin_dir.glob(".*.partial-*"):
            stale.unlink(missing_ok=True)
        k8s = [name for name in missing if name in KUBERNETES_COMMANDS]
        if k8s:
            _build_kubernetes({name: _path_of(binaries, name) for name in k8s}, len(missing), log)
        if "etcd" in missing:  # always the last one missing
            _build_etcd(binaries.etcd, (len(missing), len(missing)), log)
    still_missing = _missing(binaries)
    if still_missing:
        raise BuildError(f"binaries still missing after the build: {', '.join(still_missing)}")
    return binaries


def _path_of(binaries: Binaries, name: str) -> Path:
    return {
        "kube-apiserver": binaries.kube_apiserver,
        "kube-controller-manager": binaries.kube_controller_manager,
        "kubectl": binaries.kubectl,
        "etcd": binaries.etcd,
    }[name]


def _missing(binaries: Binaries) -> list[str]:
    return [
        name
        for name in (*KUBERNETES_COMMANDS, "etcd")
        if not _is_executable(_path_of(binaries, name))
    ]


@contextlib.contextmanager
def _exclusive_lock(path: Path, log: Log) -> Iterator[None]:
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another process building into {path.parent} ...")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


#: Modules the checksum database does not know (it answers 404 for Calico's pseudo-versions):
#: their go.sum lines come from the proxy's download alone.
_NO_SUMDB = ("github.com/projectcalico/calico", "github.com/projectcalico/api")


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    # Static binaries (no libc dependency) and no go.work from the surrounding tree.
    env.update({"CGO_ENABLED": "0", "GOWORK": "off", "GO111MODULE": "on"})
    nosumdb = [entry for entry in env.get("GONOSUMDB", "").split(",") if entry]
    env["GONOSUMDB"] = ",".join([*nosumdb, *(m for m in _NO_SUMDB if m not in nosumdb)])
    return env


def _tail(text: str, limit: int = 4000) -> str:
    return text if len(text) <= limit else "..." + text[-limit:]


def _run_go(args: Sequence[str], cwd: Path, progress: Progress | None = None) -> str:
    """Run a go command; on failure raise with the command line and the tail of its output.

    With ``progress``, each line of its output is fed to it while it runs.
    """
    command = ["go", *args]
    try:
        if progress is None:
            result = subprocess.run(
                command, cwd=cwd, env=_go_env(), capture_output=True, text=True, check=False
            )
        else:
            result = run_reporting(command, cwd, _go_env(), progress)
    except FileNotFoundError as exc:
        raise BuildError(
            "the Go toolchain (go >= 1.26) is needed once to build kube-apiserver, kubectl "
            f"and etcd, but `go` is not on PATH: {exc}"
        ) from exc
    if result.returncode != 0:
        raise BuildError(
            f"command failed (exit {result.returncode}) in {cwd}: {' '.join(command)}\n"
            + _tail(result.stdout + result.stderr)
        )
    return result.stdout


def _module_download(module: str, version: str, cwd: Path) -> dict[str, Any]:
    info: dict[str, Any] = json.loads(
        _run_go(["mod", "download", "-json", f"{module}@{version}"], cwd)
    )
    if info.get("Error"):
        raise BuildError(f"go mod download {module}@{version}: {info['Error']}")
    return info


def _kubernetes_wrapper_directives(upstream_gomod: str, version: str) -> str:
    """Directives that let a wrapper module depend on k8s.io/kubernetes.

    k8s.io/kubernetes points its k8s.io/* dependencies at ``./staging/...`` with ``replace``;
    replaces of a dependency are ignored, so the wrapper must redirect them to the published
    staging modules (``v0.<minor>.<patch>``) itself. The ``godebug`` settings are copied so the
    binary behaves like an upstream build.
    """
    staging_version = "v0." + version.removeprefix("v1.")
    lines: list[str] = []
    for raw in upstream_gomod.splitlines():
        line = raw.strip().removeprefix("replace").strip()
        if line.startswith("k8s.io/") and "=> ./staging" in line:
            module = line.split()[0]
            lines.append(f"replace {module} => {module} {staging_version}")
        elif raw.startswith("godebug"):
            lines.append(raw)
    return "\n".join(lines) + "\n"


def _kubernetes_wrapper(log: Log) -> Path:
    """Prepare (once per version) the module that depends on k8s.io/kubernetes, and return it.

    It lives in the cache rather than in a temporary directory so that a command added later
    (kube-controller-manager came after kube-apiserver) is built in the same module, with the
    same go.sum and module graph, and needs no ``go get``. Compiled packages are shared through
    Go's build cache either way: ``-trimpath`` keeps them independent of where the module is.
    The module is prepared beside its final place and renamed, so a half-prepared one is never
    used; callers hold the build lock.
    """
    target = cache_dir() / "build" / f"kubernetes-{KUBERNETES_VERSION}"
    if (target / ".complete").is_file():
        return target
    log(f"preparing the Kubernetes {KUBERNETES_VERSION} build module in {target} ...")
    staging = Path(tempfile.mkdtemp(prefix=".kubernetes-", dir=_mkdir(target.parent)))
    try:
        _run_go(["mod", "init", "dpo-k8s-build"], staging)
        info = _module_download("k8s.io/kubernetes", KUBERNETES_VERSION, staging)
        upstream = Path(info["GoMod"]).read_text()
        with (staging / "go.mod").open("a") as gomod:
            gomod.write(_kubernetes_wrapper_directives(upstream, KUBERNETES_VERSION))
        # Getting every command package (not just the module) records every go.sum entry the
        # builds need, whichever of them is built first.
        commands = [f"k8s.io/kubernetes/cmd/{n}@{KUBERNETES_VERSION}" for n in KUBERNETES_COMMANDS]
        _go_get(commands, staging, f"Kubernetes {KUBERNETES_VERSION}", log)
        (staging / ".complete").write_text(f"k8s.io/kubernetes@{KUBERNETES_VERSION}\n")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _build_kubernetes(targets: Mapping[str, Path], of: int, log: Log) -> None:
    """Build ``targets`` in the wrapper module: the first of the ``of`` binaries to build."""
    work = _kubernetes_wrapper(log)
    minor = KUBERNETES_VERSION.split(".")[1]
    ldflags = (
        "-s -w"
        f" -X k8s.io/component-base/version.gitVersion={KUBERNETES_VERSION}"
        " -X k8s.io/component-base/version.gitMajor=1"
        f" -X k8s.io/component-base/version.gitMinor={minor}"
    )
    for index, (name, out) in enumerate(targets.items(), start=1):
        version_args = ["version", "--client"] if name == "kubectl" else ["--version"]
        _build_binary(
            name,
            f"k8s.io/kubernetes/cmd/{name}",
            KUBERNETES_VERSION,
            ldflags,
            out,
            work,
            version_args,
            log,
            step=(index, of),
        )


def _build_etcd(out: Path, step: tuple[int, int], log: Log) -> None:
    with tempfile.TemporaryDirectory(prefix="dpo-etcd-build-") as tmp:
        work = Path(tmp)
        _run_go(["mod", "init", "dpo-etcd-build"], work)
        _go_get([f"{ETCD_MODULE}@{ETCD_VERSION}"], work, "etcd", log)
        # The module root of go.etcd.io/etcd/server/v3 is the etcd main package.
        _build_binary(
            "etcd", ETCD_MODULE, ETCD_VERSION, "-s -w", out, work, ["--version"], log, step=step
        )


def helm_path() -> Path:
    """Where :func:`ensure_helm` puts helm; the version in the name is the cache key."""
    return cache_dir() / "bin" / f"helm-{HELM_VERSION}"


def ensure_helm(log: Log = _stderr_log) -> Path:
    """Return the cached helm, building it from its Go module first (a few minutes, once).

    Same rules as :func:`ensure_binaries`: the build lock, an atomic rename, a version check.
    Helm reports its version from an ldflag (upstream's Makefile sets the same one).
    """
    out = helm_path()
    if _is_executable(out):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with (
        _exclusive_lock(out.parent / ".build.lock", log),
        tempfile.TemporaryDirectory(prefix="dpo-helm-build-") as tmp,
    ):
        if not _is_executable(out):  # another process may have built it meanwhile
            work = Path(tmp)
            _run_go(["mod", "init", "dpo-helm-build"], work)
            _go_get([f"{HELM_MODULE}/cmd/helm@{HELM_VERSION}"], work, "helm", log)
            ldflags = f"-s -w -X {HELM_MODULE}/internal/version.version={HELM_VERSION}"
            package = f"{HELM_MODULE}/cmd/helm"
            _build_binary("helm", package, HELM_VERSION, ldflags, out, work, ["version"], log)
    return out


def _go_get(packages: Sequence[str], work: Path, what: str, log: Log) -> None:
    """``go get``, counting the modules it downloads (none when the module cache has them)."""
    progress = Progress(
        f"fetching the modules of {what}",
        unit="modules downloaded",
        counts=lambda line: line.startswith("go: downloading "),
    )
    try:
        _run_go(["get", *packages], work, progress)
    finally:
        fetched = progress.finish()
    if progress.count:
        log(fetched)


#: What ``go list`` says of a main package whose binary the build cache already holds: ``go
#: build`` links it from the cache and compiles nothing for it.
_CACHED_BINARY = "not installed but available in build cache"


def _to_compile(package: str, flags: Sequence[str], work: Path) -> tuple[int, frozenset[str]]:
    """How many packages ``package`` links, and which of them ``go build`` will compile.

    ``go list`` asks the build cache without compiling anything (about a second for
    kube-apiserver): a package is stale when the cache has no result for its exact inputs.
    """
    template = "{{.ImportPath}}\t{{.Stale}}\t{{.StaleReason}}"
    rows = [
        line.split("\t")
        for line in _run_go(["list", "-deps", *flags, "-f", template, package], work).splitlines()
    ]
    stale = (path for path, flag, reason in rows if flag == "true" and reason != _CACHED_BINARY)
    return len(rows), frozenset(stale)


def _build_binary(
    name: str,
    package: str,
    version: str,
    ldflags: str,
    out: Path,
    work: Path,
    version_args: Sequence[str],
    log: Log,
    *,
    step: tuple[int, int] = (1, 1),
) -> None:
    """Build one binary, check it reports the expected version, then publish it atomically.

    ``go build -v`` names each package as it compiles it; counted against the stale packages
    ``go list`` found, that is how far along the build is (see :mod:`dpo_dev.progress`).
    ``step`` is (this binary, binaries to build) in the caller's run.
    """
    flags = ["-trimpath", "-ldflags", ldflags]
    linked, stale = _to_compile(package, flags, work)
    label = numbered(f"building {name} {version}", *step)
    log(f"{label}: {len(stale)} of its {linked} packages to compile...")
    progress = Progress(
        label, unit="packages compiled", total=len(stale), counts=stale.__contains__
    )
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    try:
        _run_go(["build", "-v", *flags, "-o", str(partial), package], work, progress)
        check = subprocess.run(
            [str(partial), *version_args], capture_output=True, text=True, check=False
        )
        reported = check.stdout + check.stderr
        if check.returncode != 0 or version.removeprefix("v") not in reported:
            raise BuildError(
                f"{name} built from {package} does not report version {version}: " + _tail(reported)
            )
        os.replace(partial, out)
    finally:
        progress.finish()
        partial.unlink(missing_ok=True)
    compiled = f"{progress.count} packages compiled"
    log(f"built {name} {version} in {progress.elapsed:.0f} s ({compiled}) -> {out}")


def calico_crd_files(log: Log = _stderr_log, fallback_dir: Path | None = None) -> list[Path]:
    """The Calico CRD files to install, from the pinned Go module where it has them.

    The module's files are copied once into the cache (so later starts need no ``go`` at all);
    a file the module does not have, or every file when the module cannot be fetched, comes
    from ``fallback_dir`` (default ``<repo>/../shared/crds/calico``), read in place: those
    copies must never be copied into the repository.
    """
    fallback = fallback_dir or default_calico_fallback_dir()
    from_module = _calico_module_files(log)
    files: list[Path] = []
    absent: list[str] = []
    for name in CALICO_CRD_FILES:
        if name in from_module:
            files.append(from_module[name])
        elif (fallback / name).is_file():
            files.append(fallback / name)
        else:
            absent.append(name)
    if absent:
        log(f"warning: Calico CRDs not found in the Go module nor in {fallback}: {absent}")
    if not files:
        raise BuildError(f"no Calico CRD files found (module {CALICO_MODULE} nor {fallback})")
    return files


def _calico_module_files(log: Log) -> dict[str, Path]:
    try:
        return _module_files(
            CALICO_MODULE, CALICO_MODULE_VERSION, _CALICO_CRD_SUBDIR, CALICO_CRD_FILES, "calico"
        )
    except BuildError as exc:
        log(f"warning: cannot fetch {CALICO_MODULE}, using the fallback CRD copies: {exc}")
        return {}


def report_crd_files(formats: Sequence[str] = tuple(REPORT_CRDS)) -> list[Path]:
    """The CRD files of the policy-report APIs ``formats`` (keys of :data:`REPORT_CRDS`), from
    their pinned Go modules, copied once into the cache like Calico's."""
    files: list[Path] = []
    for name in formats:
        module, version, subdir, names = REPORT_CRDS[name]
        found = _module_files(module, version, subdir, names, name)
        missing = [n for n in names if n not in found]
        if missing:
            raise BuildError(f"{module}@{version} has no {subdir}/{missing}")
        files += [found[n] for n in names]
    return files


def _module_files(
    module: str, version: str, subdir: str, names: Sequence[str], label: str
) -> dict[str, Path]:
    """Files ``subdir/names`` of Go module ``module@version`` (those it has), copied once into
    ``<cache>/crds/<label>-<version>``: later calls need no ``go`` at all."""
    target = cache_dir() / "crds" / f"{label}-{version}"
    marker = target / ".complete"
    if not marker.is_file():
        with tempfile.TemporaryDirectory(prefix=f"dpo-{label}-") as tmp:
            info = _module_download(module, version, Path(tmp))
        source = Path(info["Dir"]) / subdir
        staging = Path(tempfile.mkdtemp(prefix=f".{label}-", dir=_mkdir(target.parent)))
        for name in names:
            if (source / name).is_file():
                shutil.copyfile(source / name, staging / name)
        (staging / ".complete").write_text(f"{module}@{version}\n")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
    return {name: target / name for name in names if (target / name).is_file()}


def network_policy_api_crd_file() -> Path:
    """The ClusterNetworkPolicy CRD from its Go module, copied once into the cache."""
    target = cache_dir() / "crds" / f"network-policy-api-{NETWORK_POLICY_API_VERSION}"
    crd = target / Path(_NETWORK_POLICY_API_CRD).name
    if not crd.is_file():
        with tempfile.TemporaryDirectory(prefix="dpo-npapi-") as tmp:
            info = _module_download(
                NETWORK_POLICY_API_MODULE, NETWORK_POLICY_API_VERSION, Path(tmp)
            )
        staging = Path(tempfile.mkdtemp(prefix=".npapi-", dir=_mkdir(target)))
        shutil.copyfile(Path(info["Dir"]) / _NETWORK_POLICY_API_CRD, staging / crd.name)
        os.replace(staging / crd.name, crd)
        shutil.rmtree(staging, ignore_errors=True)
    return crd


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------


def _free_port() -> int:
    """A port the kernel just considered free; a later bind may still race (start() retries)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks) of a process, or None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may contain spaces: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[0], int(fields[19])


def _start_ticks(pid: int) -> int:
    stat = _proc_stat(pid)
    return stat[1] if stat else -1


def _is_ours(pid: int, exe: str, start_ticks: int) -> bool:
    """True while ``pid`` is still the live process we started (guards against PID reuse)."""
    stat = _proc_stat(pid)
    if stat is None or stat[0] == "Z" or (start_ticks >= 0 and stat[1] != start_ticks):
        return False
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0]
    except OSError:
        return False
    return os.fsdecode(argv0) == exe


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal the process group the child leads (start_new_session), or the process alone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def _terminate(record: _ProcessRecord, popen: subprocess.Popen[bytes] | None) -> bool:
    """SIGTERM, wait up to STOP_TIMEOUT, then SIGKILL. Returns whether it was running."""
    if popen is not None:  # our own child: waitpid is exact and reaps it
        if popen.poll() is not None:
            return False
        _signal_group(record.pid, signal.SIGTERM)
        try:
            popen.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            _signal_group(record.pid, signal.SIGKILL)
            popen.wait()
        return True
    # Not our child (started by another `dpo cluster up`): poll /proc instead of waitpid.
    if not _is_ours(record.pid, record.exe, record.start_ticks):
        return False
    _signal_group(record.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while _is_ours(record.pid, record.exe, record.start_ticks):
        if time.monotonic() > deadline:
            _signal_group(record.pid, signal.SIGKILL)
            deadline = time.monotonic() + STOP_TIMEOUT
        time.sleep(0.05)
    return True


@dataclass(frozen=True)
class _ProcessRecord:
    name: str
    pid: int
    exe: str
    start_ticks: int

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "pid": self.pid,
            "exe": self.exe,
            "start_ticks": self.start_ticks,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> _ProcessRecord:
        return cls(str(data["name"]), int(data["pid"]), str(data["exe"]), int(data["start_ticks"]))


def _read_pids(path: Path) -> list[_ProcessRecord]:
    try:
        data = json.loads(path.read_text())
        return [_ProcessRecord.from_json(item) for item in data["processes"]]
    except FileNotFoundError:
        return []
    except (ValueError, KeyError, TypeError) as exc:
        raise ControlPlaneError(f"{path} is unreadable: {exc}") from exc


def _write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def _log_tail(path: Path, limit: int = 3000) -> str:
    try:
        return _tail(path.read_text(errors="replace"), limit)
    except OSError:
        return "(no log)"


def _load_crd_names(files: Sequence[Path]) -> list[str]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    names: list[str] = []
    for path in files:
        for doc in yaml.load_all(path.read_text(), Loader=loader):
            if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                names.append(str(doc["metadata"]["name"]))
    return names


def project_crd_files(manifests_dir: Path) -> list[Path]:
    """Every CRD file in ``manifests/crd/`` (a kustomization.yaml beside them is skipped)."""
    crd_dir = manifests_dir / "crd"
    if not crd_dir.is_dir():
        return []
    return [path for path in sorted(crd_dir.glob("*.yaml")) if _load_crd_names([path])]


class _PortInUse(ControlPlaneError):
    """A child lost the race for a port picked by _free_port(); start() picks new ones."""


# --------------------------------------------------------------------------------------------
# The control plane
# --------------------------------------------------------------------------------------------


class ControlPlane:
    """etcd + kube-apiserver on loopback, with our CRDs and Calico's installed.

    Every start is fresh: the data and certificate directories are recreated and whatever an
    earlier run left in the same work directory is stopped first. Use as a context manager, or
    call :meth:`start` / :meth:`stop`; ``stop`` is idempotent and safe after a failed start.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        manifests_dir: Path | None = None,
        calico_fallback_dir: Path | None = None,
        log: Log = _stderr_log,
        audit_policy: Mapping[str, Any] | None = None,
        extra_apiserver_args: Sequence[str] = (),
        controller_manager: bool = False,
        report_crds: Sequence[str] = (),
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self.manifests_dir = manifests_dir or default_manifests_dir()
        self.calico_fallback_dir = calico_fallback_dir
        #: An ``audit.k8s.io/v1`` Policy; when given, the apiserver writes JSON lines to
        #: :attr:`audit_log` (synchronously, so a request is logged before it is answered).
        self.audit_policy = audit_policy
        self.audit_log = self.workdir / "audit.log"
        self.extra_apiserver_args = tuple(extra_apiserver_args)
        #: Also run kube-controller-manager (:data:`CONTROLLERS`). Off by default: it adds
        #: start-up time and watches every object the suites create, and most tests do not
        #: delete namespaces or rely on garbage collection.
        self.controller_manager = controller_manager
        #: Policy-report APIs to install (keys of :data:`REPORT_CRDS`). None by default: most
        #: tests need none, and which ones exist decides the API the operator writes reports to.
        self.report_crds = tuple(report_crds)
        self.kubeconfig = self.workdir / "kubeconfig"
        #: kube-controller-manager's own credential (written on every start, used only with it)
        self.controller_kubeconfig = self.workdir / "controller-manager.kubeconfig"
        self.pids_file = self.workdir / "pids.json"
        self.pki_dir = self.workdir / "pki"
        self.ca_file = self.pki_dir / "apiserver.crt"
        self._controller_manager_port: int | None = None
        self._log = log
        self._binaries: Binaries | None = None
        self._server: str | None = None
        self._admin_token: str | None = None
        self._etcd_endpoint: str | None = None
        self._records: list[_ProcessRecord] = []
        self._popens: dict[int, subprocess.Popen[bytes]] = {}
        self._ssl: ssl.SSLContext | None = None
        #: name -> (executable, arguments) of each child, to restart one alone (fault tests)
        self._commands: dict[str, tuple[Path, list[str]]] = {}

    # -- state -----------------------------------------------------------------------------

    def _started(self, value: str | None, what: str) -> str:
        if value is None:
            raise ControlPlaneError(f"{what} is only known once the control plane has started")
        return value

    @property
    def server(self) -> str:
        """``https://127.0.0.1:<port>`` of the kube-apiserver."""
        return self._started(self._server, "server")

    @property
    def admin_token(self) -> str:
        """Bearer token of a ``system:masters`` user (also in the kubeconfig)."""
        return self._started(self._admin_token, "admin_token")

    @property
    def etcd_endpoint(self) -> str:
        return self._started(self._etcd_endpoint, "etcd_endpoint")

    @property
    def binaries(self) -> Binaries:
        if self._binaries is None:
            self._binaries = ensure_binaries(self._log)
        return self._binaries

    @property
    def pids(self) -> list[int]:
        """PIDs of the processes this object started (and has not stopped yet)."""
        return [record.pid for record in self._records]

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start etcd and kube-apiserver, wait for ``/readyz``, install the CRDs.

        With :attr:`controller_manager`, kube-controller-manager starts after the CRDs and
        ``start`` returns once its ``/healthz`` answers 200.

        On any failure (including Ctrl-C) everything started so far is stopped before the
        exception propagates, so a failed start leaves no process behind.
        """
        binaries = self.binaries
        crd_files = [
            *project_crd_files(self.manifests_dir),
            *calico_crd_files(self._log, self.calico_fallback_dir),
            network_policy_api_crd_file(),
            *report_crd_files(self.report_crds),
        ]
        crd_names = _load_crd_names(crd_files)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._stop_processes()  # a second start() on the same object starts afresh
        if down(self.workdir):
            self._log(f"stopped a control plane left running in {self.workdir}")
        try:
            for attempt in range(1, _START_ATTEMPTS + 1):
                try:
                    self._start_processes(binaries)
                    self._install_crds(crd_files, crd_names)
                    if self.controller_manager:
                        self._start_controller_manager(binaries)
                        self._wait_controller_manager()
                    break
                except _PortInUse:
                    self._stop_processes()
                    if attempt == _START_ATTEMPTS:
                        raise
        except BaseException:
            self.stop()
            raise

    def _start_processes(self, binaries: Binaries) -> None:
        for sub in ("etcd-data", "pki"):
            shutil.rmtree(self.workdir / sub, ignore_errors=True)
        self.pki_dir.mkdir(mode=0o700)
        self._ssl = None
        etcd_port, peer_port, api_port = _free_port(), _free_port(), _free_port()
        self._etcd_endpoint = f"http://127.0.0.1:{etcd_port}"
        self._server = f"https://127.0.0.1:{api_port}"
        self._admin_token = secrets.token_urlsafe(32)

        # Service-account tokens are signed with a fresh P-256 key (ES256): generating one takes
        # milliseconds, where `openssl genrsa 2048` took ~0.8 s of a ~5 s start.
        sa_key = self.pki_dir / "service-account.key"
        subprocess.run(
            ["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(sa_key)],
            check=True,
            capture_output=True,
        )
        tokens = self.pki_dir / "tokens.csv"
        kcm_token = secrets.token_urlsafe(32)
        _write_atomic(
            tokens,
            f'{self._admin_token},{ADMIN_USER},{ADMIN_USER},"system:masters"\n'
            f"{kcm_token},{CONTROLLER_MANAGER_USER},{CONTROLLER_MANAGER_USER},"
            '"system:masters"\n',
            0o600,
        )

        peer = f"http://127.0.0.1:{peer_port}"
        self._spawn(
            "etcd",
            binaries.etcd,
            [
                "--name=dpo",
                f"--data-dir={self.workdir / 'etcd-data'}",
                f"--listen-client-urls={self._etcd_endpoint}",
                f"--advertise-client-urls={self._etcd_endpoint}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=dpo={peer}",
                "--initial-cluster-state=new",
                # A throwaway test store: durability buys nothing and fsync costs a lot.
                "--unsafe-no-fsync",
                "--quota-backend-bytes=8589934592",
                "--log-level=warn",
            ],
        )
        # The apiserver retries etcd, but only for a while; starting it against a listening
        # etcd keeps start-up deterministic on a loaded machine for the cost of ~0.2 s.
        self._wait_listening("etcd", etcd_port)
        self._spawn(
            "kube-apiserver",
            binaries.kube_apiserver,
            [
                f"--etcd-servers={self._etcd_endpoint}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",  # needed on hosts without a default route
                f"--secure-port={api_port}",
                f"--cert-dir={self.pki_dir}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={sa_key}",
                f"--service-account-signing-key-file={sa_key}",
                f"--token-auth-file={tokens}",
                "--authorization-mode=Node,RBAC",
                # No controller-manager mints ServiceAccount tokens: the plugin would reject
                # every pod. PodSecurity and ValidatingAdmissionPolicy stay on (default).
                "--disable-admission-plugins=ServiceAccount",
                "--enable-admission-plugins=NamespaceLifecycle",
                "--profiling=false",
                "--max-requests-inflight=800",
                "--max-mutating-requests-inflight=400",
                *self._audit_args(),
                *self.extra_apiserver_args,
            ],
        )
        self._wait_ready()
        self._write_kubeconfig(self.kubeconfig, ADMIN_USER, self.admin_token)
        self._write_kubeconfig(self.controller_kubeconfig, CONTROLLER_MANAGER_USER, kcm_token)

    def _start_controller_manager(self, binaries: Binaries) -> None:
        """kube-controller-manager with :data:`CONTROLLERS` only, acting with its own token.

        Started after the CRDs are established, so that its garbage collector and namespace
        controller discover them at once instead of at their next 30 s discovery refresh.
        ``--use-service-account-credentials=false``: the controllers use that token rather than
        one ServiceAccount each, which would need the token controller and a signing key.
        ``/healthz`` is served on a free loopback port, with a self-signed certificate written to
        ``pki/controller-manager``, only so that :meth:`start` can wait until it is up.
        """
        config = self.controller_kubeconfig
        self._controller_manager_port = _free_port()
        self._spawn(
            "kube-controller-manager",
            binaries.kube_controller_manager,
            [
                f"--kubeconfig={config}",
                f"--authentication-kubeconfig={config}",
                f"--authorization-kubeconfig={config}",
                f"--controllers={','.join(CONTROLLERS)}",
                "--leader-elect=false",
                "--use-service-account-credentials=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={self._controller_manager_port}",
                f"--cert-dir={self.pki_dir / 'controller-manager'}",
                "--profiling=false",
            ],
        )

    def _wait_controller_manager(self) -> None:
        """Poll kube-controller-manager's ``/healthz`` (verified against the cert it wrote)."""
        port = self._controller_manager_port
        if port is None:
            raise ControlPlaneError("kube-controller-manager was never started")
        cert = self.pki_dir / "controller-manager" / "kube-controller-manager.crt"
        deadline = time.monotonic() + READY_TIMEOUT
        last = "no answer yet"
        while True:
            self._check_children()
            try:
                context = ssl.create_default_context(cafile=str(cert))
                connection = http.client.HTTPSConnection(
                    "127.0.0.1", port, context=context, timeout=2.0
                )
                try:
                    connection.request("GET", "/healthz")
                    response = connection.getresponse()
                    last = f"HTTP {response.status}: {response.read().decode(errors='replace')}"
                finally:
                    connection.close()
                if response.status == 200:
                    return
            except (OSError, ssl.SSLError, http.client.HTTPException) as exc:
                last = repr(exc)  # not listening yet, or its certificate not written yet
            if time.monotonic() > deadline:
                raise ControlPlaneError(
                    f"kube-controller-manager not healthy after {READY_TIMEOUT:.0f} s ({last}); "
                    f"end of {self.workdir / 'kube-controller-manager.log'}:\n"
                    + _log_tail(self.workdir / "kube-controller-manager.log")
                )
            time.sleep(0.1)

    def _audit_args(self) -> list[str]:
        if self.audit_policy is None:
            return []
        policy_file = self.workdir / "audit-policy.yaml"
        _write_atomic(policy_file, yaml.safe_dump(dict(self.audit_policy), sort_keys=False))
        self.audit_log.unlink(missing_ok=True)  # every start is fresh, its audit log too
        return [
            f"--audit-policy-file={policy_file}",
            f"--audit-log-path={self.audit_log}",
            "--audit-log-format=json",
            "--audit-log-mode=blocking",
        ]

    def audit_events(self) -> list[dict[str, Any]]:
        """The audit log so far, one dict per event (empty without an audit policy)."""
        try:
            lines = self.audit_log.read_text().splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.strip()]

    def _spawn(self, name: str, exe: Path, args: Sequence[str], *, append: bool = False) -> None:
        self._commands[name] = (exe, list(args))
        log_path = self.workdir / f"{name}.log"
        with log_path.open("ab" if append else "wb") as log_file:
            popen = subprocess.Popen(
                [str(exe), *args],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                # Own session and process group: Ctrl-C in the terminal reaches only us (we
                # then stop the children in order), and `dpo cluster up` can exit while the
                # children keep running.
                start_new_session=True,
            )
        self._popens[popen.pid] = popen
        self._records.append(_ProcessRecord(name, popen.pid, str(exe), _start_ticks(popen.pid)))
        self._save_pids()

    def _save_pids(self) -> None:
        if not self._records:
            self.pids_file.unlink(missing_ok=True)
            return
        state = {
            "processes": [record.to_json() for record in self._records],
            "server": self._server,
            "etcd": self._etcd_endpoint,
            "kubeconfig": str(self.kubeconfig),
        }
        _write_atomic(self.pids_file, json.dumps(state, indent=2) + "\n")

    def _check_children(self) -> None:
        for record in self._records:
            popen = self._popens.get(record.pid)
            if popen is not None and popen.poll() is not None:
                tail = _log_tail(self.workdir / f"{record.name}.log")
                error = ControlPlaneError if "address already in use" not in tail else _PortInUse
                raise error(
                    f"{record.name} exited with status {popen.returncode} during start-up; "
                    f"end of {self.workdir / (record.name + '.log')}:\n{tail}"
                )

    def _wait_listening(self, name: str, port: int) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            self._check_children()
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                return
            if time.monotonic() > deadline:
                raise ControlPlaneError(
                    f"{name} not listening on port {port} after {READY_TIMEOUT:.0f} s; end of "
                    f"{self.workdir / (name + '.log')}:\n" + _log_tail(self.workdir / f"{name}.log")
                )
            time.sleep(0.05)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        last = "no answer yet"
        while True:
            self._check_children()
            try:
                status, body = self.request("GET", "/readyz", timeout=2.0)
                if status == 200:
                    return
                last = f"HTTP {status}: {body}"
            except (OSError, ssl.SSLError, http.client.HTTPException) as exc:
                self._ssl = None  # the serving cert may not have been (fully) written yet
                last = repr(exc)
            if time.monotonic() > deadline:
                raise ControlPlaneError(
                    f"kube-apiserver not ready after {READY_TIMEOUT:.0f} s ({last}); end of "
                    f"{self.workdir / 'kube-apiserver.log'}:\n"
                    + _log_tail(self.workdir / "kube-apiserver.log")
                )
            time.sleep(0.1)

    def _write_kubeconfig(self, path: Path, user: str, token: str) -> None:
        """A self-contained kubeconfig: the CA is embedded, so it keeps working if copied.

        The CA is the apiserver's self-generated bundle (serving cert + the CA that signed it,
        with 127.0.0.1 in its SANs); verification stays on.
        """
        ca_data = base64.b64encode(self.ca_file.read_bytes()).decode()
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "dpo",
                    "cluster": {"server": self.server, "certificate-authority-data": ca_data},
                }
            ],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [
                {
                    "name": "dpo",
                    "context": {"cluster": "dpo", "user": user, "namespace": "default"},
                }
            ],
            "current-context": "dpo",
        }
        _write_atomic(path, yaml.safe_dump(config, sort_keys=False), 0o600)

    def _install_crds(self, files: Sequence[Path], names: Sequence[str]) -> None:
        if not files:
            return
        apply = ["apply", "--server-side", "--force-conflicts", "--field-manager=dpo-cluster"]
        try:
            self.kubectl(*apply, *(arg for path in files for arg in ("-f", str(path))))
        except KubectlError as exc:
            raise ControlPlaneError(f"installing the CRDs failed: {exc}") from exc
        self._wait_established(names)

    def _wait_established(self, names: Sequence[str], timeout: float = 60.0) -> None:
        """Poll the CRDs' conditions directly: ~0.8 s faster than `kubectl wait` per start."""
        deadline = time.monotonic() + timeout
        pending = list(names)
        while pending:
            name = pending[0]
            status, body = self.request(
                "GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}"
            )
            conditions = body.get("status", {}).get("conditions", []) if status == 200 else []
            if any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
                pending.pop(0)
                continue
            if time.monotonic() > deadline:
                raise ControlPlaneError(f"CRD {name} not Established after {timeout:.0f} s: {body}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop every process this object started (apiserver first) and forget them.

        Idempotent, and safe to call from atexit, after a failed start or twice.
        """
        self._stop_processes()
        self._ssl = None

    def _stop_processes(self) -> None:
        try:
            for record in reversed(self._records):
                _terminate(record, self._popens.get(record.pid))
        finally:
            self._records.clear()
            self._popens.clear()
            self.pids_file.unlink(missing_ok=True)

    # -- stopping and starting one child (fault-injection tests) --------------------------------

    def _record(self, name: str) -> _ProcessRecord | None:
        return next((r for r in self._records if r.name == name), None)

    def stop_child(self, name: str, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop one child (``"etcd"``, ``"kube-apiserver"``...) and keep its data and port.

        SIGTERM lets it shut down gracefully; SIGKILL is a crash. Idempotent.
        """
        record = self._record(name)
        if record is None:
            return
        popen = self._popens.pop(record.pid, None)
        if sig == signal.SIGKILL and popen is not None and popen.poll() is None:
            _signal_group(record.pid, signal.SIGKILL)
            popen.wait()
        else:
            _terminate(record, popen)
        self._records.remove(record)
        self._save_pids()

    def start_child(self, name: str) -> None:
        """Start again a child stopped by :meth:`stop_child`, with the same flags and ports.

        Waits until etcd listens, kube-apiserver's ``/readyz`` answers 200 (which needs etcd
        up), or kube-controller-manager's ``/healthz`` does.
        """
        if self._record(name) is not None:
            raise ControlPlaneError(f"{name} is already running")
        if name not in self._commands:
            raise ControlPlaneError(f"{name} was never started")
        exe, args = self._commands[name]
        self._spawn(name, exe, args, append=True)
        # Keep the start order (etcd first), so stop() still stops the apiserver first.
        self._records.sort(key=lambda r: list(self._commands).index(r.name))
        self._save_pids()
        if name == "etcd":
            self._wait_listening("etcd", int(self.etcd_endpoint.rpartition(":")[2]))
        elif name == "kube-controller-manager":
            self._wait_controller_manager()
        else:
            self._ssl = None
            self._wait_ready()

    def stop_etcd(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Take etcd down (its data stays); the apiserver keeps running and fails requests."""
        self.stop_child("etcd", sig)

    def start_etcd(self) -> None:
        self.start_child("etcd")

    def restart_apiserver(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop kube-apiserver alone and start it again on the same port, with the same
        certificates and tokens; returns once ``/readyz`` answers 200."""
        self.stop_child("kube-apiserver", sig)
        self.start_child("kube-apiserver")

    # -- talking to it ----------------------------------------------------------------------

    def ssl_context(self) -> ssl.SSLContext:
        """An SSL context that trusts this apiserver (and verifies host name and chain)."""
        if self._ssl is None:
            self._ssl = ssl.create_default_context(cafile=str(self.ca_file))
        return self._ssl

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
    ) -> tuple[int, Any]:
        """One HTTPS request as the admin (unless ``headers`` carries ``Authorization``).

        Returns the status and the decoded JSON body (or text when it is not JSON). Meant for
        checks and tests; the operator has its own client.
        """
        host, _, port = self.server.removeprefix("https://").partition(":")
        all_headers = {"Authorization": f"Bearer {self.admin_token}", "Accept": "application/json"}
        all_headers.update(headers or {})
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            all_headers.setdefault("Content-Type", "application/json")
        connection = http.client.HTTPSConnection(
            host, int(port), context=self.ssl_context(), timeout=timeout
        )
        try:
            connection.request(method, path, body=payload, headers=all_headers)
            response = connection.getresponse()
            raw = response.read().decode(errors="replace")
        finally:
            connection.close()
        try:
            return response.status, json.loads(raw)
        except ValueError:
            return response.status, raw

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run the built kubectl against this control plane; stdout/stderr are captured."""
        command = [
            str(self.binaries.kubectl),
            f"--kubeconfig={self.kubeconfig}",
            # Keep discovery caches with the cluster instead of piling up in ~/.kube/cache.
            f"--cache-dir={self.workdir / 'kubectl-cache'}",
            *args,
        ]
        result = subprocess.run(command, input=input, capture_output=True, text=True, check=False)
        if check and result.returncode != 0:
            raise KubectlError(result.returncode, command, result.stdout, result.stderr)
        return result

    def apply_file(self, path: Path) -> subprocess.CompletedProcess[str]:
        return self.kubectl(
            "apply", "--server-side", "--field-manager=dpo-cluster", "-f", str(path)
        )

    def apply_yaml(self, text: str) -> subprocess.CompletedProcess[str]:
        return self.kubectl(
            "apply", "--server-side", "--field-manager=dpo-cluster", "-f", "-", input=text
        )


# --------------------------------------------------------------------------------------------
# CLI entry points
# --------------------------------------------------------------------------------------------


def up(workdir: Path, *, manifests_dir: Path | None = None, log: Log = _stderr_log) -> ControlPlane:
    """Start a control plane that outlives the calling process (``dpo cluster up``).

    The children run in their own sessions with their output in ``workdir/*.log``, so the CLI
    can exit; :func:`down` stops them later from ``workdir/pids.json``. It includes
    kube-controller-manager: someone trying the operator by hand deletes namespaces and
    expects them to go away, as they would in a real cluster; and the OpenReports CRDs, so that
    ``dpo run --audit-reports`` has somewhere to write.
    """
    plane = ControlPlane(
        workdir,
        manifests_dir=manifests_dir,
        log=log,
        controller_manager=True,
        report_crds=("openreports",),
    )
    plane.start()
    return plane


def down(workdir: Path) -> bool:
    """Stop the control plane recorded in ``workdir/pids.json``; return whether one was running.

    Each PID is checked against the binary and start time recorded for it before it is
    signalled, so a stale file never kills an unrelated process that reused the PID.
    """
    pids_file = Path(workdir).resolve() / "pids.json"
    records = _read_pids(pids_file)
    running = False
    try:
        for record in reversed(records):
            running = _terminate(record, None) or running
    finally:
        pids_file.unlink(missing_ok=True)
    return running
