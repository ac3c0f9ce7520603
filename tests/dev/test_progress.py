"""Progress lines: counting, formatting, and a terminal's live line against a log's full lines.

The clock is injected and the stream is a StringIO, so nothing here waits or builds anything;
``run_reporting`` runs a tiny shell command.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from dpo_dev import progress
from dpo_dev.progress import LIVE_INTERVAL, LOG_INTERVAL, Progress, duration, numbered, say

#: ``go build -v`` output as recorded, with a download line and an error report mixed in.
RECORDED_BUILD = """\
go: downloading example.com/dep v1.0.0
internal/goarch
internal/abi
example.com/m/a
# example.com/m/b
b/b.go:3:1: syntax error: non-declaration statement outside function body
example.com/m
"""


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def no_live_line_left() -> None:
    """A test that leaves a live line must not make the next one erase it."""
    progress._live = None


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (59.9, "59s"), (60, "1m00s"), (185, "3m05s"), (3599, "59m59s"), (3720, "1h02m")],
)
def test_duration(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_numbered_shows_the_count_only_for_several_steps() -> None:
    assert numbered("building etcd", 4, 4) == "building etcd (4/4)"
    assert numbered("building helm", 1, 1) == "building helm"


def test_counts_only_the_lines_it_is_told_to() -> None:
    stale = {"internal/goarch", "example.com/m/a", "example.com/m/b", "example.com/m"}
    build = Progress("b", unit="packages compiled", total=len(stale), counts=stale.__contains__,
                     stream=io.StringIO())  # fmt: skip
    for line in RECORDED_BUILD.splitlines():
        build.feed(line)
    # internal/abi was cached (not stale); "# example.com/m/b" is an error header, not a compile
    assert build.count == 3
    assert build.line() == "b: 3/4 packages compiled, 0s"


def test_line_without_a_total_or_a_unit() -> None:
    clock = Clock()
    fetch = Progress("fetching", unit="modules downloaded", stream=io.StringIO(), clock=clock)
    fetch.advance(2)
    clock.now += 75
    assert fetch.line() == "fetching: 2 modules downloaded, 1m15s"
    assert Progress("waiting", stream=io.StringIO(), clock=clock).line() == "waiting: 0s"


def test_a_log_gets_a_full_line_every_interval() -> None:
    clock, log = Clock(), io.StringIO()
    work = Progress("converge", unit="objects", total=300, stream=log, clock=clock)
    work.update(10)
    clock.now += LOG_INTERVAL - 1
    work.update(100)
    assert log.getvalue() == ""
    clock.now += 1
    work.update(120)
    clock.now += 1
    work.update(130)
    assert log.getvalue() == f"converge: 120/300 objects, {duration(LOG_INTERVAL)}\n"
    assert work.finish() == f"converge: 130/300 objects, {duration(LOG_INTERVAL + 1)}"
    assert "\r" not in log.getvalue()


def test_a_terminal_gets_one_live_line_that_other_messages_erase() -> None:
    clock, terminal = Clock(), Terminal()
    work = Progress("build", unit="packages compiled", total=20, stream=terminal, clock=clock)
    clock.now += LIVE_INTERVAL
    work.advance(9)
    clock.now += LIVE_INTERVAL
    work.advance()
    drawn = "\rbuild: 9/20 packages compiled, 1s" + "\rbuild: 10/20 packages compiled, 2s"
    assert terminal.getvalue() == drawn
    say("a message", terminal)
    erased = "\r" + " " * len("build: 10/20 packages compiled, 2s") + "\r"
    assert terminal.getvalue() == drawn + erased + "a message\n"
    clock.now += LIVE_INTERVAL
    work.tick()
    assert work.finish() == "build: 10/20 packages compiled, 3s"
    assert terminal.getvalue().endswith("\rbuild: 10/20 packages compiled, 3s" + erased)


def test_a_shorter_live_line_blanks_out_the_longer_one() -> None:
    clock, terminal = Clock(), Terminal()
    work = Progress("w", unit="left", stream=terminal, clock=clock)
    work.count = 1000
    clock.now += LIVE_INTERVAL
    work.tick()
    clock.now += LIVE_INTERVAL
    work.update(5)
    assert terminal.getvalue().split("\r")[-1] == "w: 5 left, 2s".ljust(len("w: 1000 left, 1s"))


class Recording(Progress):
    """Keeps every line it is fed."""

    def __init__(self) -> None:
        super().__init__("sh", stream=io.StringIO())
        self.lines: list[str] = []

    def feed(self, line: str) -> None:
        self.lines.append(line)
        super().feed(line)


def test_run_reporting_feeds_every_line_and_returns_the_output(tmp_path: Path) -> None:
    shell = Recording()
    script = "echo out1; echo err1 >&2; echo out2; printf 'err2 without newline' >&2; exit 3"
    done = progress.run_reporting(["sh", "-c", script], tmp_path, dict(os.environ), shell)
    assert (done.returncode, done.stdout) == (3, "out1\nout2\n")
    assert done.stderr == "err1\nerr2 without newline"
    assert sorted(shell.lines) == ["err1", "err2 without newline", "out1", "out2"]


def test_say_writes_to_stderr_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    say("hello")
    assert capsys.readouterr().err == "hello\n"
