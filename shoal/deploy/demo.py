"""`shoal demo`: a short, real run of what shoal has, on loopback, printed.

It starts a token-guarded listener and a client in this process, measures
round trips, and moves a numpy array through the wire protocol and back.
"""

from __future__ import annotations

import asyncio
import secrets
import statistics
import time

import numpy as np

from shoal.protocol.comm import Comm, connect, listen
from shoal.protocol.messages import DataSent, GetData
from shoal.protocol.serialize import deserialize, serialize


async def _serve(comm: Comm) -> None:
    """Answer GetData with squares of the requested sizes' aranges."""
    while True:
        for msg in await comm.read():
            if isinstance(msg, GetData):
                data = {key: serialize(np.arange(key[1], dtype="f8") ** 2) for key in msg.keys}
                comm.send(DataSent(data=data, request_id=msg.request_id))


async def run_demo(array_mb: int = 64, round_trips: int = 200) -> dict[str, float]:
    token = secrets.token_hex(16)
    async with await listen("tcp://127.0.0.1:0", _serve, token=token) as listener:
        print(f"listening on {listener.address} (cluster token required)")
        comm = await connect(listener.address, token=token, name="demo")
        rtts = sorted([await comm.ping() for _ in range(round_trips)])
        n = array_mb * 1024 * 1024 // 8
        start = time.perf_counter()
        comm.send(GetData(keys=(("squares", n),), request_id=1))
        (reply,) = await comm.read()
        elapsed = time.perf_counter() - start
        squares = deserialize(reply.data[("squares", n)], what="demo result")
        await comm.close("demo finished")
    expected_sum = float(np.sum(np.arange(n, dtype="f8") ** 2))
    assert float(squares.sum()) == expected_sum
    figures = {
        "rtt_median_us": statistics.median(rtts) * 1e6,
        "rtt_p99_us": rtts[int(len(rtts) * 0.99) - 1] * 1e6,
        "array_mb": array_mb,
        "array_s": elapsed,
    }
    print(
        f"{round_trips} round trips: median {figures['rtt_median_us']:.0f} us, "
        f"p99 {figures['rtt_p99_us']:.0f} us"
    )
    print(
        f"{array_mb} MB array computed, sent and received in {elapsed * 1000:.0f} ms; "
        f"sum of squares = {squares.sum():.6g} (checked)"
    )
    return figures


def main(array_mb: int) -> int:
    asyncio.run(run_demo(array_mb=array_mb))
    return 0
