"""Which worker runs which task: worker load, the ready queues, in-flight depth.

Pure and synchronous like the rest of the core. Ready tasks wait in priority
heaps until a worker has a free slot; workers are found through a heap of
their loads, so choosing one is O(log workers) for unconstrained tasks.
"""

from __future__ import annotations

import heapq
import itertools

from shoal.scheduler.model import Status, TaskState, WorkerInfo

# A signature groups tasks with the same needs: (sorted resources, restriction).
Signature = tuple[tuple[tuple[str, float], ...], tuple[str, ...]]


def signature_of(ts: TaskState) -> Signature:
    resources = tuple(sorted(ts.resources.items())) if ts.resources else ()
    return resources, ts.restrict or ()


def can_run(ws: WorkerInfo, sig: Signature) -> bool:
    """Whether `ws` could ever run tasks of this signature."""
    resources, restrict = sig
    if restrict and ws.name not in restrict and ws.address not in restrict:
        return False
    return all(ws.resources.get(name, 0.0) >= amount for name, amount in resources)


def has_room(ws: WorkerInfo, sig: Signature) -> bool:
    """Whether the resources of this signature are free on `ws` right now."""
    return all(ws.free.get(name, 0.0) >= amount for name, amount in sig[0])


class Placement:
    """Worker loads and ready queues.

    Each worker may have up to `nthreads * depth` tasks assigned. `depth` adapts
    to how long tasks take: with tasks much shorter than a round trip to the
    worker, several per thread are in flight so that no thread waits for the
    scheduler; with long tasks, one per thread, so that work is not promised
    to a busy worker while another is idle.
    """

    def __init__(self, initial_depth: int, max_depth: int, round_trip_s: float) -> None:
        self.workers: dict[str, WorkerInfo] = {}  # by name, in joining order
        self.depth = initial_depth
        self.max_depth = max_depth
        self.round_trip_s = round_trip_s
        self.mean_duration: float | None = None
        self._loads: list[tuple[float, int, int, WorkerInfo]] = []
        self._queue: list[tuple[tuple[int, int], int, TaskState]] = []
        self._constrained: dict[Signature, list[tuple[tuple[int, int], int, TaskState]]] = {}
        self._pushes = itertools.count()

    # -- workers ---------------------------------------------------------------

    def add_worker(self, ws: WorkerInfo) -> None:
        self.workers[ws.name] = ws
        self.touch(ws)

    def remove_worker(self, ws: WorkerInfo) -> None:
        ws.gone = True
        del self.workers[ws.name]

    def has_capacity(self, ws: WorkerInfo) -> bool:
        return len(ws.processing) < ws.nthreads * self.depth

    def touch(self, ws: WorkerInfo) -> None:
        """Record that `ws`'s load changed."""
        ws.version += 1
        heapq.heappush(self._loads, (len(ws.processing) / ws.nthreads, ws.index, ws.version, ws))
        if len(self._loads) > 2 * len(self.workers) + 64:
            self._loads = [
                (len(w.processing) / w.nthreads, w.index, w.version, w)
                for w in self.workers.values()
            ]
            heapq.heapify(self._loads)

    def pick(self, ts: TaskState) -> WorkerInfo | None:
        """The least loaded worker that may run `ts` now, or None."""
        if ts.resources or ts.restrict:
            return self._pick_constrained(signature_of(ts))
        loads = self._loads
        while loads:
            load, _, version, ws = loads[0]
            if ws.gone or version != ws.version:
                heapq.heappop(loads)
                continue
            return ws if load < self.depth else None
        return None

    def _pick_constrained(self, sig: Signature) -> WorkerInfo | None:
        best: WorkerInfo | None = None
        best_rank = (0.0, 0)
        for ws in self.workers.values():
            if not (self.has_capacity(ws) and can_run(ws, sig) and has_room(ws, sig)):
                continue
            rank = (len(ws.processing) / ws.nthreads, ws.index)
            if best is None or rank < best_rank:
                best, best_rank = ws, rank
        return best

    def idle_workers(self) -> list[WorkerInfo]:
        return [ws for ws in self.workers.values() if self.has_capacity(ws)]

    # -- ready queues ----------------------------------------------------------

    def enqueue(self, ts: TaskState) -> None:
        entry = (ts.priority, next(self._pushes), ts)
        if ts.resources or ts.restrict:
            heapq.heappush(self._constrained.setdefault(signature_of(ts), []), entry)
        else:
            heapq.heappush(self._queue, entry)

    def next_for(self, ws: WorkerInfo) -> TaskState | None:
        """Take the highest-priority queued task that `ws` can run now, or None."""
        best_heap = _top(self._queue) and self._queue
        for sig, heap in list(self._constrained.items()):
            if not _top(heap):
                del self._constrained[sig]
                continue
            if not (can_run(ws, sig) and has_room(ws, sig)):
                continue
            if not best_heap or heap[0][0] < best_heap[0][0]:
                best_heap = heap
        if not best_heap:
            return None
        return heapq.heappop(best_heap)[2]

    def observe(self, duration: float) -> bool:
        """Learn from one task's run time; True when the depth grew."""
        mean = self.mean_duration
        mean = duration if mean is None else mean + 0.05 * (duration - mean)
        self.mean_duration = mean
        depth = 1 + int(self.round_trip_s / max(mean, 1e-9))
        depth = max(1, min(self.max_depth, depth))
        grew = depth > self.depth
        self.depth = depth
        return grew


def _top(heap: list[tuple[tuple[int, int], int, TaskState]]) -> bool:
    """Drop stale entries (tasks no longer queued); whether any entry is left."""
    while heap:
        if heap[0][2].status is Status.QUEUED:
            return True
        heapq.heappop(heap)
    return False
