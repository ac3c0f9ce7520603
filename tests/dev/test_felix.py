"""Calico Felix for the packet tests: the build recipe against upstream, and the cache.

The recipe changes one function of upstream's source (:data:`dpo_dev.felix._PATCHES`); these
tests pin down that it still applies to the pinned module, exactly once per patch, and that a
moved upstream stops the build instead of producing a binary that panics at start.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from dpo_dev import felix
from dpo_dev.cluster import CALICO_MODULE, BuildError, _module_download

needs_go = pytest.mark.skipif(shutil.which("go") is None, reason="needs the Go toolchain")


@needs_go
def test_the_patches_apply_to_the_pinned_module(tmp_path: Path) -> None:
    """Upstream's libbpf stub panics in OpenObject; patched, it returns an error instead."""
    info = _module_download(CALICO_MODULE, felix.CALICO_MODULE_VERSION, tmp_path)
    stub = tmp_path / "src" / felix._STUB
    stub.parent.mkdir(parents=True)
    shutil.copyfile(Path(info["Dir"]) / felix._STUB, stub)
    felix.apply_patches(tmp_path / "src")
    patched = stub.read_text()
    opening = patched[patched.index("func OpenObject(") :]
    body = opening[: opening.index("\n}\n")]
    assert "panic(" not in body
    assert "return nil, errors.New(" in body
    assert '"errors"' in patched


def test_a_moved_upstream_stops_the_build_and_changes_nothing(tmp_path: Path) -> None:
    stub = tmp_path / felix._STUB
    stub.parent.mkdir(parents=True)
    # The import block still matches, OpenObject does not: neither patch may be written.
    moved = 'package libbpf\n\nimport (\n\t"runtime"\n)\n\nfunc OpenObject(f string) {}\n'
    stub.write_text(moved)
    with pytest.raises(BuildError, match="expected text found 0 times"):
        felix.apply_patches(tmp_path)
    assert stub.read_text() == moved


def test_the_cache_key_follows_the_recipe(monkeypatch: pytest.MonkeyPatch) -> None:
    """A changed patch must not reuse a binary built from the old one."""
    before = felix.felix_path()
    assert before.name == f"calico-felix-v3.31.0-{felix.recipe_hash()}"
    monkeypatch.setattr(felix, "_PATCHES", (*felix._PATCHES, ("x.go", "a", "b")))
    assert felix.felix_path() != before


@pytest.mark.e2e
def test_the_cached_felix_needs_no_go(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Once built (``make binaries``), finding Felix is a stat, and it is the pinned version."""
    built = felix.ensure_felix()
    monkeypatch.setenv("PATH", str(tmp_path))
    started = time.monotonic()
    assert felix.ensure_felix() == built
    assert time.monotonic() - started < 1
    version = subprocess.run([built, "--version"], capture_output=True, text=True, check=True)
    assert "Version:            v3.31.0" in version.stdout
