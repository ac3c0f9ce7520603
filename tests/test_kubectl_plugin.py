"""The ``kubectl dpo`` plugin's packaging: the entry point and the krew manifest (offline).

``plugins/dpo.yaml`` is a krew-release-bot template; it is rendered here the way the bot does
on a release (tag, then each archive's URL and sha256) and checked against what krew requires.
Discovery by the real kubectl is tested in tests/e2e/test_kubectl_plugin_e2e.py.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from pathlib import Path
from typing import Any

import yaml

from default_policy_operator import __version__

REPO = Path(__file__).resolve().parent.parent
MANIFEST = REPO / "plugins" / "dpo.yaml"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def rendered(tag: str) -> dict[str, Any]:
    text = MANIFEST.read_text().replace("{{ .TagName }}", tag)

    def uri_and_sha(match: re.Match[str]) -> str:
        indent, uri = match.group(1), match.group(2)
        digest = hashlib.sha256(uri.encode()).hexdigest()  # stands in for the archive's
        return f"{indent}uri: {uri}\n{indent}sha256: {digest}"

    text = re.sub(r'^( *)\{\{addURIAndSha "([^"]+)" \.TagName \}\}$', uri_and_sha, text, flags=re.M)
    assert "{{" not in text, "a template directive the release bot would not fill in"
    data: dict[str, Any] = yaml.safe_load(text)
    return data


def test_entry_point_is_the_same_program_as_dpo() -> None:
    scripts = PYPROJECT["project"]["scripts"]
    assert scripts["kubectl-dpo"] == scripts["dpo"]


def test_krew_manifest_renders_to_a_valid_plugin() -> None:
    tag = f"v{__version__}"
    plugin = rendered(tag)
    assert plugin["apiVersion"] == "krew.googlecontainertools.github.com/v1alpha2"
    assert plugin["kind"] == "Plugin"
    assert plugin["metadata"]["name"] == MANIFEST.stem  # krew: file name == plugin name
    spec = plugin["spec"]
    assert spec["version"] == tag
    assert re.fullmatch(r"v\d+\.\d+\.\d+", spec["version"])
    assert 0 < len(spec["shortDescription"]) <= 70
    platforms = {
        (p["selector"]["matchLabels"]["os"], p["selector"]["matchLabels"]["arch"]): p
        for p in spec["platforms"]
    }
    assert set(platforms) == {(o, a) for o in ("linux", "darwin") for a in ("amd64", "arm64")}
    for (os_, arch), platform in platforms.items():
        assert platform["bin"] == f"kubectl-{MANIFEST.stem}"
        assert platform["bin"] in PYPROJECT["project"]["scripts"]
        assert platform["uri"].startswith("https://")
        assert platform["uri"].endswith(f"/{tag}/kubectl-dpo_{tag}_{os_}_{arch}.tar.gz")
        assert re.fullmatch(r"[0-9a-f]{64}", platform["sha256"])
