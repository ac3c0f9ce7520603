"""Where the bench is: which size, which phase (k of n), for how long, and how far inside it.

A full ``make bench`` runs for tens of minutes. Each phase announces itself and reports its
end; the long ones count as they go (``converge: 1200/3000 objects present``) through
:class:`dpo_dev.progress.Progress`, which writes a line every 20 s to a log, or keeps one live
line on a terminal. Everything goes to stderr: the table and the results files are unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TextIO

from dpo_dev.progress import Clock, Progress, duration, numbered, say

#: Every phase of one size, in the order run_size runs them.
PHASES = (
    "W_py", "W client-go", "namespaces", "operator start", "compact", "converge",
    "no-op resync", "latency", "drift", "drift burst", "CalicoGlobalNetworkPolicy",
    "ClusterNetworkPolicy", "templated", "rollout", "restart",
)  # fmt: skip
#: With ``--peer kyverno``: Kyverno's two policy APIs, measured after "namespaces".
PEER_PHASES = ("Kyverno ClusterPolicy", "Kyverno GeneratingPolicy")


def phases_with_peer(peer: bool) -> tuple[str, ...]:
    """The phases of one size: :data:`PHASES`, with the peer's after "namespaces" if asked."""
    if not peer:
        return PHASES
    at = PHASES.index("namespaces") + 1
    return (*PHASES[:at], *PEER_PHASES, *PHASES[at:])


class Phases:
    """The bench's position: the size being measured and the phase running in it."""

    def __init__(
        self,
        sizes: Sequence[int],
        *,
        names: Sequence[str] = PHASES,
        stream: TextIO | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.sizes = list(sizes)
        self.names = list(names)
        self.n = self.sizes[0]
        self.current: Progress | None = None
        self._stream = stream
        self._clock = clock
        self._started = clock()

    def begin(self, name: str, *, unit: str = "", total: int | None = None) -> Progress:
        """End the running phase, announce ``name`` and return its progress to count on."""
        self.end()
        size = numbered(f"N={self.n}", self.sizes.index(self.n) + 1, len(self.sizes))
        phase = numbered(f"phase {name}", self.names.index(name) + 1, len(self.names))
        label = f"[bench] {size}, {phase}"
        bench_time = duration(self._clock() - self._started)
        say(f"{label}: started, {bench_time} into the bench", self._stream)
        self.current = Progress(
            label, unit=unit, total=total, stream=self._stream, clock=self._clock
        )
        return self.current

    def end(self) -> None:
        """Report the running phase's final count and time, if a phase is running."""
        if self.current is not None:
            say(f"{self.current.finish()} (done)", self._stream)
            self.current = None
