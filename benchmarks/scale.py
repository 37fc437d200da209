"""The scheduler core at scale: N simulated workers on a virtual clock, no sockets.

Run as `python -m benchmarks.scale [--quick | --full] [--tasks N ...] [--workers N ...]`.
It drives `SchedulerState.handle` alone and measures what the core costs:
CPU time inside `handle` per task, the longest single call while a graph is
ingested, and (in a second run, under tracemalloc) the memory held per task.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import heapq
import itertools
import json
import math
import os
import pstats
import random
import time
import tracemalloc
from collections.abc import Container, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from shoal.client.graph import MAX_TASKS_PER_MESSAGE, MAX_WEIGHT_PER_MESSAGE, chunk_bounds
from shoal.protocol import messages as m
from shoal.protocol.schema import Message
from shoal.protocol.serialize import serialize
from shoal.scheduler.model import Disconnect, Status
from shoal.scheduler.server import Collector
from shoal.scheduler.state import SchedulerState

# One payload shared by every task: the scheduler routes payloads unopened, so
# their size is the client's choice and not part of what is measured here.
FUNC = serialize(len, "function")
ARGS = serialize(("x",), "arguments")
NBYTES = 1_000  # reported size of every result (held on workers, never inlined)
WORKERS = (10, 100, 1000)
TASKS = (10_000, 100_000)
FULL_TASKS = (10_000, 100_000, 1_000_000)
QUICK = ((1_000, 5_000), (10, 100))
WORKLOADS = ("mapreduce", "chains")


# -- workloads ---------------------------------------------------------------------


class Graph:
    """A workload: task i is named from prefix[i] and reads tasks deps[i], all before i."""

    __slots__ = ("deps", "prefix", "sinks")

    def __init__(self, prefix: list[str], deps: list[tuple[int, ...]], sinks: list[int]) -> None:
        self.prefix, self.deps, self.sinks = prefix, deps, sinks

    def key(self, i: int) -> str:
        # Shaped like the client's names for pure calls: `func-<32 hex digits>`.
        return f"{self.prefix[i]}-{i:032x}"


def _tree_size(leaves: int, fan_in: int) -> int:
    size = 0
    while leaves > 1:
        leaves = math.ceil(leaves / fan_in)
        size += leaves
    return size


def map_reduce(ntasks: int, rng: random.Random, fan_in: int = 32) -> Graph:
    """90% independent maps; reducers over 10-32 maps each; a 32-ary sum tree on top.

    Reducer j reads every map i with i % reducers == j (so that every map is
    needed) and random others, up to a fan-in drawn from 10..32.
    """
    rest = ntasks - int(ntasks * 0.9)
    reducers = rest
    while reducers > 1 and reducers + _tree_size(reducers, fan_in) > rest:
        reducers -= 1
    maps = ntasks - reducers - _tree_size(reducers, fan_in)
    deps: list[tuple[int, ...]] = [()] * maps
    for j in range(reducers):
        reads = set(range(j, maps, reducers))
        extra = min(maps, rng.randint(10, 32)) - len(reads)
        if extra > 0:
            reads.update(rng.sample(range(maps), extra))
        deps.append(tuple(sorted(reads)))
    prefix = ["map"] * maps + ["reduce"] * reducers
    level = list(range(maps, maps + reducers))
    while len(level) > 1:
        above = []
        for start in range(0, len(level), fan_in):
            above.append(len(deps))
            deps.append(tuple(level[start : start + fan_in]))
            prefix.append("sum")
        level = above
    return Graph(prefix, deps, level)


def chains(ntasks: int, rng: random.Random, length: int = 100) -> Graph:
    """ntasks/length independent chains, each task reading the one before it."""
    count = max(1, ntasks // length)
    deps: list[tuple[int, ...]] = []
    for start in range(0, count * length, length):
        deps.append(())
        deps.extend((i - 1,) for i in range(start + 1, start + length))
    sinks = [start + length - 1 for start in range(0, count * length, length)]
    return Graph(["chain"] * len(deps), deps, sinks)


BUILDERS = {"mapreduce": map_reduce, "chains": chains}


def chunks_of(graph: Graph) -> list[range]:
    """The tasks of each SubmitGraph, split as the client splits them."""
    return chunk_bounds(map(len, graph.deps), MAX_TASKS_PER_MESSAGE, MAX_WEIGHT_PER_MESSAGE)


def bridges_of(graph: Graph, want: Container[int]) -> dict[int, None]:
    """Tasks read from a later chunk and not wanted: the client lists them as wanted
    in their own chunk and releases them after the last one (shoal.client.graph)."""
    bridges: dict[int, None] = {}
    for chunk in chunks_of(graph):
        for i in chunk:
            for dep in graph.deps[i]:
                if dep < chunk.start and dep not in want:
                    bridges[dep] = None
    return bridges


def submissions(graph: Graph, want: Container[int], bridges: dict[int, None]) -> Iterator[Message]:
    """The client's messages, made one at a time so that each is transient, as if
    just decoded: SubmitGraph chunks in dependency order, then the bridges' release."""
    key = graph.key
    for chunk in chunks_of(graph):
        keys = tuple(key(i) for i in chunk)
        yield m.SubmitGraph(
            keys=keys,
            funcs=(FUNC,),
            func=(0,) * len(chunk),
            args=(ARGS,) * len(chunk),
            deps=tuple(tuple(key(dep) for dep in graph.deps[i]) for i in chunk),
            wanted=tuple(keys[i - chunk.start] for i in chunk if i in want or i in bridges),
        )
    if bridges:
        yield m.ReleaseFutures(keys=tuple(key(i) for i in bridges))


def releases(graph: Graph, wanted: Sequence[int]) -> Iterator[Message]:
    """The client letting go of every future, a chunk at a time."""
    for start in range(0, len(wanted), MAX_TASKS_PER_MESSAGE):
        chunk = wanted[start : start + MAX_TASKS_PER_MESSAGE]
        yield m.ReleaseFutures(keys=tuple(graph.key(i) for i in chunk))


# -- the simulated cluster ---------------------------------------------------------


class Cluster:
    """One SchedulerState, one client and N workers with 1..max_threads threads each.

    A worker runs its tasks in the order they were assigned, each on the thread
    that frees first, and reports it done `duration` later (exponentially
    distributed around `mean_s`). Events are a heap of (finish, seq, peer, key).
    After each call the garbage collection policy runs as in the scheduler's
    shell (shoal.scheduler.server.Collector), outside the timed part.
    """

    def __init__(
        self,
        nworkers: int,
        max_threads: int,
        mean_s: float,
        seed: int,
        profilers: dict[str, cProfile.Profile] | None = None,
        history: int = 100_000,
        freeze_gc: bool = True,
    ) -> None:
        self.state = SchedulerState(history=history)
        self.collector = Collector(freeze_gc)
        self.rng = random.Random(seed)
        self.mean_s = mean_s
        self.now = 0.0
        self.profilers = profilers or {}
        self.events: list[tuple[float, int, str, object, float]] = []
        self._seq = itertools.count()
        self.threads: dict[str, list[float]] = {}  # peer -> heap of when each thread frees
        self.running: dict[str, dict[object, int]] = {}  # peer -> key -> seq of its event
        self.spent: dict[str, list[float]] = {}  # phase -> [seconds, longest call, calls]
        self.finished = 0  # TaskFinished delivered
        self.pauses = GcPauses()
        for w in range(nworkers):
            peer, nthreads = f"w{w}", self.rng.randint(1, max_threads)
            self.threads[peer] = [0.0] * nthreads
            self.running[peer] = {}
            self.state.connected(peer, "worker")
            msg = m.RegisterWorker(name=peer, address=f"tcp://{peer}:1", nthreads=nthreads)
            self.call(peer, msg, "setup")
        self.state.connected("client", "client")
        self.call("client", m.RegisterClient(name="scale"), "setup")

    def send(self, msgs: Iterable[Message], phase: str) -> None:
        """The client's messages, each handled in turn (none outlives its call)."""
        for msg in msgs:
            self.call("client", msg, phase)

    def call(self, peer: str, msg: Message, phase: str) -> None:
        """One timed `handle` call; its commands are carried out by the simulation."""
        profiler = self.profilers.get(phase)
        if profiler is not None:
            profiler.enable()
        self.collector.before(msg)
        self.pauses.inside = True
        # The CPU clock is a system call here: read it outside the wall-clock span,
        # and only while the graph comes in.
        timed = phase == "ingest"
        cpu = time.thread_time() if timed else 0.0
        start = time.perf_counter()
        out = self.state.handle(peer, msg, self.now)
        took = time.perf_counter() - start
        cpu = time.thread_time() - cpu if timed else 0.0
        self.pauses.inside = False
        self.collector.after(msg, self.state)
        if profiler is not None:
            profiler.disable()
        # [seconds, longest call, calls, longest call in this thread's CPU time]: on a
        # busy machine a call's wall time also counts the time other processes ran.
        spent = self.spent.setdefault(phase, [0.0, 0.0, 0, 0.0])
        spent[0] += took
        spent[1] = max(spent[1], took)
        spent[2] += 1
        spent[3] = max(spent[3], cpu)
        for cmd in out:
            if type(cmd) is Disconnect:
                raise AssertionError(f"the scheduler dropped {cmd.peer}: {cmd.reason}")
            if type(cmd.msg) is m.ComputeTask:
                self._start(cmd.peer, cmd.msg.key)
            elif type(cmd.msg) is m.FreeKeys:
                running = self.running[cmd.peer]
                for key in cmd.msg.keys:
                    running.pop(key, None)  # cancelled, if it was still to finish

    def _start(self, peer: str, key: object) -> None:
        free = self.threads[peer]
        duration = self.rng.expovariate(1 / self.mean_s)
        finish = max(free[0], self.now) + duration
        heapq.heapreplace(free, finish)
        seq = next(self._seq)
        self.running[peer][key] = seq
        heapq.heappush(self.events, (finish, seq, peer, key, duration))

    def run(self) -> None:
        """Deliver every TaskFinished in virtual-time order."""
        events, running = self.events, self.running
        while events:
            finish, seq, peer, key, duration = heapq.heappop(events)
            if running[peer].get(key) != seq:
                continue  # freed before it finished
            del running[peer][key]
            self.now = finish
            msg = m.TaskFinished(key=key, nbytes=NBYTES, typename="int", duration=duration)
            self.call(peer, msg, "run")
            self.finished += 1


class GcPauses:
    """gc.callbacks hook: the longest collection and the total time collecting,
    counting only collections inside `handle` calls (while `inside` is set)."""

    def __init__(self) -> None:
        self.longest = self.total = self._since = 0.0
        self.inside = False

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if not self.inside:
            return
        if phase == "start":
            self._since = time.perf_counter()
        else:
            took = time.perf_counter() - self._since
            self.total += took
            self.longest = max(self.longest, took)


# -- one point ----------------------------------------------------------------------


def play(
    graph: Graph,
    nworkers: int,
    opts: argparse.Namespace,
    want: Container[int],
    profilers: dict[str, cProfile.Profile] | None = None,
    pauses: GcPauses | None = None,
) -> Cluster:
    """A cluster that has ingested the graph and run it to the end."""
    freeze = opts.gc == "freeze"
    cluster = Cluster(
        nworkers, opts.threads, opts.duration, opts.seed, profilers, opts.history, freeze
    )
    if pauses is not None:
        cluster.pauses = pauses
    cluster.send(submissions(graph, want, bridges_of(graph, want)), "ingest")
    cluster.run()
    return cluster


def finish(cluster: Cluster, graph: Graph, wanted: Sequence[int]) -> None:
    """Check that every wanted key is in memory, release them all, check that
    nothing is left. Raises AssertionError (also from validate()) if not."""
    state = cluster.state
    for i in wanted:
        ts = state.tasks.get(graph.key(i))
        assert ts is not None and ts.status is Status.MEMORY, f"{graph.key(i)} is not in memory"
    state.validate()
    cluster.send(releases(graph, wanted), "release")
    assert not state.tasks, f"{len(state.tasks)} tasks left after releasing everything"
    state.validate()


def simulate(
    graph: Graph,
    nworkers: int,
    opts: argparse.Namespace,
    *,
    memory: bool = False,
    profilers: dict[str, cProfile.Profile] | None = None,
) -> dict[str, Any]:
    """Build a cluster, ingest the graph, run it, check, release, check.

    With `memory`, tracemalloc follows the run, whose timings then mean nothing.
    Raises AssertionError when a wanted key is not in memory or validate() fails.
    """
    ntasks = len(graph.deps)
    wanted = range(ntasks) if opts.want == "all" else graph.sinks
    want = wanted if opts.want == "all" else dict.fromkeys(wanted)
    gc.collect()
    frozen = gc.get_freeze_count()
    if memory:
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            cluster = play(graph, nworkers, opts, want)
            held, peak = (size - base for size in tracemalloc.get_traced_memory())
            finish(cluster, graph, wanted)
            released = tracemalloc.get_traced_memory()[0] - base
        finally:
            tracemalloc.stop()
            if not frozen:  # the policy is a scheduler process's; this one goes on
                gc.unfreeze()
        return {
            "peak_B_per_task": peak / ntasks,
            "held_B_per_task": held / ntasks,
            "released_B_per_task": released / ntasks,
            "released_MB": released / 1e6,
        }
    pauses = GcPauses()
    gc.callbacks.append(pauses)
    try:
        cluster = play(graph, nworkers, opts, want, profilers, pauses)
        transitions = cluster.state.transitions_done
        finish(cluster, graph, wanted)
    finally:
        gc.callbacks.remove(pauses)
        if not frozen:
            gc.unfreeze()
    return timings(cluster, transitions, pauses)


def timings(cluster: Cluster, transitions: int, pauses: GcPauses) -> dict[str, Any]:
    ingest, run = cluster.spent["ingest"], cluster.spent.get("run", [0.0, 0.0, 0, 0.0])
    core_s = ingest[0] + run[0]
    return {
        "threads": sum(len(t) for t in cluster.threads.values()),
        "to_memory": cluster.finished,
        "transitions": transitions,
        "core_s": core_s,
        "to_memory_per_s": cluster.finished / core_s,
        "transitions_per_s": transitions / core_s,
        "run_to_memory_per_s": cluster.finished / run[0] if run[0] else 0.0,
        "ingest_s": ingest[0],
        "ingest_calls": ingest[2],
        "ingest_max_ms": ingest[1] * 1e3,
        "ingest_max_cpu_ms": ingest[3] * 1e3,
        "run_s": run[0],
        "run_max_ms": run[1] * 1e3,
        "release_s": cluster.spent["release"][0],
        "virtual_s": cluster.now,
        "gc_s": pauses.total,
        "gc_max_ms": pauses.longest * 1e3,
        "ok": True,
    }


def measure(workload: str, ntasks: int, nworkers: int, opts: argparse.Namespace) -> dict:
    graph = BUILDERS[workload](ntasks, random.Random(opts.seed))
    point: dict[str, Any] = {
        "workload": workload,
        "tasks": len(graph.deps),
        "workers": nworkers,
        "want": opts.want,
        "load_at_start": os.getloadavg()[0],
    }
    profilers = {"ingest": cProfile.Profile(), "run": cProfile.Profile()} if opts.profile else None
    # Best of `repeat`: other processes on the machine only ever add time.
    runs = [simulate(graph, nworkers, opts, profilers=profilers) for _ in range(opts.repeat)]
    point.update(min(runs, key=lambda run: run["core_s"]))
    if profilers:
        for phase, profiler in profilers.items():
            print(f"\n-- profile: {workload} {ntasks:,} tasks x {nworkers} workers, {phase} --")
            pstats.Stats(profiler).sort_stats("tottime").print_stats(opts.profile)
    if opts.memory:
        point.update(simulate(graph, nworkers, opts, memory=True))
    return point


# -- output -------------------------------------------------------------------------

COLUMNS = (  # (heading, field, format)
    ("workload", "workload", "{}"),
    ("tasks", "tasks", "{:,}"),
    ("workers", "workers", "{:,}"),
    ("threads", "threads", "{:,}"),
    ("to-memory/s", "to_memory_per_s", "{:,.0f}"),
    ("transitions/s", "transitions_per_s", "{:,.0f}"),
    ("core s", "core_s", "{:.2f}"),
    ("ingest s", "ingest_s", "{:.2f}"),
    ("max ingest ms", "ingest_max_ms", "{:.1f}"),
    ("max ingest CPU ms", "ingest_max_cpu_ms", "{:.1f}"),
    ("max run ms", "run_max_ms", "{:.1f}"),
    ("gc s", "gc_s", "{:.2f}"),
    ("max gc ms", "gc_max_ms", "{:.1f}"),
    ("peak B/task", "peak_B_per_task", "{:,.0f}"),
    ("held B/task", "held_B_per_task", "{:,.0f}"),
    ("released MB", "released_MB", "{:.1f}"),
)


def table(points: list[dict]) -> str:
    rows = [[h for h, _, _ in COLUMNS]]
    for p in points:
        rows.append([fmt.format(p[f]) if f in p else "-" for _, f, fmt in COLUMNS])
    return _grid(rows)


def pivots(points: list[dict]) -> str:
    """Each headline figure as tasks (rows) x workers (columns), per workload."""
    out = []
    workers = sorted({p["workers"] for p in points})
    for field, title, fmt in (
        ("to_memory_per_s", "to-memory transitions per second in handle", "{:,.0f}"),
        ("peak_B_per_task", "peak scheduler bytes per task", "{:,.0f}"),
        ("ingest_max_ms", "longest handle call while ingesting, ms", "{:.1f}"),
        ("ingest_max_cpu_ms", "longest handle call while ingesting, CPU ms", "{:.1f}"),
    ):
        for workload in dict.fromkeys(p["workload"] for p in points):
            cells = {
                (p["tasks"], p["workers"]): p.get(field)
                for p in points
                if p["workload"] == workload
            }
            tasks = sorted({p["tasks"] for p in points if p["workload"] == workload})
            rows = [[f"{workload}: {title}", *(f"{w:,} workers" for w in workers)]]
            for t in tasks:
                values = [cells.get((t, w)) for w in workers]
                rows.append(
                    [f"{t:,} tasks", *("-" if v is None else fmt.format(v) for v in values)]
                )
            out.append(_grid(rows))
    return "\n\n".join(out)


def _grid(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def aims(points: list[dict]) -> list[str]:
    """The project's aims, each met / NOT met / not measured, with the worst value."""
    at_1000 = [p["to_memory_per_s"] for p in points if p["workers"] >= 1000]
    memory = [p["peak_B_per_task"] for p in points if "peak_B_per_task" in p]
    ingest = [p["ingest_max_ms"] for p in points if p["tasks"] >= 1_000_000]
    ingest_cpu = [p["ingest_max_cpu_ms"] for p in points if p["tasks"] >= 1_000_000]
    checks = (
        (
            ">= 50,000 to-memory/s at 1,000 workers",
            at_1000 and min(at_1000),
            lambda v: v >= 50_000,
            "lowest {:,.0f}/s",
        ),
        (
            "< 1 KB peak scheduler memory per task",
            memory and max(memory),
            lambda v: v < 1024,
            "highest {:,.0f} B",
        ),
        (
            "1M-task ingest with no handle call > 100 ms",
            ingest and max(ingest),
            lambda v: v <= 100,
            "longest {:.1f} ms",
        ),
        (
            "1M-task ingest with no handle call > 100 ms of CPU",
            ingest_cpu and max(ingest_cpu),
            lambda v: v <= 100,
            "longest {:.1f} ms",
        ),
    )
    lines = []
    for name, worst, ok, fmt in checks:
        if not worst:
            lines.append(f"{name}: not measured")
        else:
            lines.append(f"{name}: {'met' if ok(worst) else 'NOT met'} ({fmt.format(worst)})")
    return lines


# -- command line -------------------------------------------------------------------


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__)
    parser.add_argument("--tasks", type=int, nargs="+", help=f"default {TASKS}")
    parser.add_argument("--workers", type=int, nargs="+", help=f"default {WORKERS}")
    parser.add_argument("--workload", choices=WORKLOADS, nargs="+", default=list(WORKLOADS))
    parser.add_argument("--full", action="store_true", help=f"tasks {FULL_TASKS}")
    parser.add_argument("--quick", action="store_true", help="a tiny grid, a few seconds")
    parser.add_argument(
        "--want",
        choices=("all", "sinks"),
        default="all",
        help="the client holds futures for every task (default), or for the final ones only",
    )
    parser.add_argument("--threads", type=int, default=4, help="threads per worker: 1..this")
    parser.add_argument("--duration", type=float, default=0.005, help="mean task time, s")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1, help="timing runs; the fastest counts")
    parser.add_argument(
        "--history", type=int, default=100_000, help="transitions the core keeps (its default)"
    )
    parser.add_argument(
        "--gc",
        choices=("freeze", "default"),
        default="freeze",
        help="garbage collection as `shoal scheduler` sets it (default), or Python's default",
    )
    parser.add_argument(
        "--no-memory", dest="memory", action="store_false", help="skip the tracemalloc run"
    )
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="cProfile handle calls; print the top N by tottime",
    )
    parser.add_argument("--out", type=Path, help="write the points as JSON")
    return parser


def main(argv: list[str] | None = None) -> None:
    opts = make_parser().parse_args(argv)
    tasks, workers = QUICK if opts.quick else (FULL_TASKS if opts.full else TASKS, WORKERS)
    tasks, workers = opts.tasks or tasks, opts.workers or workers
    # Other processes on the machine add to every figure: say how busy it was.
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs", flush=True)
    points = []
    for workload in opts.workload:
        for ntasks in tasks:
            for nworkers in workers:
                point = measure(workload, ntasks, nworkers, opts)
                lines = table([point]).splitlines()
                print("\n".join(lines[-1:] if points else lines), flush=True)
                points.append(point)
    print()
    print(table(points))
    print()
    print(pivots(points))
    print()
    print("\n".join(aims(points)))
    if opts.out:
        opts.out.write_text(json.dumps(points, indent=1))


if __name__ == "__main__":
    main()
