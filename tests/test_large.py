"""Large arrays on a loopback connection: intact, writable, never copied on the way.

The sender runs in a subprocess so that its peak memory (ru_maxrss) measures the
send path alone; the receiver is this test process.
"""

from __future__ import annotations

import asyncio
import json
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest

from shoal.protocol.comm import Comm, connect, listen
from shoal.protocol.messages import DataSent, GetData
from shoal.protocol.serialize import Serialized, deserialize, serialize

pytestmark = pytest.mark.usefixtures("no_leaks")

WAIT_S = 30.0
ARRAY_BYTES = 200 * 1000 * 1000
CHUNK = 5_000_000  # elements compared at a time, so checking allocates little

# Imports come first so that the baseline covers them; the array is written in
# full by arange, so all of its pages are resident before the baseline is read.
SENDER = """
import asyncio, json, resource, sys

import numpy as np

from shoal.protocol.comm import connect
from shoal.protocol.messages import DataSent
from shoal.protocol.serialize import serialize


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


async def main(address: str, count: int) -> None:
    array = np.arange(count, dtype=np.float64)
    baseline = peak_rss()
    comm = await connect(address)
    comm.send(DataSent(data={"array": serialize(array)}, request_id=1))
    await comm.drain()
    (ack,) = await comm.read()
    after = peak_rss()
    await comm.close()
    print(json.dumps({"baseline": baseline, "after": after, "ack": ack.request_id}))


asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def is_arange(array: np.ndarray) -> bool:
    """array == arange(len(array)), compared a chunk at a time."""
    for start in range(0, array.size, CHUNK):
        stop = min(start + CHUNK, array.size)
        if not np.array_equal(array[start:stop], np.arange(start, stop, dtype=np.float64)):
            return False
    return True


async def run_sender(address: str, count: int) -> dict[str, int]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        SENDER,
        address,
        str(count),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        async with asyncio.timeout(WAIT_S):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, err.decode()
    return json.loads(out)


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_200mb_array_crosses_intact_writable_and_uncopied() -> None:
    """A 200 MB float64 array arrives equal and writable, received in place (the array
    is a view of the frame it came in), and the sender's peak memory grows by well under
    a quarter of the array's size: its buffer is written from where it lies."""
    count = ARRAY_BYTES // 8
    received: asyncio.Future[tuple[np.ndarray, Serialized]] = (
        asyncio.get_running_loop().create_future()
    )

    async def handler(comm: Comm) -> None:
        (msg,) = await comm.read()
        payload = msg.data["array"]
        received.set_result((deserialize(payload), payload))
        comm.send(GetData(keys=("ack",), request_id=msg.request_id))
        while True:  # until the sender hangs up
            await comm.read()

    async with await listen("tcp://127.0.0.1:0", handler) as listener:
        report = await run_sender(listener.address, count)
        array, payload = await received

    assert report["ack"] == 1
    assert array.dtype == np.float64 and array.shape == (count,)
    assert array.flags.writeable
    assert is_arange(array)
    frame = np.frombuffer(payload.frames[1], dtype=np.uint8)
    assert np.shares_memory(array, frame), "the array was copied out of its frame"
    array[0] = -1.0  # writable for real, not just flagged so
    assert array[0] == -1.0
    extra = report["after"] - report["baseline"]
    assert extra < 0.25 * ARRAY_BYTES, f"sender peak grew {extra / 1e6:.0f} MB"


async def test_arrays_in_one_message_get_their_own_buffers() -> None:
    """Two arrays in one DataSent arrive in separate buffers: changing one leaves the
    other alone, and dropping one frees its buffer while the other lives on."""
    sent = {"a": np.arange(1_000_000, dtype=np.float64), "b": np.ones(1_000_000)}
    small = np.arange(100, dtype=np.int32)  # under 64 KiB: arrives in a bytearray frame
    got: asyncio.Queue[DataSent] = asyncio.Queue()  # get() keeps no reference, unlike a Future

    async def handler(comm: Comm) -> None:
        (msg,) = await comm.read()
        got.put_nowait(msg)
        while True:
            await comm.read()

    async with await listen("tcp://127.0.0.1:0", handler) as listener:
        comm = await connect(listener.address)
        try:
            data = {**{k: serialize(v) for k, v in sent.items()}, "small": serialize(small)}
            comm.send(DataSent(data=data))
            async with asyncio.timeout(WAIT_S):
                msg = await got.get()
        finally:
            await comm.close()

    a, b, c = (deserialize(msg.data[k]) for k in ("a", "b", "small"))
    for x, y in ((a, b), (a, c), (b, c)):
        assert not np.shares_memory(x, y)
    np.testing.assert_array_equal(c, small)
    a[:] = -1.0
    c[:] = -1
    np.testing.assert_array_equal(b, sent["b"])
    assert all(x.flags.writeable for x in (a, b, c))

    # The memory under `a` is owned by the frame it was received into.
    a_owner = weakref.ref(msg.data["a"].frames[1].obj)
    del msg, a
    assert a_owner() is None, "dropping the array did not free its buffer"
    np.testing.assert_array_equal(b, sent["b"])
