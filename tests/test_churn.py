"""Whole-node churn with real processes: every 2 s a worker is killed together with
its nanny (SIGKILL to both, as when a machine goes) and a fresh nanny and worker
join, while a 5,000-task graph with dependencies runs. A lost worker costs
recomputation, never a wrong or missing result: the graph gives the exact answer.
"""

from __future__ import annotations

import itertools
import random
import signal
import time

import psutil
import pytest

from shoal import Client
from tests.test_failures import Cluster, cluster
from tests.test_integration import TOKEN, WAIT_S

WIDTH, DEPTH = 100, 50  # 5,000 tasks, each reading two of the layer before
KILL_EVERY_S = 2.0
WORKERS = 3
GRAPH_DEADLINE_S = 240.0


def step(x: int, y: int) -> int:
    time.sleep(0.01)
    return (x * 31 + y) % 1_000_003


def leaf(i: int) -> int:
    time.sleep(0.01)
    return i


def churn_graph() -> tuple[dict, list, list[int]]:
    graph: dict = {("t", 0, i): (leaf, i) for i in range(WIDTH)}
    values = list(range(WIDTH))
    for layer in range(1, DEPTH):
        for i in range(WIDTH):
            graph[("t", layer, i)] = (step, ("t", layer - 1, i), ("t", layer - 1, (i + 1) % WIDTH))
        values = [(values[i] * 31 + values[(i + 1) % WIDTH]) % 1_000_003 for i in range(WIDTH)]
    return graph, [("t", DEPTH - 1, i) for i in range(WIDTH)], values


def kill_node(c: Cluster, rng: random.Random) -> bool:
    """SIGKILL a live nanny and its worker together; False when none has a worker yet."""
    nannies = [p for p in c.procs[1:] if p.popen.poll() is None]
    rng.shuffle(nannies)
    for nanny in nannies:
        try:
            children = psutil.Process(nanny.popen.pid).children()
        except psutil.NoSuchProcess:
            continue
        if not children:
            continue
        nanny.popen.send_signal(signal.SIGKILL)
        for child in children:
            child.send_signal(signal.SIGKILL)
        return True
    return False


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_whole_node_churn_every_two_seconds_gives_the_exact_result() -> None:
    graph, wanted, expected = churn_graph()
    assert len(graph) == WIDTH * DEPTH == 5_000
    rng = random.Random(12)
    names = (f"node-{i}" for i in itertools.count())
    with cluster() as c:
        c.start_scheduler()
        for _ in range(WORKERS):
            c.start_worker(next(names), "--nthreads", "2")
        with Client(c.address, token=TOKEN, timeout=WAIT_S) as client:
            client.wait_for_workers(WORKERS, timeout=WAIT_S)
            begin = time.monotonic()
            futures = client.compute(graph, wanted)
            kills = 0
            next_kill = begin + KILL_EVERY_S
            while not all(f.done() for f in futures):
                now = time.monotonic()
                assert now - begin < GRAPH_DEADLINE_S, f"not done after {kills} kills"
                if now >= next_kill:
                    next_kill = now + KILL_EVERY_S
                    if kill_node(c, rng):
                        kills += 1
                        c.start_worker(next(names), "--nthreads", "2", wait=False)
                time.sleep(0.05)
            elapsed = time.monotonic() - begin
            assert client.gather(futures) == expected
            assert kills >= 3, f"only {kills} kills in {elapsed:.1f} s"
            print(f"churn: {kills} nodes killed, graph done in {elapsed:.1f} s")
