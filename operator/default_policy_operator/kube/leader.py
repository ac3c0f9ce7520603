"""Leader election on a ``coordination.k8s.io/v1`` Lease, as client-go and controller-runtime do it.

With ``dpo run --leader-elect`` every replica is a candidate; only the holder of the Lease starts
kopf and the reconciler, the others wait (ready 503 "standby", alive). The rules are client-go's:

- A candidate takes the Lease when it does not exist, when its ``holderIdentity`` is empty (the
  previous leader released it), or when it has not changed for ``leaseDurationSeconds`` *as seen
  by this candidate's own clock* (no comparison of timestamps written by another machine).
- Every write carries the ``resourceVersion`` that was read: two candidates racing for the same
  expired Lease cannot both win, the apiserver refuses the second with 409 Conflict.
- The leader renews every ``retry_period``. A write of the leader may only happen before
  ``renew_deadline`` has passed since the start of its last successful renewal; since
  ``renew_deadline < lease_duration``, a standby (which waits ``lease_duration`` after it last saw
  the Lease change) can only take over once the old leader has stopped.
- Losing the Lease is fatal: the process logs and ends with ``os._exit(1)`` at once -- no
  clean-up, no handler, no pending write gets another turn (the Deployment restarts the
  container, a new candidate). A watchdog thread enforces the deadline even if the event loop is
  blocked, and :class:`FencedKubeApi` refuses the operator's own writes past it.
- On a clean shutdown the leader, after everything that writes has stopped, releases the Lease
  (empty holder, ``leaseDurationSeconds: 1``) so that a standby takes over within a retry period.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import math
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

from default_policy_operator import metrics
from default_policy_operator.kube.client import ApiError, KubeApi, Resource
from default_policy_operator.kube.credentials import Credentials

log = logging.getLogger(__name__)

LEASES = Resource("coordination.k8s.io", "v1", "leases", True)
DEFAULT_ID = "default-policy-operator"
EXIT_LEADERSHIP_LOST = 1


def default_identity() -> str:
    """``<pod or host name>_<pid>_<random>``: unique per process, readable in ``kubectl get lease``.

    The random part makes a restarted container a new candidate (like client-go's UUID): it
    never mistakes a Lease its predecessor held for its own.
    """
    name = os.environ.get("POD_NAME") or socket.gethostname()
    return f"{name}_{os.getpid()}_{secrets.token_hex(3)}"


@dataclass(frozen=True)
class LeaderElectionConfig:
    namespace: str = "default"
    name: str = DEFAULT_ID
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    identity: str = field(default_factory=default_identity)

    def __post_init__(self) -> None:
        if not self.lease_duration > self.renew_deadline > self.retry_period > 0:
            raise ValueError(
                "leader election needs lease duration > renew deadline > retry period > 0, got "
                f"{self.lease_duration} / {self.renew_deadline} / {self.retry_period}"
            )


def _micro_time(when: float | None = None) -> str:
    """A Kubernetes ``MicroTime``."""
    moment = datetime.datetime.fromtimestamp(time.time() if when is None else when, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _abandon(reason: str) -> NoReturn:
    """Stop acting as the leader *now*: log, and end the process without any clean-up."""
    log.critical("leader election lost: %s; exiting so that no further write can happen", reason)
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    os._exit(EXIT_LEADERSHIP_LOST)


class _Watchdog(threading.Thread):
    """Ends the process when the leader's deadline passes, whatever the event loop is doing."""

    def __init__(self, on_expiry: Callable[[str], object]) -> None:
        super().__init__(name="dpo-leader-watchdog", daemon=True)
        self._on_expiry = on_expiry
        self._condition = threading.Condition()
        self._deadline: float | None = None

    def arm(self, deadline: float) -> None:
        with self._condition:
            self._deadline = deadline
            self._condition.notify()

    def disarm(self) -> None:
        with self._condition:
            self._deadline = None
            self._condition.notify()

    def run(self) -> None:
        with self._condition:
            while True:
                if self._deadline is None:
                    self._condition.wait()
                    continue
                remaining = self._deadline - time.monotonic()
                if remaining <= 0:
                    self._on_expiry("the lease was not renewed before the renew deadline")
                    return
                self._condition.wait(remaining)


class LeaderElector:
    """One candidate for one Lease: :meth:`acquire` waits for leadership, then a task renews it
    until :meth:`release` (or until it cannot, which ends the process through ``on_lost``)."""

    def __init__(
        self,
        credentials: Credentials,
        config: LeaderElectionConfig,
        *,
        on_lost: Callable[[str], object] = _abandon,
    ) -> None:
        self.config = config
        self.identity = config.identity
        # A client of its own: no retries (a renewal late is a renewal failed), a timeout within
        # the renew deadline, and a connection pool the reconciler's write bursts cannot exhaust.
        self._api = KubeApi(credentials, retries=0, timeout=config.renew_deadline, connections=2)
        self._on_lost = on_lost
        self._lease: dict[str, Any] | None = None  # the last version read or written
        self._observed: dict[str, Any] | None = None  # the last spec seen...
        self._observed_at = 0.0  # ...and when (monotonic), for expiry by our own clock
        self._deadline = 0.0  # monotonic time until which we may act as the leader
        self._watchdog = _Watchdog(on_lost)
        self._renewer: asyncio.Task[None] | None = None
        self.last_attempt = time.monotonic()  # liveness of the election loop
        metrics.LEADER.set(0)

    # -- state --------------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        return time.monotonic() < self._deadline

    def may_write(self) -> bool:
        return self.is_leader

    # -- the protocol -------------------------------------------------------------------

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Try every retry period until this candidate leads (True) or ``stop`` is set (False)."""
        log.info(
            "leader election: candidate %s for lease %s/%s",
            self.identity,
            self.config.namespace,
            self.config.name,
        )
        reported = ""
        while not stop.is_set():
            started = time.monotonic()
            self.last_attempt = started
            try:
                holder = await self._try_acquire_or_renew()
            except ApiError as exc:
                holder = ""
                if str(exc) != reported:  # once per distinct problem, not every retry period
                    log.warning("leader election: cannot read or write the lease: %s", exc)
                    reported = str(exc)
            if holder == self.identity:
                self._lead(started)
                log.info("leader election: became the leader (%s)", self.identity)
                return True
            if holder and holder != reported:
                log.info("leader election: standing by, %s holds the lease", holder)
                reported = holder
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.config.retry_period)
        return False

    def _lead(self, renewed_at: float) -> None:
        self._deadline = renewed_at + self.config.renew_deadline
        self._watchdog.arm(self._deadline)
        if not self._watchdog.is_alive():
            self._watchdog.start()
        metrics.LEADER.set(1)
        self._renewer = asyncio.create_task(self._renew_loop(), name="dpo-leader-renew")

    async def _renew_loop(self) -> None:
        """Renew every retry period; give up (fatally) once the renew deadline has passed."""
        try:
            while True:
                await asyncio.sleep(self.config.retry_period)
                started = time.monotonic()
                self.last_attempt = started
                remaining = self._deadline - started
                if remaining <= 0:
                    self._on_lost("the lease was not renewed before the renew deadline")
                    return
                try:
                    async with asyncio.timeout(remaining):
                        holder = await self._try_acquire_or_renew()
                except (ApiError, TimeoutError) as exc:
                    log.warning("leader election: renewal failed: %s", exc or "timed out")
                    continue
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        raise
                    continue  # an inner task of the HTTP client was cancelled, not us
                if not holder:
                    log.warning("leader election: renewal raced with another write; retrying")
                    continue
                if holder != self.identity:
                    self._on_lost(f"the lease is now held by {holder}")
                    return
                self._deadline = started + self.config.renew_deadline
                self._watchdog.arm(self._deadline)
        except Exception as exc:  # never let a bug leave a leader that does not renew
            self._on_lost(f"the renewal loop failed: {exc!r}")

    async def _try_acquire_or_renew(self) -> str:
        """One round of client-go's tryAcquireOrRenew; returns the holder afterwards ("" if
        unknown). Observation times are taken when a response *arrived*, so a standby's
        expiry clock never starts before the leader's renewal it is timing."""
        try:
            lease = await self._api.get(LEASES, self.config.name, self.config.namespace)
        except ApiError as exc:
            if exc.status != 404:
                raise
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.config.name, "namespace": self.config.namespace},
                "spec": self._record(None),
            }
            try:
                return self._store(await self._api.create(LEASES, body))
            except ApiError as conflict:
                if conflict.status != 409:
                    raise
                return ""  # another candidate created it first: it wins this round
        self._lease = lease
        current = lease.get("spec") or {}
        if current != self._observed:
            self._observed, self._observed_at = current, time.monotonic()
        holder = str(current.get("holderIdentity") or "")
        duration = float(current.get("leaseDurationSeconds") or self.config.lease_duration)
        if holder and holder != self.identity and time.monotonic() < self._observed_at + duration:
            return holder  # held, and renewed recently as far as our own clock tells
        try:
            return self._store(await self._api.replace(LEASES, self._renewal(lease)))
        except ApiError as exc:
            if exc.status != 409:
                raise
            return ""  # someone else wrote first (resourceVersion moved on): they win

    def _renewal(self, lease: dict[str, Any]) -> dict[str, Any]:
        """``lease`` (with its resourceVersion, for optimistic concurrency) with our record."""
        return {**lease, "spec": self._record(lease)}

    def _record(self, lease: Mapping[str, Any] | None) -> dict[str, Any]:
        """Our record: acquireTime and the transition count kept while we already hold it."""
        current = dict((lease or {}).get("spec") or {})
        now = _micro_time()
        ours = current.get("holderIdentity") == self.identity
        transitions = int(current.get("leaseTransitions") or 0)
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": math.ceil(self.config.lease_duration),
            "acquireTime": current.get("acquireTime", now) if ours else now,
            "renewTime": now,
            "leaseTransitions": transitions if ours or lease is None else transitions + 1,
        }

    def _store(self, lease: dict[str, Any]) -> str:
        spec = lease.get("spec") or {}
        self._lease, self._observed, self._observed_at = lease, spec, time.monotonic()
        return str(spec.get("holderIdentity") or "")

    # -- stepping down ------------------------------------------------------------------

    async def release(self) -> None:
        """Stop renewing and hand the Lease back; call only once nothing writes any more."""
        was_leader = self.is_leader
        self._deadline = 0.0  # from here on FencedKubeApi refuses every write
        self._watchdog.disarm()
        metrics.LEADER.set(0)
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
            self._renewer = None
        if was_leader and self._lease is not None:
            try:
                async with asyncio.timeout(self.config.renew_deadline):
                    await self._hand_back(self._lease)
            except (ApiError, TimeoutError) as exc:
                log.warning("leader election: could not release the lease: %s", exc)
        await self._api.close()

    async def _hand_back(self, lease: dict[str, Any]) -> None:
        """client-go's release: no holder, a 1 s duration, the transition count kept."""
        for _ in range(3):
            spec = lease.get("spec") or {}
            if spec.get("holderIdentity") != self.identity:
                return  # not ours (any more): nothing to hand back
            released = {**spec, "holderIdentity": "", "leaseDurationSeconds": 1}
            try:
                await self._api.replace(
                    LEASES, {**lease, "spec": {**released, "renewTime": _micro_time()}}
                )
            except ApiError as exc:
                if exc.status != 409:  # a renewal cut short may still have landed: re-read
                    raise
                lease = await self._api.get(LEASES, self.config.name, self.config.namespace)
                continue
            log.info("leader election: released the lease")
            return


class FencedKubeApi(KubeApi):
    """The operator's client, refusing any write once this replica is no longer the leader.

    A second line behind :func:`_abandon`: whatever still holds a reference to the client after
    the Lease was lost or released (a task not yet cancelled, a late callback) cannot write.
    """

    def __init__(
        self, credentials: Credentials, elector: LeaderElector, *, connections: int = 64
    ) -> None:
        super().__init__(credentials, connections=connections)
        self._elector = elector

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        if method != "GET" and not self._elector.may_write():
            raise ApiError(0, "NotLeader", f"{method} {path} refused: not the leader")
        return await super().request(
            method, path, body=body, params=params, content_type=content_type
        )
