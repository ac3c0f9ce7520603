"""The tiny server every dataplane "pod" runs, and the client side of a probe.

``python -m dpo_dev.podserver --identity NS/POD`` (started inside the pod's namespace) answers:

* TCP on :data:`TCP_PORTS` (except 53): sends ``NS/POD\\n`` and closes;
* UDP on :data:`UDP_PORTS` (except 53): answers each datagram with ``NS/POD``;
* DNS on UDP and TCP 53: a real DNS answer (one A record) to any query, so the DNS probes
  exercise the protocol the allow-dns policy exists for;
* ICMP echo: the kernel answers pings (probe protocol ``ICMP``, port ignored).

:func:`probe` opens a fresh socket per call (new source port, so never an established flow that
conntrack would let through a new deny), in the source pod's namespace, and reports whether the
destination answered with its own identity. A refused connection and a timeout both mean
"blocked": kube-router rejects with ICMP, which may be rate-limited into a timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import enum
import secrets
import socket
import struct
import sys
from collections.abc import Sequence
from typing import cast

from dpo_dev import netns

TCP_PORTS = (53, 80, 443, 5432, 6379, 8080, 9100)
UDP_PORTS = (53, 8125)
DNS_PORT = 53
_DNS_HEADER = struct.Struct("!HHHHHH")


class Outcome(enum.StrEnum):
    OPEN = "open"
    REFUSED = "refused"
    TIMEOUT = "timeout"
    #: Something answered, but not the expected pod (a routing mistake, never a policy result).
    WRONG = "wrong"

    @property
    def blocked(self) -> bool:
        return self in (Outcome.REFUSED, Outcome.TIMEOUT)


# -- DNS (just enough of RFC 1035 for one question and one A answer) --------------------------


def dns_query(query_id: int, name: str = "kubernetes.default.svc.cluster.local") -> bytes:
    question = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return _DNS_HEADER.pack(query_id, 0x0100, 1, 0, 0, 0) + question + struct.pack("!HH", 1, 1)


def dns_answer(query: bytes, address: str) -> bytes | None:
    """The response to ``query``: same id and question, one A record for ``address``."""
    if len(query) < _DNS_HEADER.size + 5:
        return None
    query_id, _flags, qdcount, *_ = _DNS_HEADER.unpack_from(query)
    if qdcount != 1:
        return None
    end = query.find(b"\0", _DNS_HEADER.size) + 5  # name, then QTYPE and QCLASS
    if end < 5 or end > len(query):
        return None
    header = _DNS_HEADER.pack(query_id, 0x8180, 1, 1, 0, 0)
    record = struct.pack("!HHHIH", 0xC00C, 1, 1, 0, 4) + socket.inet_aton(address)
    return header + query[_DNS_HEADER.size : end] + record


def dns_answered(response: bytes, query_id: int) -> bool:
    if len(response) < _DNS_HEADER.size:
        return False
    got_id, flags, _qd, ancount, *_ = _DNS_HEADER.unpack_from(response)
    return bool(got_id == query_id and flags & 0x800F == 0x8000 and ancount >= 1)


# -- the server -----------------------------------------------------------------------------


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, identity: str, address: str, port: int) -> None:
        self.identity, self.address, self.port = identity, address, port
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's selector transport does not subclass DatagramTransport, but is one.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, int]) -> None:
        assert self.transport is not None
        if self.port == DNS_PORT:
            reply = dns_answer(data, self.address)
            if reply is not None:
                self.transport.sendto(reply, addr)
        else:
            self.transport.sendto(self.identity.encode(), addr)


async def _tcp(
    identity: str,
    address: str,
    port: int,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError, TimeoutError):
        if port == DNS_PORT:
            size = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 5))[0]
            reply = dns_answer(await asyncio.wait_for(reader.readexactly(size), 5), address)
            if reply is not None:
                writer.write(struct.pack("!H", len(reply)) + reply)
        else:
            writer.write(identity.encode() + b"\n")
        await writer.drain()
    writer.close()


async def serve(identity: str, address: str) -> None:
    """Listen on every port until cancelled; UDP first, so "TCP 80 answers" means all ready."""
    loop = asyncio.get_running_loop()
    for port in UDP_PORTS:
        await loop.create_datagram_endpoint(
            lambda port=port: _Udp(identity, address, port),  # type: ignore[misc]
            local_addr=("0.0.0.0", port),
        )
    servers = []
    for port in sorted(TCP_PORTS, key=lambda p: p == 80):

        async def handle(
            r: asyncio.StreamReader, w: asyncio.StreamWriter, port: int = port
        ) -> None:
            await _tcp(identity, address, port, r, w)

        servers.append(await asyncio.start_server(handle, "0.0.0.0", port, reuse_address=True))
    await asyncio.Event().wait()


# -- the client -----------------------------------------------------------------------------


def probe(
    source_netns: str, address: str, protocol: str, port: int, timeout: float, expect: str = ""
) -> Outcome:
    """One fresh flow from ``source_netns`` to ``address``; see the module docstring.

    ``expect`` is the identity the destination should send back (DNS answers carry none).
    """
    kind = socket.SOCK_STREAM if protocol == "TCP" else socket.SOCK_DGRAM
    # ICMP: a "ping socket" (the kernel picks the echo id like a port and reports errors).
    sock = netns.socket_in(source_netns, kind, socket.IPPROTO_ICMP if protocol == "ICMP" else 0)
    sock.settimeout(timeout)
    try:
        sock.connect((address, port))
        return _exchange(sock, protocol, port, expect)
    except ConnectionRefusedError:
        return Outcome.REFUSED
    except TimeoutError:
        return Outcome.TIMEOUT
    except OSError:  # EHOSTUNREACH / ENETUNREACH from other ICMP rejects: still blocked
        return Outcome.REFUSED
    finally:
        sock.close()


def _exchange(sock: socket.socket, protocol: str, port: int, expect: str) -> Outcome:
    if protocol == "ICMP":
        sock.send(struct.pack("!BBHHH", 8, 0, 0, 0, 1) + b"dpo-probe")
        reply = sock.recv(512)
        return Outcome.OPEN if reply[:1] == b"\0" else Outcome.WRONG
    if port == DNS_PORT:
        query_id = secrets.randbelow(0x10000)
        query = dns_query(query_id)
        if protocol == "TCP":
            sock.sendall(struct.pack("!H", len(query)) + query)
            response = _recv_all(sock)[2:]
        else:
            sock.send(query)
            response = sock.recv(512)
        return Outcome.OPEN if dns_answered(response, query_id) else Outcome.WRONG
    if protocol == "TCP":
        reply = _recv_all(sock)
    else:
        sock.send(b"probe")
        reply = sock.recv(512)
    answered = reply.decode(errors="replace").strip()
    return Outcome.OPEN if answered and answered == (expect or answered) else Outcome.WRONG


def _recv_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(4096):
        chunks.append(chunk)
    return b"".join(chunks)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dpo_dev.podserver")
    parser.add_argument("--identity", required=True, help="namespace/pod, sent back to probes")
    parser.add_argument("--address", required=True, help="the pod IP, put in DNS answers")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.identity, args.address))
    return 0


if __name__ == "__main__":
    sys.exit(main())
