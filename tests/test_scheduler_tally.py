"""The counters the scheduler core keeps for metrics and the dashboard (scheduler/tally.py),
and the views built from them: exact counts through a graph's life, events, desired
workers, and a dashboard answer that does not grow with the number of tasks."""

from __future__ import annotations

import json

from prometheus_client import CollectorRegistry, generate_latest

from shoal.protocol import messages as m
from shoal.scheduler import views
from shoal.scheduler.metrics import SchedulerCollector
from shoal.scheduler.tally import MAX_GROUPS, OTHER, desired_workers
from tests.scheduler_harness import Harness


def test_counts_follow_a_graph() -> None:
    h = Harness()
    w = h.worker("a", nthreads=1)
    c = h.client()
    h.submit(c, {"load-1": [], "load-2": [], "sum-0": ["load-1", "load-2"]})
    counts = views.task_counts(h.state)
    assert counts["processing"] == 2 and counts["waiting"] == 1
    group = h.state.tally.groups["load"]
    assert group.counts["processing"] == 2
    h.finish("load-1", nbytes=100, duration=0.5)
    h.finish("load-2", nbytes=50, duration=0.25)
    assert group.finished == 2 and group.nbytes == 150 and group.compute_s == 0.75
    h.handle(w, m.TaskErred(key="sum-0", typename="ValueError", message="x", traceback=""))
    tally = h.state.tally
    assert tally.groups["sum"].erred == 1 and tally.runs == 3
    assert [run[:3] for run in tally.stream] == [
        ("load-1", "load", "a"),
        ("load-2", "load", "a"),
        ("sum-0", "sum", "a"),
    ]
    assert views.task_counts(h.state)["erred"] == 1
    h.handle(c, m.ReleaseFutures(keys=("load-1", "load-2", "sum-0")))
    assert views.task_counts(h.state) == dict.fromkeys(views.LIVE, 0)
    assert tally.counts()["forgotten"] == 3
    kinds = [kind for _, _, kind, _ in tally.events]
    assert kinds == ["worker-joined", "client-connected", "graph-received"]
    h.lose(c)
    h.lose(w)
    kinds = [(kind, fields) for _, _, kind, fields in tally.events][-2:]
    assert kinds == [
        ("client-gone", {"client": "client-1", "name": "c"}),
        (
            "worker-died",
            {"worker": "a", "address": "tcp://a:1", "cause": "its connection was lost"},
        ),
    ]
    assert tally.workers_died == 1 and tally.workers_left == 0


def test_a_worker_leaving_on_purpose_is_no_death() -> None:
    h = Harness()
    w = h.worker("a")
    h.handle(w, m.WorkerLeaving(reason="bye"))
    assert h.state.tally.workers_left == 1 and h.state.tally.workers_died == 0
    (_, _, kind, fields), *_ = reversed(h.state.tally.events)
    assert kind == "worker-left" and fields["worker"] == "a"


def test_prefixes_past_the_cap_share_one_group() -> None:
    h = Harness(validate=False)
    h.worker("a")
    c = h.client()
    graph = {f"p{i}_x-1": [] for i in range(MAX_GROUPS + 5)}
    h.submit(c, graph)
    groups = h.state.tally.groups
    assert len(groups) == MAX_GROUPS
    assert sum(g.counts["processing"] + g.counts["queued"] for g in groups.values()) == len(graph)
    assert OTHER in groups
    h.state.validate()


def test_desired_workers() -> None:
    h = Harness(validate=False)
    assert desired_workers(h.state) == 0
    h.worker("a", nthreads=2)
    c = h.client()
    assert desired_workers(h.state) == 0
    h.submit(c, {f"t-{i}": [] for i in range(10_000)})
    h.state.placement.mean_duration = 0.01  # 10,000 tasks: 100 s of work on 2 threads
    assert desired_workers(h.state) == 10  # 100 s / 5 s / 2 threads
    h.state.placement.mean_duration = 10.0
    assert desired_workers(h.state) == 5_000  # no more than 10,000 tasks keep busy
    h.state.placement.mean_duration = 1e-6
    assert desired_workers(h.state) == 1
    for i in range(4):
        h.finish(f"t-{i}")
    h.handle(c, m.ReleaseFutures(keys=tuple(f"t-{i}" for i in range(4, 10_000))))
    assert desired_workers(h.state) == 1  # nothing to run: the one worker holds values
    h.handle(c, m.ReleaseFutures(keys=tuple(f"t-{i}" for i in range(4))))
    assert desired_workers(h.state) == 0


def _dashboard_bytes(n_tasks: int) -> int:
    h = Harness(validate=False, check_commands=False)
    for name in ("a", "b", "c"):
        h.worker(name, nthreads=4)
    c = h.client()
    half = n_tasks // 2
    graph: dict[object, list[object]] = {f"load-{i}": [] for i in range(half)}
    graph.update({f"inc-{i}": [f"load-{i}"] for i in range(n_tasks - half)})
    h.submit(c, graph)
    for ws in list(h.state.workers.values()):
        for ts in list(ws.processing)[:50]:
            h.finish(ts.key)
    payload = json.dumps(views.dashboard(h.state, h.now, 0.0))
    registry = CollectorRegistry()
    registry.register(SchedulerCollector(h.state))
    scrape = generate_latest(registry)
    return len(payload) + len(scrape)


def test_the_dashboard_answer_does_not_grow_with_the_tasks() -> None:
    small = _dashboard_bytes(2_000)
    large = _dashboard_bytes(100_000)
    # The same rows either way; only the digits of the counts differ.
    assert abs(large - small) < 200, (small, large)
