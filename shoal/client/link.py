"""The client's connection to the scheduler: registration, the reader, requests.

Owns the Comm, the one reader task (in its TaskGroup), request ids and the
worker count. Applies key reports to the KeyTable in batches; never blocks
and never runs user code.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from typing import Any

from shoal.client.state import Key, KeyTable
from shoal.client.warned import raise_again
from shoal.errors import (
    AccessDenied,
    CommClosedError,
    FutureCancelled,
    GraphError,
    SchedulerLost,
)
from shoal.protocol.comm import Comm
from shoal.protocol.messages import (
    ClientRegistered,
    DatasetAnswer,
    FileStored,
    GetSchedulerInfo,
    GraphRejected,
    KeyErred,
    KeyInMemory,
    KeysCancelled,
    RegisterClient,
    Replicated,
    RequestRefused,
    SchedulerInfo,
    TasksStalled,
    TaskWarned,
    WhoHas,
    WhoHasAnswer,
    WorkersChanged,
    WorkersPaused,
    WorkersRestarting,
)
from shoal.protocol.retry import connect_retrying
from shoal.protocol.schema import Message
from shoal.protocol.tls import TLSConfig

log = logging.getLogger(__name__)

# Answers to the requests of cluster_helpers.py, matched to them by request_id.
ANSWERS = DatasetAnswer | FileStored | WorkersRestarting


def stalled_text(msg: TasksStalled) -> str:
    """The warning a client logs for a TasksStalled: the keys and what they ask for."""
    needs = [",".join(f"{name}={amount:g}" for name, amount in msg.resources.items())]
    if msg.restrict:
        needs.append("workers=" + ",".join(msg.restrict))
    keys = ", ".join(repr(key) for key in msg.keys)
    more = f" and {msg.count - len(msg.keys)} more" if msg.count > len(msg.keys) else ""
    return (
        f"{msg.count} task(s) have waited {msg.waited:.0f} s for a worker with "
        f"{' and '.join(n for n in needs if n)}, which none of the {msg.workers} workers "
        f"has: {keys}{more}; they wait until one joins"
    )


def paused_text(msg: WorkersPaused) -> str:
    """The warning a client logs for a WorkersPaused."""
    used = f" ({msg.memory // 2**20} of {msg.limit // 2**20} MiB in use)" if msg.limit else ""
    return (
        f"all {msg.workers} workers are paused for memory{used}: {msg.waiting} task(s) "
        "wanted here wait until one resumes (workers spill to disk meanwhile) or a worker "
        "joins; if memory is held outside shoal's values, a larger memory_limit or more "
        "workers are needed"
    )


class SchedulerLink:
    """One registered connection to the scheduler, on the client's loop.

    When the connection is lost, every pending key fails with SchedulerLost
    naming the scheduler, every request and waiter with CommClosedError, and
    `on_lost(reason)` is called (unless the client closed it).
    """

    def __init__(
        self,
        keys: KeyTable,
        address: str,
        timeout: float,
        on_lost: Callable[[str], None] | None = None,
    ) -> None:
        self.keys, self.address, self.timeout = keys, address, timeout
        self.on_lost = on_lost
        self.client_id = ""
        self.workers = 0
        self.http_address = ""  # the scheduler's HTTP endpoints, as its welcome said
        self.lost: str | None = None
        self.closing = False
        self._comm: Comm | None = None
        self._runner: asyncio.Task[None] | None = None
        self._requests: dict[int, asyncio.Future[Message]] = {}
        self._request_ids = itertools.count(1)
        self._worker_waiters: list[tuple[int, asyncio.Future[None]]] = []

    async def open(
        self,
        name: str,
        token: str | bytes | None,
        tls: TLSConfig | None,
        retry_for: float | None = None,
    ) -> None:
        """Connect (trying again while nothing answers, for `retry_for` seconds, by
        default `timeout`), register, and start reading.

        Raises:
            OSError, TimeoutError: no scheduler answered within the timeout.
            HandshakeError: the scheduler refused the token or the version.
            AccessDenied: the token's role may not register a client.
            CommClosedError: the scheduler closed the connection or answered oddly.
        """
        comm = await connect_retrying(
            self.address,
            retry_for=self.timeout if retry_for is None else retry_for,
            role="client",
            name=name,
            token=token,
            tls=tls,
            timeout=self.timeout,
        )
        try:
            comm.send(RegisterClient(name=name))
            async with asyncio.timeout(self.timeout):
                first = await comm.read()
            if isinstance(first[0], RequestRefused):
                raise AccessDenied(f"the scheduler at {self.address}: {first[0].reason}")
            if not isinstance(first[0], ClientRegistered):
                raise CommClosedError(f"{self.address} answered {first[0].op} to register-client")
        except BaseException:
            comm.abort("registration did not complete")
            raise
        self.client_id, self.workers = first[0].client_id, first[0].workers
        self.http_address = first[0].http_address
        self._comm = comm
        with self.keys.batch():
            for msg in first[1:]:
                self._dispatch(msg)
        self._runner = asyncio.create_task(self._serve(comm), name=f"client {self.address}")

    async def _serve(self, comm: Comm) -> None:
        """Own the background tasks: for now, the one reader of the connection."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._read(comm))

    async def _read(self, comm: Comm) -> None:
        try:
            while True:
                msgs = await comm.read()
                with self.keys.batch():
                    for msg in msgs:
                        self._dispatch(msg)
        except CommClosedError as exc:
            if not self.closing:
                log.warning("lost the connection to the scheduler at %s: %s", self.address, exc)
            self._lose(f"connection to the scheduler at {self.address} lost: {exc}")
        except Exception:  # shell boundary: our bug must not leave futures hanging
            log.error("client reader for %s failed", self.address, exc_info=True)
            comm.abort("client reader failed")
            self._lose(f"the client's reader for the scheduler at {self.address} failed")

    def _dispatch(self, msg: Message) -> None:
        keys = self.keys
        if isinstance(msg, KeyInMemory):
            keys.finished(msg)
        elif isinstance(msg, KeyErred):
            keys.erred(msg)
        elif isinstance(msg, KeysCancelled):
            why = f": {msg.reason}" if msg.reason else ""
            for key in msg.keys:
                keys.cancel(key, FutureCancelled, f"{key!r} was cancelled{why}")
        elif isinstance(msg, GraphRejected):
            for key in msg.keys:
                keys.fail(key, GraphError, msg.reason)
        elif isinstance(msg, RequestRefused):
            self._refused(msg)
        elif isinstance(msg, WorkersChanged):
            self._workers_changed(msg.workers)
        elif isinstance(msg, TaskWarned):
            raise_again(msg)
        elif isinstance(msg, TasksStalled):
            log.warning("%s", stalled_text(msg))
        elif isinstance(msg, WorkersPaused):
            log.warning("%s", paused_text(msg))
        elif isinstance(msg, SchedulerInfo | WhoHasAnswer | Replicated | ANSWERS):
            waiter = self._requests.get(msg.request_id)
            if waiter is not None and not waiter.done():
                waiter.set_result(msg)
        else:
            log.debug("ignoring %s from the scheduler", msg.op)

    def _refused(self, msg: RequestRefused) -> None:
        """The scheduler refused a message for this client's role: its futures fail,
        its request raises, and anything else is said in a WARNING."""
        for key in msg.keys:
            self.keys.fail(key, AccessDenied, msg.reason)
        waiter = self._requests.get(msg.request_id) if msg.request_id else None
        if waiter is not None and not waiter.done():
            waiter.set_exception(AccessDenied(msg.reason))
        elif not msg.keys:
            log.warning("the scheduler refused %s: %s", msg.request, msg.reason)

    def _workers_changed(self, workers: int) -> None:
        self.workers = workers
        still = []
        for n, waiter in self._worker_waiters:
            if waiter.done():
                continue
            if workers >= n:
                waiter.set_result(None)
            else:
                still.append((n, waiter))
        self._worker_waiters = still

    def _lose(self, reason: str) -> None:
        if self.lost is not None:
            return
        self.lost = reason
        with self.keys.batch():
            self.keys.fail_pending(SchedulerLost, reason)
        waiters = list(self._requests.values()) + [w for _, w in self._worker_waiters]
        self._worker_waiters = []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(CommClosedError(reason))
        if not self.closing and self.on_lost is not None:
            self.on_lost(reason)

    @property
    def usable(self) -> bool:
        return self.lost is None and self._comm is not None and not self._comm.closed

    def send(self, *msgs: Message) -> None:
        """Queue messages for the scheduler (this tick's batch).

        Raises:
            SchedulerLost: the connection to the scheduler was lost.
            CommClosedError: the connection is not open yet.
            MessageTooLarge: a message is over the scheduler's limits.
        """
        if self.lost is not None:
            raise SchedulerLost(self.lost)
        if self._comm is None:
            raise CommClosedError("the client is not connected")
        self._comm.send(*msgs)

    async def request(self, make: Callable[[int], Message], wait: bool = False) -> Any:
        """Send `make(request_id)` and return the answer carrying that id.

        Raises:
            CommClosedError: the connection is lost first.
            TimeoutError: no answer within the timeout (unless `wait`: as long as it takes).
        """
        request_id = next(self._request_ids)
        waiter: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._requests[request_id] = waiter
        try:
            self.send(make(request_id))
            async with asyncio.timeout(None if wait else self.timeout):
                return await waiter
        finally:
            del self._requests[request_id]

    async def who_has(self, keys: list[Key]) -> dict[Key, tuple[str, ...]]:
        answer = await self.request(lambda rid: WhoHas(keys=tuple(keys), request_id=rid))
        return answer.who_has

    async def scheduler_info(self) -> dict[str, Any]:
        answer = await self.request(lambda rid: GetSchedulerInfo(request_id=rid))
        return answer.info

    async def wait_for_workers(self, n: int, timeout: float | None) -> None:
        """Return once the scheduler reported at least `n` workers.

        Raises:
            TimeoutError: not within `timeout` seconds.
            CommClosedError: the connection is lost first.
        """
        if self.lost is not None:
            raise CommClosedError(self.lost)
        if self.workers >= n:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._worker_waiters.append((n, waiter))
        try:
            async with asyncio.timeout(timeout):
                await waiter
        except TimeoutError:
            raise TimeoutError(f"{self.workers} of {n} workers after {timeout} s") from None

    async def close(self, reason: str) -> None:
        """Close the connection, wait for the reader, fail what still waits."""
        self.closing = True
        if self._comm is not None:
            await self._comm.close("client closing")
        if self._runner is not None:
            await self._runner
        self._lose(reason)
