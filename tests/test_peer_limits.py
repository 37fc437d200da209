"""Peers with different advertised limits on 127.0.0.1: a scheduler, a worker with the
default limits and one (or a client) with small ones. Values over the small side's
limits are never reported missing: answers come in parts, a single value too large
is refused by name with its size and the limits, and the holder keeps its copy."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest

from shoal import Client
from shoal.client.loop import LoopThread
from shoal.errors import ValueTooLarge
from shoal.protocol.answers import Parts
from shoal.protocol.comm import connect
from shoal.protocol.limits import KiB, Limits
from shoal.protocol.messages import DataSent, GetData, PutData
from shoal.protocol.serialize import serialize
from shoal.scheduler.server import Scheduler
from shoal.worker.server import Worker

pytestmark = [pytest.mark.usefixtures("no_leaks"), pytest.mark.timeout(60)]

WAIT_S = 20.0
# Small, but roomy enough for every message other than a large value.
SMALL = Limits(max_frames=64, max_header_bytes=64 * KiB, max_batch_bytes=256 * KiB)
SMALL_TEXT = "max_batch_bytes=262144, max_header_bytes=65536, max_frames=64"


def array(nbytes: int, fill: int = 7) -> np.ndarray:
    return np.full(nbytes // 8, fill, dtype=np.int64)


def total(*arrays: np.ndarray) -> int:
    return int(sum(int(a.sum()) for a in arrays))


@dataclass
class Peers:
    scheduler: Scheduler
    roomy: Worker  # default limits
    small: Worker  # SMALL limits
    thread: LoopThread

    def holders(self, key: object) -> list[str]:
        """The data addresses the scheduler lists for `key`, read on its loop."""

        async def read() -> list[str]:
            ts = self.scheduler.state.tasks.get(key)
            return [] if ts is None else [ws.address for ws in ts.who_has]

        return self.thread.run(read(), WAIT_S)


async def _start() -> tuple[Scheduler, Worker, Worker]:
    scheduler = await Scheduler("tcp://127.0.0.1:0").start()
    roomy = await Worker(scheduler.address, name="roomy").start()
    small = await Worker(scheduler.address, name="small", data_limits=SMALL).start()
    return scheduler, roomy, small


async def _stop(scheduler: Scheduler, *workers: Worker) -> None:
    for worker in workers:
        await worker.close()
    await scheduler.close()


@pytest.fixture
def peers() -> Iterator[Peers]:
    thread = LoopThread("test-peer-limits")
    scheduler, roomy, small = thread.run(_start(), WAIT_S)
    try:
        yield Peers(scheduler, roomy, small, thread)
    finally:
        thread.run(_stop(scheduler, roomy, small), WAIT_S)
        thread.stop()


@pytest.fixture
def client(peers: Peers) -> Iterator[Client]:
    with Client(peers.scheduler.address, timeout=WAIT_S) as c:
        c.wait_for_workers(2, timeout=WAIT_S)
        yield c


def test_values_together_over_a_workers_limits_arrive_in_parts(
    peers: Peers, client: Client
) -> None:
    # three values of 120 KiB: each fits the small worker's 256 KiB, all three do not
    parts = [array(120 * KiB, fill=i) for i in range(3)]
    futures = client.scatter(parts, workers=[peers.roomy.address])
    f = client.submit(total, *futures, workers=[peers.small.address])
    assert f.result(timeout=WAIT_S) == sum(total(p) for p in parts)
    for future in futures:
        assert peers.holders(future.key) == [peers.roomy.address]


def test_a_scattered_value_over_a_workers_limits_is_refused_by_name_and_kept(
    peers: Peers, client: Client
) -> None:
    value = array(2**20)
    big = client.scatter(value, workers=[peers.roomy.address])
    f = client.submit(total, big, workers=[peers.small.address])
    with pytest.raises(ValueTooLarge) as info:
        f.result(timeout=WAIT_S)
    text = str(info.value)
    assert f"{big.key!r} ({serialize(value).nbytes} bytes" in text, text
    assert SMALL_TEXT in text, text
    # never reported missing: the scheduler still lists the holder, and the value is whole
    assert peers.holders(big.key) == [peers.roomy.address]
    assert np.array_equal(big.result(timeout=WAIT_S), value)
    # the roomy worker fetches it from the same holder
    g = client.submit(total, big, workers=[peers.roomy.address], pure=False)
    assert g.result(timeout=WAIT_S) == total(value)


def test_a_client_with_small_limits_gathers_in_parts_or_is_refused_by_name(
    peers: Peers, client: Client
) -> None:
    parts = [array(120 * KiB, fill=i) for i in range(3)]
    value = array(2**20)
    kept = client.scatter(value, workers=[peers.roomy.address])
    with Client(peers.scheduler.address, timeout=WAIT_S, data_limits=SMALL) as small:
        got = small.gather(small.scatter(parts, workers=[peers.roomy.address]))
        assert all(np.array_equal(a, b) for a, b in zip(got, parts, strict=True))
        mine = small.scatter(value, workers=[peers.roomy.address])
        with pytest.raises(ValueTooLarge) as info:
            mine.result(timeout=WAIT_S)
        text = str(info.value)
        assert f"({serialize(value).nbytes} bytes" in text and SMALL_TEXT in text, text
        assert peers.holders(mine.key) == [peers.roomy.address]
    assert np.array_equal(kept.result(timeout=WAIT_S), value)


async def test_a_holder_splits_its_answer_to_a_peer_with_small_limits() -> None:
    scheduler = await Scheduler("tcp://127.0.0.1:0").start()
    worker = await Worker(scheduler.address, name="holder").start()
    try:
        # a put-data of each value alone fits; their answer together does not
        comm = await connect(worker.address, role="client", limits=SMALL)
        try:
            data = {f"v{i}": serialize(array(120 * KiB, fill=i)) for i in range(3)}
            data["big"] = serialize(array(2**20))
            for key, payload in data.items():
                comm.send(PutData(data={key: payload}, request_id=1))
            comm.send(GetData(keys=(*data, "nope"), request_id=2))
            answers: list[DataSent] = []
            async with asyncio.timeout(WAIT_S):
                while not answers or answers[-1].more:
                    answers += [m for m in await comm.read() if type(m) is DataSent]
        finally:
            await comm.close()
        assert [a.request_id for a in answers] == [2] * 4
        assert [sorted(a.data) for a in answers] == [["v0"], ["v1"], ["v2"], []]
        assert [a.more for a in answers] == [True, True, True, False]
        last = answers[-1]
        assert (last.missing, last.too_large) == (("nope",), {"big": data["big"].nbytes})
    finally:
        await worker.close()
        await scheduler.close()


def test_parts_keep_only_the_keys_asked_until_the_last() -> None:
    parts = Parts(["a", ("b", 1), "c"])
    one, two = serialize(1), serialize(2)
    assert parts.add(DataSent(data={"a": one, "x": two}, request_id=3, more=True)) is None
    assert parts.add(DataSent(data={}, request_id=3, too_large={"y": 9}, more=True)) is None
    whole = parts.add(DataSent(data={}, request_id=3, missing=("z", "c"), too_large={("b", 1): 5}))
    assert whole == DataSent(data={"a": one}, request_id=3, missing=("c",), too_large={("b", 1): 5})
