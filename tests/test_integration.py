"""End to end: a scheduler and two workers started with the `shoal` command as
real processes on 127.0.0.1, driven through the public Client API; a
LocalCluster started by `Client()`; and the asynchronous client.

The task functions live at module level: the worker processes import this
module by name (the repository root is on their PYTHONPATH).
"""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
import pytest

import shoal.deploy.forked
import shoal.deploy.local
from shoal import Client, as_completed, wait
from shoal.errors import FutureCancelled, HandshakeError, RemoteTraceback

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "integration-test-token"
# Bound on any single wait; loopback answers in milliseconds, process start in ~1 s.
WAIT_S = 30.0
POLL_S = 0.01
STOP_S = 10.0


# -- task functions (run in the worker processes) --------------------------------------


class Boom(Exception):
    """A user exception class the client can rebuild: this module is importable."""


def inc(x: int) -> int:
    return x + 1


def add(x: int, y: int) -> int:
    return x + y


def explode(x: int) -> int:
    raise Boom(f"cannot handle {x}")


def divide_by_zero(x: int) -> float:
    return x / 0


def flaky(counter: str, failures: int) -> str:
    """Fail the first `failures` calls; the attempts are counted in a file."""
    path = Path(counter)
    attempt = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(attempt))
    if attempt <= failures:
        raise RuntimeError(f"attempt {attempt} failed")
    return f"ok after {attempt}"


def hold(started: str, release: str) -> str:
    """Run until the test creates `release` (bounded), so a cancelled task
    frees its worker thread for the next tests."""
    Path(started).touch()
    deadline = time.monotonic() + WAIT_S
    while not Path(release).exists() and time.monotonic() < deadline:
        time.sleep(POLL_S)
    return "released"


def getpid(_: int = 0) -> int:
    return os.getpid()


def make_array(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.int64)


def array_sum(values: np.ndarray) -> tuple[int, int]:
    return int(values.sum()), os.getpid()


# -- helpers --------------------------------------------------------------------------


def poll(condition, what: str, timeout: float = WAIT_S) -> None:
    """Wait for `condition()` with a deadline; fail naming `what`."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(POLL_S)


def child_pids() -> set[int]:
    """Live (or unreaped) processes whose parent is this process, read from /proc."""
    me, found = os.getpid(), set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:  # exited while we looked
            continue
        for line in status.splitlines():
            if line.startswith("PPid:"):
                if int(line.split()[1]) == me:
                    found.add(int(entry))
                break
    return found


def subprocess_env(token: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SHOAL_TOKEN"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    if token is not None:
        env["SHOAL_TOKEN"] = token
    return env


@dataclass
class Proc:
    """A `shoal` process whose merged stdout/stderr a thread reads line by line."""

    popen: subprocess.Popen[str]
    lines: queue.Queue[str | None] = field(default_factory=queue.Queue)
    output: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None

    @classmethod
    def start(cls, *args: str, env: dict[str, str] | None = None) -> Proc:
        popen = subprocess.Popen(
            [sys.executable, "-m", "shoal", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
            env=env if env is not None else subprocess_env(),
        )
        proc = cls(popen)
        proc.reader = threading.Thread(target=proc._read, name=f"read-{popen.pid}", daemon=True)
        proc.reader.start()
        return proc

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.output.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def expect(self, marker: str, timeout: float = WAIT_S) -> str:
        """The first line (from now on) containing `marker`; fail on timeout or exit."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                line = self.lines.get(timeout=max(left, 0.0))
            except queue.Empty:
                pytest.fail(f"no {marker!r} after {timeout} s:\n{self.text}")
            if line is None:
                self.popen.wait(STOP_S)
                pytest.fail(
                    f"process exited ({self.popen.returncode}) before {marker!r}:\n{self.text}"
                )
            if marker in line:
                return line

    @property
    def text(self) -> str:
        return "".join(self.output)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signal the process and wait for it; kill it if it does not leave in time.

        Returns the exit code (-SIGKILL if it had to be killed)."""
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
        try:
            code = self.popen.wait(STOP_S)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(STOP_S)
            code = None
        if self.reader is not None:
            self.reader.join(STOP_S)
        assert self.popen.stdout is not None
        self.popen.stdout.close()
        return -signal.SIGKILL if code is None else code


@dataclass
class CLICluster:
    address: str
    scheduler: Proc
    workers: dict[str, Proc]
    client: Client


@pytest.fixture(scope="module")
def cli_cluster() -> Iterator[CLICluster]:
    """`shoal scheduler` and two `shoal worker` processes, and a Client of them."""
    children_before = child_pids()
    scheduler = Proc.start("scheduler", "--port", "0", "--token", TOKEN)
    procs = [scheduler]
    client = None
    try:
        line = scheduler.expect("shoal scheduler listening at")
        address = line.rsplit(" ", 1)[1].strip()
        assert address.startswith("tcp://127.0.0.1:")
        common = [address, "--nthreads", "1", "--token", TOKEN]
        workers = {
            "gpu-worker": Proc.start(
                "worker", *common, "--name", "gpu-worker", "--resources", "GPU=1"
            ),
            "cpu-worker": Proc.start("worker", *common, "--name", "cpu-worker"),
        }
        procs += workers.values()
        for name, worker in workers.items():
            worker.expect(f"shoal worker {name} joined {address}")
        client = Client(address, token=TOKEN, timeout=WAIT_S)
        client.wait_for_workers(2, timeout=WAIT_S)
        yield CLICluster(address, scheduler, workers, client)
    finally:
        if client is not None:
            client.close()
        codes = {p.popen.pid: p.stop() for p in reversed(procs)}  # workers first
        outputs = "\n".join(p.text for p in procs)
    assert all(code == 0 for code in codes.values()), f"exit codes {codes}:\n{outputs}"
    leftover = child_pids() - children_before
    assert not leftover, f"child processes left behind: {leftover}"


@pytest.fixture
def client(cli_cluster: CLICluster) -> Client:
    return cli_cluster.client


def worker_pids(client: Client) -> dict[int, str]:
    return {w["pid"]: name for name, w in client.scheduler_info()["workers"].items()}


# -- the CLI cluster ---------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_scheduler_info_lists_both_workers(cli_cluster: CLICluster) -> None:
    info = cli_cluster.client.scheduler_info()
    assert info["address"] == cli_cluster.address
    workers = info["workers"]
    assert set(workers) == {"gpu-worker", "cpu-worker"}
    assert workers["gpu-worker"]["nthreads"] == 1
    assert workers["cpu-worker"]["nthreads"] == 1
    assert workers["gpu-worker"]["resources"] == {"GPU": 1}
    assert workers["cpu-worker"]["resources"] == {}
    pids = {name: w["pid"] for name, w in workers.items()}
    # Each worker process is the child of its nanny, the `shoal worker` process.
    parents = {name: psutil.Process(pid).ppid() for name, pid in pids.items()}
    assert parents == {name: p.popen.pid for name, p in cli_cluster.workers.items()}
    assert all(w["nanny"] for w in workers.values())
    assert info["clients"] >= 1


@pytest.mark.timeout(60)
def test_submit(client: Client) -> None:
    f = client.submit(inc, 41)
    assert f.result(timeout=WAIT_S) == 42
    g = client.submit(add, f, y=f)
    assert g.result(timeout=WAIT_S) == 84
    assert f.status == "finished"


@pytest.mark.timeout(60)
def test_map_of_ten_thousand(client: Client) -> None:
    futures = client.map(inc, range(10_000))
    assert len(futures) == 10_000
    assert client.gather(futures) == list(range(1, 10_001))


@pytest.mark.timeout(60)
def test_get_a_thousand_task_graph(client: Client) -> None:
    """500 independent leaves folded by a 500-long chain: fan-in and depth."""
    n = 500
    graph: dict[object, object] = {("leaf", i): (inc, i) for i in range(n)}
    graph[("chain", 0)] = (add, ("leaf", 0), 0)
    for i in range(1, n):
        graph[("chain", i)] = (add, ("chain", i - 1), ("leaf", i))
    assert sum(1 for v in graph.values() if isinstance(v, tuple)) == 1000
    total, leaves = client.get(graph, [("chain", n - 1), [("leaf", 0), ("leaf", n - 1)]])
    assert total == n * (n + 1) // 2
    assert leaves == [1, n]


@pytest.mark.timeout(60)
def test_nested_gather(client: Client) -> None:
    evens = client.map(inc, range(0, 20, 2))
    odds = client.map(inc, range(1, 20, 2))
    one = client.submit(add, 1, 2)
    out = client.gather({"evens": evens, "odds": [odds, (one, "plain")], "one": one})
    assert out == {
        "evens": list(range(1, 21, 2)),
        "odds": [list(range(2, 21, 2)), (3, "plain")],
        "one": 3,
    }


@pytest.mark.timeout(60)
def test_sync_wait_as_completed_and_callbacks(client: Client) -> None:
    futures = client.map(inc, range(50), pure=False)
    done, not_done = wait(futures, timeout=WAIT_S)
    assert len(done) == 50 and not not_done
    results = sorted(r for _, r in as_completed(futures, with_results=True))
    assert results == list(range(1, 51))
    called = threading.Event()
    futures[0].add_done_callback(lambda fut: called.set())
    assert called.wait(WAIT_S)
    assert client.map(inc, [5, 5, 5])[0].key == client.submit(inc, 5).key  # pure keys


@pytest.mark.timeout(60)
def test_large_value_moves_between_worker_processes(client: Client) -> None:
    """8 MB made on one worker, used on the other (peer fetch), fetched by the client."""
    n = 1_000_000
    names = worker_pids(client)
    big = client.submit(make_array, n, workers="gpu-worker")
    total = client.submit(array_sum, big, workers="cpu-worker")
    value, pid = total.result(timeout=WAIT_S)
    assert value == n * (n - 1) // 2
    assert names[pid] == "cpu-worker"
    np.testing.assert_array_equal(big.result(timeout=WAIT_S), np.arange(n))
    out = client.gather({"big": [big], "total": total})
    assert out["big"][0].shape == (n,) and out["total"] == (value, pid)


@pytest.mark.timeout(60)
def test_exception_keeps_type_message_and_remote_traceback(client: Client) -> None:
    f = client.submit(explode, 7)
    with pytest.raises(Boom, match="cannot handle 7") as info:
        f.result(timeout=WAIT_S)
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "explode" in str(cause)
    assert "explode" in "".join(traceback.format_exception(info.value))

    g = client.submit(divide_by_zero, 3)
    with pytest.raises(ZeroDivisionError, match="division by zero") as info2:
        g.result(timeout=WAIT_S)
    assert "divide_by_zero" in str(info2.value.__cause__)
    # A dependent fails with its dependency's error; gather raises it too.
    with pytest.raises(ZeroDivisionError):
        client.submit(inc, g).result(timeout=WAIT_S)
    with pytest.raises(Boom):
        client.gather([client.submit(inc, 1), f])


@pytest.mark.timeout(60)
def test_retries(client: Client, tmp_path: Path) -> None:
    enough = tmp_path / "enough"
    f = client.submit(flaky, str(enough), 2, retries=2, pure=False)
    assert f.result(timeout=WAIT_S) == "ok after 3"
    assert enough.read_text() == "3"

    too_few = tmp_path / "too-few"
    g = client.submit(flaky, str(too_few), 3, retries=1, pure=False)
    with pytest.raises(RuntimeError, match="attempt 2 failed"):
        g.result(timeout=WAIT_S)
    assert too_few.read_text() == "2"

    none = tmp_path / "none"
    h = client.submit(flaky, str(none), 1, pure=False)
    with pytest.raises(RuntimeError, match="attempt 1 failed"):
        h.result(timeout=WAIT_S)
    assert none.read_text() == "1"


@pytest.mark.timeout(60)
def test_cancel_a_running_task(client: Client, tmp_path: Path) -> None:
    started, release = tmp_path / "started", tmp_path / "release"
    f = client.submit(hold, str(started), str(release), pure=False)
    try:
        poll(started.exists, "the long task to start")
        assert not f.done()
        client.cancel([f])
        assert f.cancelled()
        with pytest.raises(FutureCancelled):
            f.result(timeout=WAIT_S)
        with pytest.raises(FutureCancelled):
            client.gather([f])
    finally:
        release.touch()  # frees the worker thread the cancelled task still holds
    # Both workers still serve.
    assert client.gather(client.map(inc, range(20), pure=False)) == list(range(1, 21))


@pytest.mark.timeout(60)
def test_submit_again_after_cancel_computes_anew(client: Client, tmp_path: Path) -> None:
    started, release = tmp_path / "started", tmp_path / "release"
    f = client.submit(hold, str(started), str(release), pure=False)
    try:
        poll(started.exists, "the long task to start")
        client.cancel([f])
        assert f.cancelled()
    finally:
        release.touch()
    again = client.submit(hold, str(started), str(release), key=f.key)
    assert again.result(timeout=WAIT_S) == "released"
    assert not again.cancelled() and not f.cancelled()


@pytest.mark.timeout(60)
def test_resources_pin_tasks_to_the_worker_offering_them(client: Client) -> None:
    names = worker_pids(client)
    assert sorted(names.values()) == ["cpu-worker", "gpu-worker"]

    pinned = client.map(getpid, range(20), resources={"GPU": 1}, pure=False)
    assert {names[pid] for pid in client.gather(pinned)} == {"gpu-worker"}

    free = client.map(getpid, range(20), pure=False)
    assert set(client.gather(free)) <= set(names)


@pytest.mark.timeout(60)
def test_wrong_token_is_refused(cli_cluster: CLICluster) -> None:
    began = time.monotonic()
    with pytest.raises(HandshakeError, match="token"):
        Client(cli_cluster.address, token="not-the-token", timeout=WAIT_S)
    with pytest.raises(HandshakeError):
        Client(cli_cluster.address, timeout=WAIT_S)  # no token at all
    assert time.monotonic() - began < 10


@pytest.mark.timeout(60)
def test_worker_with_wrong_token_exits_with_a_message(cli_cluster: CLICluster) -> None:
    worker = Proc.start("worker", cli_cluster.address, "--token", "not-the-token")
    try:
        worker.popen.wait(WAIT_S)
    finally:
        code = worker.stop()
    assert code == 1, worker.text
    assert "token" in worker.text
    assert "Traceback" not in worker.text


@pytest.mark.timeout(60)
def test_worker_token_from_environment_joins_and_leaves(cli_cluster: CLICluster) -> None:
    client = cli_cluster.client
    worker = Proc.start(
        "worker", cli_cluster.address, "--nthreads", "1", "--name", "env-worker",
        env=subprocess_env(TOKEN),
    )  # fmt: skip
    try:
        worker.expect("shoal worker env-worker joined")
        poll(lambda: "env-worker" in client.scheduler_info()["workers"], "env-worker listed")
        pinned = client.submit(getpid, workers="env-worker", pure=False)
        # The task ran in the worker process, the child of the nanny started here.
        assert psutil.Process(pinned.result(timeout=WAIT_S)).ppid() == worker.popen.pid
    finally:
        code = worker.stop()
    assert code == 0, worker.text
    poll(lambda: "env-worker" not in client.scheduler_info()["workers"], "env-worker gone")
    assert client.submit(inc, 1, pure=False).result(timeout=WAIT_S) == 2


# -- asynchronous client -------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_async_client(cli_cluster: CLICluster, no_leaks: None) -> None:
    async with asyncio.timeout(WAIT_S):
        async with Client(cli_cluster.address, token=TOKEN, asynchronous=True) as c:
            await c.wait_for_workers(2)
            f = c.submit(inc, 1)
            assert await f == 2
            assert await f.result() == 2
            futures = c.map(inc, range(100))
            assert await c.gather(futures) == list(range(1, 101))
            assert await c.gather({"a": futures[:2], "b": [f]}) == {"a": [1, 2], "b": [2]}
            seen = [future async for future in as_completed(futures[:10])]
            assert sorted(future.key for future in seen) == sorted(x.key for x in futures[:10])
            pairs = [pair async for pair in as_completed(futures[10:15], with_results=True)]
            assert sorted(result for _, result in pairs) == [11, 12, 13, 14, 15]
            with pytest.raises(Boom, match="cannot handle 1"):
                await c.submit(explode, 1)
            info = await c.scheduler_info()
            assert set(info["workers"]) == {"gpu-worker", "cpu-worker"}


# -- LocalCluster through Client() ---------------------------------------------------------


@pytest.mark.timeout(90)
@pytest.mark.parametrize("fork", [True, False], ids=["forked", "spawned"])
def test_local_cluster_client(monkeypatch: pytest.MonkeyPatch, fork: bool) -> None:
    monkeypatch.setenv("PYTHONPATH", subprocess_env()["PYTHONPATH"])
    monkeypatch.delenv("SHOAL_TOKEN", raising=False)
    if not fork:
        monkeypatch.setattr(shoal.deploy.local, "can_fork", lambda: False)
    elif not shoal.deploy.forked.can_fork():
        pytest.skip("this process cannot fork workers (not Linux, or threads running)")
    threads_before = set(threading.enumerate())
    children_before = child_pids()

    client = Client(n_workers=2, threads_per_worker=1, timeout=WAIT_S)
    try:
        kinds = {type(proc).__name__ for proc in client.cluster.procs}
        assert kinds == {"ForkedProcess" if fork else "Process"}
        assert client.submit(inc, 1).result(timeout=WAIT_S) == 2
        assert client.gather(client.map(inc, range(200))) == list(range(1, 201))
        info = client.scheduler_info()
        pids = {w["pid"] for w in info["workers"].values()}
        assert len(pids) == 2
        assert pids == child_pids() - children_before  # worker processes are our children
        assert os.getpid() not in pids
    finally:
        client.close()

    assert not child_pids() - children_before
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists(), f"worker process {pid} still there"
    poll(
        lambda: set(threading.enumerate()) <= threads_before,
        f"client threads to stop: {set(threading.enumerate()) - threads_before}",
        timeout=5,
    )
