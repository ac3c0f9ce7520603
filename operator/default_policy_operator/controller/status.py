"""Status publishing: each profile's status and gauges, written only when they change.

The content comes from pure code (``core.conditions`` and ``World.counts``); this module adds the
bookkeeping that makes "an unchanged cluster writes nothing" true: it remembers what it last
wrote (or read, after a restart), keeps ``lastSyncTime`` unless something else moved, and
removes a deleted profile's series so that dashboards do not show ghosts.
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from default_policy_operator import metrics
from default_policy_operator.core.conditions import Observations, checks, condition
from default_policy_operator.core.world import ProfileCounts, World
from default_policy_operator.kube.client import PROFILES, ApiError, KubeApi

STANDINGS = ("governed", "shadowed", "excluded")
COVERAGE_STATES = ("governed", "excluded", "exempt", "protected", "terminating", "uncovered")


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Progress:
    """What the reconcile loop knows about one profile beyond the world's indexes."""

    errors: Mapping[str, str]  # what failed (a policy, an object) -> message
    contested: list[str]
    pending: int  # writes queued or in flight
    rolling_out: bool = False  # scopes not yet planned since the profile last changed


class StatusPublisher:
    def __init__(self, world: World, api: KubeApi, progress: Callable[[str], Progress]) -> None:
        self.world = world
        self.api = api
        self.progress = progress
        self._published: dict[str, dict[str, Any]] = {}  # profile -> last status written
        self._initialised: set[str] = set()  # profiles whose counter series exist

    def status_for(
        self, name: str, previous: dict[str, Any], counts: ProfileCounts
    ) -> dict[str, Any]:
        """The status ``name`` should have now; ``lastSyncTime`` moves only with the rest."""
        entry = self.world.profiles[name]
        findings = self.world.audit_findings.get(name, {})
        progress = self.progress(name)
        obs = Observations(
            spec_error=entry.error,
            errors=progress.errors,
            conflicts=counts.conflict_keys,
            contested=progress.contested,
            pending=progress.pending,
            rolling_out=progress.rolling_out,
            audit_findings=[f"{verb} {key}" for key, verb in findings.items()],
            audit=entry.profile is not None and not entry.profile.writes,
            selects_all=entry.profile is not None and entry.profile.namespace_selector.empty,
        )
        now = now_rfc3339()
        previous_conditions = previous.get("conditions") or []
        status: dict[str, Any] = {
            "observedGeneration": entry.generation,
            "governedNamespaces": counts.governed,
            "shadowedNamespaces": counts.shadowed,
            "excludedNamespaces": counts.excluded,
            "managedObjects": counts.managed,
            "driftedObjects": counts.drifted,
            "conflicts": len(counts.conflict_keys),
            "conditions": [
                condition(c, entry.generation, previous_conditions, now) for c in checks(obs)
            ],
        }
        comparable = {k: v for k, v in previous.items() if k != "lastSyncTime"}
        status["lastSyncTime"] = previous.get("lastSyncTime", now) if comparable == status else now
        self._set_gauges(name, status, counts)
        return status

    def _set_gauges(self, name: str, status: dict[str, Any], counts: ProfileCounts) -> None:
        ready = status["conditions"][0]["status"] == "True"
        metrics.PROFILE_READY.labels(profile=name).set(1 if ready else 0)
        metrics.MANAGED_OBJECTS.labels(profile=name).set(counts.managed)
        metrics.DRIFTED_OBJECTS.labels(profile=name).set(counts.drifted)
        metrics.CONFLICTS.labels(profile=name).set(len(counts.conflict_keys))
        self._initialise_series(name)
        for standing in STANDINGS:
            metrics.PROFILE_NAMESPACES.labels(profile=name, standing=standing).set(
                getattr(counts, standing)
            )

    async def publish(self) -> None:
        """Write each profile's status when it differs from what was last written."""
        coverage = self.world.coverage()
        for state in COVERAGE_STATES:
            metrics.NAMESPACES.labels(state=state).set(coverage.get(state, 0))
        counts = self.world.counts()
        for name, entry in list(self.world.profiles.items()):
            if name not in self.world.profiles:
                continue  # deleted while an earlier status write was awaited
            previous = self._published.get(name, entry.status)
            status = self.status_for(name, previous, counts[name])
            if status == previous:
                continue
            try:
                await self.api.patch(PROFILES, name, {"status": status}, subresource="status")
            except ApiError as exc:
                if exc.status != 404:
                    raise
                continue
            self._published[name] = status

    def forget(self, name: str) -> None:
        """A profile is gone: drop what was written for it and its metric series."""
        self._published.pop(name, None)
        self._initialised.discard(name)
        for gauge in (
            metrics.PROFILE_READY,
            metrics.MANAGED_OBJECTS,
            metrics.DRIFTED_OBJECTS,
            metrics.CONFLICTS,
        ):
            with contextlib.suppress(KeyError):
                gauge.remove(name)
        for standing in STANDINGS:
            with contextlib.suppress(KeyError):
                metrics.PROFILE_NAMESPACES.remove(name, standing)

    def _initialise_series(self, name: str) -> None:
        """Start a profile's counters at 0, so that rate() and increase() see the first event."""
        if name in self._initialised:
            return
        self._initialised.add(name)
        for kind in ("modified", "deleted", "foreign"):
            metrics.DRIFT_DETECTED.labels(profile=name, kind=kind)
        for kind in ("modified", "deleted"):
            metrics.DRIFT_REPAIRED.labels(profile=name, kind=kind)
        metrics.BACKOFFS.labels(profile=name)
