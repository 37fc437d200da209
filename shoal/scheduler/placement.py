"""Which worker runs which task: worker load, data locality, the ready queues, depth.

Pure and synchronous like the rest of the core. Ready tasks wait in ready
queues (queues.py) until a worker has a free slot; workers are found through
a heap of their loads, so choosing one is O(log workers) for unconstrained
tasks. A task whose inputs are held by workers (rather than travelling with
it) also considers those holders, weighing the bytes it would have to fetch
against their load.
"""

from __future__ import annotations

import heapq
import math

from shoal.scheduler.model import TaskState, WorkerInfo
from shoal.scheduler.queues import ReadyQueue

# A signature groups tasks with the same needs: (sorted resources, restriction).
Signature = tuple[tuple[tuple[str, float], ...], tuple[str, ...]]

# Assumed worker-to-worker bandwidth until fetches have been measured, bytes/s.
DEFAULT_BANDWIDTH = 100e6
# The mean run time starts from a prior worth this many observations; after a
# few, each new one moves it by this fraction.
PRIOR_WEIGHT = 4
MIN_WEIGHT = 0.05
WARM_UP = round(1 / MIN_WEIGHT) - PRIOR_WEIGHT  # observations until then
# The depth moves only once its target is this fraction past the edge of the
# current depth's band, so that a mean near an edge does not make it flap.
HYSTERESIS = 0.1


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

    The mean run time starts from the prior that puts `initial_depth` in the
    middle of its band, and the depth moves by one step per observed task at
    most, and grows by one step per round trip at most (see `observe`): a
    first short task does not send a flood of work.
    """

    def __init__(
        self,
        initial_depth: int,
        max_depth: int,
        round_trip_s: float,
        bandwidth: float = DEFAULT_BANDWIDTH,
    ) -> None:
        self.workers: dict[str, WorkerInfo] = {}  # by name, in joining order
        self.depth = max(1, min(initial_depth, max_depth))
        self.max_depth = max_depth
        self.round_trip_s = round_trip_s
        # Depth d is right for 1 + round_trip / mean in [d, d + 1): start in the middle.
        self.mean_duration = round_trip_s / (self.depth - 0.5)
        self.observed = 0  # run times seen
        self.grown_at = float("-inf")  # when the depth last grew
        # By depth, the mean run time at or below which it grows and above which
        # it shrinks: 1 + round_trip / mean >= (depth + 1) * (1 + HYSTERESIS)
        # and < depth * (1 - HYSTERESIS), solved for the mean.
        self._grow_at = [
            round_trip_s / ((d + 1) * (1 + HYSTERESIS) - 1) if d < max_depth else -1.0
            for d in range(max_depth + 1)
        ]
        self._shrink_above = [
            round_trip_s / (d * (1 - HYSTERESIS) - 1) if d * (1 - HYSTERESIS) > 1 else math.inf
            for d in range(max_depth + 1)
        ]
        self.bandwidth = bandwidth
        self._loads: list[tuple[float, int, int, WorkerInfo]] = []
        self._touched: dict[WorkerInfo, None] = {}  # loads changed since the heap was read
        self._queue = ReadyQueue()
        self._constrained: dict[Signature, ReadyQueue] = {}
        # Queued tasks whose inputs mostly sit on one worker, by that worker.
        self._affinity: dict[WorkerInfo, ReadyQueue] = {}
        # Signatures of queued tasks that no current worker could ever run (see
        # scheduler/stalls.py), and whether any worker can, cached until one joins
        # or leaves.
        self.unrunnable: dict[Signature, None] = {}
        self._runnable: dict[Signature, bool] = {}

    # -- workers ---------------------------------------------------------------

    def add_worker(self, ws: WorkerInfo) -> None:
        self.workers[ws.name] = ws
        self.touch(ws)
        self._runnable.clear()
        for sig in [sig for sig in self.unrunnable if can_run(ws, sig)]:
            del self.unrunnable[sig]

    def remove_worker(self, ws: WorkerInfo) -> None:
        ws.gone = True
        del self.workers[ws.name]
        self._affinity.pop(ws, None)
        self._touched.pop(ws, None)
        self._runnable.clear()
        # Tasks queued for room on this worker may now have nowhere to go.
        for sig, queue in self._constrained.items():
            if sig not in self.unrunnable and can_run(ws, sig) and queue.first() is not None:
                if not self._any_can_run(sig):
                    self.unrunnable[sig] = None

    def _any_can_run(self, sig: Signature) -> bool:
        """Whether some current worker could ever run tasks of this signature."""
        known = self._runnable.get(sig)
        if known is None:
            known = self._runnable[sig] = any(can_run(ws, sig) for ws in self.workers.values())
        return known

    def queued_with(self, sig: Signature) -> list[TaskState]:
        """The queued tasks of a signature, highest priority first."""
        queue = self._constrained.get(sig)
        return queue.queued() if queue is not None else []

    def count_queued_with(self, sig: Signature) -> int:
        """How many tasks of a signature are queued (O(1))."""
        queue = self._constrained.get(sig)
        return len(queue) if queue is not None else 0

    def has_queued_with(self, sig: Signature) -> bool:
        queue = self._constrained.get(sig)
        return queue is not None and queue.first() is not None

    def has_capacity(self, ws: WorkerInfo) -> bool:
        busy = len(ws.processing) - len(ws.seceded)
        return busy < ws.nthreads * self.depth and not ws.paused

    def pause(self, ws: WorkerInfo) -> None:
        """`ws` is paused for memory: it is offered no task until `resume`."""
        ws.paused = True

    def resume(self, ws: WorkerInfo) -> None:
        ws.paused = False
        self.touch(ws)

    def touch(self, ws: WorkerInfo) -> None:
        """Record that `ws`'s load changed. The loads heap learns it when next
        read, once however often it changed meanwhile."""
        self._touched[ws] = None

    def _push_touched(self) -> None:
        loads = self._loads
        for ws in self._touched:
            if not ws.gone and not ws.paused:
                ws.version += 1
                entry = (
                    (len(ws.processing) - len(ws.seceded)) / ws.nthreads,
                    ws.index,
                    ws.version,
                    ws,
                )
                # Filling a worker, its old entry is usually the top one.
                if loads and loads[0][3] is ws:
                    heapq.heapreplace(loads, entry)
                else:
                    heapq.heappush(loads, entry)
        self._touched.clear()
        if len(loads) > 2 * len(self.workers) + 64:
            self._loads = [
                ((len(w.processing) - len(w.seceded)) / w.nthreads, w.index, w.version, w)
                for w in self.workers.values()
            ]
            heapq.heapify(self._loads)

    def pick(self, ts: TaskState) -> WorkerInfo | None:
        """The worker that may run `ts` now and would start it soonest, or None.

        Without inputs to fetch, that is the least loaded one. Otherwise each
        holder of its inputs competes with the least loaded worker: the cost of
        a worker is its queue (tasks per thread times the mean task duration)
        plus the bytes it lacks over the observed bandwidth. Ties go to the
        worker that joined first.
        """
        if ts.resources or ts.restrict:
            return self._pick_with(ts, signature_of(ts))
        if not ts.deps:
            return self.least_loaded()
        held, total = held_bytes(ts)
        if not held:
            return self.least_loaded()
        best, best_rank = None, (0.0, 0)
        depth, mean, bandwidth = self.depth, self.mean_duration, self.bandwidth
        for ws, nbytes in held.items():  # _cost(), inline
            queued = len(ws.processing) - len(ws.seceded)
            if queued < ws.nthreads * depth and not (ws.gone or ws.paused):  # dying, retiring
                rank = (queued / ws.nthreads * mean + (total - nbytes) / bandwidth, ws.index)
                if best is None or rank < best_rank:
                    best, best_rank = ws, rank
        # Any other worker lacks every input byte: a holder sooner than that wins
        # without asking the loads heap.
        if best is not None and best_rank[0] < total / bandwidth:
            return best
        other = self.least_loaded()
        if other is not None and other not in held:
            rank = (self._cost(other, held, total), other.index)
            if best is None or rank < best_rank:
                best = other
        return best

    def _pick_with(self, ts: TaskState, sig: Signature) -> WorkerInfo | None:
        """pick() for a task with resources or restrictions."""
        best = self._pick_constrained(sig)
        if not ts.deps:
            return best
        held, total = held_bytes(ts)
        if not held:
            return best
        best_rank = (self._cost(best, held, total), best.index) if best is not None else None
        for ws in held:
            if ws is best or ws.gone or not self.has_capacity(ws):
                continue
            if not (can_run(ws, sig) and has_room(ws, sig)):
                continue
            rank = (self._cost(ws, held, total), ws.index)
            if best_rank is None or rank < best_rank:
                best, best_rank = ws, rank
        return best

    def _cost(self, ws: WorkerInfo, held: dict[WorkerInfo, int], total: int) -> float:
        """Seconds until `ws` could start a task whose inputs are `held` where they are."""
        queue = (len(ws.processing) - len(ws.seceded)) / ws.nthreads * self.mean_duration
        return queue + (total - held.get(ws, 0)) / self.bandwidth

    def least_loaded(self) -> WorkerInfo | None:
        """The worker with the lowest load (tasks per thread), if it has a free slot."""
        if self._touched:
            self._push_touched()
        loads = self._loads
        while loads:
            load, _, version, ws = loads[0]
            if ws.gone or ws.paused or version != ws.version:
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
            rank = ((len(ws.processing) - len(ws.seceded)) / ws.nthreads, ws.index)
            if best is None or rank < best_rank:
                best, best_rank = ws, rank
        return best

    # -- ready queues ----------------------------------------------------------

    def enqueue(self, ts: TaskState) -> None:
        """Queue a ready task. When its inputs sit on workers, the one holding the
        most bytes of them will also find it in its own affinity queue."""
        entry = (ts.priority, ts)
        if ts.resources or ts.restrict:
            queue = self._constrained.get(sig := signature_of(ts))
            if queue is None:
                queue = self._constrained[sig] = ReadyQueue()
            queue.push(entry)
            if sig not in self.unrunnable and not self._any_can_run(sig):
                self.unrunnable[sig] = None
        else:
            self._queue.push(entry)
        if ts.deps:
            held, _ = held_bytes(ts)
            if held:
                # max() keeps the first of equals: the holder of the earliest input
                ws = max(held, key=held.__getitem__)
                queue = self._affinity.get(ws)
                if queue is None:
                    queue = self._affinity[ws] = ReadyQueue()
                queue.push(entry)

    def has_queued(self) -> bool:
        """Whether a task without resources or restrictions is queued."""
        return self._queue.first() is not None

    def has_queued_constrained(self) -> bool:
        return any(queue.first() is not None for queue in self._constrained.values())

    def next_for(self, ws: WorkerInfo) -> TaskState | None:
        """Take a queued task that `ws` can run now, or None: the first of its own
        affinity queue, else the highest-priority one it may run."""
        mine = self._affinity.get(ws)
        if mine is not None:
            entry = mine.first()
            if entry is None:
                del self._affinity[ws]
            elif not (entry[1].resources or entry[1].restrict):
                return mine.pop()
            elif self._fits(ws, signature_of(entry[1])):
                return mine.pop()
            # else its resources are busy here: take other work meanwhile
        best_queue = self._queue
        best = best_queue.first()
        if not self._constrained:
            return best_queue.pop() if best is not None else None
        for sig, queue in list(self._constrained.items()):
            entry = queue.first()
            if entry is None:
                del self._constrained[sig]
                continue
            if not (can_run(ws, sig) and has_room(ws, sig)):
                continue
            if best is None or entry[0] < best[0]:
                best, best_queue = entry, queue
        if best is None:
            return None
        return best_queue.pop()

    def _fits(self, ws: WorkerInfo, sig: Signature) -> bool:
        return can_run(ws, sig) and has_room(ws, sig)

    def observe_transfer(self, nbytes: int, duration: float) -> None:
        """Learn the bandwidth from one fetch between workers."""
        if duration > 0:
            self.bandwidth += 0.25 * (nbytes / duration - self.bandwidth)

    def observe(self, duration: float, now: float) -> bool:
        """Learn from one task's run time, reported at `now`; True when the depth grew.

        The mean moves towards `duration` by 1 / (observations + PRIOR_WEIGHT),
        at least MIN_WEIGHT. The depth follows 1 + round_trip / mean one step at
        a time: up once that target reaches (depth + 1) * (1 + HYSTERESIS),
        down once it falls below depth * (1 - HYSTERESIS). It grows once per
        round trip at most: the first reports after many tasks start together
        are the shortest of them, and the effect of a step shows only a round
        trip later.
        """
        n = self.observed = self.observed + 1
        mean = self.mean_duration
        mean += (MIN_WEIGHT if n > WARM_UP else 1.0 / (n + PRIOR_WEIGHT)) * (duration - mean)
        self.mean_duration = mean
        depth = self.depth
        if mean <= self._grow_at[depth]:
            if now - self.grown_at < self.round_trip_s:
                return False
            self.depth = depth + 1
            self.grown_at = now
            return True
        if mean > self._shrink_above[depth]:
            self.depth = depth - 1
        return False


def held_bytes(ts: TaskState) -> tuple[dict[WorkerInfo, int], int]:
    """Bytes of `ts`'s inputs each worker holds, and their total. Inputs kept by
    the scheduler travel with the task and count for nobody."""
    if len(ts.deps) == 1:
        dep = ts.deps[0]
        if dep.value is not None:
            return {}, 0
        return dict.fromkeys(dep.who_has, dep.nbytes), dep.nbytes
    held: dict[WorkerInfo, int] = {}
    total = 0
    for dep in ts.deps:
        if dep.value is not None:
            continue
        total += dep.nbytes
        for ws in dep.who_has:
            held[ws] = held.get(ws, 0) + dep.nbytes
    return held, total
