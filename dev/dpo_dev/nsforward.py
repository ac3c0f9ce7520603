"""``python -m dpo_dev.nsforward``: carry TCP from a private namespace to the host's loopback.

kube-router runs in a private "node" namespace (it rewrites the whole filter table, which must
never be the host's), where the apiserver on the host's 127.0.0.1 is out of reach. This process
runs inside the node namespace, listens on its loopback, and opens each upstream connection in
the host's namespace (handed over as an inherited file descriptor). Listening on the same port
number as the apiserver lets kube-router use the cluster's own kubeconfig, certificate check
included (the serving certificate names 127.0.0.1).
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import sys
import threading
from collections.abc import Sequence

from dpo_dev import netns


def _pump(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


def _carry(client: socket.socket, upstream_fd: int, port: int) -> None:
    with netns.entered_fd(upstream_fd):
        upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with client, upstream:
        try:
            upstream.connect(("127.0.0.1", port))
        except OSError:
            return
        back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
        back.start()
        _pump(client, upstream)
        back.join()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dpo_dev.nsforward")
    parser.add_argument("--port", type=int, required=True, help="listen and connect port")
    parser.add_argument("--upstream-netns-fd", type=int, required=True)
    args = parser.parse_args(argv)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", args.port))
    listener.listen(64)
    while True:
        client, _ = listener.accept()
        threading.Thread(
            target=_carry, args=(client, args.upstream_netns_fd, args.port), daemon=True
        ).start()


if __name__ == "__main__":
    sys.exit(main())
