"""The worker's decisions, SANS-IO: which keys it holds, fetches, runs and reports.

`WorkerState.handle(event, now)` returns commands for the shell. It never awaits,
reads a clock, touches a socket or a thread, or opens a user payload.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from shoal.errors import InvalidTransition, TaskTimeout, ValueTooLarge, type_name
from shoal.protocol.limits import DEFAULT_LIMITS, Limits
from shoal.protocol.messages import (
    INLINE_VALUE_BYTES,
    AcquireKeys,
    ComputeTask,
    DataFetched,
    DataMissing,
    FreeKeys,
    KeysAcquired,
    TaskErred,
    TaskFinished,
    TasksStarted,
)
from shoal.protocol.schema import Message
from shoal.protocol.serialize import Serialized
from shoal.worker.events import (
    Command,
    DataPut,
    Drop,
    Execute,
    ExecutionDone,
    Fetch,
    FetchDone,
    FetchFailed,
    Hold,
    Key,
    MemorySample,
    Restart,
    SendToScheduler,
    ThreadRejoining,
    ThreadSeceded,
    ThreadsStarted,
    Tick,
    Value,
)
from shoal.worker.history import TransitionLog
from shoal.worker.memory import MemoryLimits, MemoryManagement
from shoal.worker.slots import SecededSlots

# Fetch requests in flight at once, to all peers together.
MAX_FETCHES = 16
# Keys asked of one peer in one request, up to this many bytes (one key may be larger).
FETCH_BYTES = 64 * 2**20
# Fetches at least this large are reported to the scheduler, which learns the
# bandwidth from them; smaller ones measure latency rather than bandwidth.
MEASURED_FETCH_BYTES = 2**20
# How long a task may run on past its timeout before its worker is restarted.
TIMEOUT_GRACE_S = 5.0
TIMEOUT_TYPENAME = type_name(TaskTimeout)
TOO_LARGE_TYPENAME = type_name(ValueTooLarge)


class Status(StrEnum):
    """Where a key stands on this worker. RELEASED and FORGOTTEN bracket a record's life."""

    RELEASED = "released"  # just made, not yet placed
    FETCH = "fetch"  # a value a task here needs, to be asked of a holder
    FLIGHT = "flight"  # asked of `fetching_from`, answer pending
    WAITING = "waiting"  # a task here, some dependencies not in memory yet
    READY = "ready"  # a task with every dependency here, queued for a thread
    EXECUTING = "executing"  # running; its outcome is owed to the scheduler
    CANCELLED = "cancelled"  # running, but freed: nothing is owed for it
    MEMORY = "memory"  # the value is here
    FORGOTTEN = "forgotten"  # the record is dropped


S = Status
_HOLDS_DEPS = frozenset({S.WAITING, S.READY, S.EXECUTING, S.CANCELLED})
_RUNNING = frozenset({S.EXECUTING, S.CANCELLED})
_OWES_REPORT = frozenset({S.WAITING, S.READY, S.EXECUTING})


@dataclasses.dataclass(slots=True, eq=False)
class KeyState:
    """Everything known about one key. Only `WorkerState._move` assigns `status`."""

    key: Key
    status: Status = S.RELEASED
    # The scheduler asked for this key (to compute, to acquire, or a client put it
    # here) and has not freed it.
    wanted: bool = False
    func: Serialized | None = dataclasses.field(default=None, repr=False)
    args: Serialized | None = dataclasses.field(default=None, repr=False)
    priority: tuple[int, ...] = ()
    queued: int = 0  # arrival number of its live entry in the ready heap
    deps: tuple[Key, ...] = ()
    nbytes: int = 0  # size of the value, when the scheduler said
    # deps not in memory yet, and tasks here that need this value (ordered sets)
    missing: dict[Key, None] = dataclasses.field(default_factory=dict, repr=False)
    dependents: dict[Key, None] = dataclasses.field(default_factory=dict, repr=False)
    # workers not yet asked, in the scheduler's order; those that did not give it
    holders: list[str] = dataclasses.field(default_factory=list)
    tried: list[str] = dataclasses.field(default_factory=list)
    fetching_from: str | None = None
    # Why a holder could not send the value: over this worker's limits. Such a
    # holder is not in `tried`: it still has the value, and the scheduler keeps it.
    too_large: str = ""
    value: Value | None = None
    finished: TaskFinished | None = None
    timeout: float = 0.0  # seconds it may run once started; 0: no limit
    timed_out: bool = False  # ran past its timeout; the thread may still run it


class WorkerState(SecededSlots, MemoryManagement):
    """What one worker holds, fetches and runs. Feed events, carry out the commands.

    `memory` holds the memory limit and its thresholds (see worker/memory.py):
    while paused, no task starts and nothing is fetched.
    """

    def __init__(
        self,
        nthreads: int,
        *,
        prefetch: int = 0,
        max_fetches: int = MAX_FETCHES,
        fetch_bytes: int = FETCH_BYTES,
        history_size: int = 10_000,
        timeout_grace: float = TIMEOUT_GRACE_S,
        can_restart: bool = False,
        limits: Limits = DEFAULT_LIMITS,
        memory: MemoryLimits = MemoryLimits(),  # noqa: B008 (frozen)
    ) -> None:
        if nthreads < 1:
            raise ValueError(f"nthreads must be at least 1, not {nthreads}")
        self.nthreads = nthreads
        self.max_fetches, self.fetch_bytes = max_fetches, fetch_bytes
        # Tasks handed to the thread pool beyond one per thread: a thread that
        # finishes a short task starts the next at once, without waiting for a
        # trip through the event loop.
        self.slots = nthreads + prefetch
        self.keys: dict[Key, KeyState] = {}
        self.executing: dict[Key, None] = {}  # EXECUTING and CANCELLED keys
        self._init_slots()  # those of them that seceded (slots.py)
        self.timed: dict[Key, None] = {}  # those of them with a timeout
        # A task stuck past its timeout by `timeout_grace` seconds makes the worker
        # restart, when a nanny can restart it (`can_restart`).
        self.timeout_grace, self.can_restart = timeout_grace, can_restart
        self.restarting = False
        self.limits = limits  # what this worker accepts from a peer: for error messages
        self.memory, self.paused, self._freed = memory, False, 0
        self.to_fetch: dict[Key, None] = {}  # FETCH keys
        self.in_flight: dict[str, dict[Key, None]] = {}  # address -> FLIGHT keys
        # Fetch requests issued and not answered: (address, keys) -> (issued at, bytes)
        self.requests: dict[tuple[str, tuple[Key, ...]], tuple[float, int]] = {}
        self._acquired: list[Key] = []  # keys to report in one KeysAcquired
        self._unhold: list[KeyState] = []  # records whose dependencies are to be let go
        self._releasing = False
        self.history = TransitionLog(maxlen=history_size)
        self._ready: list[tuple[tuple[int, ...], int, Key]] = []  # lazy deletion heap
        self._arrivals = 0
        self._events = 0
        self._stimulus = ""
        self._now = 0.0
        self._out: list[Command] = []

    # -- entry points ---------------------------------------------------------

    def handle(self, event: object, now: float) -> list[Command]:
        """Apply one event; return the commands it calls for, in order.

        Raises:
            TypeError: an event of a kind this core does not know.
            InvalidTransition: our own bug; never to be caught and ignored.
        """
        handler = _HANDLERS.get(type(event))
        if handler is None:
            raise TypeError(f"the worker core cannot handle {type(event).__name__}")
        self._events += 1
        self._stimulus = f"{type(event).__name__}-{self._events}"
        self._now = now
        handler(self, event)
        self._request_fetches()
        self._start_ready()
        if self._acquired:
            self._send(KeysAcquired(keys=tuple(self._acquired)))
            self._acquired = []
        out, self._out = self._out, []
        return out

    def value_of(self, key: Key) -> Value | None:
        """The value of `key` when it is in memory here, else None."""
        rec = self.keys.get(key)
        return rec.value if rec is not None and rec.status is S.MEMORY else None

    # -- events ---------------------------------------------------------------

    def _on_compute(self, msg: ComputeTask) -> None:
        rec = self.keys.get(msg.key)
        if rec is not None and self._compute_known(rec):
            return
        deps = tuple(d for d in dict.fromkeys(msg.deps) if d != msg.key)
        for dep in deps:
            if dep not in self.keys and dep not in msg.values and not msg.who_has.get(dep):
                self._send(DataMissing(key=dep, tried=(), tasks=(msg.key,)))
                return
        if rec is None:
            rec = self.keys[msg.key] = KeyState(msg.key)
        rec.func, rec.args, rec.priority, rec.deps = msg.func, msg.args, msg.priority, deps
        rec.timeout = msg.timeout
        rec.wanted = True
        for dep in deps:
            self._attach(rec, dep, msg)
        self._move(rec, S.WAITING if rec.missing else S.READY)

    def _compute_known(self, rec: KeyState) -> bool:
        """A ComputeTask for a key with a record: True when nothing more is to be done."""
        if rec.status is S.MEMORY:
            rec.wanted = True
            if rec.finished is None:
                rec.finished = _finished_from_payload(rec)
            self._send(rec.finished)
            return True
        if rec.status is S.CANCELLED and rec.timed_out:
            self._send(self._timeout_error(rec, "an earlier run is still stuck here past it"))
            return True
        if rec.status is S.CANCELLED:
            rec.wanted = True  # the run under way is reported after all
            self._move(rec, S.EXECUTING)
            return True
        # WAITING, READY, EXECUTING: a report is owed already. FETCH, FLIGHT: compute it here.
        return rec.status in _OWES_REPORT

    def _attach(self, rec: KeyState, dep_key: Key, msg: ComputeTask) -> None:
        dep = self._record(dep_key)
        payload = msg.values.get(dep_key)
        if payload is not None and dep.status in (S.RELEASED, S.FETCH, S.FLIGHT):
            self._arrived(dep, payload)
        else:
            self._add_holders(dep, msg.who_has.get(dep_key, ()))
            dep.nbytes = msg.nbytes.get(dep_key, dep.nbytes)
            if dep.status is S.RELEASED:
                self._move(dep, S.FETCH)
        dep.dependents[rec.key] = None
        if dep.status is not S.MEMORY:
            rec.missing[dep_key] = None

    def _record(self, key: Key) -> KeyState:
        """The record of `key`, made (RELEASED) if there is none."""
        rec = self.keys.get(key)
        if rec is None:
            rec = self.keys[key] = KeyState(key)
        return rec

    def _add_holders(self, rec: KeyState, holders: tuple[str, ...]) -> None:
        for holder in holders:
            if holder not in rec.holders and holder != rec.fetching_from:
                rec.holders.append(holder)

    def _arrived(self, rec: KeyState, payload: Serialized) -> None:
        """The value of a key that was not in memory here arrived."""
        if rec.wanted:  # acquired for the scheduler, which hears of it
            self._acquired.append(rec.key)
        rec.value = Value(payload)
        # Made now: once the store spills the value, its payload is on disk.
        rec.finished = _finished_from_payload(rec)
        self._move(rec, S.MEMORY)

    def _on_acquire(self, msg: AcquireKeys) -> None:
        for key, holders in msg.who_has.items():
            rec = self._record(key)
            if rec.status is S.MEMORY:
                rec.wanted = True
                self._acquired.append(key)
                continue
            if rec.status not in (S.RELEASED, S.FETCH, S.FLIGHT):
                # A task of this key is here (freed, or not yet reported): no copy
                # is made of it; the scheduler settles the request.
                self._send(DataMissing(key=key, tried=()))
                continue
            rec.wanted = True
            rec.nbytes = msg.nbytes.get(key, rec.nbytes)
            self._add_holders(rec, holders)
            if rec.status is not S.RELEASED:
                continue
            if rec.holders:
                self._move(rec, S.FETCH)
            else:
                del self.keys[key]
                self._send(DataMissing(key=key, tried=()))

    def _on_put(self, event: DataPut) -> None:
        for key, payload in event.data.items():
            rec = self._record(key)
            if rec.status is S.MEMORY:
                rec.wanted = True
            elif rec.status in (S.RELEASED, S.FETCH, S.FLIGHT):
                self._arrived(rec, payload)
                rec.wanted = True
            # Otherwise a task here is making this key: its own report will do.

    def _on_free(self, msg: FreeKeys) -> None:
        for key in msg.keys:
            rec = self.keys.get(key)
            if rec is None or not rec.wanted:
                continue  # unknown, or a copy that only tasks here hold
            rec.wanted = False
            if rec.status is S.EXECUTING:
                self._move(rec, S.CANCELLED)
            elif rec.status in (S.WAITING, S.READY) and rec.dependents:
                self._fall_back(rec)
            else:
                self._release_if_unneeded(rec)

    def _on_executed(self, event: ExecutionDone) -> None:
        rec = self.keys.get(event.key)
        if rec is None or rec.status not in _RUNNING:
            status = rec.status if rec is not None else "unknown"
            raise InvalidTransition(event.key, status, "done", self._stimulus, self._tail())
        owed = rec.status is S.EXECUTING
        if owed:
            self._send(event.outcome)
        if type(event.outcome) is TaskFinished and (owed or rec.dependents):
            rec.value, rec.finished = event.value, event.outcome
            self._move(rec, S.MEMORY)
        elif rec.dependents:  # it failed, and tasks here still need its value
            rec.wanted = False
            self._fall_back(rec)
        else:
            rec.wanted = False
            self._move(rec, S.FORGOTTEN)

    def _on_threads_started(self, event: ThreadsStarted) -> None:
        """Threads started tasks: tell the scheduler of those whose outcome is still
        owed, since a death counts only against started tasks. Freed ones are not
        the scheduler's concern any more."""
        keys = self.keys
        started = []
        for key in event.keys:
            rec = keys.get(key)
            if rec is not None and rec.status is S.EXECUTING:
                started.append(key)
        if started:
            self._send(TasksStarted(keys=tuple(started)))

    def _on_tick(self, event: Tick) -> None:
        """Fail tasks running past their timeout; restart if one stays stuck."""
        now = self._now
        for key in list(self.timed):
            rec = self.keys[key]
            started = event.running.get(key)
            if started is None:
                continue  # handed to the pool, not started by a thread yet
            over = now - started - rec.timeout
            if over > 0 and not rec.timed_out:
                rec.timed_out = True
                if rec.status is S.EXECUTING:  # its outcome is owed: this is it
                    self._send(self._timeout_error(rec, f"it ran for {now - started:.1f} s"))
                    rec.wanted = False
                    self._move(rec, S.CANCELLED)
            if over > self.timeout_grace and self.can_restart and not self.restarting:
                self.restarting = True
                self._out.append(
                    Restart(
                        f"task {key!r} is still running {over:.1f} s past its timeout of "
                        f"{rec.timeout:g} s"
                    )
                )

    @staticmethod
    def _timeout_error(rec: KeyState, detail: str) -> TaskErred:
        return TaskErred(
            key=rec.key,
            typename=TIMEOUT_TYPENAME,
            message=f"task {rec.key!r} ran past its timeout of {rec.timeout:g} s ({detail})",
            traceback="",
        )

    def _on_fetched(self, event: FetchDone) -> None:
        request = self.requests.pop((event.address, event.keys), None)
        nbytes = sum(payload.nbytes for payload in event.data.values())
        if request is not None and nbytes >= MEASURED_FETCH_BYTES and self._now > request[0]:
            self._send(DataFetched(nbytes=nbytes, duration=self._now - request[0]))
        for key in event.keys:
            rec = self._in_flight_from(event.address, key)
            if rec is None:
                continue  # no longer wanted from there: a late answer
            payload = event.data.get(key)
            if payload is not None:
                self._arrived(rec, payload)
            elif key in event.too_large:
                rec.too_large = self._too_large_text(key, event.too_large[key], event.address)
                self._fall_back(rec)
            else:
                self._fetch_missed(rec, event.address)

    def _on_fetch_failed(self, event: FetchFailed) -> None:
        self.requests.pop((event.address, event.keys), None)
        for key in event.keys:
            rec = self._in_flight_from(event.address, key)
            if rec is not None:
                self._fetch_missed(rec, event.address)

    def _too_large_text(self, key: Key, nbytes: int, address: str) -> str:
        limits = self.limits
        return (
            f"the value of {key!r} ({nbytes} bytes, held by {address}) is over the limits "
            f"this worker accepts from a peer (max_batch_bytes={limits.max_batch_bytes}, "
            f"max_header_bytes={limits.max_header_bytes}, max_frames={limits.max_frames})"
        )

    # -- helpers --------------------------------------------------------------

    def _in_flight_from(self, address: str, key: Key) -> KeyState | None:
        rec = self.keys.get(key)
        if rec is None or rec.status is not S.FLIGHT or rec.fetching_from != address:
            return None
        return rec

    def _fetch_missed(self, rec: KeyState, address: str) -> None:
        rec.tried.append(address)
        self._fall_back(rec)

    def _fall_back(self, rec: KeyState) -> None:
        """`rec`'s value is needed here and will not be made here: fetch it from the
        next holder. With none left, drop it and every task here waiting on it, and
        tell the scheduler, which places those tasks again; but when a holder had
        it and it was too large to come here, those tasks err (ValueTooLarge), for
        placing them again would only fetch it again.

        Tasks dropped that other tasks here wait on fall back in turn, from a work
        list rather than by recursion, so a chain of any length is dropped.
        """
        stack: list[tuple[KeyState, str]] = [(rec, "")]
        while stack:
            rec, cause = stack.pop()
            if self.keys.get(rec.key) is not rec:
                continue  # let go meanwhile, its dependents with it: reported already
            if rec.holders:
                self._move(rec, S.FETCH)
                continue
            cause = cause or rec.too_large
            dependents, tried = list(rec.dependents), tuple(rec.tried)
            rec.dependents.clear()
            rec.wanted = False
            self._move(rec, S.FORGOTTEN)
            dropped = []
            for key in dependents:
                task = self.keys.get(key)
                if task is None or task.status is not S.WAITING:
                    continue  # dropped already, through another dependency
                dropped.append(key)
                task.wanted = False
                if task.dependents:  # tasks here wait on this one in turn
                    stack.append((task, cause))
                else:
                    self._move(task, S.FORGOTTEN)
            if not cause:
                self._send(DataMissing(key=rec.key, tried=tried, tasks=tuple(dropped)))
                continue
            # `tried` holds only the holders that lacked it: the scheduler drops those.
            self._send(DataMissing(key=rec.key, tried=tried))
            for key in dropped:
                self._send(
                    TaskErred(key=key, typename=TOO_LARGE_TYPENAME, message=cause, traceback="")
                )

    def _release_if_unneeded(self, rec: KeyState) -> None:
        if rec.wanted or rec.dependents or rec.status is S.CANCELLED:
            return
        self._move(rec, S.CANCELLED if rec.status is S.EXECUTING else S.FORGOTTEN)

    def _release_deps(self, rec: KeyState) -> None:
        """`rec` no longer holds its dependencies: let go of those nothing else needs.

        Letting go of one can let go of its own dependencies: those are queued and
        taken by the outermost call, never by recursion.
        """
        unhold = self._unhold
        unhold.append(rec)
        if self._releasing:
            return
        self._releasing = True
        try:
            while unhold:
                rec = unhold.pop()
                deps, rec.deps, rec.missing = rec.deps, (), {}
                rec.func = rec.args = None
                for key in deps:
                    dep = self.keys.get(key)
                    if dep is not None:  # None: dropped as unobtainable just before
                        del dep.dependents[rec.key]
                        self._release_if_unneeded(dep)
        finally:
            self._releasing = False

    def _request_fetches(self) -> None:
        """Ask holders for the keys to fetch, at most `max_fetches` requests at once.

        Each request goes to the least busy holder of the oldest key to fetch and
        takes along the other keys to fetch that this holder has, up to
        `fetch_bytes` in all.
        """
        to_fetch = self.to_fetch
        while to_fetch and len(self.requests) < self.max_fetches and not self.paused:
            first = self.keys[next(iter(to_fetch))]
            address = min(first.holders, key=lambda a: len(self.in_flight.get(a, ())))
            keys: list[Key] = []
            total = 0
            for key in list(to_fetch):
                rec = self.keys[key]
                if address not in rec.holders or (keys and total + rec.nbytes > self.fetch_bytes):
                    continue
                rec.holders.remove(address)
                rec.fetching_from = address
                self._move(rec, S.FLIGHT)
                keys.append(key)
                total += rec.nbytes
            self.requests[(address, tuple(keys))] = (self._now, total)
            self._out.append(Fetch(address, tuple(keys)))

    def _start_ready(self) -> None:
        ready = self._ready
        # Rejoining tasks get their slots even while paused: they are started already.
        while self._may_start_ready() and ready and not self.paused:
            _, arrival, key = heapq.heappop(ready)
            rec = self.keys.get(key)
            if rec is not None and rec.status is S.READY and rec.queued == arrival:
                self._move(rec, S.EXECUTING)

    def _send(self, msg: Message) -> None:
        self._out.append(SendToScheduler(msg))

    def _tail(self) -> list[tuple[Key, str, str, str, float]]:
        return list(self.history)[-10:]

    # -- transitions ----------------------------------------------------------

    def _move(self, rec: KeyState, to: Status) -> None:
        start = rec.status
        step = _TRANSITIONS.get((start, to))
        if step is None:
            raise InvalidTransition(rec.key, start, to, self._stimulus, self._tail())
        self.history.append((rec.key, start, to, self._stimulus, self._now))
        if start is S.FETCH:
            del self.to_fetch[rec.key]
        elif start is S.FLIGHT:
            self._unflight(rec)
        elif start in _RUNNING and to not in _RUNNING:
            self._leave_slot(rec)
            rec.timed_out = False
            if rec.timeout:
                del self.timed[rec.key]
        rec.status = to
        step(self, rec)
        if start in _HOLDS_DEPS and to not in _HOLDS_DEPS:
            self._release_deps(rec)

    def _unflight(self, rec: KeyState) -> None:
        address = rec.fetching_from
        assert address is not None
        keys = self.in_flight[address]
        del keys[rec.key]
        if not keys:
            del self.in_flight[address]
        rec.fetching_from = None

    def _enter_fetch(self, rec: KeyState) -> None:
        self.to_fetch[rec.key] = None

    def _enter_flight(self, rec: KeyState) -> None:
        assert rec.fetching_from is not None
        self.in_flight.setdefault(rec.fetching_from, {})[rec.key] = None

    def _nothing(self, rec: KeyState) -> None:
        """WAITING is indexed by its dependencies' `dependents`; EXECUTING <-> CANCELLED
        changes only what is owed, while the thread runs on."""

    def _enter_ready(self, rec: KeyState) -> None:
        self._arrivals += 1
        rec.queued = self._arrivals
        heapq.heappush(self._ready, (rec.priority, rec.queued, rec.key))

    def _start(self, rec: KeyState) -> None:
        self.executing[rec.key] = None
        if rec.timeout:
            self.timed[rec.key] = None
        assert rec.func is not None and rec.args is not None
        deps = tuple((key, self._held(key)) for key in rec.deps)
        self._out.append(Execute(rec.key, rec.func, rec.args, deps, rec.priority))

    def _held(self, key: Key) -> Value:
        value = self.keys[key].value
        assert value is not None, f"dependency {key!r} is not in memory"
        return value

    def _enter_memory(self, rec: KeyState) -> None:
        assert rec.value is not None
        self._out.append(Hold(rec.key, rec.value))
        for key in tuple(rec.dependents):
            task = self.keys[key]
            if task.status is S.WAITING:
                del task.missing[rec.key]
                if not task.missing:
                    self._move(task, S.READY)

    def _forget(self, rec: KeyState) -> None:
        del self.keys[rec.key]
        if rec.value is not None:  # it was in memory: the store lets it go
            self._out.append(Drop(rec.key))
            rec.value = None

    # -- validation -----------------------------------------------------------

    def validate(self) -> None:
        """Check every invariant tying the records and indexes together.

        Raises:
            AssertionError: naming the broken invariant.
        """
        from shoal.worker.validate import validate_state

        validate_state(self)


def _finished_from_payload(rec: KeyState) -> TaskFinished:
    """The report for a value that arrived here rather than being computed here."""
    assert rec.value is not None
    value, payload = rec.value, rec.value.payload  # no payload: it is on the device
    small = payload is not None and payload.inline and payload.nbytes <= INLINE_VALUE_BYTES
    return TaskFinished(
        key=rec.key,
        nbytes=value.nbytes,
        typename=value.typename,
        duration=0.0,
        value=payload if small else None,
    )


_HANDLERS: dict[type, Callable[[WorkerState, Any], None]] = {
    ComputeTask: WorkerState._on_compute,
    FreeKeys: WorkerState._on_free,
    ExecutionDone: WorkerState._on_executed,
    FetchDone: WorkerState._on_fetched,
    FetchFailed: WorkerState._on_fetch_failed,
    AcquireKeys: WorkerState._on_acquire,
    DataPut: WorkerState._on_put,
    Tick: WorkerState._on_tick,
    ThreadsStarted: WorkerState._on_threads_started,
    ThreadSeceded: WorkerState._on_seceded,
    ThreadRejoining: WorkerState._on_rejoining,
    MemorySample: WorkerState._on_memory,
}

W = WorkerState
# The one table of allowed moves: (from, to) -> what entering `to` does.
_TRANSITIONS: dict[tuple[Status, Status], Callable[[WorkerState, KeyState], None]] = {
    (S.RELEASED, S.FETCH): W._enter_fetch,
    (S.RELEASED, S.MEMORY): W._enter_memory,
    (S.RELEASED, S.WAITING): W._nothing,
    (S.RELEASED, S.READY): W._enter_ready,
    (S.FETCH, S.FLIGHT): W._enter_flight,
    (S.FETCH, S.MEMORY): W._enter_memory,
    (S.FETCH, S.WAITING): W._nothing,
    (S.FETCH, S.READY): W._enter_ready,
    (S.FETCH, S.FORGOTTEN): W._forget,
    (S.FLIGHT, S.MEMORY): W._enter_memory,
    (S.FLIGHT, S.FETCH): W._enter_fetch,
    (S.FLIGHT, S.WAITING): W._nothing,
    (S.FLIGHT, S.READY): W._enter_ready,
    (S.FLIGHT, S.FORGOTTEN): W._forget,
    (S.WAITING, S.READY): W._enter_ready,
    (S.WAITING, S.FETCH): W._enter_fetch,
    (S.WAITING, S.FORGOTTEN): W._forget,
    (S.READY, S.EXECUTING): W._start,
    (S.READY, S.FETCH): W._enter_fetch,
    (S.READY, S.FORGOTTEN): W._forget,
    (S.EXECUTING, S.MEMORY): W._enter_memory,
    (S.EXECUTING, S.CANCELLED): W._nothing,
    (S.EXECUTING, S.FETCH): W._enter_fetch,
    (S.EXECUTING, S.FORGOTTEN): W._forget,
    (S.CANCELLED, S.EXECUTING): W._nothing,
    (S.CANCELLED, S.MEMORY): W._enter_memory,
    (S.CANCELLED, S.FETCH): W._enter_fetch,
    (S.CANCELLED, S.FORGOTTEN): W._forget,
    (S.MEMORY, S.FORGOTTEN): W._forget,
}
TRANSITIONS = frozenset(_TRANSITIONS)
