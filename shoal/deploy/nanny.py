"""The nanny: `shoal worker` runs its worker in a child process and looks after it.

It restarts the worker when the process dies, when its resident memory
crosses `--memory-limit` or, for a GPU worker, its use of its device crosses
`--device-memory-limit` (it kills it then), or when the worker asks to be
restarted because a task is stuck past its timeout. Each death that the worker
did not choose is reported to the scheduler with its cause: the exit code or
signal, the memory figure, the out-of-memory killer's signature. The scheduler
counts such deaths against the tasks that were running (see KilledWorker).

The nanny keeps its own connection to the scheduler open for as long as it
runs, registered under an id it also gives its worker, so that the scheduler
knows whether a report can still come. The worker holds a lifeline to the
nanny (shoal.deploy.lifeline) and exits when the nanny is gone. Restarts back
off, and past `max_restarts` deaths within `restart_window` seconds the nanny
gives up, naming the cause. The nanny runs no user code, so it survives what
kills a worker.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import re
import secrets
import signal
import socket
import sys
import time
from typing import Any

from shoal.deploy.lifeline import Lifeline
from shoal.deploy.worker_env import worker_environment
from shoal.errors import CommClosedError, ShoalError
from shoal.protocol.comm import Comm
from shoal.protocol.messages import (
    Heartbeat,
    RegisterNanny,
    RequestRefused,
    RestartWorker,
    WorkerDied,
)
from shoal.protocol.retry import connect_retrying
from shoal.protocol.tls import TLSConfig
from shoal.worker.gpu import DeviceMonitor
from shoal.worker.memory import TERMINATE

log = logging.getLogger(__name__)

# Exit codes of a worker process, as its nanny reads them.
RESTART_EXIT = 75  # it left the scheduler to be started afresh (a stuck task)
FATAL_EXIT = 3  # it could not start (no scheduler in time, refused): do not retry
# An internal error (a bug in shoal) stopped it; it logged the error. Restarted, as
# any death. `shoal scheduler` exits with it too (EX_SOFTWARE in sysexits.h).
INTERNAL_ERROR_EXIT = 70
# The environment variable that tells a worker process a nanny looks after it,
# and the id the nanny registered under.
NANNY_ENV = "SHOAL_NANNY"

MEMORY_POLL_S = 0.1
DEVICE_POLL_S = 0.2  # NVML's list of a device's processes costs about a millisecond
STOP_TIMEOUT_S = 10.0  # a worker asked to stop is killed after this long
REPORT_TIMEOUT_S = 10.0
FIRST_RESTART_DELAY_S = 0.1
MAX_RESTART_DELAY_S = 10.0
STABLE_S = 10.0  # a worker that lived this long restarts without delay next time
MAX_RESTARTS = 5  # deaths within RESTART_WINDOW_S past which the nanny gives up
RESTART_WINDOW_S = 60.0
HEARTBEAT_S = 1.0  # the nanny's own heartbeats to the scheduler
LINK_RETRY_S = 60.0  # each attempt to reach the scheduler again tries this long
OUTPUT_LINES = 5  # lines of the worker's error output kept to explain a give-up
_SERVING = re.compile(r"serving data at (\S+)")


def mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:.0f} MiB"


def cause_of_exit(code: int, last_rss: int) -> str:
    """The cause of death of a process that ended with `code` (negative: a signal)."""
    used = f"; it last used {mib(last_rss)}" if last_rss else ""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        oom = " (the kernel's out-of-memory killer sends it)" if -code == signal.SIGKILL else ""
        return f"killed by {name}{oom}{used}"
    if code == INTERNAL_ERROR_EXIT:
        return f"stopped by an internal error (exit code {code}; its log tells it){used}"
    return f"exited with code {code}{used}"


class Nanny:
    """Supervises one worker process until `stop()` or a fatal start-up failure.

    Args:
        scheduler: the scheduler's address, for the worker and for reports.
        worker_args: the `shoal worker` options to pass on (not the address,
            not --name, not --no-nanny).
        name: the worker's name; it keeps it across restarts.
        memory_limit: the worker's memory limit in bytes; 0: none.
        terminate: the fraction of it past which the worker's resident memory
            has it killed and restarted (None: never).
        nthreads: the worker's threads, which numeric libraries get too (see
            shoal.deploy.worker_env).
        max_restarts / restart_window: the nanny gives up (run() returns 1)
            when the worker dies more than `max_restarts` times within
            `restart_window` seconds.
        env: variables set for the worker process (CUDA_VISIBLE_DEVICES, say).
        device: the GPU the worker is pinned to; past its `memory_limit` of
            device bytes the worker is killed and restarted.
    """

    def __init__(
        self,
        scheduler: str,
        worker_args: list[str],
        *,
        name: str | None = None,
        memory_limit: int = 0,
        terminate: float | None = TERMINATE,
        nthreads: int = 1,
        token: str | bytes | None = None,
        tls: TLSConfig | None = None,
        log_level: str = "info",
        log_format: str = "text",
        max_restarts: int = MAX_RESTARTS,
        restart_window: float = RESTART_WINDOW_S,
        stop_timeout: float = STOP_TIMEOUT_S,
        env: dict[str, str] | None = None,
        device: DeviceMonitor | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.worker_args = list(worker_args)
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.memory_limit = memory_limit
        self.env, self.device = dict(env or {}), device
        self.memory_limit, self.terminate, self.nthreads = memory_limit, terminate, nthreads
        self.kill_at = int(memory_limit * terminate) if memory_limit and terminate else 0
        self._token, self._tls, self._log_level = token, tls, log_level
        self._log_format = log_format
        self._stop = asyncio.Event()
        # The scheduler asked for a fresh worker (client.restart()): kill it, start anew.
        self._restart = asyncio.Event()
        self._stop_signal: int = signal.SIGTERM  # passed on to the worker: SIGTERM retires it
        self.stop_timeout = stop_timeout
        self.restarts = 0
        self.causes: list[str] = []  # every cause of death reported, in order
        self.address = ""  # the worker's data address, as it announced it
        self.max_restarts, self.restart_window = max_restarts, restart_window
        # Ties the worker to this nanny at the scheduler: only this nanny may report it.
        self.nanny_id = secrets.token_hex(8)
        self._lifeline = Lifeline()
        self._proc: asyncio.subprocess.Process | None = None  # the worker process
        self._comm: Comm | None = None  # the scheduler link, while connected
        self._linked = asyncio.Event()
        self._deaths: collections.deque[float] = collections.deque()
        self._output: collections.deque[str] = collections.deque(maxlen=OUTPUT_LINES)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the worker and then the nanny. The worker gets `sig`: on SIGTERM it
        retires gracefully (its values move to other workers), on SIGINT it leaves
        at once. A later SIGINT cuts a retirement short."""
        if not self._stop.is_set() or sig == signal.SIGINT:
            self._stop_signal = sig
        if self._stop.is_set() and self._proc is not None and self._proc.returncode is None:
            self._proc.send_signal(sig)  # it is being stopped already: pass this one on
        self._stop.set()

    def hangup(self) -> None:
        """SIGHUP: passed on to the worker process, which reads its token file again."""
        if self._proc is not None and self._proc.returncode is None:
            self._proc.send_signal(signal.SIGHUP)

    async def run(self) -> int:
        """Run and restart the worker; the exit code for the nanny's own process."""
        link = asyncio.ensure_future(self._keep_link())
        try:
            return await self._supervise()
        finally:
            link.cancel()
            await asyncio.gather(link, return_exceptions=True)
            if self._comm is not None:
                await self._comm.close("nanny stopping")
            self._lifeline.close()

    async def _supervise(self) -> int:
        delay = FIRST_RESTART_DELAY_S
        while True:
            started = time.monotonic()
            self._restart.clear()  # a request for the worker that was, if any
            proc = self._proc = await self._spawn()
            code, cause = await self._watch(proc)
            if self._stop.is_set():
                return 0
            if self._restart.is_set():  # asked for: no death, no delay
                self._restart.clear()
                self.restarts += 1
                log.info("restarting worker %s, as the scheduler asked", self.name)
                delay = FIRST_RESTART_DELAY_S
                continue
            if code == FATAL_EXIT:
                log.error("worker %s could not start; the nanny stops too", self.name)
                return 1
            if code == 0:
                log.info("worker %s stopped; the nanny stops too", self.name)
                return 0
            if cause:
                log.warning("worker %s died: %s", self.name, cause)
                self.causes.append(cause)
                await self._report(cause)
                if self._crash_loop(cause):
                    return 1
            else:
                log.info("worker %s asked to be restarted", self.name)
            delay = FIRST_RESTART_DELAY_S if time.monotonic() - started > STABLE_S else delay
            try:
                async with asyncio.timeout(delay):
                    await self._stop.wait()
                return 0
            except TimeoutError:
                pass
            delay = min(delay * 2, MAX_RESTART_DELAY_S)
            self.restarts += 1
            log.info("restarting worker %s (restart %d)", self.name, self.restarts)

    def _crash_loop(self, cause: str) -> bool:
        """Note a death; True (logged) when there were too many of them lately."""
        now = time.monotonic()
        self._deaths.append(now)
        while self._deaths and self._deaths[0] < now - self.restart_window:
            self._deaths.popleft()
        if len(self._deaths) <= self.max_restarts:
            return False
        said = " | ".join(self._output)
        log.error(
            "worker %s died %d times within %g s; the nanny gives up. Last cause: %s%s",
            self.name,
            len(self._deaths),
            self.restart_window,
            cause,
            f"; its last output: {said}" if said else "",
        )
        return True

    async def _spawn(self) -> asyncio.subprocess.Process:
        # -P: the working directory is not put on sys.path, so a folder named
        # `shoal` there cannot shadow the installed package.
        args = [
            sys.executable,
            "-P",
            "-m",
            "shoal",
            "--log-level",
            self._log_level,
            "--log-format",
            self._log_format,
            "worker",
            self.scheduler,
            *self.worker_args,
            "--name",
            self.name,
            "--no-nanny",
        ]
        env = worker_environment(os.environ, self.nthreads)
        env.update({**self.env, NANNY_ENV: self.nanny_id, **self._lifeline.child_env()})
        if self._token is not None:
            token = self._token
            env["SHOAL_TOKEN"] = token.decode() if isinstance(token, bytes) else token
        self.address = ""
        self._output.clear()
        return await asyncio.create_subprocess_exec(
            *args,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            pass_fds=(self._lifeline.read_fd,),
        )

    async def _watch(self, proc: asyncio.subprocess.Process) -> tuple[int, str]:
        """Wait for the worker to end; (its exit code, the cause of death to report,
        "" when it ended on request or to be restarted)."""
        last_rss = [0]
        relay = asyncio.gather(self._relay(proc), self._relay_errors(proc))
        exited = asyncio.ensure_future(proc.wait())
        stop = asyncio.ensure_future(self._stop.wait())
        memory = asyncio.ensure_future(self._poll_memory(proc, last_rss))
        restart = asyncio.ensure_future(self._restart.wait())
        device = asyncio.ensure_future(self._poll_device(proc))
        limits = (memory, device)
        try:
            await asyncio.wait(
                {exited, stop, restart, *limits}, return_when=asyncio.FIRST_COMPLETED
            )
            if restart.done() and not exited.done() and not stop.done():
                proc.kill()
                await proc.wait()
                return proc.returncode or -signal.SIGKILL, ""
            crossed = [limit for limit in limits if limit.done()]
            if crossed and not exited.done():
                proc.kill()
                await proc.wait()
                return proc.returncode or -signal.SIGKILL, crossed[0].result()
            if stop.done() and not exited.done():
                await self._terminate(proc)
                return 0, ""
            code = exited.result()
            if code in (0, RESTART_EXIT, FATAL_EXIT):
                return code, ""
            return code, cause_of_exit(code, last_rss[0])
        finally:
            for fut in (exited, stop, restart, *limits):
                fut.cancel()
            try:
                async with asyncio.timeout(1.0):
                    await relay
            except TimeoutError:
                relay.cancel()

    async def _relay(self, proc: asyncio.subprocess.Process) -> None:
        """Pass the worker's output on, noting the data address it announces."""
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            text = line.decode(errors="replace")
            match = _SERVING.search(text)
            if match:
                self.address = match.group(1)
            sys.stdout.write(text)
            sys.stdout.flush()

    async def _relay_errors(self, proc: asyncio.subprocess.Process) -> None:
        """Pass the worker's error output on, keeping its last lines for a give-up."""
        assert proc.stderr is not None
        while line := await proc.stderr.readline():
            text = line.decode(errors="replace")
            if text.strip():
                self._output.append(text.strip())
            sys.stderr.write(text)
            sys.stderr.flush()

    async def _poll_memory(self, proc: asyncio.subprocess.Process, last_rss: list[int]) -> str:
        """Return the cause of death once the resident bytes pass the limit (never
        without one)."""
        import psutil

        try:
            process = psutil.Process(proc.pid)
            while True:
                rss = process.memory_info().rss
                last_rss[0] = rss
                if self.kill_at and rss > self.kill_at:
                    return (
                        f"memory limit exceeded: it used {mib(rss)} of its "
                        f"{mib(self.memory_limit)} limit (terminate at {self.terminate:.0%}), "
                        "and its nanny killed it"
                    )
                await asyncio.sleep(MEMORY_POLL_S)
        except psutil.Error:  # it is gone: proc.wait() tells how; wait to be cancelled
            return await _never()

    async def _poll_device(self, proc: asyncio.subprocess.Process) -> str:
        """Return the cause of death once the worker's device bytes pass its device
        memory limit (never without a device or a limit)."""
        device = self.device
        if device is None or not device.memory_limit:
            return await _never()
        while True:
            used = device.used_by(proc.pid)
            if used > device.memory_limit:
                return device.limit_cause(used)
            await asyncio.sleep(DEVICE_POLL_S)

    async def _terminate(self, proc: asyncio.subprocess.Process) -> None:
        proc.send_signal(self._stop_signal)
        try:
            async with asyncio.timeout(self.stop_timeout):
                await proc.wait()
        except TimeoutError:
            log.warning("worker %s did not stop in %g s; killing it", self.name, self.stop_timeout)
            proc.kill()
            await proc.wait()

    async def _report(self, cause: str) -> None:
        """Tell the scheduler how the worker died, on the nanny's own connection; a
        report that cannot be sent in time is logged, not raised."""
        msg = WorkerDied(name=self.name, address=self.address, cause=cause)
        try:
            async with asyncio.timeout(REPORT_TIMEOUT_S):
                while True:
                    await self._linked.wait()
                    comm = self._comm
                    if comm is not None and not comm.closed:
                        comm.send(msg)
                        return
                    await asyncio.sleep(0.05)  # the link is being made again
        except (TimeoutError, CommClosedError) as exc:
            reason = str(exc) or "no connection to the scheduler in time"
            log.warning("could not report the death of %s to the scheduler: %s", self.name, reason)

    async def _keep_link(self) -> None:
        """Keep a registered connection to the scheduler for the nanny's whole life:
        the scheduler knows from it that a report of the worker's death can come."""
        options: dict[str, Any] = {"name": f"nanny of {self.name}", "token": self._token}
        if self._tls is not None:
            options["tls"] = self._tls
        while True:
            try:
                comm = await connect_retrying(
                    self.scheduler, retry_for=LINK_RETRY_S, role="nanny", **options
                )
            except (OSError, TimeoutError, ShoalError) as exc:
                log.warning("nanny of %s cannot reach the scheduler: %s", self.name, exc)
                await asyncio.sleep(MAX_RESTART_DELAY_S)
                continue
            comm.send(RegisterNanny(nanny_id=self.nanny_id, name=self.name))
            self._comm = comm
            self._linked.set()
            reason = await self._hold(comm)
            self._linked.clear()
            self._comm = None
            comm.abort(reason)
            log.warning("nanny of %s lost the scheduler (%s); connecting again", self.name, reason)

    async def _hold(self, comm: Comm) -> str:
        """Heartbeat on `comm` until it ends; why it ended."""
        reader = asyncio.ensure_future(comm.read())
        try:
            while True:
                done, _ = await asyncio.wait({reader}, timeout=HEARTBEAT_S)
                if done:
                    try:
                        msgs = reader.result()
                    except CommClosedError as exc:
                        return str(exc) or "connection closed"
                    for msg in msgs:  # the scheduler sends a nanny restarts only, or refusals
                        if type(msg) is RestartWorker:
                            self._restart.set()
                        elif type(msg) is RequestRefused:
                            log.error(
                                "the scheduler refused nanny of %s: %s", self.name, msg.reason
                            )
                        else:
                            log.warning(
                                "nanny of %s ignores %s from the scheduler", self.name, msg.op
                            )
                    reader = asyncio.ensure_future(comm.read())
                    continue
                try:
                    comm.send(Heartbeat())
                except CommClosedError as exc:
                    return str(exc) or "connection closed"
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)


async def _never() -> str:
    """Wait to be cancelled."""
    never: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    return await never
