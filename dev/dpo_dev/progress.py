"""Progress lines for long work: Go builds and the benchmark's phases.

Why: a cold ``dpo cluster up`` compiles about 2,000 packages per binary for ten minutes or more,
and ``make bench`` runs for tens of minutes; one line at the start and silence after cannot be
told from a hang. A :class:`Progress` counts real things (packages compiled out of those
``go list`` says are stale, objects present out of those expected) and shows the count with the
time spent so far, on stderr:

* on a terminal, one live line redrawn with a carriage return about once a second;
* anywhere else (CI logs, files), a plain full line every :data:`LOG_INTERVAL` seconds, so a log
  shows the work moving without being flooded and without control characters.

Other messages go through :func:`say`, which first erases a live line, so the two never mix.
"""

from __future__ import annotations

import os
import selectors
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, TextIO

Clock = Callable[[], float]

#: Seconds between redraws of a terminal's live line.
LIVE_INTERVAL = 1.0
#: Seconds between full lines when stderr is not a terminal.
LOG_INTERVAL = 20.0

#: The stream showing an unfinished live line, and that line's width (to blank it out).
_live: tuple[TextIO, int] | None = None


def duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``: short enough for a progress line, exact to the second."""
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def numbered(name: str, index: int, total: int) -> str:
    """``name (2/4)``; a lone step gets no count."""
    return name if total == 1 else f"{name} ({index}/{total})"


def _erase_live() -> None:
    global _live
    if _live is not None:
        stream, width = _live
        stream.write("\r" + " " * width + "\r")
        stream.flush()
        _live = None


def say(text: str, stream: TextIO | None = None) -> None:
    """Write a full line (to stderr by default), erasing a live progress line first."""
    out = stream or sys.stderr
    _erase_live()
    out.write(text + "\n")
    out.flush()


def _draw_live(text: str, stream: TextIO) -> None:
    global _live
    width = _live[1] if _live is not None and _live[0] is stream else 0
    stream.write("\r" + text.ljust(width))
    stream.flush()
    _live = (stream, len(text))


class Progress:
    """One piece of long work: a label, a count (out of a total when one is known), a clock.

    ``feed`` takes a line of a tool's output and counts it if ``counts`` says so; ``advance``
    and ``update`` count directly. Each of them, and ``tick``, writes a line when one is due.
    """

    def __init__(
        self,
        label: str,
        *,
        unit: str = "",
        total: int | None = None,
        counts: Callable[[str], bool] | None = None,
        stream: TextIO | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.label = label
        self.unit = unit
        self.total = total
        self.count = 0
        self._counts = counts
        self._stream = stream or sys.stderr
        self._tty = self._stream.isatty()
        self._clock = clock
        self.started = self._last = clock()

    @property
    def elapsed(self) -> float:
        return self._clock() - self.started

    def line(self) -> str:
        """``label: 812/1931 packages compiled, 3m12s`` (no count without a unit)."""
        if not self.unit:
            return f"{self.label}: {duration(self.elapsed)}"
        of = "" if self.total is None else f"/{self.total}"
        return f"{self.label}: {self.count}{of} {self.unit}, {duration(self.elapsed)}"

    def feed(self, line: str) -> None:
        if self._counts is not None and self._counts(line):
            self.count += 1
        self.tick()

    def advance(self, by: int = 1) -> None:
        self.count += by
        self.tick()

    def update(self, count: int) -> None:
        self.count = count
        self.tick()

    def tick(self) -> None:
        """Write the current line if the last one is old enough."""
        now = self._clock()
        if now - self._last < (LIVE_INTERVAL if self._tty else LOG_INTERVAL):
            return
        self._last = now
        if self._tty:
            _draw_live(self.line(), self._stream)
        else:
            say(self.line(), self._stream)

    def finish(self) -> str:
        """Erase the live line (the caller reports the outcome); return the final line."""
        if self._tty:
            _erase_live()
        return self.line()


def run_reporting(
    command: Sequence[str], cwd: Path, env: Mapping[str, str], progress: Progress
) -> subprocess.CompletedProcess[str]:
    """``subprocess.run(command, capture_output=True, text=True)``, reporting as it runs.

    Every line of output (stdout or stderr) goes to ``progress.feed`` as it arrives, and
    ``progress.tick`` runs at least every :data:`LIVE_INTERVAL` seconds, so a quiet stretch
    (a long link) still shows time passing.
    """
    with subprocess.Popen(
        command, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    ) as process:  # fmt: skip
        assert process.stdout is not None
        assert process.stderr is not None
        captured = _pump((process.stdout, process.stderr), progress)
        returncode = process.wait()
    stdout, stderr = (data.decode(errors="replace") for data in captured)
    return subprocess.CompletedProcess(list(command), returncode, stdout, stderr)


def _pump(pipes: Sequence[IO[bytes]], progress: Progress) -> list[bytes]:
    """Read the pipes to their end, feeding each line to ``progress``; return their bytes."""
    data = {pipe.fileno(): bytearray() for pipe in pipes}
    fed = dict.fromkeys(data, 0)
    with selectors.DefaultSelector() as selector:
        for pipe in pipes:
            selector.register(pipe, selectors.EVENT_READ)
        while selector.get_map():
            for key, _ in selector.select(timeout=LIVE_INTERVAL):
                buffer = data[key.fd]
                chunk = os.read(key.fd, 65536)
                if chunk:
                    buffer.extend(chunk)
                    end = buffer.rfind(b"\n") + 1
                else:  # end of output: a last line without a newline counts too
                    selector.unregister(key.fileobj)
                    end = len(buffer)
                for line in buffer[fed[key.fd] : end].decode(errors="replace").splitlines():
                    progress.feed(line)
                fed[key.fd] = max(fed[key.fd], end)
            progress.tick()
    return [bytes(data[pipe.fileno()]) for pipe in pipes]
