"""Which event loop ``dpo run`` runs on: uvloop's unless told otherwise or absent."""

from __future__ import annotations

import asyncio
import sys

import pytest
import uvloop

from default_policy_operator.cli.main import build_parser, event_loop_factory


def loop_of(choice: str) -> asyncio.AbstractEventLoop:
    loop = event_loop_factory(choice)()
    loop.close()
    return loop


def test_run_picks_uvloop_unless_told_otherwise() -> None:
    args = build_parser().parse_args(["run"])
    assert isinstance(loop_of(args.event_loop), uvloop.Loop)
    assert isinstance(loop_of("uvloop"), uvloop.Loop)
    assert not isinstance(loop_of("asyncio"), uvloop.Loop)


def test_without_uvloop_auto_falls_back_and_uvloop_is_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # an import of it now fails
    assert isinstance(loop_of("auto"), asyncio.BaseEventLoop)
    with pytest.raises(ImportError):
        event_loop_factory("uvloop")
