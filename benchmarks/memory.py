"""Memory: the scheduler's per task, and workloads larger than the workers' memory.

The second is benchmarks/spill.py (`--workloads spill`, numpy chunks) and
benchmarks/spill_frame.py (`--workloads groupby`, a dask.dataframe groupby);
what follows is the first.
Scheduler memory per task: 100,000 tasks pending, then finished and held.

The scheduler must be a process of its own whose figures can be read, so the
systems are `shoal-cli` and `dask-cli` (scheduler and two one-thread workers
started as commands) and Ray (`ray.init`, whose scheduler is its GCS and
raylet processes, read together); see benchmarks/systems.py. A client in this
process submits one gate task, which holds a worker thread until a file
appears, then N trivial tasks that each take the gate's result as an
argument, so every one of them waits. The scheduler's resident set (psutil,
by pid) is read once it has settled: at baseline, with the N tasks waiting,
and after the gate is released and all N finished with their futures still
held. Figures are RSS growth over the baseline divided by N, the client's own
RSS growth per task held, and the scheduler's CPU seconds.

    python -m benchmarks.memory [--systems shoal-cli,dask-cli,ray] [--tasks N] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.children import run_child
from benchmarks.systems import Cluster, _wait_for, available, family
from benchmarks.table import Metric, format_table, summarize

N_TASKS = 100_000
N_TASKS_QUICK = 1_000
# The whole round, results gathered and processes stopped: dask took 8 minutes to run
# 100,000 of these tasks on a busy 2-core machine.
CHILD_TIMEOUT_S = 1200.0
STEP_TIMEOUT_S = 900.0  # all tasks registered; all tasks finished
GATE_TIMEOUT_S = STEP_TIMEOUT_S  # the gate task gives up after this
# The scheduler has settled when, over SETTLE_WINDOW_S, its RSS moved by less
# than SETTLE_RSS_FRACTION and it used less than SETTLE_CPU_FRACTION of a core.
SETTLE_WINDOW_S = 1.0
SETTLE_RSS_FRACTION = 0.005
SETTLE_CPU_FRACTION = 0.2
SETTLE_TIMEOUT_S = 60.0
POLL_S = 0.1
# Counting the scheduler's tasks walks all of them, so it is asked less often.
COUNT_POLL_S = 0.5
SYSTEMS = ("shoal-cli", "dask-cli", "ray")  # the scheduler must be a process of its own


def gate(path: str, timeout_s: float) -> int:
    """Run on a worker: hold its thread until `path` exists; returns 0."""
    deadline = time.monotonic() + timeout_s
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate file {path} did not appear within {timeout_s} s")
        time.sleep(0.01)
    return 0


def plus(i: int, gate: int) -> int:
    return i + gate


def _dask_task_states(dask_scheduler: Any) -> dict[str, int]:
    """Run inside the dask scheduler: how many tasks are in each state."""
    counts: dict[str, int] = {}
    for ts in dask_scheduler.tasks.values():
        counts[ts.state] = counts.get(ts.state, 0) + 1
    return counts


# -- measuring -----------------------------------------------------------------------------


class Processes:
    """The scheduler's processes (one, or Ray's GCS and raylet), read as one."""

    def __init__(self, pids: list[int]) -> None:
        import psutil

        self.procs = [psutil.Process(pid) for pid in pids]

    def rss(self) -> int:
        return sum(p.memory_info().rss for p in self.procs)

    def cpu(self) -> float:
        return sum(sum(p.cpu_times()[:2]) for p in self.procs)


def settled_rss(proc: Any) -> tuple[int, bool]:
    """The processes' RSS once it has stopped growing and working, and whether it did.

    Polls every POLL_S; gives the last reading (and False) after SETTLE_TIMEOUT_S.
    """
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    samples: list[tuple[float, int, float]] = []  # (time, rss, cpu seconds)
    while True:
        cpu = proc.cpu()
        now = time.monotonic()
        samples.append((now, proc.rss(), cpu))
        window = [s for s in samples if s[0] >= now - SETTLE_WINDOW_S]
        span = window[-1][0] - window[0][0]
        if span >= SETTLE_WINDOW_S * 0.9:
            rss = [s[1] for s in window]
            moved = (max(rss) - min(rss)) / max(rss)
            busy = (window[-1][2] - window[0][2]) / span
            if moved < SETTLE_RSS_FRACTION and busy < SETTLE_CPU_FRACTION:
                return window[-1][1], True
        if now > deadline:
            return samples[-1][1], False
        time.sleep(POLL_S)


def task_states(system: str, client: Any) -> dict[str, int]:
    if system == "shoal-cli":
        return dict(client.scheduler_info()["tasks"])
    return client.run_on_scheduler(_dask_task_states)


class Calls:
    """Submit, wait and gather in each system's idiom."""

    def __init__(self, cluster: Cluster) -> None:
        self.system = cluster.system
        self.client = cluster.client
        self.procs = cluster.cli.procs if cluster.cli is not None else []
        if self.system == "ray":
            import ray

            self.gate, self.plus = ray.remote(gate), ray.remote(plus)

    def warm(self) -> None:
        if self.system == "ray":
            assert self.client.get(self.plus.remote(1, 1), timeout=STEP_TIMEOUT_S) == 2
            return
        assert self.client.submit(plus, 1, 1, pure=False).result(timeout=STEP_TIMEOUT_S) == 2
        task_states(self.system, self.client)  # so that what counting loads is in the baseline

    def submit(self, release: Path, n: int) -> list[Any]:
        """The gate, then n tasks waiting on it, held until the scheduler has them all."""
        if self.system == "ray":
            # Ray's owner (this driver) keeps a task until its arguments are ready;
            # the settled reading that follows is taken once the submissions are done.
            held = self.gate.remote(str(release), GATE_TIMEOUT_S)
            return [self.plus.remote(i, gate=held) for i in range(n)]
        held = self.client.submit(gate, str(release), GATE_TIMEOUT_S, pure=False)
        futures = self.client.map(plus, range(n), gate=held, pure=False)

        def all_waiting() -> bool:
            return task_states(self.system, self.client).get("waiting", 0) >= n

        _wait_for("tasks waiting", all_waiting, self.procs, STEP_TIMEOUT_S, COUNT_POLL_S)
        return futures

    def wait(self, futures: list[Any]) -> None:
        if self.system == "ray":
            done, _ = self.client.wait(
                futures, num_returns=len(futures), timeout=STEP_TIMEOUT_S, fetch_local=False
            )
            if len(done) != len(futures):
                raise TimeoutError(f"ray: {len(done)} of {len(futures)} tasks done")
            return
        if self.system == "shoal-cli":
            from shoal import wait
        else:
            from distributed import wait
        wait(futures, timeout=STEP_TIMEOUT_S)

    def gather(self, futures: list[Any]) -> list[int]:
        if self.system == "ray":
            return self.client.get(futures, timeout=STEP_TIMEOUT_S)
        return self.client.gather(futures)


def run_memory(system: str, n: int) -> dict[str, Any]:
    """One round on a fresh cluster of `system`; returns its figures."""
    with tempfile.TemporaryDirectory(prefix="shoal-bench-memory-") as tmp:
        workdir = Path(tmp)
        with Cluster(system, workdir) as cluster:
            try:
                return _measure(system, n, cluster, Processes(cluster.scheduler_pids()))
            except BaseException:
                print(cluster.logs(), file=sys.stderr)
                raise


def _measure(system: str, n: int, cluster: Cluster, sched: Processes) -> dict[str, Any]:
    import psutil

    out: dict[str, Any] = {"tasks": n}
    me = psutil.Process()
    calls = Calls(cluster)
    # One task and one count first, so that the code they load (in dask's scheduler,
    # this module too) is in the baseline.
    calls.warm()
    base, out["settled_base"] = settled_rss(sched)
    client_base = me.memory_info().rss
    cpu0 = sched.cpu()
    release = cluster.workdir / "release-gate"
    begin = time.perf_counter()
    futures = calls.submit(release, n)
    out["submit_s"] = time.perf_counter() - begin
    pending, out["settled_pending"] = settled_rss(sched)
    client_pending = me.memory_info().rss
    cpu1 = sched.cpu()

    release.touch()
    begin = time.perf_counter()
    calls.wait(futures)
    out["run_s"] = time.perf_counter() - begin
    finished, out["settled_held"] = settled_rss(sched)
    client_held = me.memory_info().rss
    cpu2 = sched.cpu()
    results = calls.gather(futures)
    if results != list(range(n)):
        raise RuntimeError(f"{system}: wrong results, e.g. {results[:5]}")
    out["rss_base_mb"] = base / 2**20
    out["bytes_per_task_pending"] = (pending - base) / n
    out["bytes_per_task_held"] = (finished - base) / n
    out["client_bytes_per_task_pending"] = (client_pending - client_base) / n
    out["client_bytes_per_task_held"] = (client_held - client_base) / n
    out["cpu_submit_s"] = cpu1 - cpu0
    out["cpu_run_s"] = cpu2 - cpu1
    out["cpu_us_per_task"] = (cpu2 - cpu0) / n * 1e6
    return out


# -- rounds in child processes -------------------------------------------------------------


def metrics(n: int) -> list[Metric]:
    """The table's rows for `n` tasks."""
    return [
        Metric("bytes_per_task_pending", f"scheduler memory, {n:,} tasks pending", "B/task", True),
        Metric("client_bytes_per_task_pending", "  client memory, pending", "B/task", True),
        Metric("bytes_per_task_held", f"scheduler memory, {n:,} finished, held", "B/task", True),
        Metric("client_bytes_per_task_held", "  client memory, finished, held", "B/task", True),
        Metric("cpu_us_per_task", "scheduler CPU, submit + run", "us/task", True),
        Metric("rss_base_mb", "scheduler RSS at baseline", "MiB", True),
    ]


def spawn(system: str, n: int, timeout: float = CHILD_TIMEOUT_S) -> dict[str, Any]:
    """One round of `system` in a child process (killed with its cluster on timeout)."""
    return run_child("benchmarks.memory", ["--child", system, "--tasks", str(n)], timeout)


def main(argv: list[str] | None = None) -> int:
    from benchmarks import spill, spill_frame

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--tasks", type=int, help=f"tasks held (default {N_TASKS:,})")
    parser.add_argument("--quick", action="store_true", help=f"{N_TASKS_QUICK:,} tasks, one round")
    parser.add_argument("--out", help="also write the figures as JSON here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument(
        "--workloads",
        default="scheduler,spill,groupby",
        help="scheduler: memory per task; spill: numpy data larger than memory; groupby: "
        "a dataframe groupby over data larger than memory (default all three)",
    )
    spill.add_arguments(parser)
    spill_frame.add_arguments(parser)
    args = parser.parse_args(argv)
    n = args.tasks or (N_TASKS_QUICK if args.quick else N_TASKS)
    if args.child:
        print(json.dumps(run_memory(args.child, n)), flush=True)
        return 0
    systems = [s for s in args.systems.split(",") if s and available(s)]
    workloads = [w for w in args.workloads.split(",") if w]
    out: dict[str, Any] = {}
    if "scheduler" in workloads:
        out["scheduler"] = _scheduler_rounds(systems, n, args)
    # The spill workload starts shoal and dask from the command line, as their users do.
    spilling = list(dict.fromkeys(family(s) for s in systems if family(s) in ("shoal", "dask")))
    if "spill" in workloads and spilling:
        out["spill"] = spill.run_rounds(spilling, spill.shape_of(args), 1)
        print(format_table(out["spill"]["table"]))
    if "groupby" in workloads and spilling:
        out["groupby"] = spill_frame.run_rounds(spilling, spill_frame.shape_of(args), 1)
        print(format_table(out["groupby"]["table"]))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=2)
    return 0


def _scheduler_rounds(systems: list[str], n: int, args: argparse.Namespace) -> dict[str, Any]:
    repeat = 1 if args.quick else args.repeat
    values: dict[str, dict[str, list[float]]] = {}
    rounds = []
    for rnd in range(repeat):
        for system in systems if rnd % 2 == 0 else systems[::-1]:
            figures = spawn(system, n)
            rounds.append({"round": rnd + 1, "system": system, "figures": figures})
            print(f"  round {rnd + 1}/{repeat} {system}: {figures}", file=sys.stderr)
            for metric in metrics(n):
                values.setdefault(metric.key, {}).setdefault(system, []).append(figures[metric.key])
    table = summarize(metrics(n), values)
    print(format_table(table))
    return {"tasks": n, "table": table, "rounds": rounds}


if __name__ == "__main__":
    sys.exit(main())
