"""The systems under test, each started the way its users start it, and their processes.

Every system gets the same shape: one scheduler and two workers that run one
task at a time, on 127.0.0.1.

- `shoal`: `shoal.Client(n_workers=2, threads_per_worker=1)`, the scheduler
  in the client's process, two worker processes.
- `shoal-cli`: `shoal scheduler` and two `shoal worker --nthreads 1`
  commands (each worker under its nanny), the client connecting over TCP.
- `dask`: `distributed.Client(n_workers=2, threads_per_worker=1,
  processes=True)`, a LocalCluster: the scheduler in the client's process.
- `dask-cli`: `dask scheduler` and two `dask worker --nthreads 1
  --nworkers 1` commands (each worker under its nanny).
- `ray`: `ray.init(num_cpus=2)`: the driver, Ray's GCS and raylet, and two
  worker processes.

`Cluster(system)` starts one and is its client; `roles()` sorts its processes
into client, scheduler and workers, so that CPU can be charged per process
kind (`cpu_by_role`).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SYSTEMS = ("shoal", "shoal-cli", "dask", "dask-cli", "ray")
MODULES = {"shoal": "shoal", "dask": "distributed", "ray": "ray", "raw": "numpy"}
START_TIMEOUT_S = 60.0
STOP_GRACE_S = 10.0
POLL_S = 0.01  # the wait for a command-line scheduler's address
ROLES = ("client", "scheduler", "workers")  # the table's; Ray's agents and monitors are "other"


def family(system: str) -> str:
    """`dask-cli` -> `dask`: the project a system name belongs to."""
    return system.split("-", 1)[0]


def available(system: str) -> bool:
    try:
        __import__(MODULES[family(system)])
    except ImportError:
        print(f"{system}: {MODULES[family(system)]} is not installed; skipping it", file=sys.stderr)
        return False
    return True


def _wait_for(what: str, ready: Any, procs: list[Any], timeout: float, poll_s: float) -> Any:
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
            listening = self._shoal_address
            self.address = _wait_for(
                "shoal scheduler listening", listening, self.procs, START_TIMEOUT_S, POLL_S
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
            self.address = _wait_for(
                "dask scheduler file", address, self.procs, START_TIMEOUT_S, POLL_S
            )
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


class Cluster:
    """One running system and its client: `with Cluster("dask-cli", tmp) as c: c.client`.

    For Ray, `client` is the `ray` module itself (the driver is this process).
    """

    def __init__(self, system: str, workdir: Path) -> None:
        self.system = system
        self.workdir = workdir
        self.cli: CliCluster | None = None
        self.client: Any = None

    def __enter__(self) -> Cluster:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def _start(self) -> None:
        if self.system == "shoal":
            from shoal import Client

            self.client = Client(n_workers=2, threads_per_worker=1)
        elif self.system == "dask":
            from distributed import Client as DaskClient

            self.client = DaskClient(
                n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
            )
        elif self.system in ("shoal-cli", "dask-cli"):
            self.cli = CliCluster(family(self.system), self.workdir)
            self.cli.__enter__()
            self.client = self.cli.connect()
        elif self.system == "ray":
            import ray

            os.environ.setdefault("PYTHONPATH", str(REPO))
            ray.init(
                num_cpus=2,
                include_dashboard=False,
                log_to_driver=False,
                logging_level="ERROR",
                configure_logging=False,
            )
            self.client = ray
        else:
            raise ValueError(f"unknown system {self.system!r}; choose from {SYSTEMS}")

    def close(self) -> None:
        if self.system == "ray":
            import ray

            ray.shutdown()
        elif self.client is not None:
            self.client.close()
        if self.cli is not None:
            self.cli.stop()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def scheduler_pids(self) -> list[int]:
        """The processes that schedule: the command-line scheduler, or Ray's GCS and raylet."""
        if self.cli is not None:
            return [self.cli.procs[0].pid]
        return [pid for pid, role in roles(self).items() if role == "scheduler"]

    def logs(self) -> str:
        return self.cli.logs() if self.cli is not None else ""


def roles(cluster: Cluster) -> dict[int, str]:
    """pid -> client, scheduler or workers, for this process and all below it.

    This process is the client (and, for `shoal` and `dask`, also the scheduler,
    which runs in it). A command-line cluster's scheduler is its first command;
    its workers are the other commands and everything they start (nannies
    included). Under Ray, the scheduler is the GCS and the raylet, the workers
    are the worker processes (titled `ray::IDLE` or `ray::<function>`), and
    the agents and monitors Ray also starts are "other", left out of the table.
    """
    import psutil

    me = psutil.Process()
    found = {me.pid: "client"}
    if cluster.cli is not None:
        sched, *workers = cluster.cli.procs
        found[sched.pid] = "scheduler"
        for proc in workers:
            found[proc.pid] = "workers"
            try:
                for child in psutil.Process(proc.pid).children(recursive=True):
                    found[child.pid] = "workers"
            except psutil.NoSuchProcess:
                pass
        return found
    for child in me.children(recursive=True):
        try:
            found[child.pid] = "workers" if cluster.system != "ray" else _ray_role(child)
        except psutil.NoSuchProcess:
            pass
    return found


def _ray_role(proc: Any) -> str:
    name = proc.name()
    if name in ("gcs_server", "raylet"):
        return "scheduler"
    if name.startswith("ray::") and not name.endswith("Agent"):
        return "workers"
    return "other"


def cpu_seconds(pids: dict[int, str]) -> dict[int, float]:
    """User + system CPU seconds of each process that is still there."""
    import psutil

    out = {}
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:
            continue
        out[pid] = times.user + times.system
    return out


class CpuMeter:
    """CPU seconds per role between `start()` and `stop()`, processes found at both ends.

    A process that appears in between is charged all its CPU; one that exits in
    between loses what it used (none do in these workloads).
    """

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.before: dict[int, float] = {}

    def start(self) -> None:
        self.before = cpu_seconds(roles(self.cluster))

    def stop(self) -> dict[str, float]:
        found = roles(self.cluster)
        after = cpu_seconds(found)
        totals = dict.fromkeys((*ROLES, "other"), 0.0)
        for pid, seconds in after.items():
            totals[found[pid]] += seconds - self.before.get(pid, 0.0)
        return totals
