"""Network-namespace primitives for the local dataplane: ``ip`` calls and per-thread ``setns``.

Why a thread-level ``setns`` instead of ``ip netns exec`` for every probe: a socket belongs to
the namespace its creating thread was in when ``socket()`` ran, and keeps it afterwards. So a
prober can open each fresh socket inside a pod's namespace, switch back, and then use it like
any other socket — microseconds per probe instead of a process spawn, which is what lets the
no-gap tests probe every 20 ms. ``setns(CLONE_NEWNET)`` changes only the calling thread.

Nothing here touches the host's own namespace except to read its handle: every ``ip`` command
names the namespace it acts on (``ip -n``).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

NETNS_DIR = Path("/var/run/netns")
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)


class NetnsError(RuntimeError):
    """An ``ip`` command or a namespace switch failed."""


def ip(*args: str, netns: str | None = None, check: bool = True) -> str:
    """Run ``ip [-n NETNS] ARGS``; raise :class:`NetnsError` with its stderr on failure."""
    command = ["ip", *(("-n", netns) if netns else ()), *args]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise NetnsError(f"{' '.join(command)}: {result.stderr.strip()}")
    return result.stdout


def ip_batch(netns: str, commands: Sequence[str]) -> None:
    """Several ``ip`` commands in one process (``ip -n NETNS -batch -``): ~10x fewer spawns."""
    result = subprocess.run(
        ["ip", "-n", netns, "-batch", "-"],
        input="\n".join(commands) + "\n",
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise NetnsError(f"ip -n {netns} -batch: {result.stderr.strip()}\n{commands}")


def exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def create(name: str) -> None:
    """A new namespace with its loopback up."""
    ip("netns", "add", name)
    ip("link", "set", "lo", "up", netns=name)


def names(prefix: str) -> list[str]:
    """Namespaces whose name starts with ``prefix`` (what a topology created)."""
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix))


def pids(name: str) -> list[int]:
    """Processes whose network namespace is ``name``."""
    out = ip("netns", "pids", name, check=False)
    return [int(word) for word in out.split() if word.isdigit()]


def delete(name: str) -> None:
    """Remove a namespace; its interfaces (the veth ends in it) go with it. Idempotent."""
    if exists(name):
        ip("netns", "del", name, check=False)


def sysctl(netns: str, key: str, value: str) -> None:
    """Set a sysctl inside ``netns``: ``/proc/sys/net`` resolves to the writing thread's netns."""
    with entered(netns):
        Path("/proc/sys", *key.split(".")).write_text(value)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise NetnsError(f"setns: {os.strerror(errno)}")


@contextlib.contextmanager
def entered(netns: str) -> Iterator[None]:
    """Run the block with the current thread inside ``netns``, then switch back."""
    with open(NETNS_DIR / netns, "rb") as target, entered_fd(target.fileno()):
        yield


@contextlib.contextmanager
def entered_fd(fd: int) -> Iterator[None]:
    """Like :func:`entered`, for a namespace handle held as an open file descriptor."""
    with open("/proc/thread-self/ns/net", "rb") as home:
        _setns(fd)
        try:
            yield
        finally:
            _setns(home.fileno())


def socket_in(netns: str, kind: int = socket.SOCK_STREAM, proto: int = 0) -> socket.socket:
    """A fresh IPv4 socket living in ``netns`` (usable from the current namespace)."""
    with entered(netns):
        return socket.socket(socket.AF_INET, kind, proto)


def exec_argv(netns: str, argv: Sequence[str]) -> list[str]:
    """``argv`` run inside ``netns`` by ``ip netns exec`` (which also mounts its /sys)."""
    return ["ip", "netns", "exec", netns, *argv]
