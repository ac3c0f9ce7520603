"""The layers of the package, enforced: each subpackage imports only the layers below it.

``core`` decides without I/O (no kopf, no HTTP client, no asyncio, no subprocess); ``kube`` is
the only layer that talks to the API; ``rendering`` runs templates in worker processes;
``controller`` runs the operator; ``cli`` sits on top.
Development tooling (``dpo_dev``) is never imported by the runtime package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "operator" / "default_policy_operator"
ROOT = "default_policy_operator"

#: layer -> the package-internal modules it may import (besides itself)
ALLOWED = {
    "core": set(),
    "kube": {"core", "metrics"},
    "rendering": {"core"},
    "controller": {"core", "kube", "rendering", "metrics"},
    "cli": {"core", "kube", "controller", "rendering", "metrics"},
    "metrics": set(),
}
#: third-party or stdlib modules that mean I/O, concurrency or a framework: never in core
FORBIDDEN_IN_CORE = {
    "kopf", "aiohttp", "asyncio", "kubernetes_asyncio", "kubernetes", "socket", "subprocess",
    "http", "urllib", "requests", "threading", "multiprocessing", "concurrent", "signal",
    "prometheus_client",
}  # fmt: skip


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import; use absolute ones"
            assert node.module is not None
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def layer_of(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_imports_only_lower_layers(path: Path) -> None:
    layer = layer_of(path)
    allowed = ALLOWED[layer] | {layer}
    for name in imports_of(path):
        parts = name.split(".")
        if parts[0] == "dpo_dev":
            pytest.fail(f"{path.name} imports development tooling: {name}")
        if parts[0] != ROOT or len(parts) < 2 or parts[1] == "__version__":
            continue
        assert parts[1] in allowed, f"{layer} module {path.name} imports {name}"


@pytest.mark.parametrize(
    "path", [p for p in MODULES if layer_of(p) == "core"], ids=lambda p: p.name
)
def test_core_does_no_io(path: Path) -> None:
    for name in imports_of(path):
        assert name.split(".")[0] not in FORBIDDEN_IN_CORE, f"core/{path.name} imports {name}"


def test_every_module_belongs_to_a_layer() -> None:
    assert {layer_of(p) for p in MODULES} <= set(ALLOWED)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_private_names_of_other_libraries(path: Path) -> None:
    """Private Jinja or CPython names (``jinja2.utils._PassArg``, ``_signal``) change without
    notice between releases; the sandbox must rest on public API only."""
    for name in imports_of(path):
        parts = name.split(".")
        if parts[0] in (ROOT, "__future__"):
            continue
        assert not any(part.startswith("_") for part in parts), f"{path.name} imports {name}"
    assert "import_module(" not in path.read_text(), f"{path.name} imports by name"
