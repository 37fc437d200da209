"""The scheduler's asyncio shell: connections in, SchedulerState decisions out.

One listener serves workers and clients on one port. Each connection's read
loop feeds messages to the core and carries out the commands it returns;
nothing here decides anything about tasks. An exception from the core (or from
this shell) is an internal error: logged once with the story of its keys, it
stops the scheduler, and nothing calls into the half-changed core again.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import socket
import time
from typing import Any

from shoal.errors import CommClosedError, MessageTooLarge
from shoal.protocol import messages as m
from shoal.protocol.comm import Comm, Listener, listen
from shoal.protocol.escape import peer_text
from shoal.protocol.schema import Message
from shoal.protocol.story import keys_named, tell
from shoal.protocol.tls import TLSConfig
from shoal.protocol.tokens import Keyring, TokenFileError
from shoal.protocol.web import WebServer, http_host
from shoal.scheduler.audit import AuditLog
from shoal.scheduler.http import scheduler_web
from shoal.scheduler.model import Audit, Command, Disconnect, Send
from shoal.scheduler.roles import Grant
from shoal.scheduler.state import SchedulerState

log = logging.getLogger(__name__)

# The clock wakes the core at its next deadline, and at least this often.
CLOCK_MAX_SLEEP_S = 0.25
CLOCK_MIN_SLEEP_S = 0.01
# Below this many tasks a full collection takes milliseconds: no need to freeze.
FREEZE_AT_TASKS = 10_000
# While it holds that many, the scheduler also freezes after this many messages,
# so that what running tasks leave behind (holders, values) is walked in small parts.
FREEZE_EVERY = 1_000
# The reason sent to peers on an internal error stays short: it crosses the wire.
REASON_CHARS = 1000


# The log line of each cluster event the core notes (see scheduler/tally.py).
EVENT_TEXT = {
    "worker-joined": "worker {worker} joined, serving data at {address}",
    "worker-left": "worker {worker} left",
    "worker-died": "worker {worker} died: {cause}",
    "client-connected": "client {client} connected, named {name!r}",
    "client-gone": "client {client} gone",
    "graph-received": "graph of {tasks} tasks received from {client}",
}


class _Stop(Exception):
    """Raised in the TaskGroup's body to cancel every background task on purpose."""


class Collector:
    """How a scheduler process uses Python's cyclic garbage collector.

    The core frees task records by reference counts (forgetting a task unlinks
    it), so the collector finds no garbage among them; but each of its full
    collections walks every live object, and with a million tasks that is 1 to
    2 s inside one handle call. With `freeze`, once the scheduler holds
    FREEZE_AT_TASKS tasks, everything alive after each submitted graph, and
    after every FREEZE_EVERY messages, moves to the permanent generation
    (gc.freeze(), constant time), so that collections walk only what came
    since. No collection runs while a graph comes in: its new links are young
    objects pointing at task records all over memory, which young collections
    would walk (30 to 60 ms per call with a million tasks), and all of it is
    frozen right after. Whenever the scheduler holds no tasks again, the
    frozen objects are collected once and frozen again, so that garbage
    cycles caught frozen meanwhile do not stay for good.

    The collector is the whole process's: the `shoal scheduler` command turns
    this on; a scheduler embedded in another program (LocalCluster) leaves it
    alone by default. benchmarks/scale.py applies it as the command does.
    """

    def __init__(self, freeze: bool) -> None:
        self.freeze = freeze
        self.frozen = False  # objects were frozen since the scheduler last held no tasks
        self._since = 0  # messages since the last freeze

    def before(self, msg: Message) -> None:
        """Before the core handles `msg`."""
        if self.freeze and type(msg) is m.SubmitGraph:
            gc.disable()

    def after(self, msg: Message | None, state: SchedulerState) -> None:
        """After the core handled `msg` (None: a lost connection), or raised."""
        if not self.freeze:
            return
        if type(msg) is m.SubmitGraph:
            gc.enable()
        self._since += 1
        if len(state.tasks) >= FREEZE_AT_TASKS:
            if self._since >= FREEZE_EVERY or type(msg) is m.SubmitGraph:
                gc.freeze()
                self.frozen = True
                self._since = 0
        elif self.frozen and not state.tasks:
            self.frozen = False
            gc.unfreeze()
            gc.collect()
            gc.freeze()


class Scheduler:
    """A scheduler listening at `address` (port 0 picks a free port).

    `await start()` returns once it accepts connections; `address` is then
    the address to give workers and clients. `close()` stops it and closes
    every connection. `freeze_gc` sets the process's garbage collection
    policy (see Collector). `http_port` serves the HTTP endpoints and the
    dashboard (shoal.scheduler.http) on the same host (0: any free port;
    None: no HTTP); `http_address` is then their address. With
    `http_fallback`, a taken `http_port` gives way to any free port (for a
    default port, as the `shoal scheduler` command's). Extra keyword
    arguments configure SchedulerState.

    Peers prove they hold `token` (the admin role) or one of `keyring`'s
    tokens (a token file: each with its role, checked on every message; see
    shoal.scheduler.roles). `audit_log` is the path of the audit log (see
    audit.py); `require_tls` refuses plain addresses, for the scheduler and
    for the workers that join it. `reload()` (SIGHUP) reads the token file
    again and reopens the audit log.

    An internal error (an exception from the core or from this shell) is
    logged once at ERROR with the recent transitions of the keys involved;
    the scheduler then closes every connection with a reason naming the
    error and stops by itself: `finished()` returns and `failure` holds the
    exception. It never calls into the half-changed core again. The
    `shoal scheduler` command then exits with INTERNAL_ERROR_EXIT.
    """

    def __init__(
        self,
        address: str = "tcp://127.0.0.1:0",
        *,
        token: str | bytes | None = None,
        keyring: Keyring | None = None,
        tls: TLSConfig | None = None,
        allow_insecure: bool = False,
        require_tls: bool = False,
        audit_log: str | None = None,
        sock: socket.socket | None = None,
        freeze_gc: bool = False,
        http_port: int | None = None,
        http_fallback: bool = False,
        **state_options: Any,
    ) -> None:
        self.address = address
        self.http_port, self._http_fallback = http_port, http_fallback
        self.http_address = ""
        self._web: WebServer | None = None
        self._sock = sock  # bound and listening at `address` already, if given
        self._token, self._tls, self._allow_insecure = token, tls, allow_insecure
        self.keyring, self.require_tls = keyring, require_tls
        self._audit_path = audit_log
        self.audit: AuditLog | None = None
        self._state_options = state_options
        self.state = SchedulerState(
            audit=audit_log is not None, require_tls=require_tls, **state_options
        )
        self.collector = Collector(freeze_gc)
        self.comms: dict[str, Comm] = {}
        self._listener: Listener | None = None
        self._peer_ids = itertools.count(1)
        self._stopped = asyncio.Event()
        self._workers_changed = asyncio.Event()
        self._stop = asyncio.Event()  # set to stop the service: close(), or a failure
        self._main: asyncio.Task[None] | None = None  # owns the TaskGroup, awaited by close()
        self.failure: BaseException | None = None  # the internal error that stopped it
        self._failure_reason = ""  # what peers are told of it
        self._logged = 0  # the number of the last cluster event logged (see _log_events)

    async def start(self) -> Scheduler:
        """Listen; return once connections are accepted.

        Raises:
            PermissionError: a non-loopback address without a token, or a plain
                one with `require_tls` (see listen()).
            OSError: the address cannot be bound, or the audit log opened.
        """
        if self._audit_path is not None and self.audit is None:
            self.audit = AuditLog(self._audit_path)
        self._listener = await listen(
            self.address,
            self._serve,
            role="scheduler",
            name="scheduler",
            token=self._token,
            keyring=self.keyring,
            tls=self._tls,
            allow_insecure=self._allow_insecure,
            require_tls=self.require_tls,
            sock=self._sock,
            on_event=self._record if self.audit is not None else None,
        )
        self.keyring = self._listener.keyring
        self.address = self._listener.address
        self.state.address = self.address
        if self.http_port is not None:
            try:
                await self._start_web(self.http_port)
            except BaseException:
                await self._listener.close()
                self._listener = None
                raise
        self._main = asyncio.create_task(self._run(), name=f"scheduler {self.address}")
        log.info("scheduler listening at %s", self.address)
        return self

    async def _start_web(self, port: int) -> None:
        self._web = scheduler_web(
            self,
            host=http_host(self.address),
            port=port,
            keyring=self.keyring,
            tls=self._tls,
            allow_insecure=self._allow_insecure,
            fallback=self._http_fallback,
            require_tls=self.require_tls,
            on_event=self._record if self.audit is not None else None,
        )
        await self._web.start()
        self.http_address = self.state.http_address = self._web.address

    @property
    def accepting(self) -> bool:
        """Whether it accepts connections now (for /ready)."""
        return self._listener is not None and self.failure is None and not self._stop.is_set()

    async def _run(self) -> None:
        """Own every background task; stop them all on close() or a failure."""
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._clock(), name="scheduler clock")
                group.create_task(self._watch_listener(), name="scheduler listener")
                await self._stop.wait()
                raise _Stop
        except* _Stop:
            pass
        except* Exception as failures:  # a background task died: the same loud path
            self._fail(failures.exceptions[0], "running a background task", [])
        finally:
            await self._shutdown()

    async def _watch_listener(self) -> None:
        assert self._listener is not None
        await self._listener.serving()
        raise RuntimeError(f"the listener at {self.address} stopped accepting connections")

    async def _clock(self) -> None:
        """Wake the core when time alone calls for a decision (silent workers)."""
        state = self.state
        while self.failure is None:
            now = time.monotonic()
            try:
                deadline = state.next_deadline()
                if deadline is not None and now >= deadline:
                    self._run_commands(state.tick(now))
                    pause = CLOCK_MIN_SLEEP_S
                else:
                    pause = CLOCK_MAX_SLEEP_S if deadline is None else deadline - now
                    pause = max(CLOCK_MIN_SLEEP_S, min(pause, CLOCK_MAX_SLEEP_S))
            except Exception as exc:  # shell boundary: the core's bug stops the scheduler
                self._fail(exc, "handling a tick of the clock", keys_named(None, exc))
                return
            await asyncio.sleep(pause)

    async def _serve(self, comm: Comm) -> None:
        if self.failure is not None:  # accepted while stopping: say why, and no more
            await comm.close(self._failure_reason)
            return
        role = comm.peer_role
        peer = f"{role}-{next(self._peer_ids)}"
        state, now, collector = self.state, time.monotonic, self.collector
        self.comms[peer] = comm
        msg: Message | None = None
        if self.audit is not None:
            self._record(
                "connection-accepted",
                {
                    "conn": peer,
                    "peer": comm.peer_address,
                    "kind": role,
                    "name": peer_text(comm.peer_name, 100),
                    "role": comm.access.value,
                    "token": comm.token_name,
                },
            )
        try:
            state.connected(peer, role, Grant(comm.access, comm.token_name))
            while True:
                try:
                    batch = await comm.read()
                except CommClosedError:
                    return
                for msg in batch:
                    if self.failure is not None:  # found on another connection meanwhile
                        await comm.close(self._failure_reason)
                        return
                    collector.before(msg)
                    try:
                        self._run_commands(state.handle(peer, msg, now()))
                        # A large graph is taken in a slice at a time; this connection's
                        # next messages wait for it, other connections are served between.
                        while state.taking_in(peer):
                            await asyncio.sleep(0)
                            if self.failure is not None:
                                break
                            self._run_commands(state.resume(peer, now()))
                    finally:
                        collector.after(msg, state)
                    if type(msg) is m.SubmitGraph:
                        await asyncio.sleep(0)  # let other connections in between chunks
                    elif type(msg) is m.RegisterWorker and peer in state.workers:
                        self._workers_changed.set()
        except Exception as exc:  # shell boundary: an internal error, never the peer's fault
            doing = f"handling {msg.op} from {peer}" if msg is not None else f"connecting {peer}"
            self._fail(exc, doing, keys_named(msg, exc))
            await comm.close(self._failure_reason)
        finally:
            del self.comms[peer]
            if self.audit is not None:
                self._record("connection-closed", {"conn": peer})
            if self.failure is None:  # a broken core is never called again
                self._lost(peer)

    def _lost(self, peer: str) -> None:
        try:
            self._run_commands(self.state.lost(peer, time.monotonic()))
            self.collector.after(None, self.state)
        except Exception as exc:  # shell boundary: the core's bug stops the scheduler
            self._fail(exc, f"handling the loss of {peer}", keys_named(None, exc))
        self._workers_changed.set()

    def _fail(self, exc: BaseException, doing: str, keys: list[object]) -> None:
        """An internal error: log it once with its keys' story, and stop the service."""
        if self.failure is not None:
            log.debug("a further error after the internal error: %r", exc)
            return
        self.failure = exc
        what = f"{type(exc).__name__}: {exc}"
        story = tell(self.state.history.story(keys)) if keys else "  (no keys involved)"
        log.error(
            "internal error while %s, the scheduler stops: %s\nrecent transitions of %s:\n%s",
            doing,
            what,
            keys or "no keys",
            story,
            exc_info=exc,
        )
        reason = f"internal error in the scheduler while {doing}: {what}"
        self._failure_reason = reason[:REASON_CHARS]
        self._stop.set()

    async def wait_for_workers(self, n: int) -> None:
        """Return once at least `n` workers are registered (wrap in a timeout)."""
        while len(self.state.placement.workers) < n:
            self._workers_changed.clear()
            await self._workers_changed.wait()

    def _record(self, event: str, fields: dict[str, object]) -> None:
        """One audit-log event, from the shell or the listener."""
        if self.audit is not None:
            self.audit.write(event, fields, time.time())

    def reload(self) -> None:
        """SIGHUP: read the token file again, close the connections whose token is
        gone or changed, and reopen the audit log. A token file that cannot be
        used is logged; the tokens stay as they were."""
        if self.audit is not None:
            self.audit.reopen()
        keyring = self.keyring
        if keyring is None or keyring.path is None:
            return
        try:
            added, removed, changed = keyring.reload()
        except TokenFileError as exc:
            log.error("token file not reloaded, the tokens stay as they were: %s", exc)
            self._record("tokens-reload-failed", {"reason": str(exc)[:1000]})
            return
        log.info(
            "token file %s reloaded: %d token(s), %d added, %d removed, %d changed",
            keyring.path,
            len(keyring),
            len(added),
            len(removed),
            len(changed),
        )
        self._record(
            "tokens-reloaded",
            {"tokens": len(keyring), "added": added, "removed": removed, "changed": changed},
        )
        for peer, comm in list(self.comms.items()):
            if comm.token is not None and not keyring.holds(comm.token):
                reason = f"its token {comm.token.name!r} was revoked or changed"
                log.warning("closing connection %s: %s", comm.peer_address, reason)
                self._record("connection-revoked", {"conn": peer, "token": comm.token.name})
                comm.abort(reason)

    def _log_events(self) -> None:
        """One line per cluster event the core noted since the last call."""
        for n, _, kind, fields in self.state.tally.events:
            if n > self._logged:
                text = peer_text(EVENT_TEXT[kind].format(**fields), 1000)
                log.info("%s", text, extra={"event": kind, "fields": fields})
        self._logged = self.state.tally.event_number

    def _run_commands(self, commands: list[Command]) -> None:
        if self.state.tally.event_number != self._logged:
            self._log_events()
        comms = self.comms
        for command in commands:
            if isinstance(command, Audit):
                self._record(command.event, command.fields)
                continue
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
                assert isinstance(command, Disconnect)
                # A reason may quote what a peer sent (a nanny's cause of death).
                reason = peer_text(command.reason, 1000)
                log.warning("closing connection %s: %s", comm.peer_address, reason)
                comm.abort(command.reason)

    async def close(self) -> None:
        """Stop listening and close every connection. Returns once done; does not
        raise the internal error that may have stopped the scheduler (see `failure`)."""
        if self._main is None:  # never started, or start() failed
            if self._web is not None:
                await self._web.close()
                self._web = None
            if self._listener is not None:
                await self._listener.close()
                self._listener = None
            if self.audit is not None:
                self.audit.close()
            self._stopped.set()
            return
        self._stop.set()
        await asyncio.wait({self._main})

    async def _shutdown(self) -> None:
        if self._web is not None:
            await self._web.close()
            self._web = None
        if self.failure is not None:  # tell every peer why, in the one message it reads last
            comms = list(self.comms.values())
            await asyncio.gather(*(comm.close(self._failure_reason) for comm in comms))
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        if self.audit is not None:
            self.audit.close()
        self._stopped.set()

    async def finished(self) -> None:
        """Wait until the scheduler stopped: close() completed, or an internal error
        stopped it (then `failure` holds it)."""
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
