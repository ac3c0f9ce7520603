"""The bench's phase lines: size and phase numbered, the bench's time at each start, counts."""

from __future__ import annotations

import io

from bench.phases import PEER_PHASES, PHASES, Phases, phases_with_peer

from dpo_dev.progress import LOG_INTERVAL


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def test_phases_are_numbered_within_their_size() -> None:
    clock, log = Clock(), io.StringIO()
    phases = Phases([1000, 5000], stream=log, clock=clock)
    phases.n = 5000
    clock.now += 125
    converge = phases.begin("converge", unit="objects present", total=15000)
    index = PHASES.index("converge") + 1
    label = f"[bench] N=5000 (2/2), phase converge ({index}/{len(PHASES)})"
    assert log.getvalue() == f"{label}: started, 2m05s into the bench\n"
    clock.now += LOG_INTERVAL
    converge.update(1200)
    clock.now += 3
    phases.begin("no-op resync")
    assert log.getvalue().splitlines()[1:] == [
        f"{label}: 1200/15000 objects present, 20s",
        f"{label}: 1200/15000 objects present, 23s (done)",
        f"[bench] N=5000 (2/2), phase no-op resync ({index + 1}/{len(PHASES)}): started,"
        " 2m28s into the bench",
    ]


def test_one_size_is_not_numbered_and_end_reports_once() -> None:
    log = io.StringIO()
    phases = Phases([50], stream=log, clock=Clock())
    phases.begin("restart")
    phases.end()
    phases.end()
    assert log.getvalue().splitlines() == [
        f"[bench] N=50, phase restart ({len(PHASES)}/{len(PHASES)}): started, 0s into the bench",
        f"[bench] N=50, phase restart ({len(PHASES)}/{len(PHASES)}): 0s (done)",
    ]


def test_the_peer_phases_come_after_the_namespaces_and_shift_the_rest() -> None:
    log = io.StringIO()
    names = phases_with_peer(peer=True)
    phases = Phases([50], names=names, stream=log, clock=Clock())
    phases.begin("Kyverno GeneratingPolicy")
    phases.begin("restart")
    at = PHASES.index("namespaces")
    assert names[at + 1 : at + 3] == PEER_PHASES
    assert phases_with_peer(peer=False) == PHASES
    total = len(PHASES) + 2
    assert log.getvalue().splitlines()[0] == (
        f"[bench] N=50, phase Kyverno GeneratingPolicy ({at + 3}/{total}): started, 0s into the"
        " bench"
    )
    assert f"phase restart ({total}/{total}): started" in log.getvalue()
