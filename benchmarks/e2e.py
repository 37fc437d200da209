"""End-to-end workloads, each on a fresh cluster of one system in a child process.

Three kinds of round, each a fresh child process that starts its own cluster
(benchmarks/systems.py), warms it with one task of each function the round
uses, runs its workload once and stops the cluster; nothing one workload
leaves behind reaches the next:

- `latency`: the time from starting the cluster to the first result, then
  1,000 sequential `submit(inc, i).result()` round trips (median, p99).
- `map`: 20,000 independent trivial tasks submitted with one map and gathered
  with one gather; tasks per second.
- `tree`: 8,192 leaves summed pairwise, 16,383 tasks with string keys, run
  with `client.get(graph, top)` (shoal, dask) or built from object references
  (Ray, the way its users compose tasks); tasks per second.
- `observed` (shoal only): the `map` workload seven times on one cluster,
  the second, fourth and sixth time with a separate process scraping /metrics
  and polling the dashboard's /api/v1/dashboard every second
  (benchmarks/observe.py), as Prometheus and an open dashboard page do. The
  poller is started before the first run and sleeps through the closed ones.
  The medians of the polled runs' throughput and of the CPU per task of the
  process that schedules, beside the medians of the four closed runs.

Each round also charges the CPU every process used during its workload to
the client, the scheduler or the workers (`systems.CpuMeter`) and reports
microseconds per task for each.

    python -m benchmarks.e2e [--repeat 3] [--quick] [--systems shoal,dask,...] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import systems as sysmod
from benchmarks.children import run_child
from benchmarks.table import Metric, format_table, summarize

SHAPES = {
    "full": {"tasks": 20_000, "round_trips": 1_000, "leaves": 8_192},
    "quick": {"tasks": 1_000, "round_trips": 100, "leaves": 256},
}
ROUNDS = ("latency", "map", "tree", "observed")
# One system's round; dask's map or tree round on a busy 2-core machine takes up to 2 minutes.
CHILD_TIMEOUT_S = 600.0


def cpu_metrics(prefix: str, what: str) -> list[Metric]:
    return [
        Metric(f"{prefix}_cpu_{role}_us", f"  CPU per task, {what}: {role}", "us", lower=True)
        for role in sysmod.ROLES
    ]


def metrics(shape: dict[str, int]) -> list[Metric]:
    """The table's rows for this shape."""
    return [
        Metric("first_result_s", "start scheduler + 2 workers to first result", "s", lower=True),
        Metric("throughput_tasks_s", f"map+gather of {shape['tasks']:,} trivial tasks", "tasks/s"),
        *cpu_metrics("map", "map+gather"),
        Metric("latency_median_ms", "submit->result latency, median", "ms", lower=True),
        Metric("latency_p99_ms", "submit->result latency, p99", "ms", lower=True),
        *cpu_metrics("latency", "submit->result"),
        Metric("tree_tasks_s", f"tree reduction, {2 * shape['leaves'] - 1:,} tasks", "tasks/s"),
        Metric("tree_s", f"tree reduction, {shape['leaves']:,} leaves", "s", lower=True),
        *cpu_metrics("tree", "tree"),
        Metric("closed_tasks_s", f"map+gather of {shape['tasks']:,}, HTTP not polled", "tasks/s"),
        Metric("observed_tasks_s", "  the same, /metrics + dashboard polled 1/s", "tasks/s"),
        Metric("observed_cost_pct", "  throughput lost to that polling", "%", lower=True),
        Metric("closed_sched_cpu_us", "  scheduler CPU per task, not polled", "us", lower=True),
        Metric("observed_sched_cpu_us", "  scheduler CPU per task, polled 1/s", "us", lower=True),
        Metric("observed_cpu_cost_pct", "  scheduler CPU added by the polling", "%", lower=True),
    ]


def runs_on(kind: str, system: str) -> bool:
    """Whether round `kind` is run for `system` (the HTTP endpoints are shoal's)."""
    return kind != "observed" or sysmod.family(system) == "shoal"


class Observer:
    """benchmarks/observe.py from a process of its own, as a scraper and a browser
    would; started before the first run and idle (asleep on its stdin) except
    between `on()` and `off()`. `requests` counts what it sent, once it stopped."""

    def __init__(self, http: str) -> None:
        self.http = http
        self.requests = 0
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> Observer:
        args = [sys.executable, "-m", "benchmarks.observe", self.http, "1"]
        pipe = subprocess.PIPE
        root = Path(__file__).resolve().parent.parent
        self._proc = subprocess.Popen(args, stdin=pipe, stdout=pipe, text=True, cwd=root)
        return self

    def _say(self, command: str) -> None:
        assert self._proc is not None and self._proc.stdin and self._proc.stdout
        self._proc.stdin.write(command + "\n")
        self._proc.stdin.flush()
        answer = self._proc.stdout.readline().strip()  # "on": its first poll is done
        if answer != command:
            raise RuntimeError(f"the poller answered {answer!r} to {command!r}")

    def on(self) -> None:
        self._say("on")

    def off(self) -> None:
        self._say("off")

    def __exit__(self, *exc: object) -> None:
        assert self._proc is not None
        out, _ = self._proc.communicate("", timeout=30)  # the end of stdin stops it
        self.requests = int(out.split()[-1]) if out.split() else 0


def inc(x: int) -> int:
    return x + 1


def add(x: int, y: int) -> int:
    return x + y


def tree_graph(leaves: int) -> tuple[dict[str, tuple], str]:
    """Leaves `leaf-i` = inc(i), summed pairwise in levels `sum-L-j`; the graph and its top."""
    graph: dict[str, tuple] = {f"leaf-{i}": (inc, i) for i in range(leaves)}
    names = [f"leaf-{i}" for i in range(leaves)]
    level = 0
    while len(names) > 1:
        level += 1
        above = []
        for j in range(0, len(names) - 1, 2):
            key = f"sum-{level}-{j // 2}"
            graph[key] = (add, names[j], names[j + 1])
            above.append(key)
        if len(names) % 2:
            above.append(names[-1])
        names = above
    return graph, names[0]


class Calls:
    """The three calls every workload needs, in each system's own idiom."""

    def __init__(self, cluster: sysmod.Cluster) -> None:
        self.ray = cluster.system == "ray"
        self.client = cluster.client
        if self.ray:
            import ray

            self.inc, self.add = ray.remote(inc), ray.remote(add)

    def one(self, i: int) -> int:
        if self.ray:
            return self.client.get(self.inc.remote(i))
        return self.client.submit(inc, i, pure=False).result()

    def map(self, n: int) -> list[int]:
        if self.ray:
            return self.client.get([self.inc.remote(i) for i in range(n)])
        return self.client.gather(self.client.map(inc, range(n), pure=False))

    def tree(self, leaves: int) -> int:
        if not self.ray:
            graph, top = tree_graph(leaves)
            return self.client.get(graph, top)
        refs = [self.inc.remote(i) for i in range(leaves)]
        while len(refs) > 1:
            above = [self.add.remote(refs[j], refs[j + 1]) for j in range(0, len(refs) - 1, 2)]
            if len(refs) % 2:
                above.append(refs[-1])
            refs = above
        return self.client.get(refs[0])

    def warm(self) -> None:
        """One task of each function, so that workers have imported and connected."""
        assert self.one(1) == 2
        if self.ray:
            assert self.client.get(self.add.remote(1, 2)) == 3
        else:
            assert self.client.submit(add, 1, 2, pure=False).result() == 3


def _charge(out: dict[str, float], prefix: str, cpu: dict[str, float], tasks: int) -> None:
    for role, seconds in cpu.items():
        out[f"{prefix}_cpu_{role}_us"] = seconds / tasks * 1e6  # "other": in the JSON only


def run_round(system: str, kind: str, shape: dict[str, int], workdir: Path) -> dict[str, float]:
    """One round of `kind` on a fresh cluster of `system`; metric -> value."""
    out: dict[str, float] = {}
    start = time.perf_counter()
    with sysmod.Cluster(system, workdir) as cluster:
        calls = Calls(cluster)
        if kind == "latency":
            assert calls.one(1) == 2
            out["first_result_s"] = time.perf_counter() - start
        calls.warm()
        meter = sysmod.CpuMeter(cluster)
        meter.start()
        if kind == "latency":
            samples = []
            for i in range(shape["round_trips"]):
                begin = time.perf_counter()
                assert calls.one(i) == i + 1
                samples.append(time.perf_counter() - begin)
            _charge(out, "latency", meter.stop(), len(samples))
            samples.sort()
            out["latency_median_ms"] = statistics.median(samples) * 1e3
            out["latency_p99_ms"] = samples[int(len(samples) * 0.99) - 1] * 1e3
        elif kind == "map":
            n = shape["tasks"]
            begin = time.perf_counter()
            results = calls.map(n)
            took = time.perf_counter() - begin
            _charge(out, "map", meter.stop(), n)
            assert results == list(range(1, n + 1))
            out["throughput_tasks_s"] = n / took
        elif kind == "tree":
            leaves = shape["leaves"]
            begin = time.perf_counter()
            total = calls.tree(leaves)
            out["tree_s"] = time.perf_counter() - begin
            _charge(out, "tree", meter.stop(), 2 * leaves - 1)
            out["tree_tasks_s"] = (2 * leaves - 1) / out["tree_s"]
            assert total == leaves * (leaves + 1) // 2, total
        elif kind == "observed":
            meter.stop()
            out.update(observed(cluster, calls, shape["tasks"]))
        else:
            raise ValueError(f"unknown round {kind!r}; choose from {ROUNDS}")
    return out


# Runs of the observed round: closed and polled alternate, closed first and last,
# so that a drift of the machine's load over the round reaches both alike.
OBSERVED_RUNS = (False, True, False, True, False, True, False)


def observed(cluster: sysmod.Cluster, calls: Calls, n: int) -> dict[str, float]:
    """map+gather closed and polled in turn (OBSERVED_RUNS): the medians of each
    kind's throughput and of the CPU per task of the process that schedules (the
    scheduler's, or with the scheduler in this process, this process's). The
    poller runs through all the runs, asleep in the closed ones; its own CPU is
    not counted, as it is no part of the cluster."""
    http = cluster.client.dashboard_link.rstrip("/")
    role = "scheduler" if cluster.cli is not None else "client"
    rates: dict[bool, list[float]] = {False: [], True: []}
    cpus: dict[bool, list[float]] = {False: [], True: []}
    with Observer(http) as observer:
        for polled in OBSERVED_RUNS:
            if polled:
                observer.on()
            meter = sysmod.CpuMeter(cluster)
            meter.start()
            begin = time.perf_counter()
            assert calls.map(n) == list(range(1, n + 1))
            rates[polled].append(n / (time.perf_counter() - begin))
            cpus[polled].append(meter.stop()[role] / n * 1e6)
            if polled:
                observer.off()
    assert observer.requests >= 2 * OBSERVED_RUNS.count(True), observer.requests
    closed, polled_rate = statistics.median(rates[False]), statistics.median(rates[True])
    closed_cpu, polled_cpu = statistics.median(cpus[False]), statistics.median(cpus[True])
    return {
        "closed_tasks_s": closed,
        "observed_tasks_s": polled_rate,
        "observed_cost_pct": 100.0 * (1.0 - polled_rate / closed),
        "closed_sched_cpu_us": closed_cpu,
        "observed_sched_cpu_us": polled_cpu,
        "observed_cpu_cost_pct": 100.0 * (polled_cpu / closed_cpu - 1.0),
        "observed_requests": float(observer.requests),
    }


def child(system: str, kind: str, shape_name: str) -> None:
    with tempfile.TemporaryDirectory(prefix="shoal-bench-e2e-") as tmp:
        print(json.dumps(run_round(system, kind, SHAPES[shape_name], Path(tmp))), flush=True)


def spawn(
    system: str, kind: str, shape_name: str, timeout: float = CHILD_TIMEOUT_S
) -> dict[str, float]:
    """One round in a child process (killed with its cluster on timeout)."""
    args = ["--child", system, "--round", kind, "--shape", shape_name]
    return run_child("benchmarks.e2e", args, timeout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small shapes, one repetition")
    parser.add_argument("--systems", default=",".join(sysmod.SYSTEMS))
    parser.add_argument("--rounds", default=",".join(ROUNDS))
    parser.add_argument("--out", help="also write the table as JSON here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--round", help=argparse.SUPPRESS)
    parser.add_argument("--shape", default="full", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.round, args.shape)
        return 0
    shape = "quick" if args.quick else "full"
    repeat = 1 if args.quick else args.repeat
    names = [s for s in args.systems.split(",") if s and sysmod.available(s)]
    values: dict[str, dict[str, list[float]]] = {}
    for rep in range(repeat):
        for kind in args.rounds.split(","):
            for system in names if rep % 2 == 0 else names[::-1]:
                if not runs_on(kind, system):
                    continue
                result = spawn(system, kind, shape)
                print(f"  rep {rep + 1}/{repeat} {kind} {system}: {result}", file=sys.stderr)
                for key, value in result.items():
                    values.setdefault(key, {}).setdefault(system, []).append(value)
    table = summarize(metrics(SHAPES[shape]), values)
    print(format_table(table))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"shape": SHAPES[shape], "repeat": repeat, "table": table}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
