"""The source layout: ``operator/`` (the source root) must never shadow the stdlib ``operator``.

The source root is called ``operator`` and is on ``sys.path`` (editable install, ``mypy_path``,
``cwd`` in a checkout). That is only harmless while it stays a plain directory: as a namespace
package portion it loses to the standard library's ``operator`` module, but an ``__init__.py``
in it would turn it into a regular package that wins and breaks half the standard library.
"""

from __future__ import annotations

import importlib.machinery
import importlib.resources
import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import jinja2
import pytest

import default_policy_operator
from default_policy_operator.core import render
from default_policy_operator.core.model import BASELINE_POLICY, BUILTIN_POLICIES

REPO = Path(__file__).resolve().parent.parent
SOURCE_ROOT = REPO / "operator"
STDLIB = Path(sysconfig.get_paths()["stdlib"]).resolve()

#: Calico cannot express "the pod's own namespace", so it has no allow-same-namespace template.
CALICO_POLICIES = tuple(p for p in BUILTIN_POLICIES if p != "allow-same-namespace")


def test_source_root_is_not_a_package() -> None:
    assert SOURCE_ROOT.is_dir()
    assert (SOURCE_ROOT / "default_policy_operator" / "__init__.py").is_file()
    assert not (SOURCE_ROOT / "__init__.py").exists()


def test_package_is_imported_from_the_source_root() -> None:
    assert Path(default_policy_operator.__file__).resolve().parent == (
        SOURCE_ROOT / "default_policy_operator"
    )


def test_path_finder_prefers_stdlib_operator_over_the_source_root() -> None:
    spec = importlib.machinery.PathFinder.find_spec("operator", [str(REPO), *sys.path])
    assert spec is not None
    assert spec.origin is not None
    assert Path(spec.origin).resolve().parent == STDLIB


def test_import_operator_in_a_fresh_interpreter_at_the_repo_root() -> None:
    """cwd = repo root ('' first on sys.path) and the source root on PYTHONPATH as well."""
    code = (
        "import json, operator, sys;"
        "print(json.dumps({'file': operator.__file__,"
        " 'itemgetter': callable(getattr(operator, 'itemgetter', None)),"
        " 'add': operator.add(2, 3), 'path': sys.path}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={"PYTHONPATH": str(SOURCE_ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    info = json.loads(result.stdout)
    assert str(SOURCE_ROOT) in info["path"]  # the hazard really is present
    assert Path(info["file"]).resolve().parent == STDLIB
    assert info["itemgetter"] is True
    assert info["add"] == 5


def test_operator_in_this_process_is_the_stdlib() -> None:
    import operator

    assert Path(operator.__file__).resolve().parent == STDLIB
    assert operator.itemgetter(1)(["a", "b"]) == "b"


@pytest.mark.parametrize(
    ("folder", "policy"),
    [("networkpolicy", p) for p in (*BUILTIN_POLICIES, BASELINE_POLICY)]
    + [("calico", p) for p in CALICO_POLICIES],
)
def test_builtin_templates_exist_and_compile(folder: str, policy: str) -> None:
    path = render.TEMPLATE_DIR / folder / f"{policy}.yaml.j2"
    assert path.is_file(), path
    assert path.resolve().is_relative_to(REPO / "templates")
    jinja2.Environment().parse(path.read_text())


def test_templates_are_reachable_as_package_resources() -> None:
    root = importlib.resources.files("default_policy_operator") / "templates"
    for policy in BUILTIN_POLICIES:
        assert (root / "networkpolicy" / f"{policy}.yaml.j2").is_file()
    for policy in CALICO_POLICIES:
        assert (root / "calico" / f"{policy}.yaml.j2").is_file()


def test_template_dir_is_inside_the_package() -> None:
    package_dir = Path(default_policy_operator.__file__).resolve().parent
    assert package_dir / "templates" == render.TEMPLATE_DIR
    assert render.TEMPLATE_DIR.is_dir()
