"""Live Comm tests over loopback tcp:// and inproc://: round trips, pings, batching,
closing, handler failures, limits, and the rule against insecure non-loopback listening."""

from __future__ import annotations

import asyncio
import logging
import traceback

import numpy as np
import pytest

from shoal.errors import CommClosedError, MessageTooLarge
from shoal.protocol.address import parse_address
from shoal.protocol.comm import Comm, connect, listen
from shoal.protocol.limits import Limits
from shoal.protocol.messages import DataSent, GetData
from shoal.protocol.schema import Message
from shoal.protocol.serialize import deserialize, serialize
from shoal.protocol.transports import InprocTransport, SocketTransport, StreamTransport

pytestmark = pytest.mark.usefixtures("no_leaks")

# Generous bound on any single wait in these tests; loopback answers in milliseconds.
WAIT_S = 10.0

OFFSET = 3
STORE: dict[object, object] = {
    "array": np.arange(100_000, dtype=np.float64),  # out-of-band buffer: frames of its own
    ("tuple-key", 1): {"nested": [1, "two", b"three"], "none": None},  # small: inline
    "blob": b"\x00\xff" * 300_000,  # 600 kB pickled in band: one frame
    "function": lambda x: x + OFFSET,  # pickled by value
}


@pytest.fixture
def batch_writers(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The transport behind every write from now on; an Outbox writes once per batch.

    Patched on the classes, so it must be set up before the comms are made
    (their Outbox binds `transport.write` when the Comm is built).
    """
    writers: list[object] = []
    for cls in (SocketTransport, StreamTransport, InprocTransport):

        def write(self, buffers, _original=cls.write):
            writers.append(self)
            return _original(self, buffers)

        monkeypatch.setattr(cls, "write", write)
    return writers


async def read_until_closed(comm: Comm) -> tuple[list[Message], CommClosedError]:
    """Everything `comm` receives until it closes, and the error that ended it."""
    msgs: list[Message] = []
    async with asyncio.timeout(WAIT_S):
        while True:
            try:
                msgs.extend(await comm.read())
            except CommClosedError as exc:
                return msgs, exc


async def serve_store(comm: Comm) -> None:
    """Handler: answer each GetData with a DataSent of the STORE values it names."""
    while True:
        for msg in await comm.read():
            assert isinstance(msg, GetData)
            found = {k: serialize(STORE[k]) for k in msg.keys if k in STORE}
            missing = tuple(k for k in msg.keys if k not in STORE)
            comm.send(DataSent(data=found, request_id=msg.request_id, missing=missing))


def recorder() -> tuple[asyncio.Queue, object]:
    """A handler that records each connection's messages and closing error, and its queue."""
    results: asyncio.Queue = asyncio.Queue()

    async def handler(comm: Comm) -> None:
        results.put_nowait(await read_until_closed(comm))

    return results, handler


async def test_request_response_round_trip(bind: str) -> None:
    """GetData in, DataSent out: keys, request id, missing keys and payloads survive."""
    async with await listen(bind, serve_store) as listener:
        comm = await connect(listener.address)
        try:
            keys = ("array", ("tuple-key", 1), "blob", "function", "absent")
            comm.send(GetData(keys=keys, request_id=7))
            async with asyncio.timeout(WAIT_S):
                (reply,) = await comm.read()
        finally:
            await comm.close()
    assert isinstance(reply, DataSent)
    assert reply.request_id == 7
    assert reply.missing == ("absent",)
    assert set(reply.data) == {"array", ("tuple-key", 1), "blob", "function"}
    values = {k: deserialize(v) for k, v in reply.data.items()}
    np.testing.assert_array_equal(values["array"], STORE["array"])
    assert values[("tuple-key", 1)] == STORE[("tuple-key", 1)]
    assert values["blob"] == STORE["blob"]
    assert values["function"](1) == 1 + OFFSET


async def test_ping_both_ways(bind: str) -> None:
    """Each side measures a round trip; pings and pongs never reach read()."""
    server_saw: asyncio.Future[tuple] = asyncio.get_running_loop().create_future()

    async def handler(comm: Comm) -> None:
        first = await comm.read()  # answer the client's first message
        rtt = await comm.ping()
        comm.send(GetData(keys=("done",)))
        server_saw.set_result((first, rtt))
        await read_until_closed(comm)

    async with await listen(bind, handler) as listener:
        comm = await connect(listener.address)
        try:
            async with asyncio.timeout(WAIT_S):
                rtt = await comm.ping()
                comm.send(GetData(keys=("start",)))
                first, server_rtt = await server_saw
                client_got = await comm.read()
        finally:
            await comm.close()
    assert 0 < rtt < WAIT_S
    assert 0 < server_rtt < WAIT_S
    assert [m.keys for m in first] == [("start",)]
    assert [m.keys for m in client_got] == [("done",)]


async def test_one_tick_of_messages_is_one_batch_in_order(
    bind: str, batch_writers: list[object]
) -> None:
    """1000 messages sent in one tick leave in one write and arrive in one read, in order."""
    count = 1000
    results, handler = recorder()
    async with await listen(bind, handler) as listener:
        comm = await connect(listener.address)
        try:
            writes_before = batch_writers.count(comm.transport)
            for i in range(count):
                comm.send(GetData(keys=(f"key-{i}",), request_id=i))
            await comm.drain()
            assert batch_writers.count(comm.transport) - writes_before == 1
        finally:
            await comm.close("sent them all")
        async with asyncio.timeout(WAIT_S):
            msgs, _ = await results.get()
    assert [m.request_id for m in msgs] == list(range(count))
    assert [m.keys for m in msgs] == [(f"key-{i}",) for i in range(count)]


async def test_one_tick_arrives_in_one_read(bind: str) -> None:
    """The receiver's first read() returns the whole tick's batch, not a part of it."""
    count = 1000
    first_read: asyncio.Future[list[Message]] = asyncio.get_running_loop().create_future()

    async def handler(comm: Comm) -> None:
        first_read.set_result(await comm.read())
        await read_until_closed(comm)

    async with await listen(bind, handler) as listener:
        comm = await connect(listener.address)
        try:
            comm.send(*(GetData(keys=("k",), request_id=i) for i in range(count)))
            async with asyncio.timeout(WAIT_S):
                msgs = await first_read
        finally:
            await comm.close()
    assert [m.request_id for m in msgs] == list(range(count))


async def test_graceful_close_delivers_queued_messages_then_reason(bind: str) -> None:
    """close() after send() without drain: the peer reads everything, then the reason."""
    results, handler = recorder()
    async with await listen(bind, handler) as listener:
        comm = await connect(listener.address)
        comm.send(*(GetData(keys=(f"k{i}",), request_id=i) for i in range(3)))
        await comm.close("done for today")
        async with asyncio.timeout(WAIT_S):
            msgs, exc = await results.get()
    assert [m.request_id for m in msgs] == [0, 1, 2]
    assert "closed by the peer: done for today" in str(exc)
    assert comm.closed
    with pytest.raises(CommClosedError, match="done for today"):
        comm.send(GetData(keys=("late",)))
    with pytest.raises(CommClosedError):
        await comm.read()


async def test_listener_side_close_reaches_the_client(bind: str) -> None:
    """The handler's close() reason reaches the client after the messages queued before it."""

    async def handler(comm: Comm) -> None:
        await comm.read()
        comm.send(GetData(keys=("first",)), GetData(keys=("second",)))
        await comm.close("server shutting down")

    async with await listen(bind, handler) as listener:
        comm = await connect(listener.address)
        comm.send(GetData(keys=("go",)))
        msgs, exc = await read_until_closed(comm)
    assert [m.keys for m in msgs] == [("first",), ("second",)]
    assert "server shutting down" in str(exc)


async def test_failing_handler_does_not_stop_the_listener(
    bind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A handler that raises costs its own connection (one ERROR with traceback) only."""
    calls = 0

    async def handler(comm: Comm) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            await comm.read()
            raise RuntimeError("handler bug")
        await serve_store(comm)

    caplog.set_level(logging.WARNING, logger="shoal")
    async with await listen(bind, handler) as listener:
        first = await connect(listener.address)
        first.send(GetData(keys=("x",)))
        _, exc = await read_until_closed(first)
        assert isinstance(exc, CommClosedError)

        second = await connect(listener.address)
        try:
            second.send(GetData(keys=("array",), request_id=2))
            async with asyncio.timeout(WAIT_S):
                (reply,) = await second.read()
        finally:
            await second.close()
    assert reply.request_id == 2
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert errors[0].exc_info is not None
    assert isinstance(errors[0].exc_info[1], RuntimeError)


async def test_listener_close_closes_live_connections(bind: str) -> None:
    """listener.close() cancels the handlers and every client sees its connection close."""
    started = 0
    all_started = asyncio.Event()

    async def handler(comm: Comm) -> None:
        nonlocal started
        started += 1
        if started == 3:
            all_started.set()
        await read_until_closed(comm)

    listener = await listen(bind, handler)
    try:
        comms = [await connect(listener.address) for _ in range(3)]
        async with asyncio.timeout(WAIT_S):
            await all_started.wait()
        assert len(listener.comms) == 3
    finally:
        await listener.close()
    assert not listener.comms
    for comm in comms:
        msgs, exc = await read_until_closed(comm)
        assert msgs == []
        assert isinstance(exc, CommClosedError)
    with pytest.raises(OSError):  # ConnectionRefusedError for both schemes
        await connect(listener.address, timeout=WAIT_S)


async def test_message_over_peer_limits_raises_at_send(bind: str) -> None:
    """send() refuses a message over the limits the peer advertised; the comm stays usable."""
    small = Limits(max_frames=4, max_header_bytes=2048, max_batch_bytes=64 * 1024)
    results, handler = recorder()
    async with await listen(bind, handler, limits=small) as listener:
        comm = await connect(listener.address)
        try:
            too_many_bytes = DataSent(data={"b": serialize(b"x" * 100_000)})
            too_many_frames = DataSent(data={i: serialize(np.ones(10)) for i in ("a", "b")})
            too_big_header = GetData(keys=tuple(f"key-{i:05}" for i in range(500)))
            for msg in (too_many_bytes, too_many_frames, too_big_header):
                with pytest.raises(MessageTooLarge, match="over the peer's limits"):
                    comm.send(msg)
            comm.send(GetData(keys=("fits",)))
            async with asyncio.timeout(WAIT_S):
                await comm.ping()
        finally:
            await comm.close()
        async with asyncio.timeout(WAIT_S):
            msgs, _ = await results.get()
    assert [m.keys for m in msgs] == [("fits",)]


async def test_send_splits_batches_to_fit_peer_max_frames(
    bind: str, batch_writers: list[object]
) -> None:
    """With max_frames=5 each batch holds two 2-frame arrays: five messages, three batches."""
    results, handler = recorder()
    arrays = [np.full(1000, i, dtype=np.int64) for i in range(5)]
    async with await listen(bind, handler, limits=Limits(max_frames=5)) as listener:
        comm = await connect(listener.address)
        try:
            writes_before = batch_writers.count(comm.transport)
            for i, arr in enumerate(arrays):
                payload = serialize(arr)
                assert len(payload.frames) == 2  # pickle stream + the array's buffer
                comm.send(DataSent(data={"a": payload}, request_id=i))
            await comm.drain()
            assert batch_writers.count(comm.transport) - writes_before == 3
        finally:
            await comm.close()
        async with asyncio.timeout(WAIT_S):
            msgs, _ = await results.get()
    assert [m.request_id for m in msgs] == [0, 1, 2, 3, 4]
    for msg, arr in zip(msgs, arrays, strict=True):
        np.testing.assert_array_equal(deserialize(msg.data["a"]), arr)


async def test_non_loopback_listen_needs_token_or_explicit_insecure() -> None:
    """0.0.0.0 without a token is refused; allow_insecure or a token makes it listen."""

    async def handler(comm: Comm) -> None:
        await read_until_closed(comm)

    with pytest.raises(PermissionError, match="without a cluster token"):
        await listen("tcp://0.0.0.0:0", handler)

    for options, token in (({"allow_insecure": True}, None), ({"token": "s3cret"}, "s3cret")):
        async with await listen("tcp://0.0.0.0:0", handler, **options) as listener:
            port = parse_address(listener.address).port
            assert port != 0
            comm = await connect(f"tcp://127.0.0.1:{port}", token=token)
            try:
                async with asyncio.timeout(WAIT_S):
                    await comm.ping()
            finally:
                await comm.close()


async def test_failed_sends_on_a_closed_comm_hold_nothing(bind: str) -> None:
    """Each send() on a closed comm raises an error whose traceback is just that call's."""

    async def handler(comm: Comm) -> None:
        await read_until_closed(comm)

    async with await listen(bind, handler) as listener:
        comm = await connect(listener.address)
        await comm.close("done")
    errors = []
    for _ in range(100):
        with pytest.raises(CommClosedError, match="done") as caught:
            comm.send(GetData(keys=("late",)))
        errors.append(caught.value)
    depths = {len(traceback.extract_tb(exc.__traceback__)) for exc in errors}
    assert max(depths) <= 3, f"traceback depths {sorted(depths)}"


async def test_a_connection_reset_as_it_opens_leaves_no_socket_open(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The peer resets the connection between connect() and the transport's start
    (getpeername fails): the socket is closed, not left for the collector."""
    import socket

    from shoal.protocol import comm as comm_module

    made: list[socket.socket] = []

    class Resetting(SocketTransport):
        def __init__(self, sock: socket.socket, decoder: object) -> None:
            made.append(sock)
            raise OSError(107, "Transport endpoint is not connected")

    listener = socket.create_server(("127.0.0.1", 0))
    try:
        monkeypatch.setattr(comm_module, "SocketTransport", Resetting)
        port = listener.getsockname()[1]
        with pytest.raises(OSError, match="not connected"):
            await connect(f"tcp://127.0.0.1:{port}", timeout=5)
        assert len(made) == 1 and made[0].fileno() == -1  # closed
    finally:
        listener.close()
