"""The client against a real scheduler and two in-process workers on 127.0.0.1:
submit, map, graphs, nested gather, remote errors, cancel, release, async use."""

from __future__ import annotations

import asyncio
import threading
import time
import traceback
from collections.abc import AsyncIterator, Iterator

import numpy as np
import pytest

from shoal import Client, as_completed, wait
from shoal.client.loop import LoopThread
from shoal.errors import CommClosedError, FutureCancelled, RemoteTraceback
from shoal.scheduler.server import Scheduler
from shoal.worker.server import Worker

# Generous bound on any single wait; loopback answers in milliseconds.
WAIT_S = 30.0

RELEASE = threading.Event()  # lets blocked tasks finish; the workers run in this process


def inc(x: int) -> int:
    return x + 1


def add(x: int, y: int) -> int:
    return x + y


def fail(x: int) -> int:
    return x // 0


def blocked(x: int) -> int:
    RELEASE.wait(WAIT_S)
    return x


async def start_cluster() -> tuple[Scheduler, list[Worker]]:
    scheduler = await Scheduler("tcp://127.0.0.1:0").start()
    workers = [await Worker(scheduler.address, nthreads=2).start() for _ in range(2)]
    return scheduler, workers


async def stop_cluster(scheduler: Scheduler, workers: list[Worker]) -> None:
    for worker in workers:
        await worker.close()
    await scheduler.close()


@pytest.fixture
def cluster() -> Iterator[Scheduler]:
    """A scheduler and two workers on a loop thread, for synchronous clients."""
    RELEASE.clear()
    thread = LoopThread("test-cluster")
    scheduler, workers = thread.run(start_cluster(), WAIT_S)
    try:
        yield scheduler
    finally:
        RELEASE.set()
        thread.run(stop_cluster(scheduler, workers), WAIT_S)
        thread.stop()


@pytest.fixture
def client(cluster: Scheduler) -> Iterator[Client]:
    with Client(cluster.address, timeout=WAIT_S) as c:
        c.wait_for_workers(2, timeout=WAIT_S)
        yield c


def test_submit_and_pure_keys(client: Client) -> None:
    f = client.submit(inc, 1)
    g = client.submit(inc, 1)
    assert f.key == g.key
    assert f.result(timeout=WAIT_S) == 2
    h = client.submit(add, f, y=10)
    assert h.result(timeout=WAIT_S) == 12
    assert client.submit(inc, 1, pure=False).key != f.key


def test_map_of_a_thousand(client: Client) -> None:
    futures = client.map(inc, range(1000))
    assert len(futures) == 1000
    assert sum(client.gather(futures)) == sum(range(1, 1001))
    pairs = client.map(add, futures, range(1000))
    done, not_done = wait(pairs, timeout=WAIT_S)
    assert len(done) == 1000 and not not_done
    assert client.gather(pairs[:3]) == [1, 3, 5]
    assert len(list(as_completed(pairs[:10]))) == 10


def test_compute_and_get_small_graph(client: Client) -> None:
    graph = {
        "x": 1,
        "y": (inc, "x"),
        "z": (add, "y", (inc, 10)),
        ("w", 0): (sum, ["x", "y", "z"]),
    }
    futures = client.compute(graph, [["z"], ("w", 0)])
    assert client.gather(futures) == [[13], 16]
    assert client.get(graph, "y") == 2


def test_nested_gather_with_a_large_value(client: Client) -> None:
    big = client.submit(np.arange, 1_000_000)  # 8 MB: fetched from a worker
    small = client.submit(inc, 5)
    out = client.gather({"a": [small, (small, big)], "b": {small}, "c": "plain"})
    assert out["a"][0] == 6
    np.testing.assert_array_equal(out["a"][1][1], np.arange(1_000_000))
    assert out["b"] == {6}
    assert out["c"] == "plain"
    assert big.result(timeout=WAIT_S).sum() == np.arange(1_000_000).sum()


def test_remote_exception_and_traceback(client: Client) -> None:
    f = client.submit(fail, 1)
    with pytest.raises(ZeroDivisionError) as info:
        f.result(timeout=WAIT_S)
    assert isinstance(info.value.__cause__, RemoteTraceback)
    text = "".join(traceback.format_exception(info.value))
    assert "fail" in text and "Remote traceback" in text
    dependent = client.submit(inc, f)
    with pytest.raises(ZeroDivisionError):
        dependent.result(timeout=WAIT_S)
    assert client.gather([f, client.submit(inc, 2)], errors="skip") == [3]


def test_cancel(client: Client) -> None:
    f = client.submit(blocked, 1)
    client.cancel([f])
    assert f.cancelled()
    with pytest.raises(FutureCancelled):
        f.result(timeout=WAIT_S)
    RELEASE.set()


def test_scheduler_info_and_release(cluster: Scheduler, client: Client) -> None:
    info = client.scheduler_info()
    assert isinstance(info, dict)
    futures = client.map(inc, range(50))
    client.gather(futures)
    assert len(cluster.state.tasks) >= 50
    del futures
    deadline = time.monotonic() + WAIT_S
    while cluster.state.tasks and time.monotonic() < deadline:
        time.sleep(0.01)  # polled against a deadline: the release travels asynchronously
    assert not cluster.state.tasks


def test_lost_scheduler_fails_pending_futures() -> None:
    RELEASE.clear()  # an earlier test may have left it set: the task must block
    thread = LoopThread("test-cluster")
    scheduler, workers = thread.run(start_cluster(), WAIT_S)
    try:
        with Client(scheduler.address, timeout=WAIT_S) as c:
            f = c.submit(blocked, 2)
            thread.run(scheduler.close(), WAIT_S)
            with pytest.raises(CommClosedError, match="scheduler"):
                f.result(timeout=WAIT_S)
    finally:
        RELEASE.set()
        thread.run(stop_cluster(scheduler, workers), WAIT_S)
        thread.stop()
        RELEASE.clear()


@pytest.fixture
async def async_cluster() -> AsyncIterator[Scheduler]:
    scheduler, workers = await start_cluster()
    try:
        yield scheduler
    finally:
        await stop_cluster(scheduler, workers)


async def test_async_client(async_cluster: Scheduler) -> None:
    async with asyncio.timeout(WAIT_S):
        async with Client(async_cluster.address, asynchronous=True) as c:
            await c.wait_for_workers(2)
            f = c.submit(inc, 1)
            assert await f == 2
            futures = c.map(inc, range(100))
            assert await c.gather(futures) == list(range(1, 101))
            assert await c.get({"a": 1, "b": (inc, "a")}, ["b"]) == [2]
            seen = [x async for x in as_completed(futures[:5])]
            assert len(seen) == 5
            done, _ = await wait(futures)
            assert len(done) == 100
            with pytest.raises(ZeroDivisionError):
                await c.submit(fail, 1)
            assert isinstance(await c.scheduler_info(), dict)
        c2 = await Client(async_cluster.address, asynchronous=True)
        assert await c2.submit(add, 1, 2) == 3
        await c2.close()
