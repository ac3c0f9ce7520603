"""A small pool of render workers, fed in batches, with a wall-clock limit per render.

Each worker is a separate Python process (``worker.py``) holding a compiled-template cache. A
batch goes to a worker as one request; results stream back one per task, and each must arrive
within ``time_limit`` of the previous one: otherwise the worker is killed, the task at fault
gets a ``RenderError``, and the rest of the batch goes on in a fresh worker. A worker that dies
(its CPU-time or memory limit, say) is treated the same way. So one template's failure never
costs another task its result, and nothing a template does can stall the caller for longer than
its limit.

The operator calls :meth:`RenderPool.render` (the waiting happens in a thread, so the event loop
keeps running); urgent requests (namespace events, profile trials) always find a worker free of
bulk work, because bulk requests may occupy at most ``size - 1`` workers. The command line calls
:meth:`RenderPool.render_blocking`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from default_policy_operator.core.render import RenderError, RenderResult, RenderTask
from default_policy_operator.rendering.protocol import (
    FLUSH_INTERVAL,
    READY,
    WorkerGone,
    WorkerTimeout,
    decode_results,
    frame,
    read_frame,
)

log = logging.getLogger(__name__)

WORKER_MODULE = "default_policy_operator.rendering.worker"
#: below this many tasks a request is not split between workers (each split costs a round trip)
MIN_SPLIT = 16


@dataclass(frozen=True)
class PoolSettings:
    size: int = 2
    #: wall-clock seconds one render may take (the worker's CPU limit is a second more)
    time_limit: float = 1.0
    #: address-space limit of each worker process
    memory_mb: int = 512
    startup_timeout: float = 30.0


class _Worker:
    """One worker process, used by one thread at a time; started on first use."""

    def __init__(self, settings: PoolSettings) -> None:
        self.settings = settings
        self.process: subprocess.Popen[bytes] | None = None

    def run(self, tasks: Sequence[RenderTask]) -> list[RenderResult]:
        """Results in order. A stall (or death) in a template's first run in this worker is
        blamed at once (the worker says when one starts); otherwise the unanswered tasks go
        again to a fresh worker that answers each as soon as it is done, so the one that
        stalls is the one blamed."""
        results: list[RenderResult] = []
        eager = False
        while len(results) < len(tasks):
            done, stalled, first = self._run_until_failure(tasks[len(results) :], eager)
            results += done
            if stalled is None:
                continue
            if eager or first:
                results.append(self._failed(tasks[len(results)], stalled))
            eager = not eager and not first
        return results

    def _run_until_failure(
        self, tasks: Sequence[RenderTask], eager: bool
    ) -> tuple[list[RenderResult], str | None, bool]:
        """Results in order, until the worker stalls or dies (and is stopped): then also what
        stopped it, and whether it was running a template's first run."""
        process = self._started()
        assert process.stdin is not None
        assert process.stdout is not None
        results: list[RenderResult] = []
        first = False
        try:
            process.stdin.write(frame(pickle.dumps((list(tasks), eager))))
            process.stdin.flush()
            while len(results) < len(tasks):
                deadline = time.monotonic() + self.settings.time_limit + FLUSH_INTERVAL
                payload = read_frame(process.stdout.fileno(), deadline)
                done, first = decode_results(tasks[len(results) :], payload)
                results += done
        except WorkerTimeout:
            self.stop()
            return results, "the time limit", first
        except (WorkerGone, OSError, ValueError, KeyError, TypeError) as exc:  # or garbled
            return results, self._death(exc), first
        return results, None, first

    def _failed(self, task: RenderTask, what: str) -> RenderError:
        log.warning("render worker stopped: %s rendering policy %s of profile %s",
                    what, task.policy, task.profile.name)  # fmt: skip
        seconds = f" ({self.settings.time_limit:g} s)" if what == "the time limit" else ""
        return RenderError(task.policy, f"template exceeded {what}{seconds}")

    def _death(self, exc: Exception) -> str:
        """Why the worker went (it is stopped, if it had not)."""
        process = self.process
        code = None
        if process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = process.wait(timeout=1)
        self.stop()
        if code is not None and -code == signal.SIGXCPU:
            return "the CPU time limit"
        if code is not None and code < 0:
            return f"the worker's limits (killed by {signal.Signals(-code).name})"
        return f"the worker's limits (worker failed: {exc or type(exc).__name__})"

    def _started(self) -> subprocess.Popen[bytes]:
        if self.process is not None and self.process.poll() is None:
            return self.process
        settings = self.settings
        self.process = subprocess.Popen(
            [sys.executable, "-m", WORKER_MODULE, "--time-limit", str(settings.time_limit),
             "--memory-mb", str(settings.memory_mb)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True,
        )  # fmt: skip
        assert self.process.stdout is not None
        deadline = time.monotonic() + settings.startup_timeout
        try:
            ready = read_frame(self.process.stdout.fileno(), deadline)
        except (WorkerGone, WorkerTimeout) as exc:
            self.stop()
            raise RuntimeError(f"render worker did not start: {exc!r}") from exc
        if ready != READY:
            self.stop()
            raise RuntimeError("render worker did not start")
        return self.process

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait()
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


class RenderPool:
    def __init__(self, settings: PoolSettings | None = None) -> None:
        self.settings = settings or PoolSettings()
        self._idle = [_Worker(self.settings) for _ in range(self.settings.size)]
        self._lock = threading.Lock()
        self._free: asyncio.Semaphore | None = None
        self._bulk: asyncio.Semaphore | None = None

    async def render(
        self, tasks: Sequence[RenderTask], *, urgent: bool = False
    ) -> list[RenderResult]:
        """Render ``tasks`` (results in the same order), off the event loop."""
        if not tasks:
            return []
        if self._free is None or self._bulk is None:
            self._free = asyncio.Semaphore(self.settings.size)
            self._bulk = asyncio.Semaphore(max(1, self.settings.size - 1))
        parts = 1 if len(tasks) < MIN_SPLIT else self.settings.size - (0 if urgent else 1)
        size = -(-len(tasks) // max(1, parts))
        chunks = [tasks[i : i + size] for i in range(0, len(tasks), size)]
        done = await asyncio.gather(*(self._render_chunk(c, urgent) for c in chunks))
        return [result for chunk in done for result in chunk]

    async def _render_chunk(self, tasks: Sequence[RenderTask], urgent: bool) -> list[RenderResult]:
        assert self._free is not None
        bulk: contextlib.AbstractAsyncContextManager[object] = (
            contextlib.nullcontext() if urgent or self._bulk is None else self._bulk
        )
        async with bulk, self._free:
            return await asyncio.to_thread(self.render_blocking, tasks)

    def render_blocking(self, tasks: Sequence[RenderTask]) -> list[RenderResult]:
        """Render ``tasks`` in the calling thread (which waits for one worker)."""
        with self._lock:
            worker = self._idle.pop() if self._idle else _Worker(self.settings)
        try:
            return worker.run(tasks)
        finally:
            with self._lock:
                self._idle.append(worker)

    def close(self) -> None:
        with self._lock:
            for worker in self._idle:
                worker.stop()

    def __enter__(self) -> RenderPool:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
