"""Failures with real processes on loopback: a worker killed mid-graph, a task
past the memory limit, a task past its timeout, and a scheduler that starts
late, goes away and comes back.

The task functions live at module level: the worker processes import this
module by name to unpickle them.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from shoal import Client, as_completed
from shoal.errors import KilledWorker, SchedulerLost, TaskTimeout
from tests.test_integration import TOKEN, WAIT_S, Proc, child_pids, poll

pytestmark = pytest.mark.timeout(120)


def slow_inc(x: int) -> int:
    time.sleep(0.002)
    return x + 1


def add(x: int, y: int) -> int:
    return x + y


def nap(x: int) -> int:
    time.sleep(0.05)
    return x


def hog(mib: int) -> int:
    """Take `mib` MiB, 50 at a time, and hold it (the nanny stops it first)."""
    import numpy as np

    held = []
    for _ in range(mib // 50):
        held.append(np.ones(50 * 2**20, dtype=np.uint8))
        time.sleep(0.02)
    time.sleep(30)
    return len(held)


def nap_long(x: int) -> int:
    time.sleep(3)
    return x


def sleep_forever(_: int) -> None:
    while True:
        time.sleep(1)


def getpid(_: object = None) -> int:
    import os

    return os.getpid()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Cluster:
    """A `shoal scheduler` and `shoal worker`s; every process stopped at the end."""

    def __init__(self, port: int = 0, *scheduler_args: str) -> None:
        self.port, self.scheduler_args = port, scheduler_args
        self.procs: list[Proc] = []
        self.scheduler: Proc | None = None
        self.address = f"tcp://127.0.0.1:{port}"

    def start_scheduler(self) -> str:
        self.scheduler = Proc.start(
            "scheduler", "--port", str(self.port), "--token", TOKEN, *self.scheduler_args
        )
        self.procs.append(self.scheduler)
        line = self.scheduler.expect("shoal scheduler listening at")
        self.address = line.rsplit(" ", 1)[1].strip()
        return self.address

    def start_worker(self, name: str, *args: str, wait: bool = True) -> Proc:
        proc = Proc.start(
            "worker", self.address, "--nthreads", "1", "--name", name, "--token", TOKEN, *args
        )
        self.procs.append(proc)
        if wait:
            proc.expect(f"shoal worker {name} joined")
        return proc

    def stop(self) -> dict[int, int]:
        return {p.popen.pid: p.stop() for p in reversed(self.procs)}


@contextlib.contextmanager
def cluster(port: int = 0, *scheduler_args: str) -> Iterator[Cluster]:
    before = child_pids()
    c = Cluster(port, *scheduler_args)
    try:
        yield c
    finally:
        c.stop()
    assert not child_pids() - before, "child processes left behind"


def worker_pid(client: Client, name: str) -> int:
    workers = client.scheduler_info()["workers"]
    return workers[name]["pid"] if name in workers else 0


def test_a_worker_killed_in_the_middle_of_a_graph_costs_recomputation_only() -> None:
    with cluster() as c:
        c.start_scheduler()
        for name in ("a", "b", "c"):
            c.start_worker(name, "--no-nanny")
        with Client(c.address, token=TOKEN, timeout=WAIT_S) as client:
            client.wait_for_workers(3, timeout=WAIT_S)
            # 1,000 leaves, then 999 sums over neighbours and one total: 2,000 tasks.
            graph: dict = {("leaf", i): (slow_inc, i) for i in range(1000)}
            for i in range(999):
                graph[("pair", i)] = (add, ("leaf", i), ("leaf", i + 1))
            graph["total"] = (sum, [("pair", i) for i in range(999)])
            wanted = [("pair", i) for i in range(999)] + ["total"]
            futures = client.compute(graph, wanted)
            victim = worker_pid(client, "b")
            # Kill b once a fifth of the graph is done, while it holds and runs tasks.
            done = 0
            for _ in as_completed(futures):
                done += 1
                if done == 200:
                    c.procs[2].popen.send_signal(signal.SIGKILL)
                    break
            results = client.gather(futures)
            assert results[:-1] == [(i + 1) + (i + 2) for i in range(999)]
            assert results[-1] == sum((i + 1) + (i + 2) for i in range(999))
            assert victim and "b" not in client.scheduler_info()["workers"]


def test_a_task_past_the_memory_limit_restarts_its_worker_and_fails_alone() -> None:
    with cluster() as c:
        c.start_scheduler()
        for name in ("a", "b"):
            c.start_worker(name, "--memory-limit", "300MiB")
        with Client(c.address, token=TOKEN, timeout=WAIT_S) as client:
            client.wait_for_workers(2, timeout=WAIT_S)
            pids = {name: worker_pid(client, name) for name in ("a", "b")}
            big = client.submit(hog, 1000)
            rest = client.map(nap, range(40))
            with pytest.raises(KilledWorker) as info:
                big.result(timeout=90)
            message = str(info.value)
            assert "was processing on 3 workers that died" in message
            assert message.count("memory limit exceeded: it used") == 3, message
            assert "of its 300 MiB limit" in message
            assert client.gather(rest) == list(range(40))
            # Both nannies brought their workers back, as new processes.
            poll(lambda: len(client.scheduler_info()["workers"]) == 2, "workers restarted")
            assert all(worker_pid(client, n) not in (0, pids[n]) for n in pids)
            assert client.submit(nap, 7).result(timeout=WAIT_S) == 7


def test_a_task_past_its_timeout_fails_and_the_worker_serves_again() -> None:
    with cluster() as c:
        c.start_scheduler()
        c.start_worker("only", "--timeout-grace", "1")
        with Client(c.address, token=TOKEN, timeout=WAIT_S) as client:
            client.wait_for_workers(1, timeout=WAIT_S)
            first_pid = client.submit(getpid, 0, pure=False).result(timeout=WAIT_S)
            begin = time.monotonic()
            stuck = client.submit(sleep_forever, 1, timeout=1)
            with pytest.raises(TaskTimeout, match="ran past its timeout of 1 s"):
                stuck.result(timeout=WAIT_S)
            assert time.monotonic() - begin < 5
            # The stuck thread is not lost: the nanny restarts the worker, which
            # serves new work.
            assert client.submit(slow_inc, 41).result(timeout=WAIT_S) == 42
            assert client.submit(getpid, 1, pure=False).result(timeout=WAIT_S) != first_pid


def test_workers_started_before_the_scheduler_join_when_it_comes_up() -> None:
    port = free_port()
    with cluster(port) as c:
        workers = [
            c.start_worker(name, "--no-nanny", wait=False) for name in ("early-1", "early-2")
        ]
        # A client may come early too: it keeps trying for its timeout.
        box: dict = {}
        early = threading.Thread(
            target=lambda: box.update(client=Client(c.address, token=TOKEN, timeout=WAIT_S))
        )
        early.start()
        for w in workers:
            w.expect("does not answer yet")
        c.start_scheduler()
        for w, name in zip(workers, ("early-1", "early-2"), strict=True):
            w.expect(f"shoal worker {name} joined")
        early.join(WAIT_S)
        client = box["client"]
        with client:
            client.wait_for_workers(2, timeout=WAIT_S)
            assert client.submit(slow_inc, 1).result(timeout=WAIT_S) == 2


def test_a_lost_scheduler_fails_pending_futures_and_everyone_rejoins_its_successor() -> None:
    port = free_port()
    with cluster(port) as c:
        c.start_scheduler()
        worker = c.start_worker("w", "--no-nanny")
        with Client(c.address, token=TOKEN, timeout=WAIT_S) as client:
            client.wait_for_workers(1, timeout=WAIT_S)
            pending = client.submit(nap_long, 0)
            assert c.scheduler is not None
            c.scheduler.stop(signal.SIGKILL)
            with pytest.raises(SchedulerLost, match=f"127.0.0.1:{port}"):
                pending.result(timeout=WAIT_S)
            # A new scheduler on the same address: the worker and the client join it.
            c.start_scheduler()
            worker.expect("shoal worker w joined")
            poll(lambda: client_usable(client), "client reconnected")
            client.wait_for_workers(1, timeout=WAIT_S)
            assert client.submit(slow_inc, 1).result(timeout=WAIT_S) == 2


def client_usable(client: Client) -> bool:
    link = client._link
    return link is not None and link.usable


def test_a_frozen_worker_is_removed_after_the_heartbeat_timeout() -> None:
    with cluster(0, "--heartbeat-timeout", "2") as c:
        c.start_scheduler()
        frozen = c.start_worker("frozen", "--no-nanny")
        c.start_worker("alive", "--no-nanny")
        with Client(c.address, token=TOKEN, timeout=WAIT_S) as client:
            client.wait_for_workers(2, timeout=WAIT_S)
            pid = worker_pid(client, "frozen")
            stuck = client.submit(nap, 5, workers="frozen", pure=False)
            poll(lambda: client.scheduler_info()["workers"]["frozen"]["processing"], "placed")
            frozen.popen.send_signal(signal.SIGSTOP)  # alive in the kernel, silent on the wire
            try:
                poll(lambda: "frozen" not in client.scheduler_info()["workers"], "removal")
                info = client.scheduler_info()["workers"]["alive"]
                assert info["memory"] > 0 and info["pid"] != pid  # from its heartbeats
                assert client.submit(nap, 6).result(timeout=WAIT_S) == 6
                assert not stuck.done()  # restricted to the removed worker: it waits
            finally:
                frozen.popen.send_signal(signal.SIGCONT)
