"""The scheduler core's bookkeeping of copies: missing data, replication, scatter.

A mixin of SchedulerState (shoal.scheduler.state), split out to keep each
module readable; it uses the core's transitions and never does I/O.
"""

from __future__ import annotations

from shoal.errors import DataLost, type_name
from shoal.protocol import messages as m
from shoal.scheduler.core import CoreBase
from shoal.scheduler.model import (
    ClientInfo,
    Status,
    TaskError,
    TaskState,
    WorkerInfo,
    with_member,
    without_member,
)

M, R, E, W = Status.MEMORY, Status.RELEASED, Status.ERRED, Status.WAITING
DATA_LOST = type_name(DataLost)


class Replication:
    """One Replicate request: the (key, worker) copies still to be confirmed."""

    __slots__ = ("client", "keys", "pending", "request_id")

    def __init__(self, client: ClientInfo, request_id: int, keys: tuple[object, ...]) -> None:
        self.client, self.request_id, self.keys = client, request_id, keys
        self.pending: dict[tuple[object, WorkerInfo], None] = {}


class DataRequests(CoreBase):
    """Handlers of messages about where values are (see SchedulerState)."""

    # -- from workers -----------------------------------------------------------

    def _data_missing(self, peer: str, msg: m.DataMissing) -> None:
        """A worker could not get `msg.key` from any worker in `msg.tried`."""
        ws = self.workers[peer]
        self.retire_events += 1  # a retiring worker's copy may have failed
        ts = self.tasks.get(msg.key)
        if ts is not None and ts.status is M:
            # The sender lacks it too, whatever we thought: no compute-task leaves
            # it out of who_has again.
            for holder in [ws, *filter(None, map(self.by_address.get, msg.tried))]:
                if holder in ts.who_has:
                    self._remove_replica(ts, holder)
            if not ts.who_has and ts.value is None:
                self._data_lost(ts)
        self._copy_settled(msg.key, ws)
        for key in msg.tasks:
            task = self.tasks.get(key)
            if task is not None and task.processing_on is ws:
                self._move(task, W)  # placed again, with the holders that are left

    def _keys_acquired(self, peer: str, msg: m.KeysAcquired) -> None:
        ws = self.workers[peer]
        self.retire_events += 1  # a retiring worker's copy may be made
        for key in msg.keys:
            ts = self.tasks.get(key)
            if ts is not None and ts.status is M:
                if ws not in ts.who_has:
                    self._add_replica(ts, ws)
            else:
                self._free.setdefault(ws, []).append(key)  # released meanwhile
            self._copy_settled(key, ws)

    def _data_lost(self, ts: TaskState) -> None:
        """The only copy of a value is gone: send back whoever needed it."""
        self._move(ts, R)
        for dependent in ts.dependents:
            if dependent.status is W:
                dependent.waiting_on += 1
            elif dependent.status in (Status.QUEUED, Status.PROCESSING):
                self._move(dependent, W)
        if ts.needed:
            self._recompute([ts])
        else:
            self._maybe_forget(ts)

    def _data_fetched(self, peer: str, msg: m.DataFetched) -> None:
        self.placement.observe_transfer(msg.nbytes, msg.duration)
        self.tally.fetched(msg.nbytes, msg.duration)

    def _remove_replica(self, ts: TaskState, ws: WorkerInfo) -> None:
        ts.who_has = without_member(ts.who_has, ws)
        del ws.has_what[ts]
        if not ws.has_what:  # a dict keeps its largest size until replaced
            ws.has_what = {}
        ws.nbytes -= ts.nbytes
        if not ws.gone or ws.retiring:
            self._free.setdefault(ws, []).append(ts.key)

    # -- from clients -----------------------------------------------------------

    def _replicate(self, peer: str, msg: m.Replicate) -> None:
        """Bring each key to `msg.n` copies: the emptiest workers fetch more, the
        fullest drop extra ones."""
        client = self.clients[peer]
        request = Replication(client, msg.request_id, msg.keys)
        workers = list(self.placement.workers.values())
        n = len(workers) if msg.n <= 0 else min(msg.n, len(workers))
        orders: dict[WorkerInfo, dict[object, TaskState]] = {}
        for key in msg.keys:
            ts = self.tasks.get(key)
            if ts is None or ts.status is not M:
                continue
            # Copies on dying workers (awaiting a nanny's report) do not count.
            live = [w for w in ts.who_has if not w.gone]
            missing = n - len(live)
            if missing < 0:
                fullest = sorted(live, key=lambda w: (-w.nbytes, -w.index))
                for ws in fullest[:-missing]:
                    self._remove_replica(ts, ws)
                continue
            others = [w for w in workers if w not in ts.who_has]
            for ws in sorted(others, key=lambda w: (w.nbytes, w.index))[:missing]:
                orders.setdefault(ws, {})[key] = ts
                request.pending[(key, ws)] = None
        for ws, tasks in orders.items():
            who_has = {k: tuple(w.address for w in ts.who_has) for k, ts in tasks.items()}
            nbytes = {k: ts.nbytes for k, ts in tasks.items()}
            self._send(ws.peer, m.AcquireKeys(who_has=who_has, nbytes=nbytes))
        if request.pending:
            for copy in request.pending:
                self.replications.setdefault(copy, []).append(request)
        else:
            self._replicated(request)

    def _copy_settled(self, key: object, ws: WorkerInfo) -> None:
        """A copy of `key` on `ws` was made, or will not be: settle the requests for it."""
        for request in self.replications.pop((key, ws), ()):
            del request.pending[(key, ws)]
            if not request.pending:
                self._replicated(request)

    def _replicated(self, request: Replication) -> None:
        if request.client.peer not in self.clients:
            return
        copies = {}
        for key in request.keys:
            ts = self.tasks.get(key)
            copies[key] = len(ts.who_has) if ts is not None and ts.status is M else 0
        self._send(request.client.peer, m.Replicated(copies=copies, request_id=request.request_id))

    def _add_data(self, peer: str, msg: m.AddData) -> None:
        """A client put values on workers itself: hold them as scattered data."""
        client = self.clients[peer]
        for key, addresses in msg.who_has.items():
            ts = self.tasks.get(key)
            if ts is None:
                ts = self.tasks[key] = TaskState(key, None, None, next(self._order))
                ts.group = self.tally.group_of(key)
            if client not in ts.wanted_by:
                ts.wanted_by = with_member(ts.wanted_by, client)
                client.wants[ts] = None
            holders = [w for a in addresses if (w := self.by_address.get(a)) is not None]
            if ts.status is R and holders:
                self._move(ts, M, holders, msg.nbytes.get(key, 0), msg.typenames.get(key, ""))
            elif ts.status is M:
                for ws in holders:
                    if ws not in ts.who_has:
                        self._add_replica(ts, ws)
                self._report_memory(ts, (client,))
            elif ts.status is E:
                self._report_error(ts, (client,))
            elif ts.status is R:  # every worker it was put on is gone already
                self._recompute([ts])
            else:  # a task of this key is under way: the copies are not needed
                for ws in holders:
                    if ws is not ts.processing_on:
                        self._free.setdefault(ws, []).append(key)

    def _scattered(
        self, ts: TaskState, holders: list[WorkerInfo], nbytes: int, typename: str
    ) -> None:
        """released -> memory: values a client put on workers."""
        ts.status = M
        ts.nbytes, ts.typename = nbytes, typename
        for ws in holders:
            self._add_replica(ts, ws)
        self._in_memory_now(ts)

    def _lost_for_good(self, ts: TaskState) -> None:
        """A needed value that has no lineage (it was scattered) is gone."""
        message = (
            f"the value of {ts.key!r} was lost with the workers holding it, and it cannot "
            "be recomputed: it was put there with scatter, not computed"
        )
        self._move(ts, E, TaskError(DATA_LOST, message))
