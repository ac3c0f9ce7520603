"""The request path's HTTP/1.1: framing as bytes arrive in any pieces, and the connection pool
against a raw server on loopback that answers, drops, stalls or closes as each test says."""

from __future__ import annotations

import asyncio
import gzip
import itertools
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import uvloop
from hypothesis import given
from hypothesis import strategies as st

from default_policy_operator.kube.http1 import (
    ConnectionPool,
    HttpError,
    Origin,
    Reply,
    ReplyParser,
    _Connection,
)
from tests.kube.tls import Authority

OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{"a":1}'
CHUNKED = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b'3;ext=1\r\n{"a\r\n4\r\n":1}\r\n0\r\nX-Trailer: t\r\n\r\n'
)
ZIPPED = gzip.compress(b'{"a":1}')
GZIP = (
    b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: "
    + str(len(ZIPPED)).encode()
    + b"\r\n\r\n"
    + ZIPPED
)
CONTINUE_THEN_OK = b"HTTP/1.1 100 Continue\r\n\r\n" + OK


def parse_in_pieces(
    raw: bytes, cuts: list[int], *, close: bool = False
) -> tuple[ReplyParser, Reply]:
    """Feed ``raw`` cut at ``cuts``; the parser and the one answer it gave."""
    parser = ReplyParser()
    bounds = sorted({0, len(raw), *(c % (len(raw) + 1) for c in cuts)})
    replies = [parser.feed(raw[a:b]) for a, b in itertools.pairwise(bounds)]
    done = [r for r in replies if r is not None]
    if close and not done:
        last = parser.eof()
        done = [last] if last is not None else []
    assert len(done) == 1, f"one answer expected, got {done}"
    assert replies[-1] is not None or close, "the answer is complete only with its last byte"
    return parser, done[0]


@given(
    raw=st.sampled_from([OK, CHUNKED, GZIP, CONTINUE_THEN_OK]),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8),
)
def test_framing_holds_whatever_the_pieces(raw: bytes, cuts: list[int]) -> None:
    parser, reply = parse_in_pieces(raw, cuts)
    assert (reply.status, reply.body) == (200, b'{"a":1}')
    assert parser.keep_alive


@given(cuts=st.lists(st.integers(min_value=0, max_value=100), max_size=5))
def test_a_body_without_length_runs_until_the_close(cuts: list[int]) -> None:
    raw = b'HTTP/1.1 200 OK\r\n\r\n{"a":1}'
    parser, reply = parse_in_pieces(raw, cuts, close=True)
    assert reply.body == b'{"a":1}'
    assert not parser.keep_alive


def test_no_body_statuses_and_keep_alive_rules() -> None:
    parser = ReplyParser()
    reply = parser.feed(b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n")
    assert reply is not None
    assert reply.body == b""
    parser = ReplyParser()
    assert parser.feed(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
    assert not parser.keep_alive
    parser = ReplyParser()
    assert parser.feed(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert not parser.keep_alive
    parser = ReplyParser()
    assert parser.feed(OK + b"extra")
    assert not parser.keep_alive, "bytes beyond the answer: the stream is out of step"
    parser = ReplyParser(body_expected=False)  # CONNECT's 200 has no body
    reply = parser.feed(b"HTTP/1.1 200 Connection established\r\n\r\n")
    assert reply is not None
    assert reply.status == 200


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP/1 answer"),
        (b"HTTP/1.1 2x0 OK\r\n\r\n", "not an HTTP/1 answer"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n", "bad Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "bad Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n", "bad Content-Length"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n", "bad chunk size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1_0\r\n", "bad chunk size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk size"),
        (b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 3\r\n\r\nabc", "gzip"),
    ],
)
def test_what_is_not_http_is_an_error(raw: bytes, message: str) -> None:
    with pytest.raises(HttpError, match=message):
        ReplyParser().feed(raw)


def test_a_reset_does_not_end_a_body_that_runs_until_the_close() -> None:
    """Such a body is complete only at a clean close: a reset mid-body is an error."""

    async def scenario(cause: Exception | None) -> Any:
        connection = _Connection()
        connection.connection_made(DiscardingTransport())
        exchange = asyncio.create_task(
            connection.exchange(b"GET / HTTP/1.1\r\n\r\n", body_expected=True)
        )
        await asyncio.sleep(0)
        connection.data_received(b'HTTP/1.1 200 OK\r\n\r\n{"a"')
        connection.connection_lost(cause)
        try:
            return (await exchange)[0].body
        except HttpError as error:
            return error

    assert asyncio.run(scenario(None)) == b'{"a"'
    assert isinstance(asyncio.run(scenario(ConnectionResetError())), HttpError)


class DiscardingTransport(asyncio.Transport):
    def write(self, data: Any) -> None:
        pass

    def close(self) -> None:
        pass


# -- the pool against a raw server -----------------------------------------------------------

Behaviour = Callable[[int, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Server:
    """Counts connections and requests; ``behaviour(request_number, ...)`` answers each."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.connections = 0
        self.requests = 0
        self.heads: list[bytes] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                self.requests += 1
                self.heads.append(head)
                length = next(
                    (int(line.split(b":")[1]) for line in head.split(b"\r\n")
                     if line.lower().startswith(b"content-length:")),
                    0,
                )  # fmt: skip
                await reader.readexactly(length)
                await self.behaviour(self.requests, reader, writer)
                if writer.is_closing():
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()


@asynccontextmanager
async def serving(behaviour: Behaviour) -> AsyncIterator[tuple[Server, Origin]]:
    server = Server(behaviour)
    listener = await asyncio.start_server(server.serve, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        yield server, Origin.of(f"http://127.0.0.1:{port}", None, None)
    finally:
        listener.close()


def request(path: str = "/x") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: h\r\n\r\n".encode()


async def answer_ok(_: int, __: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(OK)
    await writer.drain()


async def test_a_connection_carries_one_exchange_after_another() -> None:
    pool = ConnectionPool(keep=4, timeout=5)
    async with serving(answer_ok) as (server, origin):
        for _ in range(3):
            assert (await pool.exchange(origin, request())).body == b'{"a":1}'
        assert (server.connections, server.requests) == (1, 3)
        pool.close()


async def test_concurrent_exchanges_get_their_own_connections_and_answers() -> None:
    async def echo_path(_: int, __: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        path = server.heads[-1].split(b" ")[1]  # this connection's, before the others' come
        await asyncio.sleep(0.01)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(path), path))

    async with serving(echo_path) as (server, origin):
        pool = ConnectionPool(keep=2, timeout=5)
        replies = await asyncio.gather(*(pool.exchange(origin, request(f"/{i}")) for i in range(8)))
        assert [r.body for r in replies] == [f"/{i}".encode() for i in range(8)]
        assert len(pool._idle) == 2, "only `keep` connections stay open"
        pool.close()


async def test_an_idle_connection_seen_closed_is_not_taken() -> None:
    async def answer_then_close(_: int, __: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await w.drain()
        w.close()  # as a server ending an idle keep-alive connection (no Connection: close)

    async with serving(answer_then_close) as (server, origin):
        pool = ConnectionPool(timeout=5)
        await pool.exchange(origin, request())
        await asyncio.sleep(0.05)  # the close reaches the client while the connection is idle
        assert (await pool.exchange(origin, request())).status == 200
        assert (server.connections, server.requests) == (2, 2)
        pool.close()


async def test_a_reused_connection_closed_before_any_answer_is_replaced_at_once() -> None:
    """The server ends a kept-alive connection just as a request goes out on it (the close
    and the request cross): nothing of an answer came, so the request goes again at once on a
    new connection instead of failing (and waiting out a retry's backoff)."""

    async def close_the_second(n: int, __: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        if n == 2:
            w.close()  # the first connection's second request: dropped, no answer
            return
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await w.drain()

    async with serving(close_the_second) as (server, origin):
        pool = ConnectionPool(timeout=5)
        await pool.exchange(origin, request())
        assert (await pool.exchange(origin, request())).status == 200
        assert (server.connections, server.requests) == (2, 3)
        pool.close()


async def test_an_answer_cut_short_is_an_error_and_not_sent_again() -> None:
    async def half(_: int, __: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{")
        await writer.drain()
        writer.close()

    async with serving(half) as (server, origin):
        pool = ConnectionPool(timeout=5)
        with pytest.raises(HttpError, match="mid-answer"):
            await pool.exchange(origin, request())
        assert server.requests == 1


async def test_a_stalled_answer_times_out_and_its_connection_is_dropped() -> None:
    stalled = asyncio.Event()

    async def stall(n: int, __: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if n == 1:
            writer.write(OK)
            return
        await stalled.wait()

    async with serving(stall) as (_server, origin):
        pool = ConnectionPool(timeout=0.3)
        await pool.exchange(origin, request())
        with pytest.raises(TimeoutError):
            await pool.exchange(origin, request())
        assert not pool._idle, "a connection whose answer never came is not reused"
        stalled.set()
        pool.close()


async def test_connection_close_answers_are_not_reused() -> None:
    async def closing(_: int, __: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")

    async with serving(closing) as (server, origin):
        pool = ConnectionPool(timeout=5)
        await pool.exchange(origin, request())
        await pool.exchange(origin, request())
        assert server.connections == 2


async def test_a_new_origin_retires_the_old_origins_connections() -> None:
    """A new server or TLS context: the old origin's idle connections close at once, and one
    still in an exchange closes when its answer is in (it never joins the new origin's)."""
    held = asyncio.Event()

    async def held_answer(_: int, __: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await held.wait()
        writer.write(OK)

    async with serving(answer_ok) as (_, first), serving(held_answer) as (__, slow):
        pool = ConnectionPool(timeout=5)
        await pool.exchange(first, request())
        kept = pool._idle[0]
        late = asyncio.create_task(pool.exchange(slow, request()))
        await asyncio.sleep(0.05)  # the slow origin's exchange is under way
        assert kept.closed
        await pool.exchange(first, request())  # back to the first origin, as after a rotation
        held.set()
        assert (await late).status == 200
        assert len(pool._idle) == 1
        assert all(not c.closed for c in pool._idle), "only the first origin's connection kept"
        pool.close()


async def test_close_ends_exchanges_in_flight_too() -> None:
    never = asyncio.Event()

    async def stall(_: int, __: asyncio.StreamReader, ___: asyncio.StreamWriter) -> None:
        await never.wait()

    async with serving(stall) as (_, origin):
        pool = ConnectionPool(timeout=30)
        exchange = asyncio.create_task(pool.exchange(origin, request()))
        await asyncio.sleep(0.05)  # the request is out, its answer awaited
        pool.close()
        with pytest.raises(HttpError, match="connection closed"):
            await asyncio.wait_for(exchange, 5)
        never.set()


async def test_nothing_listening_is_an_http_error() -> None:
    async with serving(answer_ok) as (_, origin):
        pass  # closed: the port is free again
    with pytest.raises(HttpError, match="cannot connect"):
        await ConnectionPool(timeout=5).exchange(origin, request())


# -- TLS, on each event loop the operator may run on ----------------------------------------


@pytest.mark.parametrize(
    "loop_factory", [asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"]
)
def test_exchanges_over_tls_on_either_event_loop(
    loop_factory: Callable[[], asyncio.AbstractEventLoop], tmp_path: Path
) -> None:
    """uvloop's TLS transport is no subclass of ``asyncio.Transport``; the pool must not care."""
    authority = Authority.create(tmp_path)
    pair = authority.issue(
        "server", "/CN=127.0.0.1", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
    )
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(pair.cert, pair.key)
    trusted = ssl.create_default_context(cafile=str(authority.cert))

    async def scenario() -> list[bytes]:
        listener = await asyncio.start_server(Server(answer_ok).serve, "127.0.0.1", 0, ssl=served)
        port = listener.sockets[0].getsockname()[1]
        origin = Origin("127.0.0.1", port, trusted)
        pool = ConnectionPool(keep=2, timeout=5)
        try:
            return [(await pool.exchange(origin, request())).body for _ in range(3)]
        finally:
            pool.close()
            listener.close()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        assert runner.run(scenario()) == [b'{"a":1}'] * 3
