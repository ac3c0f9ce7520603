"""Render hazards the hostile-input corpus found, reproduced deterministically (issue #7, part 7).

* **Threads.** The renderer used to keep its time limit as a deadline on the shared Jinja
  environment, saved and restored around each render: two threads rendering at once corrupted
  each other's deadline (seen end to end while kopf ran a trial in its executor). Renders now
  run in worker processes, each rendering one task at a time, and the limit is the pool's
  wall-clock timeout per task: several threads (or coroutines) may use one pool at once, and a
  slow render in one of them bounds nobody else's.
* **YAML aliases.** The output of a template is capped in characters, but aliases expand after
  parsing: ~600 characters of anchors and aliases make a spec whose JSON form (what
  ``spec_hash``, the per-namespace copy and the API request serialise) has millions of
  elements. End to end, one namespace and a 9^6 bomb took the operator from 86 to 653 MB RSS
  and blocked ``/healthz`` for 12 s. The renderer measures the parsed document, sharing
  included, and refuses it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from default_policy_operator.core.model import Profile, parse_profile
from default_policy_operator.core.render import RenderError, Trialled, parse_document, trial_tasks
from default_policy_operator.rendering.pool import PoolSettings, RenderPool
from tests.inline_render import render_namespace, trial

POLICY = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nspec:\n  podSelector: {}\n"
SLOW = (
    POLICY + "  policyTypes: [Ingress]\n# {% for i in range(100000) %}{% for j in range(100000) %}"
)
SLOW += "{% endfor %}{% endfor %}\n"


def custom(name: str, template: str) -> Profile:
    return parse_profile(
        {"metadata": {"name": name, "uid": "u"},
         "spec": {"customPolicies": [{"name": "c", "template": template}]}}
    )  # fmt: skip


@pytest.fixture(scope="module")
def pool() -> Iterator[RenderPool]:
    with RenderPool(PoolSettings(size=3, time_limit=0.5)) as pool:
        yield pool


def test_threads_sharing_a_pool_keep_their_own_limits(pool: RenderPool) -> None:
    """A stuck render in one thread; quick ones in two others, started while it is stuck."""
    outcomes: dict[str, list[object]] = {}
    elapsed: dict[str, float] = {}

    def run(name: str, template: str) -> None:
        started = time.monotonic()
        outcomes[name] = list(pool.render_blocking(trial_tasks(custom(name, template))))
        elapsed[name] = time.monotonic() - started

    stuck = threading.Thread(target=run, args=("stuck", SLOW))
    stuck.start()
    time.sleep(0.1)  # (only to let the stuck render start first; no state is awaited)
    quick = [threading.Thread(target=run, args=(f"q{i}", POLICY)) for i in range(2)]
    for thread in quick:
        thread.start()
    for thread in [stuck, *quick]:
        thread.join(30)
    assert isinstance(outcomes["stuck"][-1], RenderError)
    assert "time limit" in outcomes["stuck"][-1].message
    for name in ("q0", "q1"):
        assert all(isinstance(r, Trialled) for r in outcomes[name]), outcomes[name]
        assert elapsed[name] < elapsed["stuck"]
    # and later renders are unaffected: nothing is left behind
    assert all(
        isinstance(r, Trialled) for r in pool.render_blocking(trial_tasks(custom("x", POLICY)))
    )


async def test_coroutines_sharing_a_pool_keep_their_own_limits(pool: RenderPool) -> None:
    import asyncio

    warm = [t for i in range(8) for t in trial_tasks(custom(f"w{i}", POLICY))]
    await pool.render(warm, urgent=True)  # every worker started (an urgent request splits)
    slow = asyncio.ensure_future(pool.render(trial_tasks(custom("a", SLOW)), urgent=False))
    await asyncio.sleep(0.1)  # (only to let the slow render start first)
    quick = await pool.render(trial_tasks(custom("b", POLICY)), urgent=True)
    assert not slow.done(), "the quick render waited for the slow one"
    assert all(isinstance(r, Trialled) for r in quick)
    stalled = await slow
    assert isinstance(stalled[-1], RenderError)


def _alias_bomb(levels: int) -> str:
    """A NetworkPolicy whose ingress rules nest YAML aliases: 9**levels peers once expanded."""
    peers = ", ".join(["{podSelector: {}}"] * 9)
    text = POLICY + "  policyTypes: [Ingress]\n  ingress:\n"
    text += f"  - from: &l0 [{peers}]\n"
    for level in range(1, levels):
        text += f"  - from: &l{level} [" + ", ".join([f"*l{level - 1}"] * 9) + "]\n"
    return text


def test_yaml_aliases_cannot_expand_the_output_past_its_cap(pool: RenderPool) -> None:
    template = _alias_bomb(7)  # ~650 characters of template, 4.8 million peers expanded
    assert len(template) < 1000
    profile = custom("bomb", template)
    started = time.monotonic()
    with pytest.raises(RenderError, match=r"alias|expan|characters"):
        trial(profile)
    with pytest.raises(RenderError, match=r"alias|expan|characters"):
        render_namespace(profile, {"name": "n", "labels": {}, "annotations": {}})
    *builtins, result = pool.render_blocking(trial_tasks(profile))
    assert all(isinstance(r, Trialled) for r in builtins)
    assert isinstance(result, RenderError)
    assert "YAML aliases" in result.message
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("number", [".nan", ".inf", "-.inf"])
def test_a_number_that_is_not_finite_is_refused(number: str) -> None:
    """YAML reads ``.nan`` and ``.inf`` as floats, which a schema's ``number`` lets through (a
    Calico ``order``). JSON has no such number: the wire's encoder writes NaN as null, so the
    object stored would never match the one rendered, and the operator would repair it forever."""
    with pytest.raises(RenderError, match="finite"):
        parse_document(f"spec:\n  order: {number}\n", "c")
