"""The scheduler core's part in memory pressure: workers paused for memory.

A mixin of SchedulerState (shoal.scheduler.state); it never does I/O. A worker
whose memory crossed its pause threshold says `worker-paused`: placement skips
it (scheduler/placement.py), and the tasks it was given but had not started go
back to waiting, to be placed elsewhere. It keeps its values and serves them
to peers. When every worker is paused, the clients with work waiting are told
once (WorkersPaused), so that a graph never stalls in silence; `worker-resumed`
puts the worker back to work.
"""

from __future__ import annotations

from shoal.protocol import messages as m
from shoal.scheduler.core import CoreBase
from shoal.scheduler.model import ClientInfo, Status

W, Q, P = Status.WAITING, Status.QUEUED, Status.PROCESSING
_WAITING = (W, Q, P)


class MemoryPressure(CoreBase):
    """Handlers of worker-paused and worker-resumed (see SchedulerState)."""

    # Set once every worker is paused and the clients were told; cleared when
    # one resumes or joins.
    _all_paused_told: bool = False

    def _worker_paused(self, peer: str, msg: m.WorkerPaused) -> None:
        ws = self.workers[peer]
        ws.memory = msg.memory
        if ws.paused or ws.gone:
            return
        self.placement.pause(ws)
        running = set(msg.running)
        # Its notes of started tasks may still be on their way: what it runs now is
        # in the message. A started task not running any more has its report coming.
        back = [ts for ts in ws.processing if ts.key not in running and ts not in ws.started]
        for ts in back:
            self._move(ts, W)  # FreeKeys to the worker; placed elsewhere, or queued
        self._tell_if_all_paused()

    def _worker_resumed(self, peer: str, msg: m.WorkerResumed) -> None:
        ws = self.workers[peer]
        if msg.memory:
            ws.memory = msg.memory
        if not ws.paused:
            return
        self.placement.resume(ws)
        self._all_paused_told = False
        self._fill(ws)

    def _tell_if_all_paused(self) -> None:
        """Every worker is paused: tell each client with tasks waiting, once."""
        workers = list(self.placement.workers.values())
        if self._all_paused_told or not workers or not all(ws.paused for ws in workers):
            return
        self._all_paused_told = True
        memory = sum(ws.memory for ws in workers)
        limit = sum(ws.memory_limit for ws in workers)
        for client in self.clients.values():
            waiting = waiting_for(client)
            if waiting:
                msg = m.WorkersPaused(
                    workers=len(workers), waiting=waiting, memory=memory, limit=limit
                )
                self._send(client.peer, msg)


def waiting_for(client: ClientInfo) -> int:
    """How many of the tasks `client` wants are yet to run (waiting, queued, or
    assigned to a worker)."""
    return sum(1 for ts in client.wants if ts.status in _WAITING)
