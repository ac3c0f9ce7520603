"""Every kopf handler that touches the operator's state runs on the event loop, never in a thread.

kopf runs a plain ``def`` handler in its thread-pool executor (``kopf._core.actions.invocation``:
``loop.run_in_executor``) and only an ``async def`` one on the event loop. The World's dicts,
the reconciler's dirty set and its ``asyncio.Event`` s are not thread-safe: mutated from a worker
thread while the reconcile and status loops iterate them, they fail ("RuntimeError: dictionary
changed size during iteration" in ``World.counts()``, seen in the apiserver-restart test of
``test_outage_e2e``), can lose a mark (a namespace left uncovered until the next full resync), and
an ``Event.set()`` from another thread does not wake the loop (up to the loop's 5 s poll later).

Found by the fault-injection tests (issue #7); the login handler is exempt: it only reads the
credentials (and is a coroutine now anyway: an exec plugin runs as an asyncio subprocess).
"""

from __future__ import annotations

import inspect
from typing import Any

from default_policy_operator.controller.handlers import HandlerConfig, build_registry
from default_policy_operator.controller.reconciler import Reconciler, Settings
from default_policy_operator.core.world import World
from default_policy_operator.kube.client import KubeApi
from default_policy_operator.kube.credentials import Auth, Credentials

THREAD_SAFE = {"login"}  # reads credentials only


async def _never_loaded() -> Auth:
    raise AssertionError("registering handlers must not load credentials")


def all_handlers() -> list[Any]:
    credentials = Credentials(_never_loaded)
    reconciler = Reconciler(World(frozenset()), KubeApi(credentials), Settings())
    registry = build_registry(HandlerConfig(credentials=credentials), reconciler)
    handlers: list[Any] = []
    for part in (registry._activities, registry._indexing, registry._watching, registry._changing):
        handlers.extend(part.get_all_handlers())
    return handlers


def test_state_touching_handlers_are_coroutines() -> None:
    handlers = all_handlers()
    assert handlers
    in_threads = [
        h.fn.__name__
        for h in handlers
        if h.fn.__name__ not in THREAD_SAFE and not inspect.iscoroutinefunction(h.fn)
    ]
    assert in_threads == [], f"kopf would run these in worker threads: {in_threads}"
