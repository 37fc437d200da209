"""Raw peers on loopback: what a stranger sends reaches the log escaped, and its
refusals are logged a few at a time per host, then counted."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging

import pytest

from shoal.protocol import handshake as hs
from shoal.protocol import messages as m
from shoal.protocol.address import parse_address
from shoal.protocol.codec import encode_batch
from shoal.protocol.comm import Comm, Listener, connect, listen
from shoal.protocol.frames import encode_frames
from shoal.protocol.limits import Limits
from shoal.protocol.refusals import RefusalLog

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("no_leaks")]

FORGED = "\n2030-01-01 00:00:00 CRITICAL shoal.scheduler: FORGED LINE"


def batch(*msgs: m.Message) -> bytes:
    return b"".join(bytes(b) for b in encode_frames(encode_batch(list(msgs))))


async def nothing(comm: Comm) -> None:
    await comm.read()


async def send_and_read_to_close(listener: Listener, data: bytes) -> bytes:
    addr = parse_address(listener.address)
    reader, writer = await asyncio.open_connection(addr.host, addr.port)
    try:
        writer.write(data)
        got = b""
        async with asyncio.timeout(10):
            with contextlib.suppress(ConnectionResetError):
                while chunk := await reader.read(65536):
                    got += chunk
        return got
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def assert_no_forged_line(caplog: pytest.LogCaptureFixture) -> None:
    assert caplog.records, "nothing was logged"
    for record in caplog.records:
        text = record.getMessage()
        assert "\n" not in text, f"a peer's string broke a log line: {text!r}"
    assert any("\\n2030" in r.getMessage() for r in caplog.records)  # there, escaped


async def test_a_handshake_failed_reason_cannot_forge_a_log_line(caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="shoal")
    async with await listen("tcp://127.0.0.1:0", nothing) as listener:
        await send_and_read_to_close(listener, batch(m.HandshakeFailed(reason=FORGED)))
    assert_no_forged_line(caplog)


async def test_a_hello_version_is_escaped_in_the_log_and_the_refusal(caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="shoal")
    hello = hs.make_hello("client", "x", None, Limits())
    hello = dataclasses.replace(hello, protocol=hello.protocol + 1, version="9" + FORGED)
    async with await listen("tcp://127.0.0.1:0", nothing) as listener:
        answer = await send_and_read_to_close(listener, batch(hello))
    assert b"\\n2030" in answer and b"\n2030" not in answer  # the refusal, escaped
    assert_no_forged_line(caplog)


async def test_a_close_reason_is_escaped(caplog) -> None:
    async def closer(comm: Comm) -> None:
        await comm.close(reason=FORGED)

    async with await listen("tcp://127.0.0.1:0", closer) as listener:
        comm = await connect(listener.address)
        with pytest.raises(Exception, match="FORGED LINE") as caught:
            async with asyncio.timeout(10):
                while True:
                    await comm.read()
        assert "\n" not in str(caught.value)
        comm.abort()


async def test_refusals_from_one_host_are_rate_limited_and_summarised(caplog) -> None:
    caplog.set_level(logging.WARNING, logger="shoal")
    garbage = batch(m.Ping(id=1))  # a ping before the hello: refused at once
    attempts = 60
    async with await listen("tcp://127.0.0.1:0", nothing) as listener:
        for _ in range(attempts):
            await send_and_read_to_close(listener, garbage)
    lines = [r.getMessage() for r in caplog.records if r.name == "shoal.protocol.comm"]
    full = [line for line in lines if line.startswith("refused connection from")]
    summaries = [line for line in lines if "more connection(s) from tcp://127.0.0.1" in line]
    assert len(full) == RefusalLog().burst
    assert len(summaries) == 1
    assert f"refused {attempts - len(full)} more" in summaries[0]
    assert "expected hello" in summaries[0]  # the last reason is kept


def test_refusal_log_windows_per_host() -> None:
    refusals = RefusalLog(burst=2, window_s=10.0)
    assert refusals.refused("a", "r1", 0.0) == (True, [])
    assert refusals.refused("a", "r2", 1.0) == (True, [])
    assert refusals.refused("a", "r3", 2.0) == (False, [])
    assert refusals.refused("b", "r4", 3.0) == (True, [])  # another host has its own budget
    assert refusals.refused("a", "r5", 4.0) == (False, [])
    full, due = refusals.refused("c", "r6", 10.5)  # a's window is over: its count is due
    assert full and len(due) == 1 and "refused 2 more" in str(due[0]) and due[0].last_reason == "r5"
    assert refusals.refused("a", "r7", 11.0) == (True, [])  # a fresh window
    assert refusals.close(12.0) == []  # nothing left out in the open windows


def test_refusal_log_tracks_a_bounded_number_of_hosts() -> None:
    refusals = RefusalLog(burst=1, window_s=100.0, max_hosts=3)
    refusals.refused("a", "x", 0.0)
    refusals.refused("a", "x", 0.0)
    for i, host in enumerate("bcd"):
        _, due = refusals.refused(host, "y", 1.0 + i)
    assert len(refusals._windows) == 3
    assert len(due) == 1 and due[0].host == "a" and "from a" in str(due[0])


async def test_a_peer_that_floods_requests_and_never_reads_is_cut_off(caplog, monkeypatch) -> None:
    """Its answers queue up to a bound (reading from it pauses), and once it has
    taken nothing for the stall timeout it is disconnected with that reason."""
    from shoal.protocol import connection
    from shoal.scheduler.server import Scheduler

    high, stall = 256 * 1024, 0.5
    monkeypatch.setattr(connection, "QUEUE_HIGH_WATER", high)
    monkeypatch.setattr(connection, "QUEUE_LOW_WATER", high // 4)
    monkeypatch.setattr(connection, "STALL_TIMEOUT_S", stall)
    caplog.set_level(logging.WARNING, logger="shoal")
    keys = tuple(f"key-{i:04d}" for i in range(500))  # each answer is about 6 KB
    async with Scheduler() as scheduler:
        peer = await connect(scheduler.address, role="client", name="flood")
        peer.send(m.RegisterClient(name="flood"))
        async with asyncio.timeout(10):
            await peer.read()  # client-registered
        peer.transport.pause_reading()  # from here on it never reads
        (theirs,) = scheduler.comms.values()
        sent = 0
        async with asyncio.timeout(30):
            while not theirs.closed:
                if peer.transport.write_buffer_size < 1024 * 1024 and sent < 20_000:
                    peer.send(*[m.WhoHas(keys=keys, request_id=i) for i in range(100)])
                    sent += 100
                await asyncio.sleep(0.01)
        # Far more answers were asked for than were ever queued at once.
        assert sent * 6000 > 20 * high
        assert theirs.queued_peak < high + 4 * 1024 * 1024
        assert "read nothing" in str(theirs._closed_exc)
        assert any(
            "disconnecting" in r.getMessage() and "read nothing" in r.getMessage()
            for r in caplog.records
        )
        peer.abort()


async def test_a_client_pointed_at_a_workers_data_port_hears_what_it_reached() -> None:
    from shoal.scheduler.server import Scheduler
    from shoal.worker.server import Worker

    async with Scheduler() as scheduler:
        worker = await Worker(scheduler.address, name="w1").start()
        try:
            comm = await connect(worker.address, role="client")
            comm.send(m.RegisterClient(name="lost"))
            with pytest.raises(Exception, match="closed") as caught:
                async with asyncio.timeout(10):
                    while True:
                        await comm.read()
            text = str(caught.value)
            assert "data port of worker 'w1'" in text and "register-client" in text
            assert scheduler.address in text and "no reason given" not in text
            comm.abort()
        finally:
            await worker.close()
