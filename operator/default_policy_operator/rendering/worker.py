"""A render worker process (``python -m default_policy_operator.rendering.worker``).

Runs templates for the pool (see ``pool.py``) under operating-system limits, so that a hostile
or runaway template costs at most one worker: the address space is capped (an allocation beyond
it fails with ``MemoryError``, reported as the template's), and before each render the CPU-time
soft limit is moved to the CPU used so far plus the time limit and a second, so a render that
outruns the pool's wall-clock timeout is still stopped by the kernel (``SIGXCPU``). Core dumps
are off. Nothing here is shared with the operator's process but the pipe.
"""

from __future__ import annotations

import argparse
import os
import pickle
import resource
import sys
import time
from collections.abc import Sequence
from typing import BinaryIO

from default_policy_operator.core.render import Renderer, RenderError, RenderTask, policy_source
from default_policy_operator.rendering.protocol import (
    FLUSH_INTERVAL,
    READY,
    WorkerGone,
    encode_result,
    read_frame,
    results_frame,
    write_frame,
)


def _limit_memory(megabytes: int) -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if megabytes > 0:
        size = megabytes * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (size, size))


def _limit_cpu(seconds: float) -> None:
    """Allow ``seconds`` (rounded up, plus one) more CPU time from now."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    soft = int(usage.ru_utime + usage.ru_stime + seconds) + 2
    resource.setrlimit(resource.RLIMIT_CPU, (soft, resource.RLIM_INFINITY))


def serve(time_limit: float, memory_mb: int) -> None:
    """Answer requests until the operator closes the pipe."""
    requests = sys.stdin.fileno()
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # a stray print cannot corrupt a frame
    _limit_memory(memory_mb)
    renderer = Renderer()
    write_frame(replies, READY)
    while True:
        try:
            tasks, eager = pickle.loads(read_frame(requests))
        except WorkerGone:
            return
        _answer_all(renderer, tasks, 0.0 if eager else FLUSH_INTERVAL, time_limit, replies)


def _answer_all(
    renderer: Renderer,
    tasks: Sequence[RenderTask],
    interval: float,
    time_limit: float,
    replies: BinaryIO,
) -> None:
    """Render ``tasks`` in order; results go out in frames of all that finished within
    ``interval`` (one frame per result would cost a context switch per render).

    A template this worker never ran is the likeliest to stall, so around such a first run the
    worker answers at once: before it (saying that a first run comes next) and after it. A
    timeout then blames the right task without a second try.
    """
    pending: list[bytes] = []
    flushed = time.monotonic()
    for task in tasks:
        first = not renderer.knows(policy_source(task.profile, task.policy)[0])
        if first:
            write_frame(replies, results_frame(pending, first_next=True))
            pending = []
        _limit_cpu(time_limit)
        pending.append(_answer(renderer, task))
        if first or time.monotonic() - flushed >= interval:
            write_frame(replies, results_frame(pending, first_next=False))
            pending, flushed = [], time.monotonic()
    if pending:
        write_frame(replies, results_frame(pending, first_next=False))


def _answer(renderer: Renderer, task: RenderTask) -> bytes:
    """The encoded result; a failure outside the template's own evaluation (checking or
    encoding a huge or deeply nested document) is still the template's failure."""
    try:
        return encode_result(renderer.run(task))
    except MemoryError:
        error = RenderError(task.policy, "template exceeded the memory limit")
    except RecursionError:
        error = RenderError(task.policy, "output nests too deeply")
    except Exception as exc:
        error = RenderError(task.policy, f"output could not be checked: {type(exc).__name__}")
    return encode_result(error)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--time-limit", type=float, required=True)
    parser.add_argument("--memory-mb", type=int, required=True)
    args = parser.parse_args(argv)
    try:
        serve(args.time_limit, args.memory_mb)
    except BrokenPipeError:
        # The operator is gone (killed, say) and nobody is left to answer. Its stderr is ours:
        # a traceback would land in its log as an error of its own. ``_exit`` skips the
        # buffered flush that would raise again at shutdown.
        os._exit(0)


if __name__ == "__main__":
    main()
