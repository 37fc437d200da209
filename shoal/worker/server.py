"""The worker's asyncio shell: the scheduler link, the peer data server, fetches from peers.

Messages in -> `WorkerState.handle` -> commands out: every decision is the core's.
One TaskGroup owns the background tasks; user code never runs on the event loop.
An exception from the core or this shell is an internal error: logged once with
the story of its keys, it stops the worker, and the core is not called again.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import time
from typing import Any

from shoal.errors import CommClosedError, RegistrationError
from shoal.protocol.address import Address, parse_address
from shoal.protocol.answers import send_data
from shoal.protocol.comm import Comm, Listener, listen
from shoal.protocol.limits import DEFAULT_LIMITS, Limits
from shoal.protocol.messages import (
    AcquireKeys,
    ComputeTask,
    DataStored,
    FreeKeys,
    GetData,
    PutData,
    RegisterWorker,
    RegistrationRefused,
    RunFunction,
    StoreFile,
    WorkerLeaving,
    WorkerRegistered,
    WorkerRetired,
)
from shoal.protocol.permissions import Role
from shoal.protocol.permissions import refused as refused_for_role
from shoal.protocol.retry import connect_retrying
from shoal.protocol.schema import Message
from shoal.protocol.serialize import Serialized
from shoal.protocol.story import keys_named, tell
from shoal.protocol.tls import TLSConfig
from shoal.protocol.tokens import Keyring
from shoal.worker.events import (
    MEMORY_COMMANDS,
    Command,
    DataPut,
    Execute,
    ExecutionDone,
    Fetch,
    FetchDone,
    FetchFailed,
    GrantSlot,
    Key,
    Restart,
    SendToScheduler,
    ThreadRejoining,
    ThreadSeceded,
    ThreadsStarted,
    Tick,
)
from shoal.worker.execute import Executor, ThreadPool
from shoal.worker.fetcher import PeerFetcher
from shoal.worker.gpu import DeviceMonitor
from shoal.worker.holding import Holding
from shoal.worker.http import advertised_http
from shoal.worker.memory import MemoryLimits
from shoal.worker.remote import RemoteCalls
from shoal.worker.retiring import Retiring
from shoal.worker.secede import WorkerIdentity
from shoal.worker.state import TIMEOUT_GRACE_S, WorkerState

log = logging.getLogger(__name__)

# How long close() lets running tasks finish before leaving them to their threads.
THREAD_JOIN_TIMEOUT_S = 5.0
# Tasks queued in the thread pool per thread, beyond the one each thread runs.
PREFETCH_PER_THREAD = 8
HEARTBEAT_INTERVAL_S = 1.0
# How often running tasks are checked against their timeouts, while any has one.
TIMEOUT_CHECK_S = 0.1
_UNSPECIFIED_HOSTS = ("0.0.0.0", "::", "")
_worker_numbers = itertools.count(1)


class _Stop(Exception):
    """Raised in the TaskGroup's body to cancel every background task on purpose."""


class Worker(Retiring):
    """A worker: registers with the scheduler, runs the tasks it is sent on `nthreads`
    threads, and serves the values it holds to peers at `address`.

    `data_limits` bounds what it accepts in one batch on its data connections; a
    peer's value over them is answered as too large, never as missing, and the
    tasks here that need it err with ValueTooLarge. `gpu` watches the GPU its
    process is pinned to (shoal.worker.gpu), for its registration and heartbeats.
    tasks here that need it err with ValueTooLarge. `http_address` is where its
    HTTP endpoints listen (shoal.worker.http), told to the scheduler.

    `memory`: thresholds of `memory_limit` (see worker/memory.py); spill files go
    under `local_directory`, compressed with `spill_compression` if named.

    Use `async with Worker(...) as w:` or `await w.start()` ... `await w.close()`.
    """

    def __init__(
        self,
        scheduler: str,
        *,
        name: str | None = None,
        nthreads: int = 1,
        memory_limit: int = 0,
        resources: dict[str, float] | None = None,
        token: str | bytes | None = None,
        keyring: Keyring | None = None,
        tls: TLSConfig | None = None,
        listen: str | None = None,
        connect_timeout: float = 10.0,
        connect_retry: float = 0.0,
        heartbeat_interval: float = HEARTBEAT_INTERVAL_S,
        nanny: bool = False,
        nanny_id: str = "",
        timeout_grace: float = TIMEOUT_GRACE_S,
        data_limits: Limits = DEFAULT_LIMITS,
        gpu: DeviceMonitor | None = None,
        memory: MemoryLimits | None = None,
        local_directory: str | None = None,
        spill_compression: str | None = None,
        http_address: str = "",
    ) -> None:
        self.scheduler_address = scheduler
        self.gpu = gpu  # the device it is pinned to, which its heartbeats describe
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{next(_worker_numbers)}"
        self.nthreads, self.memory_limit = nthreads, memory_limit
        self.resources = dict(resources or {})
        self.address = ""
        # Where its HTTP endpoints listen (worker/http.py), told to the scheduler with
        # an unspecified host replaced by the data address's; empty: none.
        self.http_address = http_address
        # With a nanny, a worker whose thread is stuck past a timeout restarts.
        self.nanny = nanny
        self.nanny_id = nanny_id  # the id its nanny registered under at the scheduler
        self.holding = Holding(self.name, local_directory, spill_compression)
        self.state = WorkerState(
            nthreads,
            prefetch=PREFETCH_PER_THREAD * nthreads,
            timeout_grace=timeout_grace,
            can_restart=nanny,
            limits=data_limits,
            memory=(memory or MemoryLimits()).with_limit(memory_limit),
        )
        # What this worker accepts in one batch on its data connections: from the
        # peers it fetches from, and from those that fetch from it or put data on it.
        self.data_limits = data_limits
        # `token` is the one it connects with; its data port takes `keyring`'s tokens
        # (each with its role: see shoal.protocol.permissions), or `token` as admin.
        self._token, self._keyring, self._tls, self._listen = token, keyring, tls, listen
        self._connect_timeout, self._connect_retry = connect_timeout, connect_retry
        self._heartbeat_interval = heartbeat_interval
        self.restart_requested = False  # it stopped so that its nanny starts it afresh
        self._scheduler: Comm | None = None
        self._listener: Listener | None = None
        self._pool: ThreadPool | None = None
        self._fetcher: PeerFetcher | None = None
        self._main: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._leave_reason: str | None = None  # set by close(): leaving on purpose
        self._failure: BaseException | None = None
        # client.run and upload_file; given the full identity once listening
        self.remote = RemoteCalls(WorkerIdentity(self.name, "", scheduler, nthreads))

    def __repr__(self) -> str:
        return f"<Worker {self.name} {self.address or 'not started'}>"

    # -- lifecycle --------------------------------------------------------------

    async def start(self) -> Worker:
        """Listen for peers, connect and register with the scheduler.

        Raises:
            RegistrationError: the scheduler refused this worker.
            HandshakeError: a wrong or missing token, or incompatible versions.
            OSError / TimeoutError: the scheduler did not answer, trying again for
                `connect_retry` seconds (each try waits up to `connect_timeout`).
            PermissionError: listening beyond loopback without a token.
        """
        if self._main is not None:
            raise RuntimeError(f"worker {self.name} was started already")
        comm = await connect_retrying(
            self.scheduler_address,
            retry_for=self._connect_retry,
            role="worker",
            **self._connect_options(),
        )
        try:
            self._listener = await listen(
                self._listen_address(),
                self._serve_peer,
                role="worker",
                name=self.name,
                token=None if self._keyring else self._token,
                keyring=self._keyring,
                tls=self._tls,
                limits=self.data_limits,
            )
            self.address = _advertised(self._listener.address, comm)
            leftover = await self._register(comm)
        except BaseException:
            comm.abort("worker start failed")
            if self._listener is not None:
                await self._listener.close()
            raise
        self._scheduler = comm
        # Its tasks' clients (get_client) connect with a submit token of the file,
        # if it has one: a worker token may not submit.
        own = self._keyring.first(Role.SUBMIT, Role.ADMIN) if self._keyring else None
        tasks_token = own.secret if own is not None else self._token
        identity = WorkerIdentity(
            self.name, self.address, self.scheduler_address, self.nthreads, tasks_token, self._tls
        )
        self.remote.identity = identity
        self._pool = ThreadPool(
            self.nthreads,
            self._on_executed,
            executor=Executor(store=self.holding.store),
            name=f"shoal-{self.name}",
            on_started=self._on_started,
            on_seceded=lambda key: self._handle(ThreadSeceded(key), time.monotonic()),
            on_rejoining=lambda key: self._handle(ThreadRejoining(key), time.monotonic()),
            identity=identity,
        )
        self._main = asyncio.create_task(self._run(leftover), name=f"worker {self.name}")
        log.info("worker %s serves data at %s", self.name, self.address)
        return self

    @property
    def fetcher(self) -> PeerFetcher | None:
        """Its fetches from peers, with their counts (None until started)."""
        return self._fetcher

    @property
    def registered(self) -> bool:
        """Joined its scheduler and not stopped (for /ready)."""
        return self._main is not None and not self._main.done() and not self._stop.is_set()

    async def finished(self) -> None:
        """Return once the worker has stopped (close(), or the scheduler was lost).

        Raises:
            Exception: the internal error that stopped the worker, if one did (it
                was logged once already, with the recent transitions of its keys).
        """
        if self._main is None:
            raise RuntimeError(f"worker {self.name} was not started")
        await asyncio.wait({self._main})
        if self._failure is not None:
            raise self._failure

    async def close(self, reason: str = "") -> None:
        """Tell the scheduler we leave, close every connection, join the threads.

        Idempotent; returns once everything is closed.
        """
        if self._main is None:
            return
        if self._leave_reason is None:
            self._leave_reason = reason
        self._stop.set()
        await asyncio.wait({self._main})

    async def __aenter__(self) -> Worker:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _connect_options(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "token": self._token,
            "tls": self._tls,
            "timeout": self._connect_timeout,
        }

    def _listen_address(self) -> str:
        if self._listen is not None:
            return self._listen
        addr = parse_address(self.scheduler_address)
        if addr.scheme == "inproc":
            return "inproc://"
        return f"{addr.scheme}://{'127.0.0.1' if addr.is_loopback else '0.0.0.0'}:0"

    async def _register(self, comm: Comm) -> list[Message]:
        """Send RegisterWorker; return what arrived after WorkerRegistered."""
        comm.send(
            RegisterWorker(
                name=self.name,
                address=self.address,
                nthreads=self.nthreads,
                memory_limit=self.memory_limit,
                resources=self.resources,
                pid=os.getpid(),
                host=socket.gethostname(),
                nanny=self.nanny,
                nanny_id=self.nanny_id,
                **(self.gpu.registration() if self.gpu is not None else {}),
                http_address=advertised_http(self.http_address, self.address),
            )
        )
        async with asyncio.timeout(self._connect_timeout):
            while True:
                msgs = await comm.read()
                for i, msg in enumerate(msgs):
                    if type(msg) is WorkerRegistered:
                        self.name = self.holding.name = msg.name
                        return msgs[i + 1 :]
                    if type(msg) is RegistrationRefused:
                        raise RegistrationError(
                            f"the scheduler at {self.scheduler_address} refused worker "
                            f"{self.name}: {msg.reason}"
                        )
                    log.warning("ignoring %s from the scheduler before registration", msg.op)

    async def _run(self, leftover: list[Message]) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                options = {**self._connect_options(), "limits": self.data_limits}
                self._fetcher = PeerFetcher(group, self._on_event, options)
                self._on_messages(leftover)
                group.create_task(self._read_scheduler(), name=f"worker {self.name} reader")
                group.create_task(self._clock(), name=f"worker {self.name} clock")
                group.create_task(self._watch_listener(), name=f"worker {self.name} listener")
                await self._stop.wait()
                self._fetcher.closing = True
                raise _Stop
        except* _Stop:
            pass
        except* Exception as failures:  # a background task died: the same loud path
            self._fail(failures.exceptions[0], "running a background task")
        finally:
            await self._shutdown()

    async def _watch_listener(self) -> None:
        assert self._listener is not None
        await self._listener.serving()
        raise RuntimeError(f"the data listener at {self.address} stopped accepting connections")

    def _fail(self, exc: BaseException, doing: str, event: object = None) -> None:
        """An internal error: log it once with its keys' story, and stop the worker."""
        if self._failure is not None:
            log.debug("a further error after the internal error: %r", exc)
            return
        self._failure = exc
        keys = keys_named(event, exc)
        story = tell(self.state.history.story(keys)) if keys else "  (no keys involved)"
        log.error(
            "internal error in worker %s while %s, the worker stops: %s: %s\n"
            "recent transitions of %s:\n%s",
            self.name,
            doing,
            type(exc).__name__,
            exc,
            keys or "no keys",
            story,
            exc_info=exc,
        )
        self._stop.set()

    def _handle(self, event: object, now: float) -> None:
        """Feed one event to the core and carry out its commands; never a broken core."""
        if self._failure is not None:
            return
        try:
            self._dispatch(self.state.handle(event, now))
        except Exception as exc:  # shell boundary: the core's bug stops the worker, loudly
            self._fail(exc, f"handling {type(event).__name__}", event)

    async def _shutdown(self) -> None:
        self._stop.set()
        comm = self._scheduler
        if comm is not None and not comm.closed:
            if self._failure is not None:  # no WorkerLeaving: to the scheduler, a death
                await comm.close(f"internal error in worker {self.name}")
            else:
                if self._leave_reason is not None:
                    self._send(WorkerLeaving(reason=self._leave_reason))
                await comm.close(self._leave_reason or "")
        if self._listener is not None:
            await self._listener.close()
        if self._pool is not None:
            # A restart is for a stuck thread: waiting for it would be in vain.
            await self._pool.close(0.0 if self.restart_requested else THREAD_JOIN_TIMEOUT_S)
            await self.remote.close()
        self.holding.close()
        log.info("worker %s stopped", self.name)

    # -- the scheduler link -------------------------------------------------------

    async def _read_scheduler(self) -> None:
        assert self._scheduler is not None
        while True:
            try:
                msgs = await self._scheduler.read()
            except CommClosedError as exc:
                if self._leave_reason is None:
                    log.warning("worker %s lost the scheduler, stopping: %s", self.name, exc)
                self._stop.set()
                return
            self._on_messages(msgs)

    async def _clock(self) -> None:
        """Heartbeats; running tasks checked against their timeouts; memory measured."""
        import psutil

        process = psutil.Process()
        process.cpu_percent()  # the first reading only starts the measurement
        next_beat = time.monotonic()
        while self._failure is None:
            now = time.monotonic()
            if self.state.timed and self._pool is not None:
                self._handle(Tick(self._pool.running()), now)
            self._handle(self.holding.sample(self._pool), now)
            if now >= next_beat:
                next_beat = now + self._heartbeat_interval
                devices = self.gpu.sample() if self.gpu is not None else ()
                self._send(self.holding.heartbeat(process.cpu_percent(), self._pool, devices))
            # Never long asleep: a task with a timeout may start at any moment.
            quick = self.state.timed or self.memory_limit  # and memory may grow fast
            pause = min(next_beat - now, TIMEOUT_CHECK_S if quick else 0.25)
            await asyncio.sleep(pause)

    def _on_messages(self, msgs: list[Message]) -> None:
        now = time.monotonic()
        for msg in msgs:
            kind = type(msg)
            if kind is ComputeTask or kind is FreeKeys or kind is AcquireKeys:
                self._handle(msg, now)
            elif kind is StoreFile:  # uploaded before this worker joined: before any task
                self.remote.store_file(msg.filename, msg.data)  # type: ignore[attr-defined]
            elif kind is WorkerRetired:
                self._on_retired(msg)  # type: ignore[arg-type]
            else:
                log.warning("ignoring unexpected %s from the scheduler", msg.op)

    def _on_event(self, event: FetchDone | FetchFailed) -> None:
        self._handle(event, time.monotonic())

    def _on_executed(self, batch: list[ExecutionDone]) -> None:
        """Completions from the thread pool, delivered on the loop, one call per burst."""
        if self._stop.is_set():
            return  # stopping: the scheduler hears WorkerLeaving, not these
        now = time.monotonic()
        for event in self.holding.after_tasks(batch, self._pool, self.memory_limit):
            self._handle(event, now)

    def _on_started(self, keys: list[Key]) -> None:
        """Threads started tasks that are still running: the core tells the scheduler."""
        if self._stop.is_set():
            return
        try:
            self._dispatch(self.state.handle(ThreadsStarted(tuple(keys)), time.monotonic()))
        except Exception as exc:  # shell boundary: a core bug stops the worker, loudly
            log.error("worker %s failed handling started tasks", self.name, exc_info=True)
            self._failure = exc
            self._stop.set()

    def _dispatch(self, commands: list[Command]) -> None:
        for command in commands:
            kind = type(command)
            if kind is SendToScheduler:
                self._send(command.msg)  # type: ignore[union-attr]
            elif kind is Execute:
                assert self._pool is not None
                self._pool.submit(command)  # type: ignore[arg-type]
            elif kind is GrantSlot:
                assert self._pool is not None
                self._pool.grant_slot(command.key)  # type: ignore[union-attr]
            elif kind in MEMORY_COMMANDS:
                self.holding.carry_out(command, self._pool)
            elif kind is Fetch:
                assert self._fetcher is not None
                self._fetcher.fetch(command.address, command.keys)  # type: ignore[union-attr]
            elif kind is Restart:
                log.warning("worker %s restarting: %s", self.name, command.reason)  # type: ignore[union-attr]
                self.restart_requested = True
                if self._leave_reason is None:
                    self._leave_reason = f"restarting: {command.reason}"  # type: ignore[union-attr]
                self._stop.set()
            else:
                raise TypeError(f"unknown command {command!r}")

    def _send(self, msg: Message) -> None:
        assert self._scheduler is not None
        try:
            self._scheduler.send(msg)
        except CommClosedError:
            log.debug("%s not sent: the scheduler link is closed", msg.op)

    # -- the data server ----------------------------------------------------------

    async def _serve_peer(self, comm: Comm) -> None:
        """Listener handler: answer each GetData with the values held here, and take
        the values of each PutData into memory."""
        try:
            while (refusal := self._answer(comm, await comm.read())) is None:
                pass  # values answered or put are no longer referenced from this frame
        except CommClosedError:
            return  # the peer went away
        except Exception as exc:  # shell boundary: our bug, never the peer's
            self._fail(exc, f"serving {comm.peer_address}")
            return
        # Say what the peer reached: a client given this port for the scheduler's
        # would otherwise hear only that the connection closed.
        await comm.close(refusal)

    def _answer(self, comm: Comm, msgs: list[Message]) -> str | None:
        """Answer a peer's requests; why the connection must end, if it must."""
        for msg in msgs:
            if self._failure is not None:
                return f"worker {self.name!r} stopped on an internal error"
            if (why := refused_for_role(comm.access, comm.token_name, msg)) is not None:
                return f"worker {self.name!r} refuses it: {why}"
            if type(msg) is PutData:
                self._handle(DataPut(msg.data), time.monotonic())
                refused = tuple(k for k in msg.data if self.state.value_of(k) is None)
                stored = tuple(k for k in msg.data if k not in refused)
                comm.send(DataStored(keys=stored, request_id=msg.request_id, refused=refused))
                continue
            if type(msg) is RunFunction or type(msg) is StoreFile:
                self.remote.start(comm, msg)
                continue
            if type(msg) is not GetData:
                log.warning("closing connection from %s: unexpected %s", comm.peer_address, msg.op)
                return (
                    f"{comm.local_address} is the data port of worker {self.name!r}: it "
                    f"answers get-data and put-data only, not {msg.op} (its scheduler is at "
                    f"{self.scheduler_address})"
                )
            # Within the peer's limits, in parts if need be: a value too large for
            # them is reported as such, never as missing (that would drop a good copy).
            send_data(comm, msg.request_id, *self._data_for(msg))
        return None

    def _data_for(self, msg: GetData) -> tuple[dict[Key, Serialized], tuple[Key, ...]]:
        """The payloads held here of the keys asked for, and the keys not held."""
        data: dict[Key, Serialized] = {}
        missing: list[Key] = []
        for key in msg.keys:
            held = self.state.value_of(key) is not None
            payload = self.holding.store.payload(key) if held else None
            if payload is None:
                missing.append(key)
            else:
                data[key] = payload
        return data, tuple(missing)


def _advertised(listening: str, comm: Comm) -> str:
    """Where peers reach the listener: a wildcard host becomes the address this host
    uses toward the scheduler, which peers on the scheduler's network can reach."""
    addr = parse_address(listening)
    if addr.host not in _UNSPECIFIED_HOSTS:
        return listening
    local = parse_address(comm.local_address)
    return str(Address(addr.scheme, local.host, addr.port))
