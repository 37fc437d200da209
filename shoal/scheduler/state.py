"""The scheduler's pure core: every decision about tasks, workers and clients.

`handle(peer, msg, now)` takes one message from a connection and returns the
commands to carry out (Send, Disconnect). It never awaits, never reads a
clock, never touches a socket. Status changes happen only in `_move`,
through the TRANSITIONS table.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Generator
from typing import Any

from shoal.errors import InvalidTransition, TaskTimeout, type_name
from shoal.protocol import messages as m
from shoal.protocol.schema import Message
from shoal.scheduler.clients import ClientRequests
from shoal.scheduler.history import History
from shoal.scheduler.intake import LargeSubmissions
from shoal.scheduler.keepers import ClusterKeepers
from shoal.scheduler.model import (
    ACTIVE,
    ORDER_SPAN,
    SMALL,
    ClientInfo,
    Command,
    Disconnect,
    NannyInfo,
    Send,
    Status,
    TaskError,
    TaskState,
    WorkerInfo,
    addresses,
    with_member,
    without_member,
)
from shoal.scheduler.placement import Placement
from shoal.scheduler.replicas import DataRequests, Replication
from shoal.scheduler.restarts import ClusterRestarts
from shoal.scheduler.roles import ANYTHING, Grant, RoleChecks
from shoal.scheduler.stalls import NO_WORKER_WARNING_S, Stall, StalledTasks
from shoal.scheduler.tally import Tally
from shoal.scheduler.workers import WorkerEvents

# The maps of a compute-task message for a task without dependencies: shared,
# since messages are only ever encoded, never changed.
NO_DEPS: dict = {}

R, W, Q, P, M, E, F = (
    Status.RELEASED,
    Status.WAITING,
    Status.QUEUED,
    Status.PROCESSING,
    Status.MEMORY,
    Status.ERRED,
    Status.FORGOTTEN,
)


class SchedulerState(
    ClusterKeepers,
    ClusterRestarts,
    ClientRequests,
    DataRequests,
    LargeSubmissions,
    RoleChecks,
    StalledTasks,
    WorkerEvents,
):
    """Tasks, workers and clients, and the rules that move them.

    Args:
        address: the scheduler's own address, reported in scheduler info.
        initial_depth / max_depth / round_trip_s: see Placement.
        history: how many transitions `history` keeps.
        heartbeat_timeout: a worker that sends nothing for this many seconds is
            removed (workers heartbeat every second or so).
        allowed_failures: a task that was processing on this many workers that
            died (running, or assigned and waiting for a thread) fails with KilledWorker.
        death_report_wait: how long the work of a nanny-supervised worker whose
            connection dropped waits for its nanny's report of the cause.
        no_worker_warning / no_workers_timeout: seconds a ready task that no
            current worker can run waits before its clients are told, and
            before it fails with NoValidWorker (None: never); see stalls.py.
        audit: emit Audit commands (who did what) for the shell's audit log.
        require_tls: refuse workers whose data address is not tls://.
    """

    def __init__(
        self,
        *,
        address: str = "",
        initial_depth: int = 2,
        max_depth: int = 16,
        round_trip_s: float = 0.002,
        history: int = 100_000,
        heartbeat_timeout: float = 30.0,
        allowed_failures: int = 3,
        death_report_wait: float = 2.0,
        no_worker_warning: float = NO_WORKER_WARNING_S,
        no_workers_timeout: float | None = None,
        audit: bool = False,
        require_tls: bool = False,
    ) -> None:
        if allowed_failures < 1:
            raise ValueError(f"allowed_failures must be at least 1, not {allowed_failures}")
        self.address, self.http_address = address, ""  # the shell sets http_address
        self.audit, self.require_tls = audit, require_tls
        self.tally = Tally()  # counters for metrics, the dashboard and logs
        self.heartbeat_timeout = heartbeat_timeout
        self.allowed_failures = allowed_failures
        self.death_report_wait = death_report_wait
        self.no_worker_warning, self.no_workers_timeout = no_worker_warning, no_workers_timeout
        self.stalls: dict[Any, Stall] = {}  # by signature, see stalls.py
        self.tasks: dict[object, TaskState] = {}
        self.placement = Placement(initial_depth, max_depth, round_trip_s)
        self.roles: dict[str, str] = {}  # peer -> role, from connected()
        self.grants: dict[str, Grant] = {}  # peer -> its token's role, from connected()
        self.workers: dict[str, WorkerInfo] = {}  # by peer
        self.by_address: dict[str, WorkerInfo] = {}  # by data address
        # Copies asked for by Replicate and not yet confirmed, by (key, worker).
        self.replications: dict[tuple[object, WorkerInfo], list[Replication]] = {}
        self.clients: dict[str, ClientInfo] = {}  # by peer
        # Nanny-supervised workers whose connection dropped, awaiting the cause of
        # death until the deadline; gone from placement, otherwise still filed.
        self.dying: dict[WorkerInfo, float] = {}
        # Registered nannies, by peer and by the id their workers name (see workers.py).
        self.nannies: dict[str, NannyInfo] = {}
        self.nanny_ids: dict[str, NannyInfo] = {}
        self.history = History(history)
        self.transitions_done = 0
        self._order = itertools.count()
        self._stimuli = itertools.count()
        self._client_ids = itertools.count(1)
        self._worker_index = itertools.count()
        self._now = 0.0
        self._stimulus = 0  # the number of the call being handled
        self._what = ""  # what it handles
        self._out: list[Command] = []
        self._free: dict[WorkerInfo, list[object]] = {}
        # Cascades as a work list: a transition that causes others (a release that
        # frees dependencies, an error that fails dependents) queues them here, and
        # the outermost one drains the queue. No transition calls another
        # recursively, so the depth of a graph never meets the recursion limit.
        self._cascade: deque[tuple[Callable[..., None], TaskState, Any]] = deque()
        self._draining = False
        self._refill: dict[WorkerInfo, None] = {}  # workers whose tasks were taken back
        # Large graphs being taken in, by connection (see intake.py), and while one
        # of their slices starts tasks, the list that holds those found ready.
        self.intakes: dict[str, Generator[None, None, None]] = {}
        self._held: list[TaskState] | None = None
        self._handlers: dict[tuple[str, type[Message]], Callable[[str, Any], None]] = {
            ("worker", m.TaskFinished): self._task_finished,
            ("worker", m.TaskErred): self._task_erred,
            ("worker", m.WorkerLeaving): self._worker_leaving,
            ("worker", m.DataMissing): self._data_missing,
            ("worker", m.KeysAcquired): self._keys_acquired,
            ("worker", m.DataFetched): self._data_fetched,
            ("worker", m.Heartbeat): self._heartbeat,
            ("worker", m.TasksStarted): self._tasks_started,
            ("worker", m.WorkerPaused): self._worker_paused,
            ("worker", m.WorkerResumed): self._worker_resumed,
            ("worker", m.RetireWorker): self._retire_worker,
            ("nanny", m.WorkerDied): self._worker_died,
            ("nanny", m.Heartbeat): self._nanny_heartbeat,
            ("client", m.AddData): self._add_data,
            ("client", m.Replicate): self._replicate,
            ("client", m.SubmitGraph): self._submit_graph,
            ("client", m.ReleaseFutures): self._release_futures,
            ("client", m.CancelKeys): self._cancel_keys,
            ("client", m.WhoHas): self._who_has,
            ("client", m.GetSchedulerInfo): self._scheduler_info,
            **self._keeper_handlers(),  # keepers.py, restarts.py
            ("client", m.RetireWorkers): self._retire_workers,
        }
        self.retiring, self.retire_requests, self.retire_events = {}, [], 0  # retirement.py

    # -- entry points ------------------------------------------------------------

    def connected(self, peer: str, role: str, grant: Grant | None = None) -> None:
        """A connection `peer` completed its handshake as `role`; `grant`: what its
        token lets it do (see roles.py; None: anything)."""
        self.roles[peer] = role
        self.grants[peer] = grant or ANYTHING

    def handle(self, peer: str, msg: Message, now: float) -> list[Command]:
        """Apply one message from `peer`; return what to send."""
        self._begin(msg.op, now)
        grant = self.grants.get(peer, ANYTHING)
        if type(msg) not in grant.passes and not self._permitted(peer, msg):
            return self._end()
        role = self.roles.get(peer, "")
        handler = self._handlers.get((role, type(msg)))  # none for registrations
        ws = self.workers.get(peer)
        if ws is not None:
            ws.last_seen = now
        if handler is not None and (ws is not None or peer in self.clients or peer in self.nannies):
            handler(peer, msg)
        elif type(msg) is m.RegisterWorker and role == "worker" and ws is None:
            self._register_worker(peer, msg)
        elif type(msg) is m.RegisterClient and role == "client" and peer not in self.clients:
            self._register_client(peer, msg)
        elif type(msg) is m.RegisterNanny and role == "nanny" and peer not in self.nannies:
            self._register_nanny(peer, msg)
        elif handler is None:
            self._out.append(Disconnect(peer, f"unexpected {msg.op} from a {role or 'peer'}"))
        else:
            self._out.append(Disconnect(peer, f"{msg.op} from a {role} before it registered"))
        return self._end()

    def lost(self, peer: str, now: float) -> list[Command]:
        """The connection `peer` is gone."""
        self._begin("connection-lost", now)
        self.roles.pop(peer, None)
        self.grants.pop(peer, None)
        intake = self.intakes.pop(peer, None)
        if peer in self.workers:
            self._worker_lost(self.workers[peer])
        elif peer in self.nannies:
            self._nanny_lost(self.nannies[peer])
        elif peer in self.clients:
            self._remove_client(self.clients.pop(peer))
        if intake is not None:  # after the client's wants are gone: see _take_in
            intake.close()
        return self._end()

    def tick(self, now: float) -> list[Command]:
        """Time passed: remove silent workers and nannies, and dying workers whose
        nanny said nothing; warn of and fail tasks no worker can run."""
        self._begin("tick", now)
        self._expire(now)
        self._watch_stalls(now)
        return self._end()

    def _begin(self, what: str, now: float) -> None:
        self._now = now
        self._stimulus = next(self._stimuli)
        self._what = what
        self._out = []

    def _end(self) -> list[Command]:
        self._settle_keepers()
        if self.retiring:  # see retirement.py
            self._advance_retirements()
        while self._refill:  # slots freed by taking tasks back go to queued tasks
            ws = next(iter(self._refill))
            del self._refill[ws]
            self._fill(ws)
        if self._free:
            for ws, keys in self._free.items():
                if not ws.gone or ws.retiring:
                    self._out.append(Send(ws.peer, m.FreeKeys(keys=tuple(keys))))
            self._free = {}
        return self._out

    def _send(self, peer: str, msg: Message) -> None:
        self._out.append(Send(peer, msg))

    # -- workers -----------------------------------------------------------------

    def _task_finished(self, peer: str, msg: m.TaskFinished) -> None:
        ws = self.workers[peer]
        ts = self.tasks.get(msg.key)
        if ts is None or ts.processing_on is not ws:
            if ts is not None and ts.status is M and ws in ts.who_has:
                return  # a repeat from a holder
            # Stale: sent before a FreeKeys reached the worker, which then dropped
            # the value or will; saying so again costs nothing and settles it.
            self._free.setdefault(ws, []).append(msg.key)
            return
        if msg.warned:
            self._report_warned(ts, msg.warned)
        if self.placement.observe(msg.duration, self._now):
            self._fill_idle()
        self._move(ts, M, ws, msg)
        self._fill(ws)

    def _task_erred(self, peer: str, msg: m.TaskErred) -> None:
        ws = self.workers[peer]
        ts = self.tasks.get(msg.key)
        if ts is None or ts.processing_on is not ws:
            return
        if msg.warned:
            self._report_warned(ts, msg.warned)
        self.tally.ran(ts, ws, msg.duration, self._now, False)
        if ts.retries > 0 and msg.typename != TIMEOUT_TYPENAME:  # a hang is not retried
            ts.retries -= 1
            self._move(ts, W)
        else:
            self._move(ts, E, TaskError(msg.typename, msg.message, msg.traceback, msg.exception))
        self._fill(ws)

    def _add_replica(self, ts: TaskState, ws: WorkerInfo) -> None:
        holders = ts.who_has  # with_member(), inline: once per task
        if type(holders) is tuple and len(holders) < SMALL:
            ts.who_has = holders + (ws,) if holders else ws.alone  # noqa: RUF005
        else:
            ts.who_has = with_member(holders, ws)
        ws.has_what[ts] = None
        ws.nbytes += ts.nbytes

    def _fill(self, ws: WorkerInfo) -> None:
        """Give `ws` queued tasks while it has free slots."""
        placement = self.placement
        while placement.has_capacity(ws) and not ws.gone:  # not paused either
            ts = placement.next_for(ws)
            if ts is None:
                return
            self._move(ts, P, ws)

    def _fill_idle(self) -> None:
        """The depth grew: queued tasks fill the free slots, least loaded worker first.

        Workers come from the loads heap, so this costs nothing with no task
        queued and O(log workers) per task sent otherwise. Tasks with resources
        or restrictions, if any are queued, are offered to every worker.
        """
        placement = self.placement
        while placement.has_queued():
            ws = placement.least_loaded()
            if ws is None:
                break
            self._fill(ws)  # takes at least one task: it has a free slot
        if placement.has_queued_constrained():
            for ws in list(placement.workers.values()):
                self._fill(ws)

    # -- life cycle helpers --------------------------------------------------------

    def _recompute(self, roots: list[TaskState]) -> None:
        """Bring released tasks (and released tasks they need) back to work."""
        if not roots:
            return
        order: list[TaskState] = []
        visited: set[TaskState] = set()
        for root in roots:
            stack = [(root, False)]
            while stack:
                ts, expanded = stack.pop()
                if expanded:
                    order.append(ts)
                    continue
                if ts in visited or ts.status is not R:
                    continue
                visited.add(ts)
                stack.append((ts, True))
                stack.extend((dep, False) for dep in reversed(ts.deps))
        for ts in order:
            self._activate(ts)
        # A task that erred at once (another of its inputs had erred) did not come
        # to need the inputs brought back for it: let them go again.
        for ts in reversed(order):
            if ts.status in ACTIVE and not ts.needed:
                self._check_release(ts)

    def _activate(self, ts: TaskState) -> None:
        """A released task that is needed starts waiting (or errs with its dependency)."""
        if ts.func is None:
            self._lost_for_good(ts)
            return
        for dep in ts.deps:
            if dep.status is E:
                assert dep.error is not None
                self._move(ts, E, dep.error.blamed_on(dep.key))
                return
        self._move(ts, W)

    def _ready(self, ts: TaskState) -> None:
        """All dependencies of a waiting task are in memory: run it or queue it."""
        if self._held is not None:  # a large graph starts its ready tasks later, in order
            self._held.append(ts)
            return
        ws = self.placement.pick(ts)
        if ws is None:
            self._move(ts, Q)
        else:
            self._move(ts, P, ws)

    def _check_release(self, ts: TaskState) -> None:
        """Let go of a task nothing needs any more."""
        if ts.pending or ts.wanted_by:  # ts.needed, inline: this runs for every task
            return
        if ts.status is M or ts.status in ACTIVE:
            self._move(ts, R)
        self._maybe_forget(ts)

    def _maybe_forget(self, ts: TaskState) -> None:
        """Forget released or erred tasks that nothing needs and nothing depends on."""
        stack = [ts]
        while stack:
            ts = stack.pop()
            if ts.dependents or ts.pending or ts.wanted_by or ts.status not in (R, E):
                continue
            self._move(ts, F)
            stack.extend(ts.deps)

    # -- transitions -------------------------------------------------------------------

    def _move(self, ts: TaskState, to: Status, *args: Any) -> None:
        step = TRANSITIONS.get((ts.status, to))
        if step is None:
            stimulus = f"{self._what}-{self._stimulus}"
            raise InvalidTransition(ts.key, ts.status, to, stimulus, self.history.tail(10))
        self.history.record((ts.key, ts.status, to, self._stimulus, self._now))
        self.transitions_done += 1
        counts = ts.group.counts  # the tally's counts by status (see tally.py)
        counts[ts.status] -= 1
        counts[to] += 1
        if args:
            step(self, ts, *args)
        else:  # a plain call: no argument tuple to build
            step(self, ts)

    def _to_waiting(self, ts: TaskState) -> None:
        """released -> waiting: count what it waits for; its dependencies are needed."""
        waiting_on = 0
        for dep in ts.deps:
            dep.pending += 1
            if dep.status is not M:
                waiting_on += 1
        ts.status = W
        ts.waiting_on = waiting_on
        if waiting_on == 0:
            self._ready(ts)

    def _back_to_waiting(self, ts: TaskState) -> None:
        """queued/processing -> waiting: a retry, a lost worker or a lost dependency."""
        if ts.status is P:
            self._unassign(ts, free=True)
        ts.status = W
        ts.waiting_on = sum(1 for dep in ts.deps if dep.status is not M)
        if ts.waiting_on == 0:
            self._ready(ts)

    def _to_queued(self, ts: TaskState) -> None:
        ts.status = Q
        self.placement.enqueue(ts)

    def _to_processing(self, ts: TaskState, ws: WorkerInfo) -> None:
        if self._free:
            frees = self._free.pop(ws, None)
            if frees:  # frees decided earlier must reach the worker before this task
                self._send(ws.peer, m.FreeKeys(keys=tuple(frees)))
        ts.status = P
        ts.processing_on = ws
        ws.processing[ts] = None
        if ts.resources:
            for name, amount in ts.resources.items():
                ws.free[name] -= amount
        self.placement.touch(ws)
        if ts.deps:
            values, who_has, nbytes = {}, {}, {}
            for dep in ts.deps:
                if ws in dep.who_has:
                    continue
                if dep.value is not None:
                    values[dep.key] = dep.value
                else:
                    who_has[dep.key] = addresses(dep.who_has)
                    nbytes[dep.key] = dep.nbytes
            deps = tuple([dep.key for dep in ts.deps])
        else:
            values = who_has = nbytes = NO_DEPS
            deps = ()
        msg = m.ComputeTask(
            key=ts.key,
            # Only scattered values have no func and args, and they never run.
            func=ts.func,  # type: ignore[arg-type]
            args=ts.args,  # type: ignore[arg-type]
            deps=deps,
            values=values,
            who_has=who_has,
            priority=divmod(ts.priority, ORDER_SPAN),
            nbytes=nbytes,
            timeout=ts.timeout,
        )
        self._out.append(Send(ws.peer, msg))

    def _unassign(self, ts: TaskState, free: bool) -> None:
        ws = ts.processing_on
        assert ws is not None
        ts.processing_on = None
        del ws.processing[ts]
        if ws.started:
            ws.started.pop(ts, None)
            ws.seceded.pop(ts, None)  # only a started task secedes
        if ts.resources:
            for name, amount in ts.resources.items():
                ws.free[name] += amount
        if not ws.gone or ws.retiring:  # a retiring worker still hears of what it lost
            self.placement.touch(ws)
            if free:
                self._free.setdefault(ws, []).append(ts.key)
                self._refill[ws] = None

    def _to_memory(self, ts: TaskState, ws: WorkerInfo, msg: m.TaskFinished) -> None:
        self._unassign(ts, False)
        ts.status = M
        ts.nbytes, ts.typename = msg.nbytes, msg.typename
        self.tally.ran(ts, ws, msg.duration, self._now, True)
        value = msg.value
        # Only small values are kept here; a worker sending more is not trusted with it.
        ts.value = value if value is None or value.nbytes <= m.INLINE_VALUE_BYTES else None
        self._add_replica(ts, ws)
        self._in_memory_now(ts)
        self._leave_active(ts)
        if not (ts.pending or ts.wanted_by):  # not ts.needed
            self._check_release(ts)

    def _in_memory_now(self, ts: TaskState) -> None:
        """Tell whoever waited for `ts`'s value: dependents, then clients."""
        for dependent in ts.dependents:
            if dependent.status is W:
                dependent.waiting_on -= 1
                if dependent.waiting_on == 0:
                    self._ready(dependent)
        if ts.wanted_by:
            self._report_memory(ts, ts.wanted_by)

    def _leave_active(self, ts: TaskState) -> None:
        """A task stops needing its dependencies (it finished, failed or was dropped)."""
        for dep in ts.deps:
            dep.pending -= 1
        cascade = None
        for dep in ts.deps:
            if not (dep.pending or dep.wanted_by):  # not dep.needed
                if cascade is None:
                    cascade = self._cascade
                cascade.append((SchedulerState._check_release, dep, None))
        if cascade is not None and not self._draining:
            self._drain()

    def _drain(self) -> None:
        """Carry out the queued steps of a cascade, and those they queue, in order."""
        self._draining = True
        cascade = self._cascade
        try:
            while cascade:
                step, ts, arg = cascade.popleft()
                if arg is None:
                    step(self, ts)
                else:
                    step(self, ts, arg)
        finally:
            self._draining = False

    def _err_dependent(self, ts: TaskState, error: TaskError) -> None:
        """A dependency of `ts` erred: so does `ts`, if it still waits for it."""
        if ts.status is W:
            self._move(ts, E, error)

    def _to_erred(self, ts: TaskState, error: TaskError) -> None:
        """processing/waiting/released -> erred, and everything waiting on it too."""
        was_active = ts.status in ACTIVE
        if ts.status is P:
            self._unassign(ts, free=False)
        ts.status = E
        ts.error = error
        if ts.wanted_by:
            self._report_error(ts, ts.wanted_by)
        if ts.dependents:
            inherited = error.blamed_on(ts.key)
            cascade = self._cascade
            for dependent in list(ts.dependents):
                if dependent.status is W:
                    cascade.append((SchedulerState._err_dependent, dependent, inherited))
        if was_active:
            self._leave_active(ts)
        self._maybe_forget(ts)
        if self._cascade and not self._draining:
            self._drain()

    def _to_released(self, ts: TaskState) -> None:
        """Drop a value, or stop a task that is no longer needed."""
        status = ts.status
        if status is M:
            for ws in ts.who_has:
                del ws.has_what[ts]
                if not ws.has_what:  # a dict keeps its largest size until replaced
                    ws.has_what = {}
                ws.nbytes -= ts.nbytes
                if not ws.gone or ws.retiring:
                    self._free.setdefault(ws, []).append(ts.key)
            ts.who_has = ()
            ts.value = None
            ts.status = R
            return
        if status is P:
            self._unassign(ts, free=True)
        ts.status = R
        self._leave_active(ts)

    def _to_forgotten(self, ts: TaskState) -> None:
        ts.status = F
        del self.tasks[ts.key]
        if not self.tasks:  # a dict keeps its largest size until replaced
            self.tasks = {}
        for dep in ts.deps:
            dep.dependents = without_member(dep.dependents, ts)

    # -- checks --------------------------------------------------------------------------

    def validate(self) -> None:
        """Check every invariant tying the indexes together; AssertionError if broken."""
        from shoal.scheduler.validate import validate_state

        validate_state(self)


TIMEOUT_TYPENAME = type_name(TaskTimeout)


TRANSITIONS: dict[tuple[Status, Status], Callable[..., None]] = {
    (R, W): SchedulerState._to_waiting,
    (R, E): SchedulerState._to_erred,
    (R, M): SchedulerState._scattered,
    (R, F): SchedulerState._to_forgotten,
    (W, Q): SchedulerState._to_queued,
    (W, P): SchedulerState._to_processing,
    (W, R): SchedulerState._to_released,
    (W, E): SchedulerState._to_erred,
    (Q, P): SchedulerState._to_processing,
    (Q, W): SchedulerState._back_to_waiting,
    (Q, R): SchedulerState._to_released,
    (Q, E): SchedulerState._to_erred,
    (P, M): SchedulerState._to_memory,
    (P, E): SchedulerState._to_erred,
    (P, W): SchedulerState._back_to_waiting,
    (P, R): SchedulerState._to_released,
    (M, R): SchedulerState._to_released,
    (E, F): SchedulerState._to_forgotten,
}
