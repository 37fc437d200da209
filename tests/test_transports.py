"""The raw TCP transport on a socket pair: zero-copy queueing and flow control."""

from __future__ import annotations

import asyncio
import socket

import numpy as np
import pytest

from shoal.errors import CommClosedError
from shoal.protocol.frames import FrameDecoder
from shoal.protocol.limits import Limits
from shoal.protocol.transports import SocketTransport

pytestmark = pytest.mark.timeout(30)
MiB = 1024 * 1024


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


async def test_unsent_bytes_wait_as_views_of_the_callers_buffer(pair) -> None:
    a, _ = pair
    transport = SocketTransport(a, FrameDecoder(Limits()))
    blob = np.zeros(16 * MiB, dtype=np.uint8)
    transport.write([b"head", memoryview(blob)])
    assert 0 < transport.write_buffer_size < 16 * MiB + 4
    waiting = transport._queue[-1]
    assert np.shares_memory(np.frombuffer(waiting, dtype=np.uint8), blob)
    transport.lose(None)
    assert transport.write_buffer_size == 0


async def test_drain_wakes_at_its_mark_while_the_rest_is_still_going_out(pair) -> None:
    a, b = pair
    transport = SocketTransport(a, FrameDecoder(Limits()))
    transport.write([memoryview(np.zeros(32 * MiB, dtype=np.uint8))])
    waiter = asyncio.ensure_future(transport.drain(4 * MiB))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    received = 0
    while not waiter.done():
        assert loop.time() < deadline
        try:
            received += len(b.recv(256 * 1024))
        except BlockingIOError:
            pass  # nothing buffered yet: give the writer its turn
        await asyncio.sleep(0)
    assert 0 < transport.write_buffer_size <= 4 * MiB
    assert received < 32 * MiB
    transport.lose(None)


async def test_writing_to_a_lost_transport_raises(pair) -> None:
    a, _ = pair
    transport = SocketTransport(a, FrameDecoder(Limits()))
    lost: list[object] = []
    transport.on_lost = lost.append
    transport.lose(None)
    transport.lose(None)
    assert lost == [None]  # reported once
    with pytest.raises(CommClosedError):
        transport.write([b"x"])


async def test_peer_hangup_is_reported_once(pair) -> None:
    a, b = pair
    transport = SocketTransport(a, FrameDecoder(Limits()))
    lost = asyncio.get_running_loop().create_future()
    transport.on_lost = lost.set_result
    b.close()
    async with asyncio.timeout(5):
        assert await lost is None
    assert transport.closed
