"""The scheduler core when workers die: heartbeats, nanny reports, KilledWorker,
stale results and per-task timeouts. Pure and deterministic, like
test_scheduler_state."""

from __future__ import annotations

import pytest

from shoal.protocol import messages as m
from shoal.scheduler.model import Disconnect, Status
from tests.scheduler_harness import Harness, computed, disconnects, sent
from tests.test_scheduler_state import one_task_in_each_status, scenario

pytestmark = pytest.mark.timeout(30)

KILLED = "shoal.errors.KilledWorker"
TIMEOUT = "shoal.errors.TaskTimeout"


# -- losing a worker in every state of its tasks ---------------------------------------


def test_losing_the_worker_with_a_task_in_each_status_recovers_all() -> None:
    h, by_status = one_task_in_each_status()
    (worker,) = h.state.workers
    c = next(iter(h.state.clients))
    w2 = h.worker("b")
    h.lose(worker)
    # Processing and queued tasks run on b now; values in memory only on a are
    # computed again, from released lineage where needed; the erred one stays.
    assert h.status(by_status[Status.ERRED]) == "erred"
    assert h.on(by_status[Status.RELEASED]) == w2
    for key in h.keys_in(Status.PROCESSING):
        assert h.on(key) == w2
    assert not h.keys_in(Status.MEMORY)
    # Everything wanted finishes on b, in any order the core chooses.
    for _ in range(20):
        running = h.keys_in(Status.PROCESSING)
        if not running:
            break
        h.finish(running[0])
    wanted = [ts.key for ts in h.state.clients[c].wants]
    assert {h.status(k) for k in wanted} <= {"memory", "erred"}
    assert h.status(by_status[Status.MEMORY]) == "memory"
    assert h.status(by_status[Status.WAITING]) == "memory"


@scenario
def test_a_lost_dependency_is_recomputed_from_its_lineage_after_a_death() -> None:
    h = Harness()
    w1, w2 = h.worker("a"), h.worker("b")
    c = h.client()
    h.submit(c, {"x": [], "y": ["x"], "z": ["y"]}, wanted=["z"])
    h.finish("x")
    assert h.on("y") == w1
    h.finish("y")  # x is released (only y needed it); y is on a, z runs on a
    assert h.status("x") == "released" and h.on("z") == w1
    h.start("z")
    out = h.lose(w1)
    # y's only copy died with a: x and then y run again on b, then z.
    assert computed(out, w2) == ["x"]
    assert h.task("z").deaths == [("a", "its connection was lost")]
    assert computed(h.finish("x"), w2) == ["y"]
    assert computed(h.finish("y"), w2) == ["z"]
    out = h.finish("z")
    assert sent(out, c, m.KeyInMemory)[0].key == "z"


# -- heartbeats ------------------------------------------------------------------------


def test_a_silent_worker_is_removed_after_the_heartbeat_timeout() -> None:
    h = Harness(heartbeat_timeout=10.0)
    w1, w2 = h.worker("a"), h.worker("b")
    c = h.client()
    h.submit(c, {"x": [], "y": []})
    assert h.on("x") == w1 and h.on("y") == w2
    h.start("x")  # a's last word
    # b heartbeats (with its figures); a says nothing.
    h.now += 9
    h.handle(w2, m.Heartbeat(cpu=12.5, memory=100_000, executing=1))
    assert h.state.next_deadline() == pytest.approx(h.state.workers[w1].last_seen + 10)
    assert h.tick(0.0) == []  # 10 s since a was last heard from: not yet past
    out = h.tick(0.5)
    assert disconnects(out) == [Disconnect(w1, "worker a: it sent no heartbeat for 10.5 s")]
    assert computed(out, w2) == ["x"] and w1 not in h.state.workers
    assert h.task("x").deaths == [("a", "it sent no heartbeat for 10.5 s")]
    info = h.state.info()["workers"]["b"]
    assert (info["cpu"], info["memory"], info["executing"]) == (12.5, 100_000, 1)


def test_any_message_counts_as_a_sign_of_life() -> None:
    h = Harness(heartbeat_timeout=5.0)
    w1 = h.worker("a")
    c = h.client()
    h.submit(c, {"x": [], "y": []})
    for key in ("x", "y"):
        h.now += 4
        h.finish(key)
        assert h.tick(0.5) == []
    assert w1 in h.state.workers
    assert h.state.next_deadline() == pytest.approx(h.now + 4.5)


def test_no_deadline_without_workers() -> None:
    h = Harness()
    assert h.state.next_deadline() is None
    assert h.tick(1000.0) == []


# -- stale results ---------------------------------------------------------------------


def test_results_from_a_removed_worker_are_ignored() -> None:
    h = Harness(heartbeat_timeout=5.0)
    w1 = h.worker("a")
    c = h.client()
    h.submit(c, {"x": []})
    h.tick(6.0)  # a is removed as silent; x waits for a worker
    assert h.status("x") == "queued"
    # a's report was in flight: it is dropped, and the connection closed.
    out = h.finish("x", worker=w1)
    assert h.status("x") == "queued" and sent(out, c) == []
    assert disconnects(out) == [Disconnect(w1, "task-finished from a worker before it registered")]


# -- KilledWorker ------------------------------------------------------------------------


@scenario
def test_a_task_on_three_dead_workers_fails_with_killed_worker() -> None:
    h = Harness()
    c = h.client()
    w = h.worker("w0", nanny=True)
    h.submit(c, {"bad": [], "after": ["bad"]}, wanted=["after"])
    causes = ["killed by SIGKILL", "exit code 1", "memory limit exceeded"]
    for i, cause in enumerate(causes):
        assert h.on("bad") == w
        nxt = h.worker(f"w{i + 1}", nanny=True)
        out = h.nanny_reports(w, cause)
        w = nxt
    assert h.status("bad") == "erred" and h.status("after") == "erred"
    (report,) = sent(out, c, m.KeyErred)
    assert report.key == "after" and report.typename == KILLED and report.blame == "bad"
    assert report.message == (
        "task 'bad' was processing on 3 workers that died: 'w0' (killed by SIGKILL); "
        "'w1' (exit code 1); 'w2' (memory limit exceeded)"
    )
    assert computed(out) == []


def test_killed_worker_reaches_the_client_and_spares_the_other_tasks() -> None:
    h = Harness(allowed_failures=2)
    c = h.client()
    w1 = h.worker("a", nthreads=2)
    h.submit(c, {"bad": [], "good": []})
    assert h.processing(w1) == ["bad", "good"]
    h.start("bad", "good")
    w2 = h.worker("b", nthreads=2)
    h.lose(w1)
    assert set(h.processing(w2)) == {"bad", "good"}
    h.start("bad", "good")
    h.finish("good")
    w3 = h.worker("c", nthreads=2)
    out = h.lose(w2)
    (report,) = sent(out, c, m.KeyErred)
    assert report.key == "bad" and report.typename == KILLED
    assert "'a' (its connection was lost); 'b' (its connection was lost)" in report.message
    # good finished on b after a died under it, so b's death does not count
    # against it: it is only computed again, its value having died with b.
    assert computed(out, w3) == ["good"]
    assert h.task("good").deaths == [("a", "its connection was lost")]


def test_a_worker_leaving_on_purpose_does_not_count() -> None:
    h = Harness(allowed_failures=1)
    c = h.client()
    w1, w2 = h.worker("a"), h.worker("b")
    h.submit(c, {"x": []})
    h.handle(w1, m.WorkerLeaving(reason="restart: a task is stuck"))
    assert h.on("x") == w2 and h.task("x").deaths is None


def test_allowed_failures_must_be_positive() -> None:
    with pytest.raises(ValueError, match="allowed_failures"):
        Harness(allowed_failures=0)


# -- nannies -----------------------------------------------------------------------------


@scenario
def test_a_nanny_worker_waits_for_its_cause_of_death() -> None:
    h = Harness(death_report_wait=2.0)
    c = h.client()
    w1 = h.worker("a", nanny=True)
    h.submit(c, {"x": [], "y": ["x"]}, wanted=["y"])
    h.finish("x")
    w2 = h.worker("b")
    out = h.lose(w1)
    # a is dying: it takes no more work, but its tasks wait for the cause.
    assert sent(out, c) == [m.WorkersChanged(workers=1)]
    assert h.on("y") == w1 and list(h.state.placement.workers) == ["b"]
    h.submit(c, {"z": []})
    assert h.on("z") == w2
    assert h.state.next_deadline() == pytest.approx(h.now - 1 + 2.0)
    out = h.nanny_reports(w1, "memory limit exceeded: 700 MiB > 512 MiB")
    assert w1 not in h.state.workers and not h.state.dying
    assert h.task("y").deaths == [("a", "memory limit exceeded: 700 MiB > 512 MiB")]
    # x's only copy died with a: it runs again on b, beside z; y waits for it.
    assert computed(out, w2) == ["x"] and h.status("y") == "waiting"


def test_a_report_before_the_connection_drops_removes_the_worker_at_once() -> None:
    h = Harness()
    c = h.client()
    w1, w2 = h.worker("a", nanny=True), h.worker("b")
    h.submit(c, {"x": []})
    out = h.nanny_reports(w1, "killed by its nanny: memory limit")
    assert Disconnect(w1, "worker a died: killed by its nanny: memory limit") in out
    assert h.on("x") == w2
    assert h.lose(w1) == []


def test_without_a_report_the_dying_worker_is_removed_at_the_deadline() -> None:
    h = Harness(death_report_wait=2.0)
    c = h.client()
    w1, w2 = h.worker("a", nanny=True), h.worker("b")
    h.submit(c, {"x": [], "y": []})
    h.start("x")
    h.lose(w1)
    assert h.tick(1.5) == [] and h.on("x") == w1
    out = h.tick(0.5)
    assert computed(out, w2) == ["x"]
    assert h.task("x").deaths == [("a", "its connection was lost and its nanny sent no report")]
    # A late report, for a worker already removed, changes nothing.
    out = h.handle("n:a", m.WorkerDied(name="a", address="tcp://a:1", cause="exit code 1"))
    assert out == []


def test_a_restarted_worker_may_reuse_the_name_of_a_dying_one() -> None:
    h = Harness()
    c = h.client()
    w1 = h.worker("a", nanny=True)
    h.submit(c, {"x": []})
    h.lose(w1)
    again = h.worker("a", nanny=True, address="tcp://a:2", peer="w:a-again")
    assert sent(h.out, again) == [m.WorkerRegistered(name="a")]
    h.nanny_reports(w1, "killed by SIGSEGV")
    assert h.on("x") == again


def test_only_nannies_may_report_deaths() -> None:
    h = Harness()
    w1 = h.worker("a")
    out = h.handle(w1, m.WorkerDied(name="a", address="tcp://a:1", cause="lies"))
    assert disconnects(out) == [Disconnect(w1, "unexpected worker-died from a worker")]


# -- timeouts ------------------------------------------------------------------------------


def test_the_timeout_travels_with_the_task() -> None:
    h = Harness()
    w1 = h.worker("a")
    c = h.client()
    out = h.submit(c, {"x": [], "y": []}, timeout={"x": 1.5})
    timeouts = {msg.key: msg.timeout for msg in sent(out, w1, m.ComputeTask)}
    assert timeouts == {"x": 1.5, "y": 0.0}


def test_a_timed_out_task_is_not_retried() -> None:
    h = Harness()
    w1 = h.worker("a")
    c = h.client()
    h.submit(c, {"x": []}, retries={"x": 2}, timeout={"x": 1.0})
    out = h.err("x", typename=TIMEOUT, message="task 'x' ran past its timeout of 1 s")
    (report,) = sent(out, c, m.KeyErred)
    assert report.typename == TIMEOUT and h.status("x") == "erred"
    # Its late result is stale and only freed on the worker.
    out = h.finish("x", worker=w1)
    assert sent(out, w1) == [m.FreeKeys(keys=("x",))] and h.status("x") == "erred"


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan")])
def test_a_timeout_must_be_positive(bad: float) -> None:
    h = Harness()
    c = h.client()
    out = h.submit(c, {"x": []}, timeout={"x": bad})
    (refused,) = sent(out, c, m.GraphRejected)
    assert "timeout for 'x' must be positive" in refused.reason


def test_a_successor_at_the_same_address_leaving_first_keeps_the_dying_one_filed() -> None:
    h = Harness()
    c = h.client()
    old = h.worker("a", nanny=True, address="tcp://host:1")
    h.submit(c, {"x": []})
    h.lose(old)  # dying, awaiting its nanny's report
    new = h.worker("a", nanny=True, address="tcp://host:1", peer="w:a-again")
    assert h.state.by_address["tcp://host:1"].peer == new
    h.handle(new, m.WorkerLeaving(reason="bye"))
    assert h.state.by_address["tcp://host:1"].peer == old  # validated after every step
    h.nanny_reports(old, "exited with code 1")
    assert "tcp://host:1" not in h.state.by_address


def test_lineage_is_not_brought_back_for_a_task_that_errs_at_once() -> None:
    h = Harness()
    w1 = h.worker("a")
    c = h.client()
    h.submit(c, {"d": [], "x": ["d"]}, wanted=["x"])
    h.finish("d")
    h.finish("x")  # d is released: the lineage of x
    h.submit(c, {"e": []})
    h.err("e")
    out = h.submit(c, {"a": ["d", "e"]}, wanted=["a"])
    # a errs with e at once, so nothing needs d: it is not computed again.
    assert h.status("a") == "erred" and h.status("d") == "released"
    assert computed(out, w1) == []


def test_a_value_let_go_while_another_lost_one_comes_back_is_not_lost_twice() -> None:
    h = Harness()
    a = h.worker("a")
    c = h.client()
    h.submit(c, {"p": [], "x": ["p"], "y": [], "z": ["x", "y"]}, wanted=["z"])
    h.finish("p")
    h.finish("x")
    h.finish("y")  # a holds x and y; z runs on a
    h.worker("b")
    h.submit(c, {"e": ["p"]}, wanted=["e"])
    h.err("p")
    # Losing a brings x back, which errs with p at once; z errs, so y is let go
    # before its own turn comes.
    h.lose(a)
    assert h.status("z") == "erred" and h.status("y") in ("released", "forgotten")


# -- which tasks a death counts against ----------------------------------------------------


def test_a_death_counts_only_against_the_tasks_it_had_started() -> None:
    h = Harness(allowed_failures=1)
    c = h.client()
    w1 = h.worker("a", nthreads=2)
    h.submit(c, {"run": [], "wait": []})
    assert h.processing(w1) == ["run", "wait"]
    assert h.start("run") == []  # a note, answered by nothing
    w2 = h.worker("b", nthreads=2)
    out = h.lose(w1)
    # "run" had started on a, whose death is its first and last allowed; "wait"
    # had not, and only goes back to work, on b.
    (report,) = sent(out, c, m.KeyErred)
    assert report.key == "run" and report.typename == KILLED
    assert report.message == (
        "task 'run' was processing on 1 workers that died: 'a' (its connection was lost)"
    )
    assert computed(out, w2) == ["wait"] and h.task("wait").deaths is None


def test_a_note_for_a_task_no_longer_there_is_ignored() -> None:
    h = Harness()
    c = h.client()
    w1, w2 = h.worker("a"), h.worker("b")
    h.submit(c, {"x": []})
    assert h.on("x") == w1
    h.finish("x")
    assert h.handle(w1, m.TasksStarted(keys=("x", "unknown"))) == []
    assert not h.state.workers[w1].started
    out = h.lose(w1)  # x's value dies with a and is computed again, but not blamed
    assert computed(out, w2) == ["x"] and h.task("x").deaths is None


def test_a_reported_crash_with_nothing_started_counts_against_all_it_was_given() -> None:
    h = Harness(allowed_failures=1)
    c = h.client()
    w1 = h.worker("a", nthreads=2, nanny=True)
    h.submit(c, {"x": [], "y": []})
    out = h.nanny_reports(w1, "killed by SIGSEGV")
    assert sorted(msg.key for msg in sent(out, c, m.KeyErred)) == ["x", "y"]


# -- nannies: tied to their worker, and watched --------------------------------------------


def test_with_its_nanny_gone_too_a_dead_workers_tasks_move_at_once() -> None:
    h = Harness(death_report_wait=2.0)
    c = h.client()
    w1, w2 = h.worker("a", nanny=True), h.worker("b")
    h.submit(c, {"x": [], "y": []})
    assert h.on("x") == w1
    h.start("x")
    assert h.lose("n:a") == []  # the worker still runs; it will go too
    out = h.lose(w1)
    assert computed(out, w2) == ["x"] and not h.state.dying
    assert h.task("x").deaths == [("a", "its connection was lost, and so was its nanny's")]


def test_a_dying_worker_whose_nanny_goes_is_removed_at_once() -> None:
    h = Harness(death_report_wait=2.0)
    c = h.client()
    w1, w2 = h.worker("a", nanny=True), h.worker("b")
    h.submit(c, {"x": [], "y": []})
    h.start("x")
    out = h.lose(w1)
    assert computed(out) == [] and list(h.state.dying)  # waiting for the report
    out = h.lose("n:a")
    assert computed(out, w2) == ["x"] and not h.state.dying
    assert h.task("x").deaths == [("a", "its connection was lost, and so was its nanny's")]
    assert h.state.next_deadline() is not None  # b's heartbeat deadline only
    assert h.state.next_deadline() == pytest.approx(h.state.workers[w2].last_seen + 30.0)


def test_a_nanny_may_report_only_its_own_worker() -> None:
    h = Harness()
    c = h.client()
    w1, w2 = h.worker("a", nanny=True), h.worker("b", nanny=True)
    h.submit(c, {"x": [], "y": []})
    out = h.handle("n:a", m.WorkerDied(name="b", address="tcp://b:1", cause="lies"))
    assert out == [Disconnect("n:a", "nanny of 'a' reported another worker, 'b'")]
    assert h.on("y") == w2 and "n:a" not in h.state.nannies
    # A worker that cannot be tied to its nanny any more dies without waiting.
    h.start("x")
    out = h.lose(w1)
    assert h.on("x") == w2 and not h.state.dying


def test_a_nanny_must_register_and_keep_its_id_to_itself() -> None:
    h = Harness()
    h.worker("a", nanny=True)
    h.state.connected("n:stranger", "nanny")
    out = h.handle("n:stranger", m.WorkerDied(name="a", address="", cause="lies"))
    assert out == [Disconnect("n:stranger", "worker-died from a nanny before it registered")]
    h.state.connected("n:copy", "nanny")
    out = h.handle("n:copy", m.RegisterNanny(nanny_id="id-a", name="a"))
    assert out == [Disconnect("n:copy", "a nanny with id 'id-a' is registered already")]
    assert h.state.nanny_ids["id-a"].peer == "n:a"


def test_a_silent_nanny_is_disconnected_like_a_silent_worker() -> None:
    h = Harness(heartbeat_timeout=10.0, death_report_wait=2.0)
    w1 = h.worker("a", nanny=True)
    h.now += 8
    h.handle(w1, m.Heartbeat())
    assert h.state.next_deadline() == pytest.approx(h.state.nannies["n:a"].last_seen + 10.0)
    assert h.tick(0.0) == []
    out = h.tick(0.5)
    assert out == [Disconnect("n:a", "nanny of 'a': it sent no heartbeat for 10.5 s")]
    assert not h.state.nannies and w1 in h.state.workers
    assert h.handle("n:a", m.Heartbeat()) == [
        Disconnect("n:a", "heartbeat from a nanny before it registered")
    ]
