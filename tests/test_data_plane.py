"""The data plane on real processes: large values moving between workers, a holder
killed while a peer fetches from it, scatter, broadcast, replicate, and worker
memory returning to its baseline once futures are dropped.

Each test starts its own `shoal scheduler` and `shoal worker` processes on
127.0.0.1, because some of them kill a worker. Task functions live at module
level: the workers import this module by name.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import psutil
import pytest

from shoal import Client, wait
from tests.test_integration import WAIT_S, Proc, child_pids, poll

TOKEN = "data-plane-test-token"
MB = 2**20


# -- task functions (run in the worker processes) ----------------------------------------


def make(nbytes: int, fill: int) -> np.ndarray:
    return np.full(nbytes // 8, fill, dtype=np.int64)


def step(previous: np.ndarray) -> np.ndarray:
    """A new array from the previous one (made on another worker)."""
    return previous + 1


def total(values: np.ndarray) -> tuple[int, int]:
    return int(values.sum()), os.getpid()


def combine(*arrays: np.ndarray) -> int:
    return int(sum(int(a[:1000].sum()) for a in arrays))


# -- clusters --------------------------------------------------------------------------------


@dataclass
class Cluster:
    address: str
    procs: list[Proc]
    workers: dict[str, Proc]

    def add_worker(self, name: str) -> Proc:
        proc = Proc.start("worker", self.address, "--nthreads", "1", "--name", name,
                          "--token", TOKEN)  # fmt: skip
        self.procs.append(proc)
        self.workers[name] = proc
        proc.expect(f"shoal worker {name} joined {self.address}")
        return proc


@contextlib.contextmanager
def cluster(*names: str) -> Iterator[tuple[Cluster, Client]]:
    """A scheduler, one-thread workers named `names`, and a client; all stopped after."""
    before = child_pids()
    scheduler = Proc.start("scheduler", "--port", "0", "--token", TOKEN)
    c = Cluster("", [scheduler], {})
    client = None
    try:
        c.address = scheduler.expect("shoal scheduler listening at").rsplit(" ", 1)[1].strip()
        for name in names:
            c.add_worker(name)
        client = Client(c.address, token=TOKEN, timeout=WAIT_S)
        client.wait_for_workers(len(names), timeout=WAIT_S)
        yield c, client
    finally:
        if client is not None:
            client.close()
        for proc in reversed(c.procs):
            proc.stop()
    assert not child_pids() - before


def address_of(client: Client, name: str) -> str:
    return client.scheduler_info()["workers"][name]["address"]


def pid_of(client: Client, name: str) -> int:
    return client.scheduler_info()["workers"][name]["pid"]


def holders(client: Client, future) -> set[str]:
    return set(client.who_has([future])[future.key])


# -- moving values between workers -----------------------------------------------------------


@pytest.mark.timeout(120)
def test_a_chain_of_50_mb_arrays_each_made_on_the_other_worker() -> None:
    with cluster("a", "b") as (_, client):
        x = client.submit(make, 50 * MB, 1, workers="a")
        for i in range(4):
            x = client.submit(step, x, workers="b" if i % 2 == 0 else "a")
        total_sum, pid = client.submit(total, x, workers="b").result()
        assert total_sum == 5 * (50 * MB // 8)
        assert pid == pid_of(client, "b")


def fetching_from(pid: int, port: int) -> bool:
    """Whether process `pid` has a TCP connection open to `port` on loopback."""
    with contextlib.suppress(psutil.Error):
        for conn in psutil.Process(pid).net_connections("tcp"):
            if conn.raddr and conn.raddr.port == port and conn.status == "ESTABLISHED":
                return True
    return False


def freeze(client: Client, holder: str, fetcher: str) -> tuple[int, int, int]:
    """Stop the `holder` process (SIGSTOP); its data port and the two pids. The
    kernel still accepts connections for it: a fetcher connects, then waits."""
    port = int(address_of(client, holder).rsplit(":", 1)[1])
    holder_pid, fetcher_pid = pid_of(client, holder), pid_of(client, fetcher)
    os.kill(holder_pid, signal.SIGSTOP)
    return port, holder_pid, fetcher_pid


@pytest.mark.timeout(120)
def test_a_holder_killed_while_serving_is_replaced_by_another_holder() -> None:
    with cluster("a", "b", "c") as (_, client):
        x = client.submit(make, 20 * MB, 3, workers="a")
        wait([x])
        client.replicate([x], n=2)  # a and one other worker (the emptiest: b)
        assert holders(client, x) == {address_of(client, "a"), address_of(client, "b")}
        port, holder_pid, fetcher_pid = freeze(client, "a", "c")
        try:
            y = client.submit(total, x, workers="c")
            poll(lambda: fetching_from(fetcher_pid, port), "c to connect to a")
        finally:
            os.kill(holder_pid, signal.SIGKILL)
        assert y.result(timeout=WAIT_S)[0] == 3 * (20 * MB // 8)
        assert holders(client, x) == {address_of(client, "b")}


@pytest.mark.timeout(120)
def test_the_only_holder_killed_while_serving_means_recomputation() -> None:
    with cluster("a") as (c, client):
        x = client.submit(make, 20 * MB, 5)  # on a: the only worker yet
        wait([x])
        c.add_worker("b")
        port, holder_pid, fetcher_pid = freeze(client, "a", "b")
        try:
            y = client.submit(total, x, workers="b")
            poll(lambda: fetching_from(fetcher_pid, port), "b to connect to a")
        finally:
            os.kill(holder_pid, signal.SIGKILL)
        assert y.result(timeout=WAIT_S) == (5 * (20 * MB // 8), fetcher_pid)
        assert holders(client, x) == {address_of(client, "b")}  # made again on b


# -- scatter and replication -----------------------------------------------------------------


@pytest.mark.timeout(120)
def test_scatter_broadcast_and_replicate() -> None:
    with cluster("a", "b", "c") as (_, client):
        everyone = {address_of(client, n) for n in "abc"}
        big = np.arange(2 * MB, dtype=np.int64)
        one = client.scatter(big, workers="b")
        assert one.done() and holders(client, one) == {address_of(client, "b")}
        assert client.submit(total, one).result()[0] == int(big.sum())
        assert client.scatter(big.copy()).key == one.key  # named by content

        listed = client.scatter([1, "two", big[:10]])
        placed = [holders(client, f) for f in listed]  # in turn over the workers
        assert all(len(p) == 1 for p in placed) and set().union(*placed) == everyone
        assert client.gather(listed)[:2] == [1, "two"]
        named = client.scatter({"k": 7, "v": big[:3]})
        assert client.gather(named)["k"] == 7

        shared = client.scatter(np.ones(MB), broadcast=True)
        assert holders(client, shared) == everyone
        parts = [client.submit(total, shared, workers=n, pure=False) for n in "abc"]
        assert [p.result()[0] for p in parts] == [MB] * 3

        made = client.submit(make, MB, 2, workers="a")
        client.replicate([made], n=2)
        assert len(holders(client, made)) == 2
        client.replicate([made])
        assert holders(client, made) == everyone
        client.replicate([made], n=1)
        assert len(holders(client, made)) == 1
        assert client.submit(total, made).result()[0] == 2 * (MB // 8)


# -- memory ----------------------------------------------------------------------------------


def rss(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


@pytest.mark.timeout(180)
def test_worker_memory_returns_to_its_baseline_after_a_large_computation() -> None:
    """400 MB of arrays made, moved between the two workers and combined; after
    the futures are dropped each worker is back within MARGIN of its resident
    size before the computation. Arrays of this size are allocated with mmap
    and returned to the system when freed; what may remain is the allocator's
    small-object arenas and caches filled by the first tasks (functions,
    connection buffers), a few MB."""
    margin = 24 * MB
    with cluster("a", "b") as (_, client):
        warm = client.submit(combine, client.submit(make, MB, 0, workers="a"), workers="b")
        assert warm.result() == 0
        del warm
        pids = [pid_of(client, "a"), pid_of(client, "b")]
        baseline = {pid: rss(pid) for pid in pids}
        arrays = [client.submit(make, 50 * MB, i, workers="ab"[i % 2]) for i in range(8)]
        sums = [client.submit(combine, a, workers="ab"[(i + 1) % 2]) for i, a in enumerate(arrays)]
        grand = client.submit(combine, *arrays, workers="a")
        assert client.gather(sums) == [1000 * i for i in range(8)]
        assert grand.result() == 1000 * sum(range(8))
        peak = {pid: rss(pid) for pid in pids}
        # Each holds four 50 MB arrays; the free heap pages of the baseline may have
        # gone back to the system meanwhile (the worker trims after large frees).
        assert all(peak[pid] - baseline[pid] > 190 * MB for pid in pids), (baseline, peak)
        del arrays, sums, grand
        poll(
            lambda: all(rss(pid) - baseline[pid] < margin for pid in pids),
            f"worker memory back within {margin // MB} MB of {baseline} (peak {peak})",
        )
