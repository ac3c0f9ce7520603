"""Shared fixtures: one real control plane per test session, isolated per test by name.

Starting etcd + kube-apiserver costs seconds, so the whole session shares one; tests stay
independent by putting everything they create under a name from ``unique_name``.
"""

from __future__ import annotations

import atexit
import contextlib
import secrets
import signal
import threading
from collections.abc import Iterator
from types import FrameType

import pytest

from dpo_dev.cluster import ControlPlane
from tests.support import Api, OperatorProcess


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def _running(plane: ControlPlane) -> Iterator[ControlPlane]:
    """Start ``plane`` and make sure it is stopped however the session ends.

    The children run in their own session, so a signal aimed at pytest never reaches them:
    SIGTERM (``timeout``, a cancelled job) is turned into KeyboardInterrupt so that pytest
    unwinds, and ``atexit`` backs up the ``finally`` for exits that skip fixture teardown.
    """
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _interrupt)
    atexit.register(plane.stop)
    try:
        plane.start()
        yield plane
    finally:
        plane.stop()
        atexit.unregister(plane.stop)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """A running control plane with our CRD and Calico's, stopped at the end of the session."""
    with _running(ControlPlane(tmp_path_factory.mktemp("control-plane"))) as plane:
        yield plane


@pytest.fixture(scope="session")
def controller_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """A second session plane that also runs kube-controller-manager (namespace controller and
    garbage collector), for the tests that delete namespaces or owners; started only when asked.
    """
    plane = ControlPlane(tmp_path_factory.mktemp("controller-plane"), controller_manager=True)
    with _running(plane):
        yield plane


@pytest.fixture
def unique_name() -> str:
    """A short DNS-1123 label prefix no other test (or earlier run) uses."""
    return f"t-{secrets.token_hex(4)}"


# -- the operator under test (shared by the end-to-end suites) ------------------------------


@pytest.fixture(scope="session")
def api(control_plane: ControlPlane) -> Api:
    return Api(control_plane)


@pytest.fixture(scope="session")
def operator_process(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """One ``dpo run`` for the session; tests isolate themselves with their own labels."""
    log_dir = tmp_path_factory.mktemp("operator")
    process = OperatorProcess(control_plane.kubeconfig, log_dir / "operator.log")
    atexit.register(process.stop)
    try:
        process.start()
        yield process
    finally:
        process.stop()
        atexit.unregister(process.stop)
