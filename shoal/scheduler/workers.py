"""The scheduler core's workers: joining, heartbeats, leaving and dying.

A mixin of SchedulerState (shoal.scheduler.state), split out to keep each
module readable; it uses the core's transitions and never does I/O. A worker
that goes without saying `worker-leaving` has died, and its death counts
against the tasks it was processing (KilledWorker).
"""

from __future__ import annotations

from shoal.errors import KilledWorker, type_name
from shoal.protocol import messages as m
from shoal.scheduler.core import CoreBase
from shoal.scheduler.model import (
    ACTIVE,
    Disconnect,
    Status,
    TaskError,
    TaskState,
    WorkerInfo,
    without_member,
)

W, E = Status.WAITING, Status.ERRED


class WorkerEvents(CoreBase):
    """Handlers of worker membership and liveness (see SchedulerState)."""

    def _register_worker(self, peer: str, msg: m.RegisterWorker) -> None:
        reason = self._registration_problem(msg)
        if reason is not None:
            # The connection stays open so that the refusal is delivered; an
            # unregistered peer can do nothing else on it.
            self._send(peer, m.RegistrationRefused(reason=reason))
            return
        ws = WorkerInfo(
            peer,
            msg.name,
            msg.address,
            msg.nthreads,
            msg.memory_limit,
            msg.resources,
            next(self._worker_index),
        )
        ws.pid, ws.host, ws.nanny, ws.last_seen = msg.pid, msg.host, msg.nanny, self._now
        self.workers[peer] = ws
        self.by_address[ws.address] = ws
        self.placement.add_worker(ws)
        self._send(peer, m.WorkerRegistered(name=ws.name))
        self._workers_changed()
        self._fill(ws)

    def _registration_problem(self, msg: m.RegisterWorker) -> str | None:
        """Why a worker may not join, checked in this order; None when it may."""
        if msg.name in self.placement.workers:
            return f"a worker named {msg.name!r} is already registered"
        if msg.nthreads < 1:
            return f"nthreads must be at least 1, not {msg.nthreads}"
        holder = self.by_address.get(msg.address)
        # A dying worker's successor may take its address: the dying one serves nothing.
        if holder is not None and holder not in self.dying:
            return f"worker {holder.name!r} already serves data at {msg.address!r}"
        return None

    def _worker_leaving(self, peer: str, msg: m.WorkerLeaving) -> None:
        self._remove_worker(self.workers[peer])

    def _heartbeat(self, peer: str, msg: m.Heartbeat) -> None:
        ws = self.workers[peer]
        ws.cpu, ws.memory, ws.executing = msg.cpu, msg.memory, msg.executing

    def _worker_died(self, peer: str, msg: m.WorkerDied) -> None:
        """A nanny's report: its worker died (or it killed it), and why. The nanny
        closes its connection once it has sent it."""
        named = [
            ws
            for ws in self.workers.values()
            if ws.name == msg.name and (not msg.address or ws.address == msg.address)
        ]
        if not named:
            return  # removed already (a heartbeat timeout, say), or never registered
        ws = next((ws for ws in named if ws in self.dying), named[0])
        if ws not in self.dying:  # the report overtook the connection's end
            self._out.append(Disconnect(ws.peer, f"worker {ws.name} died: {msg.cause}"))
        self._remove_worker(ws, msg.cause)

    def _remove_worker(self, ws: WorkerInfo, cause: str | None = None) -> None:
        """Move a departed worker's work elsewhere; recompute values only it held.

        `cause` says how it died; None when it left on purpose. A death counts
        against each task it was processing, which fails with KilledWorker once
        `allowed_failures` workers died under it.
        """
        del self.workers[ws.peer]
        self.dying.pop(ws, None)
        if self.by_address.get(ws.address) is ws:
            del self.by_address[ws.address]
            # Rare: a dying worker's successor took its address and left first.
            for other in self.workers.values():
                if other.address == ws.address:
                    self.by_address[ws.address] = other
        if not ws.gone:
            self.placement.remove_worker(ws)
        self._free.pop(ws, None)
        killed = self._count_death(ws, cause) if cause is not None else []
        lost = []
        for ts in ws.has_what:
            ts.who_has = without_member(ts.who_has, ws)
            if not ts.who_has and ts.value is None:
                lost.append(ts)
        ws.has_what = {}
        # Values first: a task moved off this worker must not be re-sent to fetch them here.
        for ts in lost:
            # Bringing back an earlier one can make a dependent err and let this one go.
            if ts.status is Status.MEMORY:
                self._data_lost(ts)
        for ts in killed:
            if ts.status in ACTIVE:
                assert ts.deaths is not None
                self._move(ts, E, killed_worker_error(ts.key, ts.deaths))
        for ts in list(ws.processing):
            self._move(ts, W)
        for key, holder in [copy for copy in self.replications if copy[1] is ws]:
            self._copy_settled(key, holder)
        self._workers_changed()

    def _count_death(self, ws: WorkerInfo, cause: str) -> list[TaskState]:
        """Count `ws`'s death against the tasks it was processing; those that reached
        `allowed_failures` deaths."""
        killed = []
        for ts in ws.processing:
            if ts.deaths is None:
                ts.deaths = []
            ts.deaths.append((ws.name, cause))
            if len(ts.deaths) >= self.allowed_failures:
                killed.append(ts)
        return killed

    def _expire(self, now: float) -> None:
        """Remove dying workers whose report is overdue, and silent workers."""
        for ws, deadline in list(self.dying.items()):
            if now >= deadline:
                self._remove_worker(ws, "its connection was lost and its nanny sent no report")
        silent = now - self.heartbeat_timeout
        for ws in [ws for ws in self.workers.values() if not ws.gone and ws.last_seen < silent]:
            cause = f"it sent no heartbeat for {now - ws.last_seen:.1f} s"
            self._out.append(Disconnect(ws.peer, f"worker {ws.name}: {cause}"))
            self._remove_worker(ws, cause)

    def next_deadline(self) -> float | None:
        """When `tick` next has something to do; None: nothing until a message comes."""
        deadlines = list(self.dying.values())
        seen = [ws.last_seen for ws in self.workers.values() if not ws.gone]
        if seen:
            deadlines.append(min(seen) + self.heartbeat_timeout)
        return min(deadlines) if deadlines else None


def killed_worker_error(key: object, deaths: list[tuple[str, str]]) -> TaskError:
    """The error of a task that was processing on workers that all died."""
    named = "; ".join(f"{name!r} ({cause})" for name, cause in deaths)
    message = f"task {key!r} was processing on {len(deaths)} workers that died: {named}"
    return TaskError(type_name(KilledWorker), message)
