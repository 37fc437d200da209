"""End-to-end benchmarks: shoal beside dask.distributed, same shape, same run.

Each repetition starts a fresh process per system that builds a local cluster
(scheduler in that process, two worker processes with one thread each, on
127.0.0.1) and runs every workload in it. Systems alternate; the table shows
medians with min..max and the shoal/dask ratio.

    python -m benchmarks.e2e [--repeat 3] [--quick] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from typing import Any

from benchmarks.children import run_child
from benchmarks.table import Metric, format_table, summarize

SHAPES = {
    "full": {"tasks": 20_000, "round_trips": 1_000, "leaves": 8_192},
    "quick": {"tasks": 1_000, "round_trips": 100, "leaves": 256},
}
CHILD_TIMEOUT_S = 600.0  # one system's whole round; dask's full round takes 2 to 4 minutes


def metrics(shape: dict[str, int]) -> list[Metric]:
    """The table's rows for this shape."""
    return [
        Metric("first_result_s", "Client() to first result", "s"),
        Metric("throughput_tasks_s", f"map+gather of {shape['tasks']:,} trivial tasks", "tasks/s"),
        Metric("latency_median_ms", "submit->result latency, median", "ms"),
        Metric("latency_p99_ms", "submit->result latency, p99", "ms"),
        Metric("tree_s", f"tree reduction, {shape['leaves']:,} leaves", "s"),
        Metric("tree_tasks_s", "tree reduction rate", "tasks/s"),
        Metric("closed_tasks_s", "map+gather again, nothing polling HTTP", "tasks/s"),
        Metric("observed_tasks_s", "map+gather, /metrics + dashboard polled each 1 s", "tasks/s"),
        Metric("observed_cost_pct", "throughput lost to that polling", "%"),
    ]


def inc(x: int) -> int:
    return x + 1


def add(x: int, y: int) -> int:
    return x + y


def tree_graph(leaves: int) -> tuple[dict[Any, tuple], Any]:
    graph: dict[Any, tuple] = {("leaf", i): (inc, i) for i in range(leaves)}
    names: list[Any] = [("leaf", i) for i in range(leaves)]
    level = 0
    while len(names) > 1:
        level += 1
        nxt = []
        for j in range(0, len(names) - 1, 2):
            key = (f"sum-{level}", j // 2)
            graph[key] = (add, names[j], names[j + 1])
            nxt.append(key)
        if len(names) % 2:
            nxt.append(names[-1])
        names = nxt
    return graph, names[0]


def make_client(system: str) -> Any:
    if system == "shoal":
        from shoal.client.client import Client

        return Client(n_workers=2, threads_per_worker=1)
    from dask.distributed import Client as DaskClient

    return DaskClient(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)


def run_workloads(system: str, shape: dict[str, int]) -> dict[str, float]:
    """Every workload on one fresh cluster of `system`; returns metric -> value."""
    out: dict[str, float] = {}
    start = time.perf_counter()
    client = make_client(system)
    try:
        client.submit(inc, 1, pure=False).result()
        out["first_result_s"] = time.perf_counter() - start

        n = shape["tasks"]
        begin = time.perf_counter()
        results = client.gather(client.map(inc, range(n), pure=False))
        took = time.perf_counter() - begin
        assert results == list(range(1, n + 1))
        out["throughput_tasks_s"] = n / took

        samples = []
        for i in range(shape["round_trips"]):
            begin = time.perf_counter()
            assert client.submit(inc, i, pure=False).result() == i + 1
            samples.append(time.perf_counter() - begin)
        samples.sort()
        out["latency_median_ms"] = statistics.median(samples) * 1e3
        out["latency_p99_ms"] = samples[int(len(samples) * 0.99) - 1] * 1e3

        graph, top = tree_graph(shape["leaves"])
        begin = time.perf_counter()
        total = client.get(graph, top)
        out["tree_s"] = time.perf_counter() - begin
        out["tree_tasks_s"] = len(graph) / out["tree_s"]
        leaves = shape["leaves"]
        assert total == leaves * (leaves + 1) // 2, total
        if system == "shoal":
            out.update(observed(client, n))
    finally:
        client.close()
    return out


def map_gather_rate(client: Any, n: int) -> float:
    begin = time.perf_counter()
    results = client.gather(client.map(inc, range(n), pure=False))
    took = time.perf_counter() - begin
    assert results == list(range(1, n + 1))
    return n / took


class Observer:
    """What a Prometheus scraper and an open dashboard do, from a process of their
    own as they would be: GET /metrics and /api/v1/dashboard (the page's poll) at
    once, then every `interval` seconds (benchmarks/observe.py)."""

    def __init__(self, http: str, interval: float = 1.0) -> None:
        self.http, self.interval = http, interval
        self.requests = 0
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> Observer:
        args = [sys.executable, "-m", "benchmarks.observe", self.http, str(self.interval)]
        pipe = subprocess.PIPE
        self._proc = subprocess.Popen(args, stdin=pipe, stdout=pipe, text=True)
        assert self._proc.stdout is not None
        self._proc.stdout.readline()  # "started": its first poll is done
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._proc is not None
        out, _ = self._proc.communicate("", timeout=30)  # stdin's end stops it
        self.requests = int(out.split()[-1]) if out.split() else 0


def observed(client: Any, n: int) -> dict[str, float]:
    """The map+gather with the endpoints polled, between two runs without: the cost
    is measured against the mean of the runs just before and just after."""
    http = client.dashboard_link.rstrip("/")
    before = map_gather_rate(client, n)
    with Observer(http) as watch:
        polled = map_gather_rate(client, n)
    after = map_gather_rate(client, n)
    assert watch.requests >= 2
    closed = (before + after) / 2
    return {
        "closed_tasks_s": closed,
        "observed_tasks_s": polled,
        "observed_cost_pct": 100.0 * (1.0 - polled / closed),
    }


def child(system: str, shape_name: str) -> None:
    print(json.dumps(run_workloads(system, SHAPES[shape_name])), flush=True)


def spawn(system: str, shape_name: str, timeout: float = CHILD_TIMEOUT_S) -> dict[str, float]:
    """One round of `system` in a child process (killed with its cluster on timeout)."""
    args = ["--child", system, "--shape", shape_name]
    return run_child("benchmarks.e2e", args, timeout)


def collect(runs: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, list[float]]]:
    """Rounds per system -> values per metric and system, for benchmarks.table."""
    values: dict[str, dict[str, list[float]]] = {}
    for system, results in runs.items():
        for result in results:
            for key, value in result.items():
                values.setdefault(key, {}).setdefault(system, []).append(value)
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small shapes, one repetition")
    parser.add_argument("--systems", default="shoal,dask")
    parser.add_argument("--out", help="also write the table as JSON here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--shape", default="full", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.shape)
        return 0
    shape = "quick" if args.quick else "full"
    repeat = 1 if args.quick else args.repeat
    systems = [s for s in args.systems.split(",") if s and _available(s)]
    runs: dict[str, list[dict[str, float]]] = {s: [] for s in systems}
    for rep in range(repeat):
        for system in systems if rep % 2 == 0 else systems[::-1]:
            runs[system].append(spawn(system, shape))
            print(f"  rep {rep + 1}/{repeat} {system}: {runs[system][-1]}", file=sys.stderr)
    table = summarize(metrics(SHAPES[shape]), collect(runs))
    print(format_table(table))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"shape": SHAPES[shape], "repeat": repeat, "table": table}, f, indent=2)
    return 0


def _available(system: str) -> bool:
    module = {"shoal": "shoal", "dask": "distributed"}[system]
    try:
        __import__(module)
    except ImportError:
        print(f"{system} is not installed; skipping it", file=sys.stderr)
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
