"""Ready queues of the scheduler core: queued tasks, lowest priority value first.

Tasks mostly become ready in the order they were created, which is their
priority order unless a client set priorities. Entries that arrive in order
stay in a deque, O(1) in and out, where a heap of a million entries walks
twenty levels of cold memory per pop; entries that arrive out of order go to a
heap beside it. Entries of tasks no longer queued are dropped when they come
first. Nothing here decides which worker runs what (see placement.py).
"""

from __future__ import annotations

import heapq
from collections import deque

from shoal.scheduler.model import Status, TaskState

QUEUED = Status.QUEUED

# (priority, task): priorities are unique to each task, so ties never compare tasks.
Entry = tuple[int, TaskState]


class ReadyQueue:
    """Entries in priority order: a sorted run (a deque) and a heap of the rest."""

    __slots__ = ("_heap", "_run")

    def __init__(self) -> None:
        self._run: deque[Entry] = deque()  # ascending priorities
        self._heap: list[Entry] = []

    def push(self, entry: Entry) -> None:
        run = self._run
        if not run or entry[0] >= run[-1][0]:
            run.append(entry)
        else:
            heapq.heappush(self._heap, entry)

    def first(self) -> Entry | None:
        """The entry of the queued task with the lowest priority value, or None.
        Entries of tasks no longer queued are dropped on the way."""
        run, heap = self._run, self._heap
        while run and run[0][1].status is not QUEUED:
            run.popleft()
        while heap and heap[0][1].status is not QUEUED:
            heapq.heappop(heap)
        if not run:
            return heap[0] if heap else None
        return heap[0] if heap and heap[0][0] < run[0][0] else run[0]

    def pop(self) -> TaskState:
        """Take the task of the entry first() just returned."""
        run, heap = self._run, self._heap
        if run and not (heap and heap[0][0] < run[0][0]):
            return run.popleft()[1]
        return heapq.heappop(heap)[1]

    def queued(self) -> list[TaskState]:
        """The tasks of the entries whose task is still queued, in priority order."""
        entries = [e for e in (*self._run, *self._heap) if e[1].status is QUEUED]
        entries.sort(key=lambda entry: entry[0])
        # A task queued, taken back and queued again has two entries.
        return list(dict.fromkeys(ts for _, ts in entries))

    def __len__(self) -> int:
        """Entries held, including those of tasks no longer queued."""
        return len(self._run) + len(self._heap)
