"""The scheduler's asyncio shell: connections in, SchedulerState decisions out.

One listener serves workers and clients on one port. Each connection's read
loop feeds messages to the core and carries out the commands it returns;
nothing here decides anything about tasks.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import time
from typing import Any

from shoal.errors import CommClosedError, MessageTooLarge
from shoal.protocol import messages as m
from shoal.protocol.comm import Comm, Listener, listen
from shoal.protocol.tls import TLSConfig
from shoal.scheduler.model import Command, Send
from shoal.scheduler.state import SchedulerState

log = logging.getLogger(__name__)

# The clock wakes the core at its next deadline, and at least this often.
CLOCK_MAX_SLEEP_S = 0.25
CLOCK_MIN_SLEEP_S = 0.01


class Scheduler:
    """A scheduler listening at `address` (port 0 picks a free port).

    `await start()` returns once it accepts connections; `address` is then
    the address to give workers and clients. `close()` stops it and closes
    every connection. Extra keyword arguments configure SchedulerState.
    """

    def __init__(
        self,
        address: str = "tcp://127.0.0.1:0",
        *,
        token: str | bytes | None = None,
        tls: TLSConfig | None = None,
        allow_insecure: bool = False,
        sock: socket.socket | None = None,
        **state_options: Any,
    ) -> None:
        self.address = address
        self._sock = sock  # bound and listening at `address` already, if given
        self._token, self._tls, self._allow_insecure = token, tls, allow_insecure
        self._state_options = state_options
        self.state = SchedulerState(**state_options)
        self.comms: dict[str, Comm] = {}
        self._listener: Listener | None = None
        self._peer_ids = itertools.count(1)
        self._stopped = asyncio.Event()
        self._workers_changed = asyncio.Event()
        self._clock_task: asyncio.Task[None] | None = None

    async def start(self) -> Scheduler:
        """Listen; return once connections are accepted.

        Raises:
            PermissionError: a non-loopback address without a token (see listen()).
            OSError: the address cannot be bound.
        """
        self._listener = await listen(
            self.address,
            self._serve,
            role="scheduler",
            name="scheduler",
            token=self._token,
            tls=self._tls,
            allow_insecure=self._allow_insecure,
            sock=self._sock,
        )
        self.address = self._listener.address
        self.state.address = self.address
        self._clock_task = asyncio.create_task(self._clock(), name="scheduler clock")
        log.info("scheduler listening at %s", self.address)
        return self

    async def _clock(self) -> None:
        """Wake the core when time alone calls for a decision (silent workers)."""
        state = self.state
        while True:
            deadline = state.next_deadline()
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                self._run(state.tick(now))
                pause = CLOCK_MIN_SLEEP_S
            else:
                pause = CLOCK_MAX_SLEEP_S if deadline is None else deadline - now
                pause = max(CLOCK_MIN_SLEEP_S, min(pause, CLOCK_MAX_SLEEP_S))
            await asyncio.sleep(pause)

    async def _serve(self, comm: Comm) -> None:
        role = comm.peer_role
        peer = f"{role}-{next(self._peer_ids)}"
        state, now = self.state, time.monotonic
        self.comms[peer] = comm
        state.connected(peer, role)
        try:
            while True:
                try:
                    batch = await comm.read()
                except CommClosedError:
                    return
                for msg in batch:
                    self._run(state.handle(peer, msg, now()))
                    if type(msg) is m.SubmitGraph:
                        await asyncio.sleep(0)  # let other connections in between chunks
                    elif type(msg) is m.RegisterWorker and peer in state.workers:
                        log.info("worker %s joined from %s", msg.name, comm.peer_address)
                        self._workers_changed.set()
        finally:
            worker = state.workers.get(peer)
            if worker is not None:
                log.info("worker %s left", worker.name)
            del self.comms[peer]
            self._run(state.lost(peer, now()))
            self._workers_changed.set()

    async def wait_for_workers(self, n: int) -> None:
        """Return once at least `n` workers are registered (wrap in a timeout)."""
        while len(self.state.placement.workers) < n:
            self._workers_changed.clear()
            await self._workers_changed.wait()

    def _run(self, commands: list[Command]) -> None:
        comms = self.comms
        for command in commands:
            comm = comms.get(command.peer)
            if comm is None:
                continue  # that connection already ended; the core has been told
            if type(command) is Send:
                try:
                    comm.send(command.msg)
                except CommClosedError:
                    continue  # its read loop reports the loss
                except MessageTooLarge as exc:
                    log.error("cannot send to %s: %s", command.peer, exc)
                    comm.abort(str(exc))
            else:
                log.warning("closing connection %s: %s", comm.peer_address, command.reason)
                comm.abort(command.reason)

    async def close(self) -> None:
        """Stop listening and close every connection."""
        if self._clock_task is not None:
            self._clock_task.cancel()
            self._clock_task = None
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        self._stopped.set()

    async def finished(self) -> None:
        """Wait until close() completed."""
        await self._stopped.wait()

    async def __aenter__(self) -> Scheduler:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return (
            f"<Scheduler {self.address} workers={len(self.state.placement.workers)} "
            f"clients={len(self.state.clients)} tasks={len(self.state.tasks)}>"
        )
