"""Calico Felix v3.31.0, built from the Go module proxy and cached, and what it needs to run.

Why Felix: the Calico flavors (GlobalNetworkPolicy, Calico NetworkPolicy) promise traffic
behaviour that only Calico's own policy engine can confirm: order across kinds, the tier's
implicit end-of-tier drop, both ends enforcing. Felix is that engine, and it runs without
calico-node, a kubelet or a container runtime: it reads the Kubernetes datastore (the local
control plane) and programs iptables in whatever network namespace it runs in.

Building it (once, ~455 CPU-seconds, cached under a name keyed by version and recipe hash):

* The proxy serves ``github.com/projectcalico/calico`` only as pseudo-versions; v3.31.0 is
  :data:`CALICO_MODULE_VERSION`. Its root go.mod replaces ``./api``, ``./lib/std`` and
  ``./lib/httpmachinery``, nested modules the module zip leaves out: the first two are pointed
  at their served versions, the third (imported only by the whisker backend, not by Felix) is
  an empty module.
* With ``CGO_ENABLED=0`` (no libbpf) the libbpf stub's ``OpenObject`` panics, and the iptables
  dataplane calls a BPF clean-up that opens an object unconditionally; the stub is patched to
  return an error instead (:data:`_PATCHES`). Nothing else changes.

Its CRDs come from the same module (``libcalico-go/config/crd``): Felix needs more of them than
the operator does (ClusterInformation, FelixConfiguration, IPPool, ...), and the operator's
objects are then validated against the very version that enforces them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any

from dpo_dev.cluster import (
    CALICO_MODULE,
    BuildError,
    Log,
    _build_binary,
    _exclusive_lock,
    _is_executable,
    _mkdir,
    _module_download,
    _run_go,
    _stderr_log,
    cache_dir,
)

FELIX_VERSION = "v3.31.0"
#: v3.31.0 as the proxy serves it (tags, branches and bare commits answer 403).
CALICO_MODULE_VERSION = "v0.0.0-20251021213802-b1f3c43f8437"
#: ``github.com/projectcalico/api`` as of v3.31.0 (the root go.mod's ``./api``).
CALICO_API_VERSION = "v0.0.0-20251022175904-f2ab03771208"
FELIX_PACKAGE = f"{CALICO_MODULE}/felix/cmd/calico-felix"
_BUILDINFO = f"{CALICO_MODULE}/pkg/buildinfo"
_STUB = "felix/bpf/libbpf/libbpf_stub.go"
#: (file, exact text, replacement): each must match exactly once, or the build stops.
_PATCHES = (
    (_STUB, 'import (\n\t"runtime"\n)', 'import (\n\t"errors"\n\t"runtime"\n)'),
    (
        _STUB,
        'func OpenObject(filename string) (*Obj, error) {\n\tpanic("LIBBPF syscall stub")\n}',
        "func OpenObject(filename string) (*Obj, error) {\n"
        '\treturn nil, errors.New("libbpf is not available: built without cgo")\n}',
    ),
)
#: The root go.mod's local replaces, pointed at what the proxy serves.
_REPLACES = (
    ("github.com/projectcalico/api", f"github.com/projectcalico/api@{CALICO_API_VERSION}"),
    (
        f"{CALICO_MODULE}/lib/std",
        f"{CALICO_MODULE}/lib/std@{CALICO_MODULE_VERSION}",
    ),
)
_EMPTY_MODULE = ("lib/httpmachinery", f"module {CALICO_MODULE}/lib/httpmachinery\n\ngo 1.24\n")
_CRD_SUBDIR = "libcalico-go/config/crd"


def recipe_hash() -> str:
    """A short hash of everything this module changes in upstream's source: the cache key."""
    recipe = json.dumps([CALICO_MODULE_VERSION, _PATCHES, _REPLACES, _EMPTY_MODULE])
    return hashlib.sha256(recipe.encode()).hexdigest()[:10]


def felix_path() -> Path:
    return cache_dir() / "bin" / f"calico-felix-{FELIX_VERSION}-{recipe_hash()}"


def ensure_felix(log: Log = _stderr_log) -> Path:
    """The cached calico-felix binary, built first if missing (~4 min of 2 cores, 4 GB)."""
    out = felix_path()
    if _is_executable(out):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(out.parent / ".felix.build.lock", log):
        if not _is_executable(out):  # another process may have built it meanwhile
            _build(out, log)
    return out


def _build(out: Path, log: Log) -> None:
    with tempfile.TemporaryDirectory(prefix="dpo-felix-build-") as tmp:
        log(f"fetching {CALICO_MODULE}@{CALICO_MODULE_VERSION} (Calico {FELIX_VERSION}) ...")
        info = _module_download(CALICO_MODULE, CALICO_MODULE_VERSION, Path(tmp))
        source = Path(tmp) / "calico"
        try:
            _prepare_source(Path(info["Dir"]), source)
            ldflags = (
                f"-s -w -X {_BUILDINFO}.Version={FELIX_VERSION}"
                f" -X {_BUILDINFO}.GitRevision={info.get('Origin', {}).get('Hash', '')}"
            )
            _build_binary(
                "calico-felix", FELIX_PACKAGE, FELIX_VERSION, ldflags, out, source,
                ["--version"], log,
            )  # fmt: skip
        finally:
            _make_writable(source)  # the module cache's copies are read-only: let rmtree work


def _prepare_source(module_dir: Path, source: Path) -> None:
    """A writable copy of the module with the patches, replaces and empty module applied."""
    shutil.copytree(module_dir, source)
    _make_writable(source)
    apply_patches(source)
    edits = [f"-replace={module}={target}" for module, target in _REPLACES]
    _run_go(["mod", "edit", *edits], source)
    empty_dir, gomod = _EMPTY_MODULE
    _mkdir(source / empty_dir).joinpath("go.mod").write_text(gomod)
    # go.sum lines for the replacement modules (the upstream go.sum has none for them).
    _run_go(["mod", "download", *(target for _, target in _REPLACES)], source)


def apply_patches(source: Path) -> None:
    """Apply :data:`_PATCHES` to a copy of the module; stop if upstream's text has moved.

    Every patch is checked before any file is written, so a failed check changes nothing.
    """
    patched: dict[Path, str] = {}
    for relative, old, new in _PATCHES:
        path = source / relative
        text = patched.get(path, path.read_text())
        if text.count(old) != 1:
            raise BuildError(f"patching {relative}: expected text found {text.count(old)} times")
        patched[path] = text.replace(old, new)
    for path, text in patched.items():
        path.write_text(text)


def _make_writable(root: Path) -> None:
    if not root.exists():
        return
    for directory, _, files in os.walk(root):
        for name in [".", *files]:
            path = Path(directory, name)
            path.chmod(path.stat().st_mode | stat.S_IWUSR)


def crd_files(log: Log = _stderr_log) -> list[Path]:
    """Every CRD of Calico v3.31.0 (``crd.projectcalico.org`` and its AdminNetworkPolicy ones).

    Copied once from the module into the cache, so later starts need no ``go``.
    """
    target = cache_dir() / "crds" / f"calico-{FELIX_VERSION}"
    if not (target / ".complete").is_file():
        log(f"copying the Calico {FELIX_VERSION} CRDs into {target} ...")
        with tempfile.TemporaryDirectory(prefix="dpo-calico-crds-") as tmp:
            info = _module_download(CALICO_MODULE, CALICO_MODULE_VERSION, Path(tmp))
        staging = Path(tempfile.mkdtemp(prefix=".calico-", dir=_mkdir(target.parent)))
        for crd in sorted((Path(info["Dir"]) / _CRD_SUBDIR).glob("*.yaml")):
            shutil.copyfile(crd, staging / crd.name)
        (staging / ".complete").write_text(f"{CALICO_MODULE}@{CALICO_MODULE_VERSION}\n")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
    return sorted(target.glob("*.yaml"))


# -- running it --------------------------------------------------------------------------------


def environment(
    kubeconfig: Path, node_name: str, health_port: int, status_dir: Path
) -> dict[str, str]:
    """Felix's configuration: Kubernetes datastore, iptables (nft) dataplane, IPv4.

    ``IPTABLESBACKEND`` is explicit because auto-detection picks legacy in a fresh namespace;
    logs go to stderr only (the file and syslog targets need paths a test must not own).
    Denied packets are dropped, Felix's default: ``IPTABLESFILTERDENYACTION=REJECT`` would
    answer blocked probes at once, but Felix v3.31.0 then also writes ``REJECT`` into its raw
    table's reverse-path check, where iptables refuses it, and Felix panics in a loop.
    """
    return {
        "FELIX_DATASTORETYPE": "kubernetes",
        "KUBECONFIG": str(kubeconfig),
        "FELIX_FELIXHOSTNAME": node_name,
        "FELIX_BPFENABLED": "false",
        "FELIX_XDPENABLED": "false",
        "FELIX_IPTABLESBACKEND": "nft",
        "FELIX_IPV6SUPPORT": "false",
        "FELIX_LOGFILEPATH": "none",
        "FELIX_LOGSEVERITYSYS": "none",
        "FELIX_LOGSEVERITYSCREEN": "info",
        "FELIX_USAGEREPORTINGENABLED": "false",
        "FELIX_HEALTHENABLED": "true",
        "FELIX_HEALTHHOST": "127.0.0.1",
        "FELIX_HEALTHPORT": str(health_port),
        "FELIX_PROMETHEUSMETRICSENABLED": "false",
        "FELIX_ENDPOINTSTATUSPATHPREFIX": str(status_dir),
    }


def _calico(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "crd.projectcalico.org/v1",
        "kind": kind,
        "metadata": {"name": name},
        "spec": spec,
    }


def datastore_objects(pool_cidr: str) -> list[dict[str, Any]]:
    """The objects calico-node would create and Felix waits for or reads.

    Without ClusterInformation ``default`` saying ``datastoreReady`` Felix programs nothing
    (while its readiness endpoint says 200). The tiers are the ones calico-node creates, with
    its orders and default actions, so policy ordering is Calico's own.
    """
    return [
        _calico(
            "ClusterInformation",
            "default",
            {"datastoreReady": True, "calicoVersion": FELIX_VERSION, "clusterType": "k8s"},
        ),
        _calico("FelixConfiguration", "default", {"logSeverityScreen": "Info"}),
        _calico(
            "IPPool",
            "dpo-pods",
            {"cidr": pool_cidr, "ipipMode": "Never", "vxlanMode": "Never", "natOutgoing": False},
        ),
        _calico("Tier", "default", {"order": 1000000, "defaultAction": "Deny"}),
        _calico("Tier", "adminnetworkpolicy", {"order": 1000, "defaultAction": "Pass"}),
        _calico("Tier", "baselineadminnetworkpolicy", {"order": 10000000, "defaultAction": "Pass"}),
    ]
