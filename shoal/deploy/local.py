"""LocalCluster: a scheduler in this process and workers beside it, on loopback.

Workers run as subprocesses (`processes=True`, the default) or in this
process's event loop. A synchronous LocalCluster forks its worker processes
when it can (see shoal.deploy.forked), which starts them in milliseconds.
Worker processes run without a nanny unless `nanny=True`: each then runs
under its own supervisor, as `shoal worker` does, which restarts it when it
dies or crosses `memory_limit`. A fresh random token guards the ports.
`close()` stops the workers (SIGTERM, then SIGKILL after a grace period) and
the scheduler. An internal error in the in-process scheduler never ends the
program: that scheduler stops, its clients' pending futures fail with
SchedulerLost naming the error, and `failure` holds it until `close()`.
Worker processes hold a lifeline to the process that started them
(shoal.deploy.lifeline): should it end without `close()`, killed or not,
they stop at once. With `gpus`, there is one worker process per device, as
`shoal worker --gpus` starts them (see shoal.deploy.gpus).
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import math
import os
import secrets
import signal
import socket
import sys
from collections.abc import Generator, Sequence
from typing import Any

from shoal.client.loop import LoopThread
from shoal.deploy import gpus as gpu_nodes
from shoal.deploy import options
from shoal.deploy.forked import ForkedProcess, can_fork, fork_worker
from shoal.deploy.lifeline import Lifeline
from shoal.deploy.worker_env import import_path, worker_environment
from shoal.scheduler.server import Scheduler
from shoal.scheduler.state import SchedulerState
from shoal.worker.gpu import Device, parse_gpus, pin_env
from shoal.worker.memory import PAUSE, SPILL, TARGET, TERMINATE, MemoryLimits
from shoal.worker.server import Worker
from shoal.worker.spillfile import check_compression

log = logging.getLogger(__name__)

# How long a worker process gets to leave on SIGTERM before it is killed.
STOP_GRACE_S = 5.0


# SchedulerState keywords that hold seconds, and those that may also be None (off).
_SECONDS = ("heartbeat_timeout", "death_report_wait", "no_worker_warning", "round_trip_s")
_SECONDS_OR_NONE = ("no_workers_timeout",)


def scheduler_keywords() -> frozenset[str]:
    """The keywords LocalCluster passes on to its Scheduler and SchedulerState."""
    names = set()
    for call in (Scheduler.__init__, SchedulerState.__init__):
        for param in inspect.signature(call).parameters.values():
            if param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
                names.add(param.name)
    return frozenset(names - {"self", "sock", "token", "freeze_gc"})


def check_scheduler_options(owner: str, given: dict[str, Any]) -> None:
    """Check the scheduler keywords given to `owner` (LocalCluster or Client), by
    name and by value, before anything starts.

    Raises:
        TypeError: an unknown keyword, naming it.
        ValueError: a number of seconds that is not finite and positive, or
            allowed_failures below 1.
    """
    known = scheduler_keywords()
    unknown = [name for name in given if name not in known]
    if unknown:
        raise TypeError(
            f"{owner}() got an unexpected keyword argument {unknown[0]!r} "
            f"(it takes n_workers, threads_per_worker, processes, memory_limit, resources, "
            "memory_target_fraction, memory_spill_fraction, memory_pause_fraction, "
            "memory_terminate_fraction, local_directory, spill_compression, nanny, "
            f"start_timeout, gpus, device_memory_limit and the scheduler's "
            f"{', '.join(sorted(known))})"
        )
    for name, value in given.items():
        try:
            if name in _SECONDS or (name in _SECONDS_OR_NONE and value is not None):
                options.seconds(value)
            elif name == "allowed_failures":
                _count(name, value, 1)
            elif name == "http_port" and value is not None:
                if type(value) is not int:
                    raise TypeError(f"http_port must be an int or None, not {value!r}")
                options.port(str(value))
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None


@dataclasses.dataclass(frozen=True)
class WorkerShape:
    """The workers of a LocalCluster, checked once, before any of them starts."""

    n_workers: int
    threads_per_worker: int
    memory_limit: int  # bytes; 0: none
    resources: dict[str, float]
    memory: MemoryLimits = MemoryLimits()  # noqa: RUF009 (frozen)
    local_directory: str | None = None
    spill_compression: str | None = None

    @classmethod
    def checked(
        cls,
        n_workers: int | None = None,
        threads_per_worker: int | None = None,
        memory_limit: int | float | str = 0,
        resources: dict[str, float] | None = None,
        memory_target_fraction: float | bool | None = TARGET,
        memory_spill_fraction: float | bool | None = SPILL,
        memory_pause_fraction: float | bool | None = PAUSE,
        memory_terminate_fraction: float | bool | None = TERMINATE,
        local_directory: str | os.PathLike[str] | None = None,
        spill_compression: str | None = None,
    ) -> WorkerShape:
        """Raises:
        TypeError: a value of the wrong type.
        ValueError: a value out of range (see options.memory_limit)."""
        workers, threads = default_shape()
        if n_workers is not None:
            workers = _count("n_workers", n_workers, 0)
        if threads_per_worker is not None:
            threads = _count("threads_per_worker", threads_per_worker, 1)
        try:
            limit = options.memory_limit(memory_limit, threads)
        except ValueError as exc:
            raise ValueError(f"memory_limit: {exc}") from None
        fractions = {
            "target": memory_target_fraction,
            "spill": memory_spill_fraction,
            "pause": memory_pause_fraction,
            "terminate": memory_terminate_fraction,
        }
        # False turns a threshold off, as in dask; True is not a fraction.
        off = {k: None if v is False else v for k, v in fractions.items()}
        memory = MemoryLimits(limit, **off)
        if spill_compression is not None and not isinstance(spill_compression, str):
            raise TypeError(f"spill_compression must be a str or None, not {spill_compression!r}")
        try:
            compression = check_compression(spill_compression)
        except ValueError as exc:
            raise ValueError(f"spill_compression: {exc}") from None
        directory = os.fspath(local_directory) if local_directory is not None else None
        resources = options.check_resources(resources or {})
        return cls(workers, threads, limit, resources, memory, directory, compression)


def check_cluster_keywords(owner: str, given: dict[str, Any]) -> None:
    """Check the LocalCluster keywords `owner` (Client) was given, by name and value,
    before anything starts.

    Raises:
        TypeError: an unknown keyword (named) or a value of the wrong type.
        ValueError: a value out of range.
    """
    own = set(inspect.signature(LocalCluster.__init__).parameters) - {"self", "scheduler_options"}
    check_scheduler_options(owner, {k: v for k, v in given.items() if k not in own})
    WorkerShape.checked(**{k: v for k, v in given.items() if k in _SHAPE})
    check_gpus(given.get("gpus"), given.get("device_memory_limit"), given.get("processes", True))
    if "start_timeout" in given:
        try:
            options.seconds(given["start_timeout"])
        except ValueError as exc:
            raise ValueError(f"start_timeout: {exc}") from None


_SHAPE = (
    "n_workers",
    "threads_per_worker",
    "memory_limit",
    "resources",
    "memory_target_fraction",
    "memory_spill_fraction",
    "memory_pause_fraction",
    "memory_terminate_fraction",
    "local_directory",
    "spill_compression",
)


def check_gpus(
    gpus: object, device_memory_limit: object, processes: object
) -> str | tuple[str, ...] | None:
    """The `gpus` keyword, checked for form (devices are looked up at start), with
    `device_memory_limit`; None without gpus.

    Raises:
        ValueError: not 'all', indices or UUIDs; a limit that is not one; or gpus
            with processes=False (each worker pins its device in its own process).
    """
    if gpus is None:
        if device_memory_limit is not None:
            raise ValueError("device_memory_limit needs gpus")
        return None
    try:
        spec = parse_gpus(gpus)
    except ValueError as exc:
        raise ValueError(f"gpus: {exc}") from None
    try:
        if device_memory_limit is not None:
            options.device_memory_limit(str(device_memory_limit), 2**40)  # its form alone
    except ValueError as exc:
        raise ValueError(f"device_memory_limit: {exc}") from None
    if not processes:
        raise ValueError(
            "gpus needs processes=True: each worker is pinned to its device through "
            "CUDA_VISIBLE_DEVICES, in a process of its own"
        )
    return spec


def _count(name: str, value: object, least: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be a whole number, not {value!r}")
    if value < least:
        raise ValueError(f"{name} must be at least {least}, not {value}")
    return value


def default_shape(cpus: int | None = None) -> tuple[int, int]:
    """(workers, threads per worker) for a machine: one-thread processes on
    small machines, about the square root of the cores in processes on big ones."""
    cpus = cpus or os.cpu_count() or 1
    if cpus <= 4:
        return cpus, 1
    workers = max(2, math.isqrt(cpus))
    return workers, max(1, cpus // workers)


class LocalCluster:
    """A scheduler and `n_workers` workers on 127.0.0.1.

    Synchronous by default (it runs its own event loop in a thread); with
    `asynchronous=True` it runs on the caller's loop and must be awaited:
    `cluster = await LocalCluster(asynchronous=True)` or `async with`.

    `memory_limit` is bytes, a size ('4GB'), a fraction of the machine's
    memory (0.5), 'auto' (its share by threads) or 0 (no limit), as for
    `shoal worker --memory-limit`. `memory_target_fraction`,
    `memory_spill_fraction`, `memory_pause_fraction` and
    `memory_terminate_fraction` (None or False: off), `local_directory` and
    `spill_compression` are those of `shoal worker` too. `gpus` ('all', [0, 2],
    UUIDs) starts one worker per device instead of `n_workers`, each pinned to
    its device with GPU=1 and `device_memory_limit` (a fraction of the device,
    0.8 by default, or a size), as `shoal worker --gpus` does. Extra keyword arguments configure the
    scheduler (`heartbeat_timeout`, `allowed_failures`, `no_worker_warning`,
    `no_workers_timeout`, ...); they are checked before any process starts.

    Raises:
        TypeError: an unknown keyword, or a value of the wrong type.
        ValueError: a value out of range (no worker process is started then).
        NoDevice: no GPU matches `gpus` (the message says what NVML found).
        RuntimeError: (on start) a worker process exited before it joined.
        TimeoutError: (on start) the workers did not join within `start_timeout` seconds.
    """

    def __init__(
        self,
        n_workers: int | None = None,
        threads_per_worker: int | None = None,
        processes: bool = True,
        *,
        asynchronous: bool = False,
        token: str | None = None,
        resources: dict[str, float] | None = None,
        memory_limit: int | float | str = 0,
        memory_target_fraction: float | bool | None = TARGET,
        memory_spill_fraction: float | bool | None = SPILL,
        memory_pause_fraction: float | bool | None = PAUSE,
        memory_terminate_fraction: float | bool | None = TERMINATE,
        local_directory: str | os.PathLike[str] | None = None,
        spill_compression: str | None = None,
        start_timeout: float = 60.0,
        nanny: bool = False,
        gpus: str | Sequence[int | str] | None = None,
        device_memory_limit: float | str | None = None,
        **scheduler_options: Any,
    ) -> None:
        check_scheduler_options("LocalCluster", scheduler_options)
        spec = check_gpus(gpus, device_memory_limit, processes)
        self.devices: list[Device] = []
        self.device_limits: list[int] = []
        if spec is not None:
            _, self.devices = gpu_nodes.find(spec, f"LocalCluster(gpus={gpus!r})")
            self.device_limits = gpu_nodes.limits_for(device_memory_limit, self.devices)
            if n_workers is not None and n_workers != len(self.devices):
                raise ValueError(
                    f"n_workers={n_workers} but gpus={gpus!r} names {len(self.devices)} "
                    "devices: a GPU cluster has one worker per device (leave n_workers out)"
                )
            n_workers = len(self.devices)
        scheduler_options.setdefault("http_port", 0)  # the dashboard, on any free port
        shape = WorkerShape.checked(
            n_workers,
            threads_per_worker,
            memory_limit,
            resources,
            memory_target_fraction,
            memory_spill_fraction,
            memory_pause_fraction,
            memory_terminate_fraction,
            local_directory,
            spill_compression,
        )
        self.shape = shape
        self.n_workers, self.threads_per_worker = shape.n_workers, shape.threads_per_worker
        self.processes = processes
        self.asynchronous = asynchronous
        self.token = token or secrets.token_urlsafe(32)
        self.resources, self.memory_limit = shape.resources, shape.memory_limit
        self.start_timeout = options.seconds(start_timeout)
        self.nanny = nanny
        self.scheduler_address = ""
        self.workers: list[Worker] = []
        self.procs: list[asyncio.subprocess.Process | ForkedProcess] = []
        self._lifeline = Lifeline() if processes else None
        listening = None
        # Not forked with GPUs: CUDA, if this process started it, does not survive a fork.
        forking = not self.devices and can_fork()
        if processes and not asynchronous and "address" not in scheduler_options and forking:
            # Bind first: the forked workers' connections wait in its backlog
            # until the scheduler, started next in the loop thread, accepts them.
            listening = socket.create_server(("127.0.0.1", 0), backlog=1024)
            address = f"tcp://127.0.0.1:{listening.getsockname()[1]}"
            scheduler_options["address"] = address
            for i in range(self.n_workers):
                argv = self._worker_argv(i, address)
                assert self._lifeline is not None
                self.procs.append(fork_worker(argv, self.token, listening, self._lifeline))
        self.scheduler = Scheduler(token=self.token, sock=listening, **scheduler_options)
        self._loop_thread: LoopThread | None = None
        self._started = False
        self._closed = False
        if not asynchronous:
            self._loop_thread = LoopThread("shoal-local-cluster")
            try:
                self._loop_thread.run(self._start())
            except BaseException:
                self._loop_thread.run(self._close())
                self._loop_thread.stop()
                raise

    # -- starting ------------------------------------------------------------------

    async def _start(self) -> LocalCluster:
        if self._started:
            return self
        self._started = True
        await self.scheduler.start()
        self.scheduler_address = self.scheduler.address
        for i in range(self.n_workers):
            if not self.processes:
                self.workers.append(self._make_worker(i))
            elif len(self.procs) < self.n_workers:  # not forked at construction
                self.procs.append(await self._spawn(i))
        try:
            async with asyncio.timeout(self.start_timeout):
                if self.workers:
                    await asyncio.gather(*(w.start() for w in self.workers))
                await self._wait_joined()
        except BaseException:
            await self._close()
            raise
        return self

    def _make_worker(self, i: int) -> Worker:
        return Worker(
            self.scheduler_address,
            name=f"local-{i}",
            nthreads=self.threads_per_worker,
            memory_limit=self.memory_limit,
            resources=self.resources,
            token=self.token,
            memory=self.shape.memory,
            local_directory=self.shape.local_directory,
            spill_compression=self.shape.spill_compression,
        )

    async def _spawn(self, i: int) -> asyncio.subprocess.Process:
        # -P: a folder named `shoal` in the working directory cannot shadow the package.
        argv = self._worker_argv(i, self.scheduler_address)
        args = [sys.executable, "-P", "-m", "shoal", *argv]
        assert self._lifeline is not None
        # The token travels in the environment, not in argv where `ps` shows it.
        env = worker_environment(os.environ, self.threads_per_worker)
        env.update({"SHOAL_TOKEN": self.token, **self._lifeline.child_env()})
        # What a forked worker inherits: this process's import path (-P leaves out the
        # working directory, and a script's own folder is not on a new process's path).
        own = {sys.prefix, sys.base_prefix, sys.exec_prefix}
        env["PYTHONPATH"] = import_path(sys.path, own, env.get("PYTHONPATH", ""))
        if self.devices:
            env.update(pin_env(self.devices[i]))
        return await asyncio.create_subprocess_exec(
            *args,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            pass_fds=(self._lifeline.read_fd,),
        )

    def _worker_argv(self, i: int, address: str) -> list[str]:
        """The `shoal` arguments that start worker `i`."""
        device = self.devices[i] if self.devices else None
        args = [
            "--log-level",
            "warning",
            "worker",
            address,
            "--name",
            f"local-{device.suffix}" if device is not None else f"local-{i}",
            "--nthreads",
            str(self.threads_per_worker),
            "--memory-limit",
            str(self.memory_limit),
        ]
        memory = self.shape.memory
        for name in ("target", "spill", "pause", "terminate"):
            value = getattr(memory, name)
            args += [f"--memory-{name}-fraction", "off" if value is None else repr(value)]
        if self.shape.local_directory is not None:
            args += ["--local-directory", self.shape.local_directory]
        if self.shape.spill_compression is not None:
            args += ["--spill-compression", self.shape.spill_compression]
        args.append("--no-http")  # the scheduler's endpoints show the local workers
        if not self.nanny:
            args.append("--no-nanny")
        if self.resources:
            args += ["--resources", ",".join(f"{k}={v}" for k, v in self.resources.items())]
        if device is not None:
            args += gpu_nodes.device_worker_args([], device, self.device_limits[i])
        return args

    async def _wait_joined(self) -> None:
        """Wait until every worker registered, failing early if a process died."""
        joined = asyncio.ensure_future(self.scheduler.wait_for_workers(self.n_workers))
        exits = [asyncio.ensure_future(p.wait()) for p in self.procs]
        try:
            while not joined.done():
                await asyncio.wait([joined, *exits], return_when=asyncio.FIRST_COMPLETED)
                for proc, exited in zip(self.procs, exits, strict=True):
                    if exited.done():
                        raise RuntimeError(
                            f"worker process {proc.pid} exited with code {proc.returncode} "
                            "before joining the scheduler (its error is printed above)"
                        )
        finally:
            for waiter in [joined, *exits]:
                waiter.cancel()
            await asyncio.gather(joined, *exits, return_exceptions=True)

    # -- stopping ------------------------------------------------------------------

    async def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await asyncio.gather(*(w.close("cluster closing") for w in self.workers))
        await asyncio.gather(*(self._stop_process(p) for p in self.procs))
        if self._lifeline is not None:
            self._lifeline.close()
        await self.scheduler.close()

    @staticmethod
    async def _stop_process(proc: asyncio.subprocess.Process | ForkedProcess) -> None:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(STOP_GRACE_S):
                    await proc.wait()
                return
            except TimeoutError:
                log.warning("worker process %d did not stop on SIGTERM; killing it", proc.pid)
                proc.kill()
        await proc.wait()

    def close(self) -> Any:
        """Stop workers and scheduler. Returns an awaitable in asynchronous mode."""
        if self.asynchronous:
            return self._close()
        if self._loop_thread is not None:
            self._loop_thread.run(self._close())
            self._loop_thread.stop()
            self._loop_thread = None
        return None

    @property
    def failure(self) -> BaseException | None:
        """The internal error that stopped the in-process scheduler, if one did."""
        return self.scheduler.failure

    # -- protocols -------------------------------------------------------------------

    def __await__(self) -> Generator[Any, None, LocalCluster]:
        return self._start().__await__()

    async def __aenter__(self) -> LocalCluster:
        return await self._start()

    async def __aexit__(self, *exc: object) -> None:
        await self._close()

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        kind = "processes" if self.processes else "in-process"
        return (
            f"<LocalCluster {self.scheduler_address} workers={self.n_workers} "
            f"threads={self.threads_per_worker} {kind}>"
        )
