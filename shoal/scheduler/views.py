"""What the JSON API and the dashboard show, as plain data built from the tally.

Pure functions of the scheduler core: they read aggregates (task groups,
worker records, the bounded task stream and event list), so that a page or an
API call costs the same with ten tasks or a million. Only `story` walks
something long: the bounded transition history, on request for one key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shoal.scheduler.model import Status
from shoal.scheduler.stalls import describe_needs
from shoal.scheduler.tally import desired_workers

if TYPE_CHECKING:
    from shoal.scheduler.model import TaskGroup, WorkerInfo
    from shoal.scheduler.state import SchedulerState

# Task runs one answer carries at most, newest kept; and prefixes shown on the page.
STREAM_LIMIT = 500
PAGE_PREFIXES = 50
LIVE = [s.value for s in Status if s is not Status.FORGOTTEN]
ACTIVE = ("waiting", "queued", "processing")


def task_counts(state: SchedulerState) -> dict[str, int]:
    counts = state.tally.counts()
    return {status: counts.get(status, 0) for status in LIVE}


def group_view(group: TaskGroup) -> dict[str, Any]:
    counts = {s.value: n for s, n in group.counts.items()}
    live = sum(n for s, n in counts.items() if s != "forgotten")
    active = sum(counts[s] for s in ACTIVE)
    return {
        "prefix": group.name,
        "states": {s: counts[s] for s in LIVE},
        "forgotten": counts["forgotten"],
        "total": live + counts["forgotten"],
        "active": active,
        "finished": group.finished,
        "erred": group.erred,
        "compute_seconds": group.compute_s,
        "nbytes": group.nbytes,
    }


def prefixes(state: SchedulerState, limit: int | None = None) -> list[dict[str, Any]]:
    """Task groups with tasks now (or runs, ever), busiest first, at most `limit`."""
    views = [group_view(g) for g in state.tally.groups.values()]
    views = [v for v in views if v["total"] - v["forgotten"] or v["finished"] or v["erred"]]
    views.sort(key=lambda v: (-v["active"], -(v["total"] - v["forgotten"]), v["prefix"]))
    return views[:limit] if limit is not None else views


def worker_view(ws: WorkerInfo) -> dict[str, Any]:
    return {
        "name": ws.name,
        "address": ws.address,
        "http_address": ws.http_address,
        "host": ws.host,
        "nthreads": ws.nthreads,
        "cpu": ws.cpu,
        "memory": ws.memory,
        "managed": ws.nbytes,
        "memory_limit": ws.memory_limit,
        "resources": dict(ws.resources),
        "processing": len(ws.processing),
        "executing": ws.executing,
        "keys": len(ws.has_what),
    }


def workers(state: SchedulerState) -> list[dict[str, Any]]:
    return [worker_view(ws) for ws in state.placement.workers.values()]


def stream(state: SchedulerState, since: float = 0.0) -> list[dict[str, Any]]:
    """Task runs reported after `since` (the scheduler's clock), oldest first."""
    runs: list[dict[str, Any]] = []
    for key, prefix, worker, start, stop, ok in reversed(state.tally.stream):
        if stop <= since or len(runs) >= STREAM_LIMIT:
            break
        runs.append(
            {"key": key, "prefix": prefix, "worker": worker, "start": start, "stop": stop, "ok": ok}
        )
    runs.reverse()
    return runs


def events(state: SchedulerState, limit: int = 50) -> list[dict[str, Any]]:
    recent = list(state.tally.events)[-limit:]
    return [{"n": n, "time": now, "kind": kind, **fields} for n, now, kind, fields in recent]


def warnings(state: SchedulerState, now: float) -> list[dict[str, Any]]:
    """Tasks no current worker can run, and workers that died, most recent last."""
    found: list[dict[str, Any]] = []
    placement = state.placement
    for sig in placement.unrunnable:
        resources, restrict = sig
        stall = state.stalls.get(sig)
        found.append(
            {
                "kind": "no-worker",
                "needs": describe_needs(dict(resources), restrict),
                "tasks": placement.count_queued_with(sig),
                "since": stall.since if stall is not None else now,
                "text": f"up to {placement.count_queued_with(sig)} tasks need a worker with "
                f"{describe_needs(dict(resources), restrict)}, and none of the "
                f"{len(placement.workers)} workers has it",
            }
        )
    for n, when, kind, fields in state.tally.events:
        if kind == "worker-died":
            found.append(
                {
                    "kind": kind,
                    "n": n,
                    "since": when,
                    "worker": fields["worker"],
                    "text": f"worker {fields['worker']} died: {fields['cause']}",
                }
            )
    return found[-20:]


def story(state: SchedulerState, key: str) -> list[dict[str, Any]]:
    """The recent transitions of the task whose key prints as `key`."""
    entries = []
    for k, start, finish, stimulus, now in state.history:
        if k == key or str(k) == key:
            entries.append(
                {"key": str(k), "from": start, "to": finish, "stimulus": stimulus, "time": now}
            )
    return entries[-200:]


def dashboard(state: SchedulerState, now: float, since: float) -> dict[str, Any]:
    """Everything the page shows, in one answer whose size does not grow with tasks."""
    tally = state.tally
    return {
        "now": now,
        "address": state.address,
        "tasks": task_counts(state),
        "prefixes": prefixes(state, PAGE_PREFIXES),
        "prefix_count": len(tally.groups),
        "workers": workers(state),
        "clients": len(state.clients),
        "stream": stream(state, since),
        "warnings": warnings(state, now),
        "events": events(state, 20),
        "desired_workers": desired_workers(state),
        "transitions": state.transitions_done,
        "runs": tally.runs,
        "compute_seconds": tally.compute_s,
    }
