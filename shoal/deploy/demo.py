"""`shoal demo`: a real task graph on an embedded local cluster, timed and checked.

It starts a LocalCluster (scheduler here, workers as processes), computes the
sum of squares of 0..N-1 as a tree reduction over numpy chunks, and checks
the answer against the closed form.
"""

from __future__ import annotations

import time

import numpy as np

CHUNK = 10_000


def chunk_sum_of_squares(start: int, stop: int) -> int:
    values = np.arange(start, stop, dtype=np.int64)
    return int(np.dot(values, values))


def add(a: int, b: int) -> int:
    return a + b


def reduction_graph(leaves: int) -> tuple[dict[object, tuple], object]:
    """A graph summing `leaves` chunks pairwise; returns (graph, key of the total)."""
    graph: dict[object, tuple] = {
        ("chunk", i): (chunk_sum_of_squares, i * CHUNK, (i + 1) * CHUNK) for i in range(leaves)
    }
    level = 0
    names: list[tuple[object, ...]] = [("chunk", i) for i in range(leaves)]
    while len(names) > 1:
        level += 1
        paired: list[tuple[object, ...]] = []
        for j in range(0, len(names) - 1, 2):
            key = ("sum", level, j // 2)
            graph[key] = (add, names[j], names[j + 1])
            paired.append(key)
        if len(names) % 2:
            paired.append(names[-1])
        names = paired
    return graph, names[0]


def main(workers: int = 2, leaves: int = 1024) -> int:
    from shoal.client.client import Client

    leaves = max(1, leaves)
    started = time.perf_counter()
    with Client(n_workers=workers, threads_per_worker=1) as client:
        ready = time.perf_counter()
        graph, total_key = reduction_graph(leaves)
        begin = time.perf_counter()
        total = client.get(graph, total_key)
        took = time.perf_counter() - begin
        info = client.scheduler_info()
    n = leaves * CHUNK
    expected = (n - 1) * n * (2 * n - 1) // 6
    status = "checked" if total == expected else f"WRONG, expected {expected}"
    print(f"cluster: {len(info['workers'])} worker processes up in {ready - started:.2f} s")
    print(f"graph:   {len(graph)} tasks, a tree reduction over {leaves} numpy chunks")
    print(f"result:  sum of squares of 0..{n - 1} = {total} ({status})")
    print(f"time:    {took * 1000:.1f} ms, {len(graph) / took:,.0f} tasks/s")
    return 0 if total == expected else 1
