"""The scheduler core's watch on ready tasks that no current worker can run.

A mixin of SchedulerState (shoal.scheduler.state); it never does I/O. A task
that asks for resources no worker offers, or is restricted to workers that
are not there, would otherwise wait silently forever. Placement notes the
signature of such queued tasks (`placement.unrunnable`); this mixin dates it
at the next tick, tells the clients waiting on them once they have waited
`no_worker_warning` seconds (TasksStalled), and fails them with NoValidWorker
after `no_workers_timeout` seconds when that is set. A worker that could run
them joining in time ends the stall.
"""

from __future__ import annotations

from shoal.errors import NoValidWorker, type_name
from shoal.protocol import messages as m
from shoal.scheduler.core import CoreBase
from shoal.scheduler.model import ClientInfo, Status, TaskError, TaskState
from shoal.scheduler.placement import Signature

# Seconds a ready task waits for a worker able to run it before its clients hear of it.
NO_WORKER_WARNING_S = 10.0
# A TasksStalled names this many keys at most (and counts the rest).
MAX_NAMED_KEYS = 20
NO_VALID_WORKER = type_name(NoValidWorker)

Q, E = Status.QUEUED, Status.ERRED


class Stall:
    """Since when tasks of one signature have had no worker able to run them."""

    __slots__ = ("since", "warned")

    def __init__(self, since: float) -> None:
        self.since = since
        self.warned = False


class StalledTasks(CoreBase):
    """Stalled-task handling (see SchedulerState): a call in `tick`, a deadline."""

    def _watch_stalls(self, now: float) -> None:
        """Date new stalls, forget ended ones, warn and fail those that are due."""
        placement, stalls = self.placement, self.stalls
        for sig in placement.unrunnable:
            if sig not in stalls:
                stalls[sig] = Stall(now)
        for sig, stall in list(stalls.items()):
            if sig not in placement.unrunnable:
                del stalls[sig]  # a worker that can run them joined
            elif not placement.has_queued_with(sig):
                del stalls[sig]  # its tasks were released or cancelled
                del placement.unrunnable[sig]
            else:
                if not stall.warned and now >= stall.since + self.no_worker_warning:
                    stall.warned = True
                    self._warn_stalled(sig, now - stall.since)
                timeout = self.no_workers_timeout
                if timeout is not None and now >= stall.since + timeout:
                    del stalls[sig]
                    del placement.unrunnable[sig]
                    self._fail_stalled(sig, now - stall.since)

    def _warn_stalled(self, sig: Signature, waited: float) -> None:
        tasks = self.placement.queued_with(sig)
        resources, restrict = sig
        msg = m.TasksStalled(
            keys=tuple(ts.key for ts in tasks[:MAX_NAMED_KEYS]),
            count=len(tasks),
            resources=dict(resources),
            restrict=restrict,
            waited=waited,
            workers=len(self.placement.workers),
        )
        for client in clients_waiting_on(tasks):
            self._send(client.peer, msg)

    def _fail_stalled(self, sig: Signature, waited: float) -> None:
        resources, restrict = sig
        wants = describe_needs(dict(resources), restrict)
        for ts in self.placement.queued_with(sig):
            if ts.status is Q:  # failing one may have released another
                message = (
                    f"task {ts.key!r} waited {waited:.1f} s for a worker with {wants}, "
                    f"and none of the {len(self.placement.workers)} workers has it "
                    "(no_workers_timeout)"
                )
                self._move(ts, E, TaskError(NO_VALID_WORKER, message))

    def next_deadline(self) -> float | None:
        """The workers' deadlines (super()), and when a stall is next due."""
        deadlines = [d for d in (super().next_deadline(),) if d is not None]  # type: ignore[misc]
        if any(sig not in self.stalls for sig in self.placement.unrunnable):
            deadlines.append(self._now)  # a new stall, to be dated by a tick now
        for stall in self.stalls.values():
            if not stall.warned:
                deadlines.append(stall.since + self.no_worker_warning)
            if self.no_workers_timeout is not None:
                deadlines.append(stall.since + self.no_workers_timeout)
        return min(deadlines) if deadlines else None


def clients_waiting_on(tasks: list[TaskState]) -> list[ClientInfo]:
    """The clients that want any of `tasks`, or a task that depends on one, in the
    order found. Walks the dependents once, however many tasks share them."""
    found: dict[ClientInfo, None] = {}
    seen: set[TaskState] = set(tasks)
    stack = list(tasks)
    while stack:
        ts = stack.pop()
        for client in ts.wanted_by:
            found[client] = None
        for dependent in ts.dependents:
            if dependent not in seen:
                seen.add(dependent)
                stack.append(dependent)
    return list(found)


def describe_needs(resources: dict[str, float], restrict: tuple[str, ...]) -> str:
    """'GPU=1' or 'workers=gpu-0' or both, as a user wrote them."""
    parts = [",".join(f"{name}={amount:g}" for name, amount in resources.items())]
    if restrict:
        parts.append("workers=" + ",".join(restrict))
    return " and ".join(part for part in parts if part)
