"""A large SubmitGraph from a raw peer is taken in slices: the same outcome as in one
step, and a scheduler that keeps answering other connections meanwhile."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

from shoal.protocol import messages as m
from shoal.protocol.comm import connect
from shoal.protocol.serialize import Serialized
from shoal.scheduler.intake import SLICE_TASKS
from shoal.scheduler.model import Send
from shoal.scheduler.server import Scheduler
from tests.scheduler_harness import Harness, graph_message

N_CORE = 3 * SLICE_TASKS + 123


def layered(n: int) -> dict[str, tuple[str, ...]]:
    """Tasks reading one or two earlier ones (and a few known keys), listed in order."""
    graph: dict[str, tuple[str, ...]] = {}
    for i in range(n):
        graph[f"t{i}"] = tuple(f"t{j}" for j in {i - 1, i // 2} if 0 <= j < i) if i % 7 else ()
    return graph


def outcome(h: Harness, out: list) -> tuple:
    tasks = {
        key: (ts.status, ts.priority, tuple(d.key for d in ts.deps), ts.waiting_on, ts.pending)
        for key, ts in h.state.tasks.items()
    }
    sends = [(c.peer, c.msg) for c in out if type(c) is Send]
    return tasks, sends


@pytest.mark.timeout(60)
@pytest.mark.parametrize("wanted", ["all", "last"])
def test_a_large_graph_taken_in_slices_ends_as_one_taken_whole(
    wanted: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    graph = layered(N_CORE)
    outcomes = []
    for sliced in (True, False):
        h = Harness()
        h.worker("a", nthreads=4)
        h.worker("b", nthreads=2)
        client = h.client()
        h.handle(client, m.AddData(who_has={"known": ("tcp://a:1",)}, nbytes={"known": 8}))
        graph_with_known = {**graph, "t7": ("known",)}
        keys = list(graph_with_known)
        msg = graph_message(graph_with_known, keys if wanted == "all" else keys[-1:])
        h.now += 1.0
        if not sliced:  # the graph as one step took it before slicing existed
            monkeypatch.setattr("shoal.scheduler.clients.SLICE_TASKS", 10**9)
        out = h.state.handle(client, msg, h.now)
        if sliced:
            steps = 0
            while h.state.taking_in(client):
                # Mid-way no step has made every task: the graph comes in by slices.
                assert len(h.state.tasks) < N_CORE or steps >= 3
                out += h.state.resume(client, h.now)
                steps += 1
            assert steps >= 2 * N_CORE // SLICE_TASKS
        h.state.validate()
        outcomes.append(outcome(h, out))
    (tasks_sliced, sends_sliced), (tasks_whole, sends_whole) = outcomes
    assert tasks_sliced == tasks_whole
    # The same messages to the same peers, in the same order: ready tasks start in
    # priority order either way.
    assert sends_sliced == sends_whole


N_WIRE = int(os.environ.get("SHOAL_LARGE_GRAPH_TASKS", "300000"))
FUNC = Serialized(
    "pickle",
    [b"\x80\x05\x95\x10\x00\x00\x00\x00\x00\x00\x00\x8c\x08builtins\x94\x8c\x03abs\x94\x93\x94."],
)


def raw_graph(n: int) -> m.SubmitGraph:
    """A graph no shoal client would send: one message, chains of ten, all wanted."""
    keys = tuple(f"x-{i}" for i in range(n))
    deps = tuple((keys[i - 1],) if i % 10 else () for i in range(n))
    args = tuple(Serialized("pickle", [b"\x80\x05K\x01\x85\x94."]) for _ in range(n))
    return m.SubmitGraph(keys=keys, funcs=(FUNC,), func=(0,) * n, args=args, deps=deps, wanted=keys)


class SchedulerThread:
    """A Scheduler on its own event loop in a thread, as a separate process would be."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.scheduler = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(30)

    async def _start(self) -> Scheduler:
        return await Scheduler("tcp://127.0.0.1:0").start()

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.scheduler.close(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_a_huge_raw_graph_leaves_the_scheduler_answering_pings() -> None:
    msg = raw_graph(N_WIRE)
    server = SchedulerThread()
    try:
        address = server.scheduler.address
        state = server.scheduler.state
        raw = await connect(address, role="client")
        raw.send(m.RegisterClient(name="raw"))
        assert type((await raw.read())[0]) is m.ClientRegistered
        pinger = await connect(address, role="client")
        gaps: list[float] = []
        stop = asyncio.Event()

        async def ping() -> None:
            last = time.perf_counter()
            while not stop.is_set():
                await pinger.ping()
                now = time.perf_counter()
                gaps.append(now - last)
                last = now
                await asyncio.sleep(0.002)

        pings = asyncio.create_task(ping())
        await asyncio.sleep(0.05)
        start = time.perf_counter()
        raw.send(msg)
        await raw.drain()
        deadline = time.monotonic() + 90
        # Every task starts waiting, and each chain's head is queued (no worker).
        while state.transitions_done < N_WIRE + N_WIRE // 10:
            assert time.monotonic() < deadline, f"{len(state.tasks)} tasks so far"
            await asyncio.sleep(0.01)
        took = time.perf_counter() - start
        stop.set()
        await pings
        during = gaps[-int(took / 0.002) :] if gaps else []
        longest = max(gaps)
        print(f"ingest {took:.2f} s, longest gap between pongs {longest * 1000:.0f} ms")
        assert len(gaps) > 10 and during
        assert longest < took / 4, f"a {longest:.2f} s stall in a {took:.2f} s ingest"
        # The graph is whole and consistent, and goes away when released.
        assert asyncio.run_coroutine_threadsafe(_validated(state), server.loop).result(30)
        raw.send(m.ReleaseFutures(keys=msg.keys))
        deadline = time.monotonic() + 60
        while state.tasks:
            assert time.monotonic() < deadline, f"{len(state.tasks)} tasks left"
            await asyncio.sleep(0.01)
        await raw.close()
        await pinger.close()
    finally:
        server.close()


async def _validated(state) -> bool:
    state.validate()
    return True


@pytest.mark.timeout(60)
@pytest.mark.parametrize("after_steps", [1, 13, 18, 22])
def test_a_client_lost_part_way_through_a_large_graph_leaves_nothing(after_steps: int) -> None:
    h = Harness()
    h.worker("a", nthreads=2)
    client = h.client()
    other = h.client("other")
    h.handle(other, m.AddData(who_has={"known": ("tcp://a:1",)}, nbytes={"known": 8}))
    graph = {**layered(N_CORE), "t7": ("known",)}
    h.now += 1.0
    h.state.handle(client, graph_message(graph), h.now)
    for _ in range(after_steps):
        assert h.state.taking_in(client)
        h.state.resume(client, h.now)
    h.lose(client)  # validates
    assert not h.state.intakes
    assert set(h.state.tasks) == {"known"}


def test_a_large_batch_decodes_in_slices_to_the_same_messages() -> None:
    from shoal.protocol.codec import decode_batch, encode_batch
    from shoal.protocol.slices import decode_in_slices

    msg = raw_graph(25_000)
    msg.retries = {i: 1 for i in range(0, 25_000, 2)}
    frames = [memoryview(f) for f in encode_batch([m.Ping(id=1), msg, m.Pong(id=2)])]
    steps = decode_in_slices(frames)
    count = 0
    while True:
        try:
            next(steps)
        except StopIteration as done:
            sliced = done.value
            break
        count += 1
    assert count >= 5
    assert sliced == decode_batch(frames)
