"""Which objects are the operator's: by its label, or by an ownerReference to a profile."""

from __future__ import annotations

from typing import Any

import pytest

from default_policy_operator.core.model import Profile
from default_policy_operator.core.objects import is_managed, managed_labels, owner_reference

OURS = owner_reference(Profile(name="baseline", uid="u-1"))


def body(labels: dict[str, str] | None = None, owners: list[dict[str, Any]] | None = None) -> Any:
    meta: dict[str, Any] = {"name": "dpo-deny-all", "namespace": "team-a"}
    if labels is not None:
        meta["labels"] = labels
    if owners is not None:
        meta["ownerReferences"] = owners
    return {"kind": "NetworkPolicy", "metadata": meta}


def test_our_label_makes_it_ours() -> None:
    assert is_managed(body(managed_labels("baseline", "deny-all")))


def test_an_owner_reference_to_a_profile_makes_it_ours_without_the_label() -> None:
    """A namespace editor who strips the label does not take the object out of management."""
    assert is_managed(body({"team": "a"}, [OURS]))
    assert is_managed(body(None, [{"apiVersion": "v1", "kind": "ConfigMap", "name": "x"}, OURS]))


@pytest.mark.parametrize(
    "owners",
    [
        None,
        [],
        [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "baseline", "uid": "u-1"}],
        [{**OURS, "kind": "DefaultPolicyProfileX"}],
        [{**OURS, "apiVersion": "example.com/v1alpha1"}],
        [{**OURS, "apiVersion": "defaultpolicy.dev.example.com/v1alpha1"}],
    ],
)
def test_anything_else_is_foreign(owners: list[dict[str, Any]] | None) -> None:
    assert not is_managed(body({"app.kubernetes.io/managed-by": "someone-else"}, owners))
    assert not is_managed(body(None, owners))
    assert not is_managed({"kind": "NetworkPolicy"})
