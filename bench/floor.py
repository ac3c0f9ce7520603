"""The client-go floor: the apiserver's create limit, measured by a small Go program.

``bench/floor`` is a Go module on client-go (the version matching our kube-apiserver); it is
built once with the control plane's own build helpers (``go build -trimpath``, published
atomically, checked by its ``-version``) into ``~/.cache/default-policy-operator/bin`` under a
name keyed by a hash of its source, so an edit rebuilds it and nothing else ever does.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

from dpo_dev.cluster import Log, _build_binary, _exclusive_lock, _stderr_log, cache_dir

SOURCE = Path(__file__).resolve().parent / "floor"
SOURCE_FILES = ("go.mod", "go.sum", "main.go")


def source_hash() -> str:
    """Hash of the module's files: the cache key, and the version the binary reports."""
    digest = hashlib.sha256()
    for name in SOURCE_FILES:
        digest.update(name.encode() + b"\0" + (SOURCE / name).read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def floor_path() -> Path:
    return cache_dir() / "bin" / f"dpo-bench-floor-{source_hash()}"


def floor_built() -> Path | None:
    """The cached binary for this source, or None if it has not been built yet."""
    path = floor_path()
    return path if path.is_file() else None


def ensure_floor(log: Log = _stderr_log) -> Path:
    """Return the binary, building it first if this source has not been built yet."""
    out = floor_path()
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    # Its own lock: nothing to share with the control plane's build.
    with _exclusive_lock(out.parent / ".bench-floor.build.lock", log):
        if not out.is_file():
            version = source_hash()
            ldflags = f"-s -w -X main.version={version}"
            _build_binary("bench-floor", ".", version, ldflags, out, SOURCE, ["-version"], log)
    return out


def run_floor(
    binary: Path,
    kubeconfig: Path,
    namespace: str,
    count: int,
    workers: int,
    *,
    connections: int = 1,
    protobuf: bool = False,
    body: str = "minimal",
) -> dict[str, Any]:
    """One measurement: ``count`` creates into ``namespace``; the program's JSON result.
    ``body``: ``minimal`` (deny-all, a name only) or ``operator`` (the operator's three
    policies in turn, labelled and owned as it writes them)."""
    command = [
        str(binary), "-kubeconfig", str(kubeconfig), "-namespace", namespace,
        "-count", str(count), "-workers", str(workers), "-connections", str(connections),
        "-body", body,
    ]  # fmt: skip
    if protobuf:
        command.append("-protobuf")
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result
