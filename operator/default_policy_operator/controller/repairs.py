"""Repair tracking: drift, fights with other controllers, failed writes and conflicts.

The reconciler plans from state; this module remembers the little history that state cannot
show: which objects drifted and when (for the repair-latency metric and the DriftRepaired
event), which ones something keeps reverting (backed off exponentially rather than fought in a
hot loop), which writes failed (retried with backoff) and which managed names are held by a
foreign object (retried with backoff, reported once per episode). Time is passed in, so every
rule is unit-tested without sleeping (``tests/controller/test_repairs.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from default_policy_operator import metrics
from default_policy_operator.core.objects import ObjectKey
from default_policy_operator.core.plan import Action, Verb

DRIFT_WINDOW = 60.0  # repairs of one object closer together than this count as a fight
FIGHT_THRESHOLD = 3  # repairs within the window before backing off
MAX_BACKOFF = 300.0
THROTTLED_RETRY = 4.0  # a write refused for load is planned again this soon, at the latest
CONFLICT_FIRST_RETRY = 1.0  # a foreign object often goes soon (a migration, a typo fixed)
CONFLICT_MAX_RETRY = 60.0


@dataclass(frozen=True)
class Drift:
    """Which kind of drift ("modified" or "deleted") and when the watch showed it."""

    kind: str
    detected: float


@dataclass
class Fight:
    """Repair history of one object, for backing off from a controller that reverts us."""

    repairs: int = 0
    last: float = 0.0
    blocked_until: float = 0.0


@dataclass
class Admission:
    """What may be written now, and which repairs were postponed (with their delay)."""

    admitted: list[tuple[Action, Drift | None]] = field(default_factory=list)
    backed_off: list[tuple[Action, float]] = field(default_factory=list)


def scope_of(key: ObjectKey) -> str:
    """The reconcile scope of an object: its namespace, or "" for cluster-scoped objects."""
    return key.namespace


class RepairTracker:
    """Drift and fight bookkeeping, keyed by object."""

    def __init__(self) -> None:
        self._fresh: dict[ObjectKey, Drift] = {}  # seen by the watch, not yet planned
        self._deferred: dict[ObjectKey, Drift] = {}  # planned, repair not yet made
        self._fights: dict[ObjectKey, Fight] = {}
        self._failures: dict[ObjectKey, int] = {}  # consecutive failed writes

    def observed(self, key: ObjectKey, kind: str, now: float) -> None:
        """The watch showed a change we did not make to a managed object."""
        self._fresh.setdefault(key, Drift(kind, now))

    def take_fresh(self, key: ObjectKey) -> Drift | None:
        """Audit mode: drift that is reported, never repaired."""
        return self._fresh.pop(key, None)

    def admit(self, actions: Iterable[Action], scope: str, now: float) -> Admission:
        """Let through the writes of one scope, holding back repairs of contested objects."""
        result = Admission()
        wanted = set()
        for action in actions:
            wanted.add(action.key)
            if action.verb is Verb.DELETE:
                result.admitted.append((action, None))
                continue
            self._count_fresh(action)
            drift = self._deferred.get(action.key)
            if drift is None:
                fight = self._fights.get(action.key)
                if fight is None or fight.blocked_until <= now:
                    result.admitted.append((action, None))
                continue
            delay = self._repair_delay(action, now)
            if delay is None:
                result.admitted.append((action, self._deferred.pop(action.key)))
            elif delay > 0:
                result.backed_off.append((action, delay))
        self._forget_unwanted(scope, wanted)
        return result

    def _count_fresh(self, action: Action) -> None:
        fresh = self._fresh.pop(action.key, None)
        if fresh is not None:
            metrics.DRIFT_DETECTED.labels(profile=action.profile, kind=fresh.kind).inc()
            self._deferred.setdefault(action.key, fresh)

    def _repair_delay(self, action: Action, now: float) -> float | None:
        """None: repair now. 0: a repair is already scheduled. > 0: back off this long."""
        fight = self._fights.setdefault(action.key, Fight())
        if fight.blocked_until > now:
            return 0.0
        if fight.blocked_until:
            fight.blocked_until = 0.0  # the backoff just ended: this repair may go
        else:
            fight.repairs = fight.repairs + 1 if now - fight.last < DRIFT_WINDOW else 1
            if fight.repairs > FIGHT_THRESHOLD:
                delay = min(MAX_BACKOFF, 2.0 ** (fight.repairs - FIGHT_THRESHOLD))
                fight.blocked_until = now + delay
                metrics.BACKOFFS.labels(profile=action.profile).inc()
                return delay
        fight.last = now
        return None

    def _forget_unwanted(self, scope: str, wanted: set[ObjectKey]) -> None:
        """Drift that needs no write after all (reverted by someone, or irrelevant) is dropped."""
        for pending in (self._fresh, self._deferred):
            for key in [k for k in pending if scope_of(k) == scope and k not in wanted]:
                del pending[key]

    def contested(
        self, now: float, profile_of: Callable[[ObjectKey], str], profile: str
    ) -> list[str]:
        """Objects of ``profile`` whose repairs were backed off within the last drift window."""
        return [
            str(key)
            for key, fight in self._fights.items()
            if fight.repairs > FIGHT_THRESHOLD
            and now - max(fight.last, fight.blocked_until) < DRIFT_WINDOW
            and profile_of(key) == profile
        ]

    def failed(self, key: ObjectKey, *, throttled: bool = False) -> float:
        """A write failed: how long to wait before planning its scope again.

        Throttling (429) says the server is busy, not that this object is wrong: the client
        already sends fewer requests, so the write goes back in line soon rather than waiting
        out a backoff that grows with every rejection it had no part in.
        """
        failures = self._failures[key] = self._failures.get(key, 0) + 1
        return min(THROTTLED_RETRY if throttled else MAX_BACKOFF, 2.0**failures)

    def succeeded(self, key: ObjectKey) -> None:
        self._failures.pop(key, None)

    def expire(self, now: float) -> None:
        """Forget fights that ended more than a drift window ago (called on resync)."""
        self._fights = {
            k: f
            for k, f in self._fights.items()
            if max(f.last, f.blocked_until) > now - DRIFT_WINDOW
        }

    def forget_scope(self, scope: str) -> None:
        """A namespace is gone: nothing about its objects is worth keeping."""
        for table in (self._fresh, self._deferred, self._fights, self._failures):
            for key in [k for k in table if scope_of(k) == scope]:
                del table[key]

    def size(self) -> int:
        """Entries held, for tests that check state is dropped."""
        return len(self._fresh) + len(self._deferred) + len(self._fights) + len(self._failures)


@dataclass
class Episode:
    """One stretch of time during which a foreign object holds a managed name."""

    attempts: int = 1
    retry_at: float = 0.0


class ConflictTracker:
    """Managed names held by objects the operator did not create.

    A conflict blocks the create for a short, growing delay (1 s, doubling, capped at a minute),
    then the create is tried again: the operator does not watch foreign objects, so retrying is
    how it notices one is gone. The Conflict event is posted once per episode, not per retry.
    """

    def __init__(self) -> None:
        self._episodes: dict[ObjectKey, Episode] = {}

    def detected(self, key: ObjectKey, now: float) -> tuple[bool, float]:
        """A create hit a foreign object: (is this a new episode?, delay before the next try)."""
        episode = self._episodes.get(key)
        new = episode is None
        if episode is None:
            episode = self._episodes[key] = Episode()
        else:
            episode.attempts += 1
        delay = min(CONFLICT_MAX_RETRY, CONFLICT_FIRST_RETRY * 2.0 ** (episode.attempts - 1))
        episode.retry_at = now + delay
        return new, delay

    def blocked(self, now: float) -> set[ObjectKey]:
        """Keys whose create must wait: their retry is not due yet."""
        return {k for k, e in self._episodes.items() if e.retry_at > now}

    def held(self) -> set[ObjectKey]:
        """Every key in an open episode (reported in status, whether or not a retry is due)."""
        return set(self._episodes)

    def resolved(self, key: ObjectKey) -> bool:
        """The name is ours again (created) or no longer wanted: the episode ends."""
        return self._episodes.pop(key, None) is not None

    def forget_scope(self, scope: str) -> None:
        for key in [k for k in self._episodes if scope_of(k) == scope]:
            del self._episodes[key]
