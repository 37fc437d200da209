"""Counters the scheduler core keeps as it goes, for metrics, the dashboard and logs.

Pure like the rest of the core: it is fed by the core's own handlers and never
reads a clock. Whatever reads it (a scrape, a page) costs O(key prefixes +
workers), never O(tasks): the counts by status live in each TaskGroup and are
moved by `_move`, one dictionary step per transition.
"""

from __future__ import annotations

import math
from collections import deque
from typing import TYPE_CHECKING, Any

from shoal.scheduler.model import Status, TaskGroup

if TYPE_CHECKING:
    from shoal.scheduler.model import TaskState, WorkerInfo
    from shoal.scheduler.state import SchedulerState

# Past this many key prefixes, new ones share one group, so that keys named
# without a pattern cannot make a scrape or a page grow without bound.
MAX_GROUPS = 1000
OTHER = "other"
# Recent task runs kept for the task stream, and cluster events for logs and warnings.
STREAM_SIZE = 2000
EVENTS_SIZE = 200
# Desired workers: enough that the work ahead takes about this long.
TARGET_DURATION_S = 5.0


def key_prefix(key: object) -> str:
    """The name part of a key: "inc" for "inc-3f2a9c0d..." or ("inc-3f2a...", 4),
    "load-part" for "load-part-12". Words are kept up to the first that is a
    number or a hex token of 8 characters or more."""
    if type(key) is tuple:
        key = key[0] if key else ""
    if type(key) is not str:
        return type(key).__name__
    words = key.split("-")
    kept = [words[0]]
    for word in words[1:]:
        if not word or word.isdigit() or (len(word) >= 8 and _is_hex(word)):
            break
        kept.append(word)
    return "-".join(kept) or OTHER


def _is_hex(word: str) -> bool:
    try:
        int(word, 16)
    except ValueError:
        return False
    return True


class Tally:
    """The counters: task groups, task runs, transfers, cluster events.

    `events` holds (number, now, kind, fields) for each event a user cares
    about (a worker joined, left or died and why, a client came or went, a
    graph arrived); `event_number` is the number of the last one, so that the
    shell logs each once and a page shows the recent ones.
    """

    def __init__(self) -> None:
        self.groups: dict[str, TaskGroup] = {}
        # (key, prefix, worker name, start, stop, ok) of recent runs, start and stop
        # on the scheduler's clock (stop: when the report came).
        self.stream: deque[tuple[str, str, str, float, float, bool]] = deque(maxlen=STREAM_SIZE)
        self.runs = 0  # task runs reported, finished or erred
        self.compute_s = 0.0
        self.transfers = 0  # fetches between workers reported (DataFetched)
        self.transfer_bytes = 0
        self.transfer_s = 0.0
        self.graphs = 0
        self.graph_tasks = 0  # tasks in the graphs received
        self.workers_joined = 0
        self.workers_left = 0  # on purpose
        self.workers_died = 0
        self.clients_connected = 0
        self.events: deque[tuple[int, float, str, dict[str, Any]]] = deque(maxlen=EVENTS_SIZE)
        self.event_number = 0

    def group_of(self, key: object) -> TaskGroup:
        """The group of a task being filed, counted as released."""
        name = key_prefix(key)
        group = self.groups.get(name)
        if group is None:
            if len(self.groups) >= MAX_GROUPS - 1:  # one kept for OTHER
                name = OTHER
                group = self.groups.get(name)
            if group is None:
                group = self.groups[name] = TaskGroup(name)
        group.counts[Status.RELEASED] += 1
        return group

    def ran(self, ts: TaskState, ws: WorkerInfo, duration: float, now: float, ok: bool) -> None:
        """A run of `ts` on `ws` ended (finished if `ok`, else erred), reported at `now`."""
        group = ts.group
        duration = max(duration, 0.0)
        if ok:
            group.finished += 1
            group.nbytes += ts.nbytes
        else:
            group.erred += 1
        group.compute_s += duration
        self.runs += 1
        self.compute_s += duration
        self.stream.append((str(ts.key), group.name, ws.name, now - duration, now, ok))

    def fetched(self, nbytes: int, duration: float) -> None:
        self.transfers += 1
        self.transfer_bytes += nbytes
        self.transfer_s += max(duration, 0.0)

    def event(self, now: float, kind: str, **fields: Any) -> None:
        self.event_number += 1
        self.events.append((self.event_number, now, kind, fields))

    def counts(self) -> dict[str, int]:
        """Tasks by status now (forgotten: ever), summed over the groups."""
        total: dict[str, int] = {}
        for group in self.groups.values():
            for status, n in group.counts.items():
                total[status] = total.get(status, 0) + n
        return total


def desired_workers(state: SchedulerState) -> int:
    """How many workers the work in hand calls for, for an autoscaler.

    With tasks ready or running: enough workers (of the current mean thread
    count) that the work ahead, at the mean observed run time, takes about
    TARGET_DURATION_S, and never more than the ready and running tasks could
    keep busy; at least one. With nothing to run: the workers holding values
    (their data would have to move), or none.
    """
    counts = state.tally.counts()
    ready = counts.get("queued", 0) + counts.get("processing", 0)
    ahead = ready + counts.get("waiting", 0)
    workers = state.placement.workers
    if not ahead:
        return sum(1 for ws in workers.values() if ws.has_what)
    threads = sum(ws.nthreads for ws in workers.values()) / len(workers) if workers else 1.0
    work_s = ahead * state.placement.mean_duration
    by_time = math.ceil(work_s / TARGET_DURATION_S / threads)
    by_tasks = math.ceil(ready / threads) if ready else len(workers)
    return max(1, min(by_time, by_tasks))
