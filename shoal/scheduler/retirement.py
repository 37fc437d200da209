"""The scheduler core's graceful retirement of workers: scale-down that loses nothing.

A mixin of SchedulerState (shoal.scheduler.state); it never does I/O. A worker
retires when it asks (RetireWorker: it got SIGTERM) or a client asks for it
(RetireWorkers: `shoal retire`). From then on it is out of placement and takes
no new task; the tasks it was given and had not started go back to be placed
elsewhere, those it runs finish there; every value it holds that no other
worker holds is copied to the emptiest remaining workers (AcquireKeys). When
nothing runs there and no value depends on it alone, it is told WorkerRetired
and leaves; its departure counts against no task. With no other worker to take
its values, it leaves at once. A retirement with a timeout ends at it anyway.
"""

from __future__ import annotations

import heapq

from shoal.protocol import messages as m
from shoal.scheduler.core import CoreBase
from shoal.scheduler.model import Disconnect, Status, TaskState, WorkerInfo

W = Status.WAITING


class Retirement:
    """One worker on its way out."""

    __slots__ = ("copies", "deadline", "done", "reason", "seen", "ws")

    def __init__(self, ws: WorkerInfo, reason: str, deadline: float | None) -> None:
        self.ws = ws
        self.reason = reason
        self.deadline = deadline  # when it is let go regardless; None: never
        # Values only it holds, each with the worker fetching a copy now.
        self.copies: dict[TaskState, WorkerInfo] = {}
        self.done = False  # WorkerRetired was sent: its WorkerLeaving is due
        # (values held, tasks processing, copy events) when last looked at: it is
        # looked at again only when one of these changed.
        self.seen: tuple[int, int, int] = (-1, -1, -1)


class RetireRequest:
    """One client's RetireWorkers, answered once every worker named has left."""

    __slots__ = ("client_peer", "pending", "request_id", "retired", "unknown")

    def __init__(self, client_peer: str, request_id: int, unknown: tuple[str, ...]) -> None:
        self.client_peer, self.request_id, self.unknown = client_peer, request_id, unknown
        self.pending: dict[WorkerInfo, None] = {}
        self.retired: list[str] = []


class Retirements(CoreBase):
    """Handlers and bookkeeping of graceful retirement (see SchedulerState)."""

    # -- requests ------------------------------------------------------------------

    def _retire_worker(self, peer: str, msg: m.RetireWorker) -> None:
        """A worker asks to retire (its process got SIGTERM)."""
        ws = self.workers[peer]
        self._audit("retire", conn=peer, workers=[ws.name[:100]], by="the worker itself",
                    reason=msg.reason[:1000], timeout=msg.timeout)  # fmt: skip
        self._start_retiring(ws, msg.reason or "it asked to", msg.timeout)

    def _retire_workers(self, peer: str, msg: m.RetireWorkers) -> None:
        """A client asks for workers, named or by data address, to retire."""
        by_name = {ws.name: ws for ws in self.workers.values()}
        chosen: dict[WorkerInfo, None] = {}
        unknown = []
        for name in msg.workers:
            ws = by_name.get(name) or self.by_address.get(name)
            if ws is None or (ws.gone and ws not in self.retiring):
                unknown.append(name)
            else:
                chosen[ws] = None
        request = RetireRequest(peer, msg.request_id, tuple(unknown))
        request.pending = chosen
        self.retire_requests.append(request)
        asker = f"asked by client {self.clients[peer].name or peer}"
        self._audit(
            "retire", conn=peer, workers=[ws.name[:100] for ws in chosen][:100],
            by=self.clients[peer].client_id, token=self._token_of(peer), unknown=len(unknown),
            timeout=msg.timeout,
        )  # fmt: skip
        for ws in chosen:
            self._start_retiring(ws, asker, msg.timeout)
        self._answer_retire_requests()

    def _start_retiring(self, ws: WorkerInfo, reason: str, timeout: float) -> None:
        if ws in self.retiring or ws.gone:
            return  # retiring already, or dying
        deadline = self._now + timeout if timeout > 0 else None
        self.retiring[ws] = Retirement(ws, reason, deadline)
        self.placement.remove_worker(ws)  # sets ws.gone: it takes no new task
        ws.retiring = True
        for ts in [ts for ts in ws.processing if ts not in ws.started]:
            self._move(ts, W)  # handed back: placed on another worker
        self._workers_changed()

    # -- progress ------------------------------------------------------------------

    def _advance_retirements(self) -> None:
        """Called as each stimulus ends: plan copies, and let go of finished workers."""
        for ret in list(self.retiring.values()):
            ws = ret.ws
            seen = (len(ws.has_what), len(ws.processing), self.retire_events)
            if ret.done or seen == ret.seen:
                continue
            ret.seen = seen
            if not self.placement.workers:
                self._let_go(ret, "no other worker can take its values")
            elif self._plan_copies(ret) == 0 and not ws.processing:
                self._let_go(ret, "its values are held elsewhere")

    def _plan_copies(self, ret: Retirement) -> int:
        """Copy the values only `ret.ws` holds to other workers; how many are still owed."""
        ws = ret.ws
        copies = ret.copies
        for ts in [ts for ts in copies if ts not in ws.has_what]:
            del copies[ts]  # let go of meanwhile, or lost
        need = []
        for ts in ws.has_what:
            if ts.value is not None or any(not w.gone for w in ts.who_has):
                copies.pop(ts, None)  # held here, or by a worker that stays
                continue
            target = copies.get(ts)
            if target is None or target.gone or self.workers.get(target.peer) is not target:
                need.append(ts)
        if need:
            self._send_copies(ret, need)
        return len(copies)

    def _send_copies(self, ret: Retirement, need: list[TaskState]) -> None:
        """Each value to the worker holding the fewest bytes, counting those sent now."""
        heap = [(w.nbytes, w.index, w) for w in self.placement.workers.values()]
        heapq.heapify(heap)
        orders: dict[WorkerInfo, list[TaskState]] = {}
        for ts in need:
            nbytes, index, target = heapq.heappop(heap)
            orders.setdefault(target, []).append(ts)
            ret.copies[ts] = target
            heapq.heappush(heap, (nbytes + ts.nbytes, index, target))
        address: tuple[str, ...] = (ret.ws.address,)
        for target, values in orders.items():
            who_has = {ts.key: address for ts in values}
            sizes = {ts.key: ts.nbytes for ts in values}
            self._send(target.peer, m.AcquireKeys(who_has=who_has, nbytes=sizes))

    def _let_go(self, ret: Retirement, why: str) -> None:
        ret.done = True
        # Its WorkerLeaving is owed now; without it by then, it is removed all the same.
        ret.deadline = self._now + self.heartbeat_timeout
        self._send(ret.ws.peer, m.WorkerRetired(reason=f"retired ({ret.reason}): {why}"))

    # -- endings ---------------------------------------------------------------------

    def _retirement_over(self, ws: WorkerInfo) -> None:
        """`ws` is being removed (it left, or died): forget its retirement."""
        if self.retiring.pop(ws, None) is None:
            return
        ws.retiring = False
        for request in self.retire_requests:
            if ws in request.pending:
                del request.pending[ws]
                request.retired.append(ws.name)
        self._answer_retire_requests()

    def _answer_retire_requests(self) -> None:
        for request in [r for r in self.retire_requests if not r.pending]:
            self.retire_requests.remove(request)
            if request.client_peer in self.clients:
                answer = m.WorkersRetired(
                    retired=tuple(request.retired),
                    unknown=request.unknown,
                    request_id=request.request_id,
                )
                self._send(request.client_peer, answer)

    def _expire_retirements(self, now: float) -> None:
        """A retirement past its deadline: told to go if it was not, removed if it was."""
        for ret in list(self.retiring.values()):
            if ret.deadline is None or now < ret.deadline:
                continue
            if ret.done:  # it never said WorkerLeaving: let its work move now
                self._out.append(Disconnect(ret.ws.peer, "retired, and it did not leave"))
                self._remove_worker(ret.ws)
            else:
                self._let_go(ret, "its retirement timed out")

    def _retirement_deadlines(self) -> list[float]:
        return [r.deadline for r in self.retiring.values() if r.deadline is not None]
