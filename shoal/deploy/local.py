"""LocalCluster: a scheduler in this process and workers beside it, on loopback.

Workers run as subprocesses (`processes=True`, the default) or in this
process's event loop. A synchronous LocalCluster forks its worker processes
when it can (see shoal.deploy.forked), which starts them in milliseconds.
Worker processes run without a nanny unless `nanny=True`: each then runs
under its own supervisor, as `shoal worker` does, which restarts it when it
dies or crosses `memory_limit`. A fresh random token guards the ports.
`close()` stops the workers (SIGTERM, then SIGKILL after a grace period) and
the scheduler. Worker processes hold a lifeline to the process that started
them (shoal.deploy.lifeline): should it end without `close()`, killed or
not, they stop at once.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import secrets
import signal
import socket
import sys
from collections.abc import Generator
from typing import Any

from shoal.client.loop import LoopThread
from shoal.deploy.forked import ForkedProcess, can_fork, fork_worker
from shoal.deploy.lifeline import Lifeline
from shoal.scheduler.server import Scheduler
from shoal.worker.server import Worker

log = logging.getLogger(__name__)

# How long a worker process gets to leave on SIGTERM before it is killed.
STOP_GRACE_S = 5.0


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

    Raises (on start):
        RuntimeError: a worker process exited before it joined.
        TimeoutError: the workers did not join within `start_timeout` seconds.
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
        memory_limit: int = 0,
        start_timeout: float = 60.0,
        nanny: bool = False,
        **scheduler_options: Any,
    ) -> None:
        workers, threads = default_shape()
        self.n_workers = workers if n_workers is None else n_workers
        self.threads_per_worker = threads_per_worker or threads
        self.processes = processes
        self.asynchronous = asynchronous
        self.token = token or secrets.token_urlsafe(32)
        self.resources = resources or {}
        self.memory_limit = memory_limit
        self.start_timeout = start_timeout
        self.nanny = nanny
        self.scheduler_address = ""
        self.workers: list[Worker] = []
        self.procs: list[asyncio.subprocess.Process | ForkedProcess] = []
        self._lifeline = Lifeline() if processes else None
        listening = None
        if processes and not asynchronous and "address" not in scheduler_options and can_fork():
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
        )

    async def _spawn(self, i: int) -> asyncio.subprocess.Process:
        # -P: a folder named `shoal` in the working directory cannot shadow the package.
        argv = self._worker_argv(i, self.scheduler_address)
        args = [sys.executable, "-P", "-m", "shoal", *argv]
        assert self._lifeline is not None
        # The token travels in the environment, not in argv where `ps` shows it.
        env = {**os.environ, "SHOAL_TOKEN": self.token, **self._lifeline.child_env()}
        return await asyncio.create_subprocess_exec(
            *args,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            pass_fds=(self._lifeline.read_fd,),
        )

    def _worker_argv(self, i: int, address: str) -> list[str]:
        """The `shoal` arguments that start worker `i`."""
        args = [
            "--log-level",
            "warning",
            "worker",
            address,
            "--name",
            f"local-{i}",
            "--nthreads",
            str(self.threads_per_worker),
            "--memory-limit",
            str(self.memory_limit),
        ]
        if not self.nanny:
            args.append("--no-nanny")
        if self.resources:
            args += ["--resources", ",".join(f"{k}={v}" for k, v in self.resources.items())]
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
