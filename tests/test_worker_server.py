"""Live workers on loopback against a stand-in scheduler: registration, tasks, the data
server, fetching from a peer, freeing, and shutdown without leaked tasks or threads."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from shoal.errors import CommClosedError, RegistrationError
from shoal.protocol.comm import Comm, connect, listen
from shoal.protocol.messages import (
    ComputeTask,
    DataMissing,
    DataSent,
    FreeKeys,
    GetData,
    Heartbeat,
    RegisterWorker,
    RegistrationRefused,
    TaskFinished,
    TasksStarted,
    WorkerLeaving,
    WorkerRegistered,
)
from shoal.protocol.schema import Message
from shoal.protocol.serialize import Serialized, deserialize, serialize
from shoal.protocol.taskspec import ArgSpec, Ref
from shoal.worker.server import Worker

pytestmark = [pytest.mark.usefixtures("no_leaks"), pytest.mark.timeout(60)]

WAIT_S = 10.0


def add(x: int, y: int) -> int:
    return x + y


def spec(*args: object, walk: bool = False) -> Serialized:
    return serialize(ArgSpec(args, {}, walk))


class StandInScheduler:
    """Answers RegisterWorker and queues what each worker sends, by worker name."""

    def __init__(self, refuse: str = "") -> None:
        self.refuse = refuse
        self.comms: dict[str, Comm] = {}
        self.inbox: dict[str, asyncio.Queue[Message]] = {}
        self.joined: asyncio.Queue[RegisterWorker] = asyncio.Queue()

    async def handle(self, comm: Comm) -> None:
        (hello,) = await comm.read()
        assert isinstance(hello, RegisterWorker)
        if self.refuse:
            comm.send(RegistrationRefused(reason=self.refuse))
            return
        inbox = self.inbox[hello.name] = asyncio.Queue()
        self.comms[hello.name] = comm
        comm.send(WorkerRegistered(name=hello.name))
        self.joined.put_nowait(hello)
        while True:
            for msg in await comm.read():
                if type(msg) is not Heartbeat:
                    inbox.put_nowait(msg)

    async def next(self, name: str) -> Message:
        """The next report from `name`, passing over tasks-started notes, which a
        task still running when a batch goes out adds (their timing is the pool's)."""
        async with asyncio.timeout(WAIT_S):
            while True:
                msg = await self.inbox[name].get()
                if type(msg) is not TasksStarted:
                    return msg


async def get_data(address: str, keys: tuple) -> DataSent:
    comm = await connect(address, role="client")
    try:
        comm.send(GetData(keys=keys, request_id=7))
        async with asyncio.timeout(WAIT_S):
            (answer,) = await comm.read()
    finally:
        await comm.close()
    assert isinstance(answer, DataSent) and answer.request_id == 7
    return answer


def worker_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("shoal-")]


async def test_worker_runs_serves_fetches_frees_and_closes() -> None:
    sched = StandInScheduler()
    async with await listen("tcp://127.0.0.1:0", sched.handle) as listener:
        w1 = await Worker(listener.address, nthreads=2, name="w1").start()
        w2 = await Worker(listener.address, name="w2", resources={"GPU": 1.0}).start()
        reg = await sched.joined.get()
        assert (reg.name, reg.address, reg.nthreads) == ("w1", w1.address, 2)
        assert w1.address.startswith("tcp://127.0.0.1:") and w1.address != w2.address
        assert (await sched.joined.get()).resources == {"GPU": 1.0}
        assert len(worker_threads()) == 3

        s1 = sched.comms["w1"]
        s1.send(ComputeTask(key="x", func=serialize(np.arange), args=spec(1000)))
        x_done = await sched.next("w1")
        assert isinstance(x_done, TaskFinished) and x_done.key == "x"
        assert x_done.typename == "numpy.ndarray" and x_done.value is None

        # held here: used in place, and the small result travels inline
        args = spec(Ref("x"), walk=True)
        s1.send(ComputeTask(key="y", func=serialize(np.sum), args=args, deps=("x",)))
        y_done = await sched.next("w1")
        assert deserialize(y_done.value) == sum(range(1000))

        answer = await get_data(w1.address, ("x", "nope"))
        assert np.array_equal(deserialize(answer.data["x"]), np.arange(1000))
        assert answer.missing == ("nope",)

        # w2 fetches x from w1; a dependency whose only holder is gone is reported missing
        s2 = sched.comms["w2"]
        args = spec(Ref("x"), walk=True)
        who_has = {"x": (w1.address,)}
        s2.send(ComputeTask(key="z", func=serialize(len), args=args, deps=("x",), who_has=who_has))
        z_done = await sched.next("w2")
        assert isinstance(z_done, TaskFinished) and deserialize(z_done.value) == 1000
        gone = {"g": ("tcp://127.0.0.1:1",)}
        s2.send(ComputeTask(key="h", func=serialize(len), args=spec(), deps=("g",), who_has=gone))
        missing = await sched.next("w2")
        assert missing == DataMissing(key="g", tried=("tcp://127.0.0.1:1",), tasks=("h",))

        s1.send(FreeKeys(keys=("x",)))
        deadline = time.monotonic() + WAIT_S
        while w1.state.value_of("x") is not None:
            assert time.monotonic() < deadline, "x was not freed"
            await asyncio.sleep(0.01)
        assert (await get_data(w1.address, ("x",))).missing == ("x",)

        await w1.close("test done")
        await w1.close()  # idempotent
        assert await sched.next("w1") == WorkerLeaving(reason="test done")
        await w1.finished()
        await w2.close()
    assert worker_threads() == []


async def test_worker_stops_when_the_scheduler_goes_away() -> None:
    sched = StandInScheduler()
    async with await listen("tcp://127.0.0.1:0", sched.handle) as listener:
        worker = await Worker(listener.address).start()
        await sched.joined.get()
        await sched.comms[worker.name].close("scheduler shutting down")
        async with asyncio.timeout(WAIT_S):
            await worker.finished()
        await worker.close()
    assert worker_threads() == []


async def test_refused_registration_raises() -> None:
    sched = StandInScheduler(refuse="name taken")
    async with await listen("tcp://127.0.0.1:0", sched.handle) as listener:
        with pytest.raises(RegistrationError, match="name taken"):
            await Worker(listener.address, name="dup").start()
    assert worker_threads() == []


async def test_start_fails_when_nothing_listens() -> None:
    with pytest.raises((OSError, CommClosedError)):
        await Worker("tcp://127.0.0.1:1", connect_timeout=2.0).start()
