"""Plan = diff(desired, actual): the only place that decides to write.

HNC's split: this module decides create / update / delete / nothing from in-memory state; the
reconciler executes. Because the decision is a pure function, "a no-op resync makes zero writes"
and "applying a plan then planning again yields nothing" are properties we test exhaustively.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from default_policy_operator.core.labels import PROFILE_LABEL
from default_policy_operator.core.normalize import ObjectState
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


def merge_desired(
    wanted: Iterable[Desired],
) -> tuple[dict[ObjectKey, Desired], dict[ObjectKey, tuple[str, ...]]]:
    """Desired objects by key, and every key more than one profile wants (with those profiles).

    Two profiles wanting one object is a conflict, not a race to the last writer: the key is
    left out of the result for both, so neither profile writes it (or deletes it), and both
    can report it. Names are designed never to clash (``calico_policy_name``); this is the
    guard that makes a future clash visible instead of silent.
    """
    by_key: dict[ObjectKey, list[Desired]] = {}
    for desired in wanted:
        by_key.setdefault(desired.key, []).append(desired)
    merged = {key: found[0] for key, found in by_key.items() if len(found) == 1}
    clashes = {
        key: tuple(sorted({d.profile for d in found}))
        for key, found in by_key.items()
        if len(found) > 1
    }
    return merged, clashes


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


def writes_first(actions: list[Action]) -> tuple[list[Action], bool]:
    """Within one scope, the new cover goes in before the old one comes out.

    When a plan both writes and deletes (a handover to a profile with other policies, say),
    only the writes are returned; the deletes come from the next plan, made once the writes have
    landed. The flag says deletes were withheld, so that the caller plans the scope again.
    """
    writes = [a for a in actions if a.verb is not Verb.DELETE]
    if writes and len(writes) < len(actions):
        return writes, True
    return actions, False
