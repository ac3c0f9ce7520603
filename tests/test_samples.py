"""Every sample profile in manifests/samples is valid and renders: copied, it works."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from default_policy_operator.core.governance import Namespace
from tests.inline_render import InlineWorld, render_namespace

SAMPLES = sorted((Path(__file__).resolve().parents[1] / "manifests" / "samples").glob("*.yaml"))
PROFILES = [p for p in SAMPLES if p.name != "kustomization.yaml"]


def test_the_kustomization_lists_every_sample() -> None:
    listed = yaml.safe_load((SAMPLES[0].parent / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(p.name for p in PROFILES)


@pytest.mark.parametrize("path", PROFILES, ids=[p.stem for p in PROFILES])
def test_a_sample_profile_is_valid_and_renders(path: Path) -> None:
    body = yaml.safe_load(path.read_text())
    world = InlineWorld(frozenset())
    entry = world.update_profile(body)
    assert entry.error is None, entry.error
    assert entry.profile is not None
    if entry.profile.flavor.namespaced:
        namespace = Namespace("team-a", {"kubernetes.io/metadata.name": "team-a"}, {})
        objects = render_namespace(entry.profile, namespace)
        assert {o.policy for o in objects} == set(entry.profile.policy_names())
        assert all(o.key.namespace == namespace.name for o in objects)
