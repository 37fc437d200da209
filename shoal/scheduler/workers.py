"""The scheduler core's workers and their nannies: joining, heartbeats, leaving, dying.

A mixin of SchedulerState (shoal.scheduler.state), split out to keep each
module readable; it uses the core's transitions and never does I/O. A worker
that goes without saying `worker-leaving` has died, and its death counts
against the tasks it had started (KilledWorker). A nanny keeps a connection
open while it supervises its worker: while it does, a dead worker's work waits
briefly for the nanny's report of the cause; once it is gone too, nothing waits.
"""

from __future__ import annotations

from shoal.errors import KilledWorker, type_name
from shoal.protocol import messages as m
from shoal.scheduler.memory import MemoryPressure
from shoal.scheduler.model import (
    ACTIVE,
    Disconnect,
    NannyInfo,
    Status,
    TaskError,
    TaskState,
    WorkerInfo,
    without_member,
)
from shoal.scheduler.retirement import Retirements

W, E = Status.WAITING, Status.ERRED


class WorkerEvents(Retirements, MemoryPressure):
    """Handlers of worker membership and liveness (see SchedulerState); leaving
    gracefully is retirement.py's, pausing for memory memory.py's."""

    def _register_worker(self, peer: str, msg: m.RegisterWorker) -> None:
        reason = self._registration_problem(msg)
        if reason is not None:
            # The connection stays open so that the refusal is delivered; an
            # unregistered peer can do nothing else on it.
            self._send(peer, m.RegistrationRefused(reason=reason))
            self._audit("worker-refused", conn=peer, name=msg.name[:100], reason=reason)
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
        ws.nanny_id, ws.http_address = msg.nanny_id, msg.http_address
        ws.nanny_id = msg.nanny_id
        ws.devices, ws.device_memory_limit = msg.devices, msg.device_memory_limit
        self.workers[peer] = ws
        self.by_address[ws.address] = ws
        self.placement.add_worker(ws)
        self.retire_events += 1  # somewhere for a retiring worker's values
        self._send(peer, m.WorkerRegistered(name=ws.name))
        self._audit(
            "worker-joined",
            conn=peer,
            name=ws.name[:100],
            address=ws.address[:200],
            token=self._token_of(peer),
            nthreads=ws.nthreads,
            nanny=ws.nanny,
            resources={name[:60]: amount for name, amount in list(ws.resources.items())[:20]},
        )
        self.tally.workers_joined += 1
        self.tally.event(self._now, "worker-joined", worker=ws.name, address=ws.address)
        self._workers_changed()
        self._fill(ws)

    def _registration_problem(self, msg: m.RegisterWorker) -> str | None:
        """Why a worker may not join, checked in this order; None when it may."""
        if msg.name in self.placement.workers:
            return f"a worker named {msg.name!r} is already registered"
        if msg.nthreads < 1:
            return f"nthreads must be at least 1, not {msg.nthreads}"
        if self.require_tls and not msg.address.startswith(("tls://", "inproc://")):
            return f"this cluster requires TLS, and the data address {msg.address[:200]!r} is plain"
        holder = self.by_address.get(msg.address)
        # A dying worker's successor may take its address: the dying one serves nothing.
        if holder is not None and holder not in self.dying:
            return f"worker {holder.name!r} already serves data at {msg.address!r}"
        return None

    def _workers_changed(self) -> None:
        msg = m.WorkersChanged(workers=len(self.placement.workers))
        for client in self.clients.values():
            self._send(client.peer, msg)

    def _worker_leaving(self, peer: str, msg: m.WorkerLeaving) -> None:
        self._remove_worker(self.workers[peer])

    def _heartbeat(self, peer: str, msg: m.Heartbeat) -> None:
        ws = self.workers[peer]
        ws.cpu, ws.memory, ws.executing = msg.cpu, msg.memory, msg.executing
        ws.managed, ws.spilled, ws.unspillable = msg.managed, msg.spilled, msg.unspillable
        ws.device_figures = msg.devices

    def _tasks_started(self, peer: str, msg: m.TasksStarted) -> None:
        """A worker's threads started these tasks: its death would count against them."""
        ws = self.workers[peer]
        tasks = self.tasks
        for key in msg.keys:
            ts = tasks.get(key)
            # Not one of its tasks any more: the note crossed a FreeKeys.
            if ts is not None and ts.processing_on is ws:
                ws.started[ts] = None

    def _task_seceded(self, peer: str, msg: m.TaskSeceded) -> None:
        """A task's thread gave its slot back while it waits on tasks it submitted:
        its worker has room for one more."""
        ws = self.workers[peer]
        ts = self.tasks.get(msg.key)
        if ts is None or ts.processing_on is not ws or ts in ws.seceded:
            return  # freed meanwhile, or said again
        ws.started[ts] = None  # it runs, certainly
        ws.seceded[ts] = None
        self.placement.touch(ws)
        self._fill(ws)

    def _worker_lost(self, ws: WorkerInfo) -> None:
        """A worker's connection ended without `worker-leaving`: it died (unless it
        was told to leave at the end of its retirement)."""
        retirement = self.retiring.get(ws)
        if retirement is not None and retirement.done:
            self._remove_worker(ws)
            return
        self._retirement_over(ws)
        if ws.nanny_id and ws.nanny_id in self.nanny_ids:
            # Its nanny is about to say why; its work waits for that.
            self.dying[ws] = self._now + self.death_report_wait
            if not ws.gone:  # a retiring worker is out of placement already
                self.placement.remove_worker(ws)
            self._workers_changed()
        elif ws.nanny_id:  # the whole node went, or at least its nanny did: no report comes
            self._remove_worker(ws, NODE_LOST)
        else:
            self._remove_worker(ws, "its connection was lost")

    # -- nannies -------------------------------------------------------------------

    def _register_nanny(self, peer: str, msg: m.RegisterNanny) -> None:
        if not msg.nanny_id or msg.nanny_id in self.nanny_ids:
            reason = (
                f"a nanny with id {msg.nanny_id!r} is registered already"
                if msg.nanny_id
                else "a nanny needs an id"
            )
            self._out.append(Disconnect(peer, reason))
            return
        nanny = NannyInfo(peer, msg.nanny_id, msg.name, self._now)
        self.nannies[peer] = nanny
        self.nanny_ids[nanny.nanny_id] = nanny

    def _nanny_heartbeat(self, peer: str, msg: m.Heartbeat) -> None:
        self.nannies[peer].last_seen = self._now

    def _nanny_lost(self, nanny: NannyInfo) -> None:
        """A nanny's connection ended: a dead worker it supervised is removed at once."""
        del self.nannies[nanny.peer]
        del self.nanny_ids[nanny.nanny_id]
        for ws in [ws for ws in self.dying if ws.nanny_id == nanny.nanny_id]:
            self._remove_worker(ws, NODE_LOST)

    def _worker_died(self, peer: str, msg: m.WorkerDied) -> None:
        """A nanny's report: its worker died (or it killed it), and why. A nanny may
        report only the worker that registered with its id."""
        nanny = self.nannies[peer]
        nanny.last_seen = self._now
        named = [
            ws
            for ws in self.workers.values()
            if ws.name == msg.name and (not msg.address or ws.address == msg.address)
        ]
        if not named:
            return  # removed already (a heartbeat timeout, say), or never registered
        own = [ws for ws in named if ws.nanny_id == nanny.nanny_id]
        if not own:
            self._out.append(
                Disconnect(peer, f"nanny of {nanny.name!r} reported another worker, {msg.name!r}")
            )
            self._nanny_lost(nanny)
            return
        ws = next((ws for ws in own if ws in self.dying), own[0])
        if ws not in self.dying:  # the report overtook the connection's end
            self._out.append(Disconnect(ws.peer, f"worker {ws.name} died: {msg.cause}"))
        self._remove_worker(ws, msg.cause, reported=True)

    def _remove_worker(
        self, ws: WorkerInfo, cause: str | None = None, *, reported: bool = False
    ) -> None:
        """Move a departed worker's work elsewhere; recompute values only it held.

        `cause` says how it died; None when it left on purpose. A death counts
        against each task it had started, which fails with KilledWorker once
        `allowed_failures` workers died under it (see _count_death; `reported`:
        the cause is its nanny's report).
        """
        if cause is None:
            self._audit("worker-left", conn=ws.peer, name=ws.name[:100])
        else:
            self._audit("worker-died", conn=ws.peer, name=ws.name[:100], cause=cause[:1000])
        del self.workers[ws.peer]
        self.dying.pop(ws, None)
        if cause is None:
            self.tally.workers_left += 1
            self.tally.event(self._now, "worker-left", worker=ws.name, address=ws.address)
        else:
            self.tally.workers_died += 1
            self.tally.event(
                self._now, "worker-died", worker=ws.name, address=ws.address, cause=cause
            )
        self._retirement_over(ws)
        self.retire_events += 1  # it may have been fetching a retiring worker's values
        if self.by_address.get(ws.address) is ws:
            del self.by_address[ws.address]
            # Rare: a dying worker's successor took its address and left first.
            for other in self.workers.values():
                if other.address == ws.address:
                    self.by_address[ws.address] = other
        if not ws.gone:
            self.placement.remove_worker(ws)
        self._free.pop(ws, None)
        killed = self._count_death(ws, cause, reported) if cause is not None else []
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

    def _count_death(self, ws: WorkerInfo, cause: str, reported: bool) -> list[TaskState]:
        """Count `ws`'s death against the tasks it had started; those that reached
        `allowed_failures` deaths.

        Tasks assigned to it and not started are not to blame: they only go back
        to waiting. One exception: a task that brings its process down within
        milliseconds of starting can do so before the worker's note leaves. So
        when its nanny reports that the process itself died and no task is known
        to have started there, the death counts against every task it was given.
        """
        suspects = ws.started if ws.started or not reported else ws.processing
        killed = []
        for ts in suspects:
            if ts.deaths is None:
                ts.deaths = []
            ts.deaths.append((ws.name, cause))
            if len(ts.deaths) >= self.allowed_failures:
                killed.append(ts)
        return killed

    def _expire(self, now: float) -> None:
        """Remove dying workers whose report is overdue, and silent workers and nannies;
        end retirements past their deadline."""
        self._expire_retirements(now)
        for ws, deadline in list(self.dying.items()):
            if now >= deadline:
                self._remove_worker(ws, "its connection was lost and its nanny sent no report")
        silent = now - self.heartbeat_timeout
        for nanny in [n for n in self.nannies.values() if n.last_seen < silent]:
            reason = (
                f"nanny of {nanny.name!r}: it sent no heartbeat for {now - nanny.last_seen:.1f} s"
            )
            self._out.append(Disconnect(nanny.peer, reason))
            self._nanny_lost(nanny)
        alive = [ws for ws in self.workers.values() if not ws.gone or ws.retiring]
        for ws in [ws for ws in alive if ws.last_seen < silent]:
            cause = f"it sent no heartbeat for {now - ws.last_seen:.1f} s"
            self._out.append(Disconnect(ws.peer, f"worker {ws.name}: {cause}"))
            self._remove_worker(ws, cause)

    def next_deadline(self) -> float | None:
        """When `tick` next has something to do; None: nothing until a message comes."""
        deadlines = [*self.dying.values(), *self._retirement_deadlines()]
        seen = [ws.last_seen for ws in self.workers.values() if not ws.gone or ws.retiring]
        seen.extend(nanny.last_seen for nanny in self.nannies.values())
        if seen:
            deadlines.append(min(seen) + self.heartbeat_timeout)
        return min(deadlines) if deadlines else None


# The cause of death of a worker whose nanny's connection ended too (or before).
NODE_LOST = "its connection was lost, and so was its nanny's"


def killed_worker_error(key: object, deaths: list[tuple[str, str]]) -> TaskError:
    """The error of a task that was processing on workers that all died."""
    named = "; ".join(f"{name!r} ({cause})" for name, cause in deaths)
    message = f"task {key!r} was processing on {len(deaths)} workers that died: {named}"
    return TaskError(type_name(KilledWorker), message)
