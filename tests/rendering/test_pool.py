"""The render pool: batches, the per-render wall-clock limit, the workers' OS limits, blame.

Every failure must land on the task that caused it, as a RenderError, and cost the others
nothing but time; the pool must stay usable afterwards.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from default_policy_operator.core.governance import Namespace
from default_policy_operator.core.model import Profile, parse_profile
from default_policy_operator.core.objects import RenderedObject
from default_policy_operator.core.render import RenderError, RenderTask, namespace_task
from default_policy_operator.rendering.pool import WORKER_MODULE, PoolSettings, RenderPool
from default_policy_operator.rendering.protocol import (
    READY,
    decode_result,
    frame,
    read_frame,
)

HEAD = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nspec:\n  podSelector: {}\n"
#: loops ``n`` (the namespace's label) times 100,000: about n/100 s (0: instant)
DATA_DEPENDENT = HEAD + (
    "  policyTypes: [Ingress]\n"
    "# {% for i in range(namespace.labels.n|int) %}{% for j in range(100000) %}{% endfor %}"
    "{% endfor %}\n"
)


def custom(template: str) -> Profile:
    return parse_profile(
        {"metadata": {"name": "p", "uid": "u"},
         "spec": {"policies": {"denyAll": {"enabled": False}, "allowDNS": {"enabled": False},
                               "allowKubeSystem": {"enabled": False}},
                  "customPolicies": [{"name": "c", "template": template}]}}
    )  # fmt: skip


def tasks_for(profile: Profile, loops: list[int]) -> list[RenderTask]:
    return [
        namespace_task(profile, "c", Namespace(f"ns-{i}", {"n": str(n)}))
        for i, n in enumerate(loops)
    ]


@pytest.fixture(scope="module")
def pool() -> Iterator[RenderPool]:
    with RenderPool(PoolSettings(size=2, time_limit=0.5)) as pool:
        yield pool


def test_a_batch_renders_in_order(pool: RenderPool) -> None:
    results = pool.render_blocking(tasks_for(custom(DATA_DEPENDENT), [0] * 200))
    assert [r.key.namespace for r in results if isinstance(r, RenderedObject)] == [
        f"ns-{i}" for i in range(200)
    ]


def test_a_stall_mid_batch_is_blamed_on_its_namespace(pool: RenderPool) -> None:
    """The template is known to the worker (no first run): the eager retry finds the culprit."""
    loops = [0] * 30
    loops[17] = 10000  # ~ a minute of looping
    started = time.monotonic()
    results = pool.render_blocking(tasks_for(custom(DATA_DEPENDENT), loops))
    failed = [i for i, r in enumerate(results) if isinstance(r, RenderError)]
    assert failed == [17]
    assert "time limit (0.5 s)" in results[17].message  # type: ignore[union-attr]
    assert time.monotonic() - started < 10
    again = pool.render_blocking(tasks_for(custom(DATA_DEPENDENT), [0]))
    assert isinstance(again[0], RenderedObject)


def test_memory_beyond_the_limit_fails_the_template_not_the_worker() -> None:
    with RenderPool(PoolSettings(size=1, memory_mb=256)) as pool:
        profile = custom(HEAD + "  policyTypes: {{ [['Ingress'] * 100000000] }}\n")
        tasks = tasks_for(profile, [0]) + tasks_for(custom(DATA_DEPENDENT), [0])
        hog, fine = pool.render_blocking(tasks)
    assert isinstance(hog, RenderError)
    assert hog.message == "template exceeded the memory limit"
    assert isinstance(fine, RenderedObject)


def test_a_killed_worker_costs_only_the_task_it_was_running(pool: RenderPool) -> None:
    loops = [0, 0, 20000, 0]

    def kill_soon() -> None:
        time.sleep(0.2)
        for pid in _worker_pids():
            os.kill(pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_soon)
    killer.start()
    results = pool.render_blocking(tasks_for(custom(DATA_DEPENDENT), loops))
    killer.join()
    assert [type(r).__name__ for r in results] == [
        "RenderedObject", "RenderedObject", "RenderError", "RenderedObject"
    ]  # fmt: skip
    assert "killed by SIGKILL" in results[2].message or "time limit" in results[2].message  # type: ignore[union-attr]


def _worker_pids() -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(os.getpid()), "-f", WORKER_MODULE],
                         capture_output=True, text=True, check=False)  # fmt: skip
    return [int(pid) for pid in out.stdout.split()]


def test_the_cpu_limit_stops_a_render_nobody_times_out() -> None:
    """The kernel's RLIMIT_CPU, set by the worker itself: a worker asked directly (no pool and
    so no wall-clock timeout) to run a stuck render is killed with SIGXCPU."""
    worker = subprocess.Popen(
        [sys.executable, "-m", WORKER_MODULE, "--time-limit", "0.2", "--memory-mb", "512"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    assert worker.stdin is not None
    assert worker.stdout is not None
    assert read_frame(worker.stdout.fileno(), time.monotonic() + 30) == READY
    worker.stdin.write(frame(pickle.dumps((tasks_for(custom(DATA_DEPENDENT), [100000]), True))))
    worker.stdin.flush()
    try:
        code = worker.wait(timeout=20)
    finally:
        worker.kill()
    assert code == -signal.SIGXCPU


async def test_urgent_requests_find_a_worker_while_bulk_work_runs(pool: RenderPool) -> None:
    await pool.render(tasks_for(custom(DATA_DEPENDENT), [0] * 32), urgent=True)  # both started
    slow = asyncio.ensure_future(
        pool.render(tasks_for(custom(DATA_DEPENDENT), [30] * 8), urgent=False)  # ~2.4 s
    )
    await asyncio.sleep(0.3)
    started = time.monotonic()
    (quick,) = await pool.render(tasks_for(custom(DATA_DEPENDENT), [0]), urgent=True)
    quick_time = time.monotonic() - started
    await slow
    assert isinstance(quick, RenderedObject)
    assert not slow.done() or quick_time < 1.0
    assert quick_time < 1.0


def test_a_result_that_does_not_answer_its_task_is_refused() -> None:
    """Even a worker whose sandbox were broken cannot make the operator write elsewhere."""
    (task,) = tasks_for(custom(DATA_DEPENDENT), [0])
    body = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "dpo-c", "namespace": "kube-system"}, "spec": {}}  # fmt: skip
    with pytest.raises(ValueError, match="does not answer"):
        decode_result(task, {"object": {"policy": "c", "body": body, "hash": "x"}})
    body["metadata"]["namespace"] = "ns-0"
    assert isinstance(
        decode_result(task, {"object": {"policy": "c", "body": body, "hash": "x"}}), RenderedObject
    )


def _orphaned_worker(*, after_ready: bool) -> subprocess.Popen[bytes]:
    """A worker whose operator is gone (as after a kill -9): nobody reads its replies, from
    the start or from when it said it was ready."""
    reader, writer = os.pipe()
    worker = subprocess.Popen(
        [sys.executable, "-m", WORKER_MODULE, "--time-limit", "1", "--memory-mb", "512"],
        stdin=subprocess.PIPE, stdout=writer, stderr=subprocess.PIPE,
    )  # fmt: skip
    os.close(writer)
    if after_ready:
        assert read_frame(reader, time.monotonic() + 30) == READY
    os.close(reader)
    return worker


def test_a_worker_whose_operator_died_before_it_was_ready_exits_quietly() -> None:
    """Seen in CI: the operator was killed while its worker started, and the worker's
    BrokenPipeError traceback landed in the operator's log."""
    worker = _orphaned_worker(after_ready=False)
    _, errors = worker.communicate(timeout=30)
    assert (worker.returncode, errors) == (0, b"")


def test_a_worker_whose_operator_died_mid_batch_exits_quietly() -> None:
    worker = _orphaned_worker(after_ready=True)
    request = frame(pickle.dumps((tasks_for(custom(DATA_DEPENDENT), [0] * 50), True)))
    _, errors = worker.communicate(request, timeout=30)
    assert (worker.returncode, errors) == (0, b"")
