"""Plan = diff(desired, actual): the only place that decides to write.

HNC's split: this module decides create / update / delete / nothing from in-memory state; the
reconciler executes. Because the decision is a pure function, "a no-op resync makes zero writes"
and "applying a plan then planning again yields nothing" are properties we test exhaustively.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from default_policy_operator.core.labels import PROFILE_LABEL
from default_policy_operator.core.normalize import ObjectState, state_of
from default_policy_operator.core.objects import ObjectKey, RenderedObject


class Verb(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"


@dataclass(frozen=True)
class Desired:
    """A rendered object plus the hash it is compared by."""

    key: ObjectKey
    policy: str
    profile: str
    body: dict[str, Any]
    spec_hash: str
    owner_uid: str

    @classmethod
    def of(cls, obj: RenderedObject) -> Desired:
        meta = obj.body["metadata"]
        owners = meta.get("ownerReferences") or [{}]
        return cls(
            key=obj.key,
            policy=obj.policy,
            profile=meta["labels"][PROFILE_LABEL],
            body=obj.body,
            spec_hash=obj.spec_hash,
            owner_uid=owners[0].get("uid", ""),
        )

    @property
    def labels(self) -> Mapping[str, str]:
        labels: Mapping[str, str] = self.body["metadata"]["labels"]
        return labels


@dataclass(frozen=True)
class Action:
    verb: Verb
    key: ObjectKey
    body: dict[str, Any] | None = None  # create / update
    resource_version: str = ""  # update / delete precondition
    profile: str = ""  # on whose behalf (for metrics and events)


def in_sync(desired: Desired, actual: ObjectState) -> bool:
    """Equal after normalisation: same spec, our labels present, owned by the same profile."""
    return (
        desired.spec_hash == actual.spec_hash
        and all(actual.labels.get(k) == v for k, v in desired.labels.items())
        and (not desired.owner_uid or desired.owner_uid in actual.owner_uids)
    )


def plan(
    desired: Mapping[ObjectKey, Desired],
    actual: Mapping[ObjectKey, ObjectState],
    *,
    may_delete: Callable[[ObjectState], bool],
    blocked: Collection[ObjectKey] = (),
) -> list[Action]:
    """Actions that turn ``actual`` into ``desired`` for one scope (a namespace, or Calico).

    ``actual`` holds only objects carrying our managed-by label; ``blocked`` names keys held by
    an object we did not create (a conflict): never written. ``may_delete`` tells whether an
    unwanted managed object may go (not when its profile is in Audit mode, for instance).
    """
    actions = []
    for key, want in desired.items():
        have = actual.get(key)
        if have is None:
            if key not in blocked:
                actions.append(Action(Verb.CREATE, key, want.body, profile=want.profile))
        elif not in_sync(want, have):
            actions.append(
                Action(Verb.UPDATE, key, want.body, have.resource_version, profile=want.profile)
            )
    for key, have in actual.items():
        if key not in desired and may_delete(have):
            actions.append(
                Action(
                    Verb.DELETE, key, resource_version=have.resource_version, profile=have.profile
                )
            )
    return actions


def apply_to_state(
    actions: list[Action], actual: Mapping[ObjectKey, ObjectState]
) -> dict[ObjectKey, ObjectState]:
    """What ``actual`` becomes once ``actions`` succeed (used by tests and by ``dpo diff``)."""
    result = dict(actual)
    for action in actions:
        if action.verb is Verb.DELETE:
            result.pop(action.key, None)
        else:
            assert action.body is not None
            result[action.key] = state_of(action.body)
    return result
