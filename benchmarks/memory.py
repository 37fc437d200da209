"""Memory: the scheduler's per task, and workloads larger than the workers' memory.

The second is benchmarks/spill.py (`--workloads spill`); what follows is the first.
Scheduler memory per task: 100,000 tasks pending, then finished and held.

The cluster starts from the command line, so the scheduler is a process of its
own whose figures can be read: `shoal scheduler` and two `shoal worker
--nthreads 1`, or `dask scheduler` and two `dask worker --nthreads 1
--nworkers 1`, all on 127.0.0.1. A client in this process submits one gate
task, which holds a worker thread until a file appears, then N trivial tasks
that each take the gate's result as an argument, so every one of them waits
on the scheduler. The scheduler's resident set (psutil, its pid) is read once
it has settled: at baseline, with the N tasks waiting, and after the gate is
released and all N finished with their futures still held. Figures are RSS
growth over the baseline divided by N, and the scheduler's CPU seconds.

    python -m benchmarks.memory [--systems shoal,dask] [--tasks N] [--quick] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.children import run_child
from benchmarks.table import Metric, format_table, summarize

N_TASKS = 100_000
N_TASKS_QUICK = 1_000
# The whole round, results gathered and processes stopped: dask took 8 minutes to run
# 100,000 of these tasks on a busy 2-core machine.
CHILD_TIMEOUT_S = 1200.0
START_TIMEOUT_S = 60.0  # scheduler listening, workers joined, each answer from the scheduler
STEP_TIMEOUT_S = 900.0  # all tasks registered; all tasks finished
GATE_TIMEOUT_S = STEP_TIMEOUT_S  # the gate task gives up after this
STOP_GRACE_S = 10.0
# The scheduler has settled when, over SETTLE_WINDOW_S, its RSS moved by less
# than SETTLE_RSS_FRACTION and it used less than SETTLE_CPU_FRACTION of a core.
SETTLE_WINDOW_S = 1.0
SETTLE_RSS_FRACTION = 0.005
SETTLE_CPU_FRACTION = 0.2
SETTLE_TIMEOUT_S = 60.0
POLL_S = 0.1
# Counting the scheduler's tasks walks all of them, so it is asked less often.
COUNT_POLL_S = 0.5
REPO = Path(__file__).resolve().parent.parent


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


# -- the cluster: command-line processes ----------------------------------------------


def _wait_for(
    what: str, ready: Any, procs: list[subprocess.Popen], timeout: float, poll_s: float = POLL_S
) -> Any:
    """Poll `ready()` until it returns something truthy; fail early if a process died.

    Raises:
        RuntimeError: one of `procs` exited first.
        TimeoutError: not ready within `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = ready()
        if value:
            return value
        for proc in procs:
            if proc.poll() is not None:
                command = " ".join(proc.args[2:5])
                raise RuntimeError(f"{command} exited with {proc.returncode} ({what})")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout} s")
        time.sleep(poll_s)


class CliCluster:
    """A scheduler and two one-thread workers started as commands; stopped on exit.

    The processes stay in this process's group, so a benchmark round killed on
    timeout (benchmarks/children.py) takes them with it.
    """

    def __init__(self, system: str, workdir: Path, worker_args: tuple[str, ...] = ()) -> None:
        self.system = system
        self.workdir = workdir
        self.worker_args = list(worker_args)  # for both systems' workers alike
        self.token = secrets.token_urlsafe(32)
        self.env = {**os.environ, "SHOAL_TOKEN": self.token, "PYTHONPATH": str(REPO)}
        self.procs: list[subprocess.Popen] = []  # the scheduler first
        self.address = ""

    def _start(self, name: str, args: list[str]) -> subprocess.Popen:
        with open(self.workdir / f"{name}.out", "wb") as out:  # the child keeps its own copy
            proc = subprocess.Popen(
                [sys.executable, "-m", *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.workdir,
            )
        self.procs.append(proc)
        return proc

    def __enter__(self) -> CliCluster:
        try:
            self._start_all()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_all(self) -> None:
        if self.system == "shoal":
            sched = ["shoal", "--log-level", "warning", "scheduler", "--port", "0"]
            self._start("scheduler", sched)
            self.address = _wait_for(
                "shoal scheduler listening", self._shoal_address, self.procs, START_TIMEOUT_S
            )
            for i in range(2):
                args = ["shoal", "--log-level", "warning", "worker", self.address]
                args += ["--nthreads", "1", "--name", f"w{i}", *self.worker_args]
                self._start(f"worker-{i}", args)
        else:
            info = self.workdir / "scheduler.json"
            sched = ["dask", "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard"]
            self._start("scheduler", [*sched, "--scheduler-file", str(info)])
            address = lambda: _json_field(info, "address")  # noqa: E731
            self.address = _wait_for("dask scheduler file", address, self.procs, START_TIMEOUT_S)
            for i in range(2):
                args = ["dask", "worker", self.address, "--nthreads", "1", "--nworkers", "1"]
                args += ["--no-dashboard", "--name", f"w{i}", *self.worker_args]
                self._start(f"worker-{i}", args)

    def _shoal_address(self) -> str:
        text = (self.workdir / "scheduler.out").read_text(errors="replace")
        for line in text.splitlines():
            if "listening at " in line:
                return line.rsplit("listening at ", 1)[1].strip()
        return ""

    def connect(self) -> Any:
        if self.system == "shoal":
            from shoal import Client

            client = Client(self.address, token=self.token, timeout=START_TIMEOUT_S)
        else:
            from distributed import Client as DaskClient

            client = DaskClient(self.address, timeout=START_TIMEOUT_S)
        client.wait_for_workers(2, timeout=START_TIMEOUT_S)
        return client

    def logs(self) -> str:
        parts = []
        for path in sorted(self.workdir.glob("*.out")):
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-2000:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        """SIGTERM the workers, then the scheduler; SIGKILL what outlives the grace."""
        for group in (self.procs[1:], self.procs[:1]):
            for proc in group:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_GRACE_S
            for proc in group:
                try:
                    proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _json_field(path: Path, field: str) -> Any:
    try:
        return json.loads(path.read_text()).get(field)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


# -- measuring -----------------------------------------------------------------------------


def settled_rss(proc: Any) -> tuple[int, bool]:
    """The process's RSS once it has stopped growing and working, and whether it did.

    Polls every POLL_S; gives the last reading (and False) after SETTLE_TIMEOUT_S.
    """
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    samples: list[tuple[float, int, float]] = []  # (time, rss, cpu seconds)
    while True:
        cpu = proc.cpu_times()
        now = time.monotonic()
        samples.append((now, proc.memory_info().rss, cpu.user + cpu.system))
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
    if system == "shoal":
        return dict(client.scheduler_info()["tasks"])
    return client.run_on_scheduler(_dask_task_states)


def run_memory(system: str, n: int) -> dict[str, Any]:
    """One round on a fresh command-line cluster of `system`; returns its figures."""
    import psutil

    if system == "shoal":
        from shoal import wait
    else:
        from distributed import wait

    with tempfile.TemporaryDirectory(prefix="shoal-bench-memory-") as tmp:
        workdir = Path(tmp)
        with CliCluster(system, workdir) as cluster:
            try:
                return _measure(system, n, cluster, psutil.Process(cluster.procs[0].pid), wait)
            except BaseException:
                print(cluster.logs(), file=sys.stderr)
                raise


def _measure(system: str, n: int, cluster: CliCluster, sched: Any, wait: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"tasks": n}
    client = cluster.connect()
    try:
        # One task and one count first, so that the code they load (in dask's scheduler,
        # this module too) is in the baseline.
        assert client.submit(plus, 1, 1, pure=False).result(timeout=STEP_TIMEOUT_S) == 2
        task_states(system, client)
        base, out["settled_base"] = settled_rss(sched)
        cpu0 = sum(sched.cpu_times()[:2])
        release = cluster.workdir / "release-gate"
        begin = time.perf_counter()
        held = client.submit(gate, str(release), GATE_TIMEOUT_S, pure=False)
        futures = client.map(plus, range(n), gate=held, pure=False)

        def all_waiting() -> bool:
            return task_states(system, client).get("waiting", 0) >= n

        _wait_for("tasks waiting", all_waiting, cluster.procs, STEP_TIMEOUT_S, COUNT_POLL_S)
        out["submit_s"] = time.perf_counter() - begin
        pending, out["settled_pending"] = settled_rss(sched)
        cpu1 = sum(sched.cpu_times()[:2])

        release.touch()
        begin = time.perf_counter()
        wait(futures, timeout=STEP_TIMEOUT_S)
        out["run_s"] = time.perf_counter() - begin
        finished, out["settled_held"] = settled_rss(sched)
        cpu2 = sum(sched.cpu_times()[:2])
        results = client.gather(futures)
        if results != list(range(n)):
            raise RuntimeError(f"{system}: wrong results, e.g. {results[:5]}")
    finally:
        client.close()
    out["rss_base_mb"] = base / 2**20
    out["bytes_per_task_pending"] = (pending - base) / n
    out["bytes_per_task_held"] = (finished - base) / n
    out["cpu_submit_s"] = cpu1 - cpu0
    out["cpu_run_s"] = cpu2 - cpu1
    out["cpu_us_per_task"] = (cpu2 - cpu0) / n * 1e6
    return out


# -- rounds in child processes -------------------------------------------------------------


def metrics(n: int) -> list[Metric]:
    """The table's rows for `n` tasks."""
    return [
        Metric("bytes_per_task_pending", f"scheduler memory, {n:,} tasks pending", "B/task"),
        Metric("bytes_per_task_held", f"scheduler memory, {n:,} finished, held", "B/task"),
        Metric("cpu_us_per_task", "scheduler CPU, submit + run", "us/task"),
        Metric("rss_base_mb", "scheduler RSS at baseline", "MiB"),
    ]


def spawn(system: str, n: int, timeout: float = CHILD_TIMEOUT_S) -> dict[str, Any]:
    """One round of `system` in a child process (killed with its cluster on timeout)."""
    return run_child("benchmarks.memory", ["--child", system, "--tasks", str(n)], timeout)


def main(argv: list[str] | None = None) -> int:
    from benchmarks import spill  # it uses CliCluster, above

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--systems", default="shoal,dask")
    parser.add_argument("--tasks", type=int, help=f"tasks held (default {N_TASKS:,})")
    parser.add_argument("--quick", action="store_true", help=f"{N_TASKS_QUICK:,} tasks, one round")
    parser.add_argument("--out", help="also write the figures as JSON here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument(
        "--workloads",
        default="scheduler,spill",
        help="scheduler: memory per task; spill: data larger than memory (default both)",
    )
    spill.add_arguments(parser)
    args = parser.parse_args(argv)
    n = args.tasks or (N_TASKS_QUICK if args.quick else N_TASKS)
    if args.child:
        print(json.dumps(run_memory(args.child, n)), flush=True)
        return 0
    systems = [s for s in args.systems.split(",") if s]
    workloads = [w for w in args.workloads.split(",") if w]
    out: dict[str, Any] = {}
    if "scheduler" in workloads:
        out["scheduler"] = _scheduler_rounds(systems, n, args)
    if "spill" in workloads:
        out["spill"] = spill.run_rounds(systems, spill.shape_of(args), 1)
        print(format_table(out["spill"]["table"]))
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
