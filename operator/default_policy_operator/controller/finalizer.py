"""The profile finalizer's clean-up, run by the reconciler itself.

kopf's ``on.delete`` handler used to do it all, but kopf stops serving a resource whose CRD is
being deleted (its discovery no longer lists patch), so deleting the CRD while the operator ran
left every profile -- and the CRD -- terminating for ever. The reconciler sees a profile's
``deletionTimestamp`` through its own informer, so it cleans up (Delete: the planner removes the
objects; Orphan: they are released) and then removes the finalizer with a JSON patch guarded by
a ``test`` of the entry it removes. kopf's handler waits for the same clean-up, so the work is
done once; whichever removes the finalizer first wins, and the other finds it gone.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from default_policy_operator.core.labels import FINALIZER
from default_policy_operator.core.model import DeletionPolicy
from default_policy_operator.kube.client import PROFILES, ApiError

if TYPE_CHECKING:
    from default_policy_operator.controller.reconciler import Reconciler

log = logging.getLogger(__name__)

RELEASE_RETRY = 1.0  # seconds between checks that the profile's objects are gone


class Finalizer:
    """One clean-up task per deleted profile, shared by the reconciler and kopf's handler.

    A deleted profile is known by its uid, not its name: kopf's watch runs apart from ours and
    may deliver a deletion after the profile is gone and a new one of the same name exists.
    """

    def __init__(self, reconciler: Reconciler) -> None:
        self.reconciler = reconciler
        self._tasks: dict[str, asyncio.Task[None]] = {}  # by uid

    def start(self, name: str, uid: str) -> asyncio.Task[None]:
        """Begin cleaning up profile ``name`` with ``uid`` (once; a later call returns the
        same task)."""
        task = self._tasks.get(uid)
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            task = self._tasks[uid] = asyncio.ensure_future(self._run(name, uid))
        return task

    async def wait(self, name: str, uid: str) -> None:
        """kopf's handler: the clean-up of that profile, whoever started it."""
        await asyncio.shield(self.start(name, uid))

    def forget(self, uid: str) -> None:
        """The profile is gone: nothing more to clean up."""
        task = self._tasks.pop(uid, None)
        if task is not None and not task.done():
            task.cancel()

    async def _run(self, name: str, uid: str) -> None:
        reconciler = self.reconciler
        await reconciler.synced.wait()
        if not self._ours(name, uid):
            return  # that profile is gone, and the name is a new profile's: not ours to touch
        entry = reconciler.world.profiles.get(name)
        reconciler.world.mark_deleting(name)  # kopf may see it before our informer does
        reconciler.profile_changed()
        await reconciler.idle()
        if not self._ours(name, uid):
            return  # a new profile of that name came while we waited: its objects are its own
        if entry is not None and entry.deletion_policy is DeletionPolicy.ORPHAN:
            await reconciler.orphan(name)
        else:
            while reconciler.objects_of(name) and self._ours(name, uid):
                await asyncio.sleep(RELEASE_RETRY)
                await reconciler.idle()
        await self._release(name, uid)

    def _ours(self, name: str, uid: str) -> bool:
        """Whether ``name`` is still the profile with ``uid`` (or no profile the informer has
        seen yet: kopf may see a deletion first)."""
        entry = self.reconciler.world.profiles.get(name)
        return entry is None or entry.metadata.get("uid", "") == uid

    async def _release(self, name: str, uid: str) -> None:
        """Remove our finalizer from the profile as the informer last saw it; a ``test`` op
        makes a stale view fail (422) instead of removing someone else's finalizer."""
        while (entry := self.reconciler.world.profiles.get(name)) is not None:
            if not self._ours(name, uid):
                return  # gone, and the name taken again since
            finalizers: list[Any] = list(entry.metadata.get("finalizers") or [])
            if FINALIZER not in finalizers:
                return
            index = finalizers.index(FINALIZER)
            path = f"/metadata/finalizers/{index}"
            patch = [
                {"op": "test", "path": path, "value": FINALIZER},
                {"op": "remove", "path": path},
            ]
            try:
                await self.reconciler.api.patch(
                    PROFILES, name, patch, patch_type="application/json-patch+json"
                )
                return
            except ApiError as exc:
                if exc.status == 404:
                    return
                log.debug("releasing the finalizer of %s: %s; trying again", name, exc)
                await asyncio.sleep(RELEASE_RETRY)
