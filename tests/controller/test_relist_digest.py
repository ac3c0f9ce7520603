"""A periodic re-list keeps what the reconciler already knows of every unchanged object.

At 15,000 managed objects, a re-list that built a new record (and hashed a spec) per object held
two of everything until its last page: the bench's peak memory came from there. An object whose
resourceVersion is unchanged is unchanged, so the known record is handed back; a changed one
gets a fresh record.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from default_policy_operator.controller.reconciler import NAMESPACE, Reconciler, Settings
from default_policy_operator.core.labels import KIND
from default_policy_operator.core.objects import NETWORK_POLICY
from default_policy_operator.core.render import RenderResult, RenderTask
from default_policy_operator.core.world import World
from tests.inline_render import render_now

MANAGED = {"app.kubernetes.io/managed-by": "default-policy-operator",
           "defaultpolicy.dev/profile": "p"}  # fmt: skip


def policy(version: str, port: int = 53) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": NETWORK_POLICY,
        "metadata": {"name": "dpo-allow-dns", "namespace": "team-a", "uid": "u1",
                     "resourceVersion": version, "labels": dict(MANAGED)},
        "spec": {"podSelector": {}, "egress": [{"ports": [{"port": port, "protocol": "UDP"}]}]},
    }  # fmt: skip


def namespace(version: str, team: str) -> dict[str, Any]:
    return {"metadata": {"name": "team-a", "resourceVersion": version, "labels": {"team": team}}}


def reconciler() -> Reconciler:
    return Reconciler(World(frozenset()), None, Settings())  # type: ignore[arg-type]  # no API call


def test_an_unchanged_object_relisted_is_the_record_already_known() -> None:
    rec = reconciler()
    rec.objects_listed(NETWORK_POLICY, [rec.object_digest(policy("7"))], "7")
    known = next(iter(rec.world.objects.values()))
    assert rec.object_digest(policy("7")) is known


def test_a_changed_object_relisted_gets_a_fresh_record() -> None:
    rec = reconciler()
    rec.objects_listed(NETWORK_POLICY, [rec.object_digest(policy("7"))], "7")
    known = next(iter(rec.world.objects.values()))
    fresh = rec.object_digest(policy("9", port=5353))
    assert fresh is not known
    assert (fresh.resource_version, fresh.spec_hash != known.spec_hash) == ("9", True)


def test_namespaces_relisted_keep_their_record_until_they_change() -> None:
    rec = reconciler()
    rec.namespaces_listed([rec.namespace_digest(namespace("3", "red"))], "3")
    known = rec.world.namespaces["team-a"]
    assert rec.namespace_digest(namespace("3", "red")) is known
    relabelled = rec.namespace_digest(namespace("4", "blue"))
    assert relabelled is not known
    assert relabelled.labels == {"team": "blue"}


def test_the_echo_of_a_known_version_is_not_hashed_again() -> None:
    rec = reconciler()
    rec.object_event("ADDED", policy("7"))
    known = next(iter(rec.world.objects.values()))
    rec.object_event("MODIFIED", policy("7"))
    assert next(iter(rec.world.objects.values())) is known


def test_a_late_echo_of_an_object_we_deleted_does_not_bring_it_back() -> None:
    """Seen in the bench: after a flood of creates, a take-over deleted objects whose ADDED
    echoes were still queued in the watch. Each late echo put its object back in the index,
    the planner deleted it again, and 2,203 of 7,400 namespaces paid a second delete (404)."""
    rec = reconciler()
    rec._remember(policy("7"))  # our create's response; its echo is still on the way
    key = next(iter(rec.world.objects))
    rec._deleted(key)  # our delete of it succeeded
    rec.object_event("ADDED", policy("7"))  # the create's late echo
    assert key not in rec.world.objects
    rec.object_event("DELETED", policy("8"))  # the delete's own echo ends the record
    recreated = policy("9")
    recreated["metadata"]["uid"] = "u2"
    rec.object_event("ADDED", recreated)  # someone creates it again: a new object
    assert rec.world.objects[key].uid == "u2"


def test_a_list_ends_the_record_of_a_deleted_object_even_if_its_name_was_reused() -> None:
    """Deleted and created again (a quick switch back): the old delete's echo is older than the
    new object and is dropped unseen, so only the next list can end the old uid's record."""
    rec = reconciler()
    rec._remember(policy("7"))
    key = next(iter(rec.world.objects))
    rec._deleted(key)
    again = policy("9")
    again["metadata"]["uid"] = "u2"
    rec._remember(again)
    rec.objects_listed(NETWORK_POLICY, [rec.object_digest(again)], "10")
    assert rec._gone == {}
    assert rec.world.objects[key].uid == "u2"


def test_a_list_older_than_a_delete_already_seen_does_not_bring_the_object_back() -> None:
    """Seen in the bench at 20,000: a full resync lists while the watch runs, and its snapshot,
    paged over seconds, still held objects whose deletes the watch had delivered since. Each
    came back into the index and the planner deleted it again: 4,844 deletes answered 404 in
    one hand-over. A delete seen while a list is on its way is remembered until it is merged."""
    rec = reconciler()
    with rec.listing(NETWORK_POLICY):  # the resync's list: its snapshot is taken at 8
        rec.object_event("ADDED", policy("7"))
        key = next(iter(rec.world.objects))
        rec.object_event("DELETED", policy("9"))  # deleted (by us, or anyone) after the snapshot
        rec.objects_listed(NETWORK_POLICY, [rec.object_digest(policy("7"))], "8")
        assert key not in rec.world.objects
    assert rec._deleted_at == {}  # merged: a later list is newer than that delete


def test_a_list_newer_than_a_delete_shows_the_object_created_again() -> None:
    rec = reconciler()
    with rec.listing(NETWORK_POLICY):
        rec.object_event("ADDED", policy("7"))
        rec.object_event("DELETED", policy("9"))
        again = policy("11")
        again["metadata"]["uid"] = "u2"  # created again; the list is taken after that
        rec.objects_listed(NETWORK_POLICY, [rec.object_digest(again)], "12")
    assert next(iter(rec.world.objects.values())).uid == "u2"


def test_overlapping_lists_each_keep_the_deletes_they_may_predate() -> None:
    """A resync's list and a relist after a broken watch can be on their way together: the
    first merged must not forget what the other still needs."""
    rec = reconciler()
    with rec.listing(NETWORK_POLICY):  # the older one: snapshot at 8
        rec.object_event("ADDED", policy("7"))
        key = next(iter(rec.world.objects))
        with rec.listing(NETWORK_POLICY):  # the newer one, merged first
            rec.object_event("DELETED", policy("9"))
            rec.objects_listed(NETWORK_POLICY, [], "10")
        rec.objects_listed(NETWORK_POLICY, [rec.object_digest(policy("7"))], "8")
        assert key not in rec.world.objects
    assert (rec._deleted_at, rec._listing) == ({}, {})


def test_a_failed_list_keeps_nothing() -> None:
    rec = reconciler()
    rec.object_event("ADDED", policy("7"))
    with contextlib.suppress(ConnectionError), rec.listing(NETWORK_POLICY):
        rec.object_event("DELETED", policy("9"))
        raise ConnectionError("the list broke off")
    assert (rec._deleted_at, rec._listing) == ({}, {})


def test_deletes_seen_with_no_list_on_its_way_are_not_kept() -> None:
    """A list asked for later is a consistent read, newer than every delete seen before it:
    nothing needs keeping (a hand-over of 60,000 objects would otherwise keep 60,000)."""
    rec = reconciler()
    rec.object_event("ADDED", policy("7"))
    rec.object_event("DELETED", policy("9"))
    assert rec._deleted_at == {}


def test_a_namespace_list_older_than_its_delete_does_not_bring_it_back() -> None:
    """The same for the namespace list (20,000 namespaces are paged over seconds): a namespace
    deleted meanwhile came back into the index until the next resync, and its policies were
    planned into a namespace that no longer exists."""
    rec = reconciler()
    with rec.listing(NAMESPACE):  # snapshot at 3
        rec.namespace_event("ADDED", namespace("2", "red"))
        rec.namespace_event("DELETED", namespace("4", "red"))
        rec.namespaces_listed([rec.namespace_digest(namespace("2", "red"))], "3")
        assert "team-a" not in rec.world.namespaces
    assert (rec._deleted_at, rec._listing) == ({}, {})


def test_a_namespace_list_newer_than_its_delete_shows_it_created_again() -> None:
    rec = reconciler()
    with rec.listing(NAMESPACE):
        rec.namespace_event("ADDED", namespace("2", "red"))
        rec.namespace_event("DELETED", namespace("4", "red"))
        rec.namespaces_listed([rec.namespace_digest(namespace("5", "blue"))], "6")
    assert rec.world.namespaces["team-a"].labels["team"] == "blue"


def profile_body(version: str) -> dict[str, Any]:
    return {"metadata": {"name": "base", "uid": "p1", "generation": 1,
                         "resourceVersion": version}, "spec": {}}  # fmt: skip


def test_a_profile_list_older_than_its_delete_does_not_bring_it_back() -> None:
    """A profile deleted while a resync's list was on its way came back with the list: the
    operator planned its policies again, into every namespace it had just left."""

    async def scenario() -> None:
        rec = Reconciler(World(frozenset()), None, Settings(), InlinePool())  # type: ignore[arg-type]
        with rec.listing(KIND):  # snapshot at 3
            rec.profile_event("ADDED", profile_body("2"))
            await asyncio.sleep(0)  # its trial
            rec.profile_event("DELETED", profile_body("4"))
            rec.profiles_listed([profile_body("2")], "3")
            assert "base" not in rec.world.profiles
        assert (rec._deleted_at, rec._listing) == ({}, {})

    asyncio.run(scenario())


class InlinePool:
    """Renders in this process (a profile's trial)."""

    async def render(self, tasks: list[RenderTask], urgent: bool = False) -> list[RenderResult]:
        return render_now(tasks)


def test_a_delete_a_newer_list_found_is_not_undone_by_an_older_list() -> None:
    """Two lists on their way (a resync's, snapshot 3; a relist after a broken watch, 6). The
    delete happened between them and the watch never delivered it: the newer list, merged first,
    finds the namespace gone. The older one, merged next, must not bring it back (no watch
    event would remove it again before the next resync)."""
    rec = reconciler()
    rec.namespace_event("ADDED", namespace("2", "red"))
    with rec.listing(NAMESPACE):  # the resync's: snapshot at 3
        with rec.listing(NAMESPACE):  # the relist's: snapshot at 6, merged first
            rec.namespaces_listed([], "6")
        rec.namespaces_listed([rec.namespace_digest(namespace("2", "red"))], "3")
        assert "team-a" not in rec.world.namespaces


def test_an_object_a_newer_list_found_deleted_is_not_undone_by_an_older_list() -> None:
    rec = reconciler()
    rec.object_event("ADDED", policy("7"))
    key = next(iter(rec.world.objects))
    with rec.listing(NETWORK_POLICY):  # snapshot at 8
        with rec.listing(NETWORK_POLICY):  # snapshot at 12, merged first
            rec.objects_listed(NETWORK_POLICY, [], "12")
        rec.objects_listed(NETWORK_POLICY, [rec.object_digest(policy("7"))], "8")
        assert key not in rec.world.objects


def test_a_profile_list_older_than_what_is_known_does_not_override_it() -> None:
    """A profile deleted and created again under the same name (the bench's Calico and then
    ClusterNetworkPolicy profiles): a list taken before the delete still holds the old object,
    deletionTimestamp and all. Merged over the new one, it made the new profile a deleting one
    that governs nothing."""

    async def scenario() -> None:
        rec = Reconciler(World(frozenset()), None, Settings(), InlinePool())  # type: ignore[arg-type]
        with rec.listing(KIND):  # snapshot at 3: the old profile, being deleted
            old = profile_body("3")
            old["metadata"]["deletionTimestamp"] = "2026-12-03T13:43:12Z"
            rec.profile_event("DELETED", profile_body("4"))
            new = profile_body("6")
            new["metadata"]["uid"] = "p2"
            rec.profile_event("ADDED", new)
            await asyncio.sleep(0)  # its trial
            rec.profiles_listed([old], "3")
            assert not rec.world.profiles["base"].deleting
            assert rec.world.profiles["base"].metadata["uid"] == "p2"

    asyncio.run(scenario())
