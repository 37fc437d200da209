"""The scheduler core's graceful retirement (scheduler/retirement.py): a retiring
worker takes no new task, hands back what it had not started, finishes what it
runs, has its only copies moved, and leaves without a death counted."""

from __future__ import annotations

import pytest

from shoal.protocol import messages as m
from tests.scheduler_harness import Harness, computed, freed, sent

pytestmark = pytest.mark.timeout(30)


def two_workers(**kwargs: object) -> tuple[Harness, str, str, str]:
    h = Harness(**kwargs)  # type: ignore[arg-type]
    a = h.worker("a", nthreads=1)
    b = h.worker("b", nthreads=1)
    c = h.client()
    return h, a, b, c


def retired(out: list, peer: str) -> list[m.WorkerRetired]:
    return sent(out, peer, m.WorkerRetired)


def test_sole_values_are_copied_before_the_worker_is_let_go() -> None:
    h, a, b, c = two_workers()
    h.submit(c, {"x": (), "y": ()})
    h.finish("x", worker=h.on("x"), nbytes=100)
    h.finish("y", worker=h.on("y"), nbytes=50)
    holder = h.task("x").who_has[0].peer
    other = b if holder == a else a
    out = h.handle(holder, m.RetireWorker(reason="SIGTERM", timeout=30))
    acquire = sent(out, other, m.AcquireKeys)
    # Only the values that `holder` alone has: y is on `other` already.
    held_there = {ts.key for ts in h.state.workers[holder].has_what}
    assert len(acquire) == 1 and set(acquire[0].who_has) == held_there
    assert retired(out, holder) == []
    assert h.state.workers[holder].retiring
    out = h.handle(other, m.KeysAcquired(keys=tuple(held_there)))
    assert retired(out, holder) and "held elsewhere" in retired(out, holder)[0].reason
    out = h.handle(holder, m.WorkerLeaving(reason="retired"))
    assert holder not in h.state.workers
    # Nothing was lost: the values are in memory on the worker that stays.
    assert h.status("x") == "memory" and h.status("y") == "memory"
    assert all(ws.peer == other for key in "xy" for ws in h.task(key).who_has)
    assert computed(h.log[-len(out) :]) == []


def test_unstarted_tasks_are_handed_back_and_started_ones_finish_there() -> None:
    h = Harness()
    a = h.worker("a", nthreads=2)
    c = h.client()
    h.submit(c, {f"t{i}": () for i in range(4)})  # depth 2 x 2 threads: all on a
    assert sorted(h.processing(a)) == ["t0", "t1", "t2", "t3"]
    h.start("t0", "t1")
    b = h.worker("b", nthreads=2)
    out = h.handle(a, m.RetireWorker(reason="SIGTERM"))
    assert sorted(freed(out, a)) == ["t2", "t3"]  # handed back
    assert sorted(computed(out, b)) == ["t2", "t3"]
    assert sorted(h.processing(a)) == ["t0", "t1"]  # still running there
    out = h.finish("t0", worker=a)
    assert computed(out, a) == [] and retired(out, a) == []  # no new work for it
    # Its result is copied away; once t1 is done and copied too, it may go.
    out = h.finish("t1", worker=a)
    acquired = [k for msg in sent(h.log, b, m.AcquireKeys) for k in msg.who_has]
    assert sorted(acquired) == ["t0", "t1"]
    out = h.handle(b, m.KeysAcquired(keys=("t0", "t1")))
    assert retired(out, a)
    h.handle(a, m.WorkerLeaving())
    for key in ("t0", "t1"):
        ts = h.task(key)
        assert ts.status == "memory" and ts.deaths is None


def test_the_last_worker_leaves_at_once() -> None:
    h = Harness()
    a = h.worker("a")
    c = h.client()
    h.submit(c, {"x": ()})
    h.finish("x", worker=a)
    out = h.handle(a, m.RetireWorker())
    assert retired(out, a) and "no other worker" in retired(out, a)[0].reason


def test_a_failed_copy_is_planned_again_on_another_worker() -> None:
    h = Harness()
    a = h.worker("a")
    c = h.client()
    h.submit(c, {"x": ()})
    h.finish("x", worker=a, nbytes=10)
    b = h.worker("b")
    out = h.handle(a, m.RetireWorker(timeout=60))
    assert sent(out, b, m.AcquireKeys)
    w3 = h.worker("w3")
    out = h.lose(b)  # the copy's target died before it had the value
    assert [set(msg.who_has) for msg in sent(out, w3, m.AcquireKeys)] == [{"x"}]
    out = h.handle(w3, m.KeysAcquired(keys=("x",)))
    assert retired(out, a)


def test_a_client_request_is_answered_when_the_workers_are_gone() -> None:
    h, a, b, c = two_workers()
    out = h.handle(c, m.RetireWorkers(workers=("a", "nobody"), request_id=7))
    assert retired(out, a)  # it holds nothing: it may go at once
    assert sent(out, c, m.WorkersRetired) == []
    out = h.handle(a, m.WorkerLeaving(reason="retired"))
    assert sent(out, c, m.WorkersRetired) == [
        m.WorkersRetired(retired=("a",), unknown=("nobody",), request_id=7)
    ]
    out = h.handle(c, m.RetireWorkers(workers=(h.state.workers[b].address,), request_id=8))
    h.handle(b, m.WorkerLeaving())
    assert sent(h.log, c, m.WorkersRetired)[-1].retired == ("b",)


def test_a_retirement_past_its_timeout_moves_the_work_without_blame() -> None:
    h, a, b, c = two_workers()
    h.submit(c, {"slow": ()})
    runner = h.on("slow")
    other = b if runner == a else a
    h.start("slow")
    h.handle(runner, m.RetireWorker(timeout=5))
    out = h.tick(4)
    assert retired(out, runner) == []
    out = h.tick(1.5)
    assert retired(out, runner) and "timed out" in retired(out, runner)[0].reason
    out = h.handle(runner, m.WorkerLeaving())
    assert computed(out, other) == ["slow"]
    assert h.task("slow").deaths is None  # leaving is not dying


def test_a_retiring_worker_that_dies_counts_as_a_death() -> None:
    h, _a, _b, c = two_workers()
    h.submit(c, {"t": ()})
    runner = h.on("t")
    h.start("t")
    h.handle(runner, m.RetireWorker())
    h.lose(runner)
    assert h.task("t").deaths is not None and len(h.task("t").deaths or []) == 1


def test_a_retired_worker_whose_connection_ends_has_left() -> None:
    h, a, b, c = two_workers()
    h.submit(c, {"x": ()})
    holder = h.on("x")
    other = b if holder == a else a
    h.finish("x", worker=holder)
    h.handle(holder, m.RetireWorker())
    out = h.handle(other, m.KeysAcquired(keys=("x",)))
    assert retired(out, holder)
    h.lose(holder)  # it closed without a WorkerLeaving
    assert h.status("x") == "memory" and holder not in h.state.workers


def test_retiring_workers_are_never_targets_nor_given_work() -> None:
    h = Harness()
    a, b, d = h.worker("a"), h.worker("b"), h.worker("d")
    c = h.client()
    h.submit(c, {"x": ()})
    holder = h.on("x")
    h.finish("x", worker=holder)
    others = [p for p in (a, b, d) if p != holder]
    h.handle(others[0], m.RetireWorker())
    out = h.handle(holder, m.RetireWorker())
    assert [set(msg.who_has) for msg in sent(out, others[1], m.AcquireKeys)] == [{"x"}]
    assert sent(out, others[0], m.AcquireKeys) == []
    out = h.submit(c, {"y": ()})
    assert computed(out) == ["y"] and h.on("y") == others[1]


def test_values_let_go_meanwhile_are_not_owed() -> None:
    h, _a, _b, c = two_workers()
    h.submit(c, {"x": ()})
    holder = h.on("x")
    h.finish("x", worker=holder)
    h.handle(holder, m.RetireWorker())
    out = h.handle(c, m.ReleaseFutures(keys=("x",)))
    assert freed(out, holder) == ["x"]  # a retiring worker still hears of frees
    assert retired(out, holder)
