"""Scale-down that loses nothing, with real processes: a `shoal scheduler` and
`shoal worker` processes (each under its nanny) on 127.0.0.1; SIGTERM to the
workers one by one while a graph that reads held intermediate values runs.
Every result is right and no moved value is computed twice (each execution
is counted in a file). `shoal retire` does the same on request.

The task functions live at module level: the worker processes import this module.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from shoal import Client, wait
from tests.test_integration import Proc, poll, subprocess_env

TOKEN = "retire-test-token"
WAIT_S = 60.0
N = 24  # intermediate values, 256 KiB each


def make(i: int, log: str) -> np.ndarray:
    """An intermediate value; each execution leaves a line in `log`."""
    with open(log, "a") as f:  # one short append: atomic between processes
        f.write(f"make-{i}\n")
    return np.full(32 * 1024, i, dtype=np.int64)


def combine(a: np.ndarray, b: np.ndarray, log: str) -> int:
    with open(log, "a") as f:
        f.write("combine\n")
    time.sleep(0.05)  # load: the graph is still running while workers retire
    return int(a.sum() + b.sum())


def start_cluster(n_workers: int, tmp: Path) -> tuple[Proc, list[Proc], str]:
    env = subprocess_env(TOKEN)
    scheduler = Proc.start("scheduler", "--port", "0", "--http-port", "0", env=env)
    address = scheduler.expect("shoal scheduler listening at").rsplit(" ", 1)[1].strip()
    workers = [
        Proc.start(
            "worker", address, "--nthreads", "2", "--name", f"w{i}",
            "--retire-timeout", "30", env=env,
        )
        for i in range(n_workers)
    ]  # fmt: skip
    for i, worker in enumerate(workers):
        worker.expect(f"shoal worker w{i} joined")
    return scheduler, workers, address


def executions(log: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in log.read_text().split():
        counts[line] = counts.get(line, 0) + 1
    return counts


@pytest.mark.timeout(180)
def test_sigterm_one_by_one_under_load_loses_nothing(tmp_path: Path) -> None:
    log = tmp_path / "executions.log"
    log.touch()
    scheduler, workers, address = start_cluster(4, tmp_path)
    procs = [scheduler, *workers]
    try:
        with Client(address, token=TOKEN, timeout=WAIT_S) as client:
            client.wait_for_workers(4, timeout=WAIT_S)
            xs = [client.submit(make, i, str(log), key=f"x-{i}") for i in range(N)]
            wait(xs, timeout=WAIT_S)  # held, spread over the four workers
            holders = client.who_has(xs)
            assert len({a for addrs in holders.values() for a in addrs}) > 1
            expected = []
            ys = []
            for round_ in range(3):
                for i in range(N):
                    j = (i + round_ + 1) % N
                    ys.append(client.submit(combine, xs[i], xs[j], str(log), pure=False))
                    expected.append(32 * 1024 * (i + j))
            # Retire three of the four, one by one, while the graph runs.
            codes = []
            for worker in workers[:3]:
                poll(lambda: executions(log).get("combine", 0) > 0, "the graph running")
                worker.popen.send_signal(signal.SIGTERM)
                codes.append(worker.popen.wait(WAIT_S))
            assert codes == [0, 0, 0], "\n".join(w.text for w in workers)
            wait(ys, timeout=WAIT_S)
            assert client.gather(ys) == expected
            # Every intermediate value was moved, never computed again.
            counts = executions(log)
            assert all(counts[f"make-{i}"] == 1 for i in range(N)), counts
            assert counts["combine"] >= len(ys)
            # They are all on the last worker now, and still right.
            assert [int(x.sum()) for x in client.gather(xs)] == [32 * 1024 * i for i in range(N)]
            info = client.scheduler_info()["workers"]
            assert list(info) == ["w3"]
        for worker in workers[:3]:
            text = worker.text
            assert "retired" in text and "Traceback" not in text, text
    finally:
        for proc in reversed(procs):
            proc.stop()


@pytest.mark.timeout(120)
def test_shoal_retire_moves_the_values_and_the_worker_exits(tmp_path: Path) -> None:
    log = tmp_path / "executions.log"
    log.touch()
    scheduler, workers, address = start_cluster(2, tmp_path)
    procs = [scheduler, *workers]
    try:
        with Client(address, token=TOKEN, timeout=WAIT_S) as client:
            xs = [client.submit(make, i, str(log), key=f"x-{i}") for i in range(8)]
            wait(xs, timeout=WAIT_S)
            retire = Proc.start(
                "retire", address, "--worker", "w0", "--worker", "nobody", "--timeout", "30",
                env=subprocess_env(TOKEN),
            )  # fmt: skip
            procs.append(retire)
            assert retire.popen.wait(WAIT_S) == 1  # "nobody" is no worker
            assert "retired w0" in retire.text and "no worker 'nobody'" in retire.text
            # The worker and its nanny exit, without a restart.
            assert workers[0].popen.wait(WAIT_S) == 0, workers[0].text
            poll(lambda: list(client.scheduler_info()["workers"]) == ["w1"], "w0 gone")
            assert [int(x.sum()) for x in client.gather(xs)] == [32 * 1024 * i for i in range(8)]
            assert executions(log) == {f"make-{i}": 1 for i in range(8)}
    finally:
        for proc in reversed(procs):
            proc.stop()
    assert os.path.exists(log)
