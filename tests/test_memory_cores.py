"""Memory pressure in the pure cores: the worker's spill/pause/trim decisions, and
the scheduler routing around paused workers and telling clients when all are."""

from __future__ import annotations

import pytest

from shoal.protocol import messages as m
from shoal.scheduler.model import Status as TS
from shoal.worker.events import MemorySample, Pause, Resume, Spill, Trim
from shoal.worker.memory import TRIM_BYTES, MemoryLimits
from shoal.worker.state import Status
from tests.scheduler_harness import Harness, computed, freed, sent
from tests.test_worker_state import Core, compute, done
from tests.test_worker_state import sent as worker_sent

MiB = 2**20
LIMIT = 1000 * MiB


def memory_core(nthreads: int = 1, **thresholds) -> Core:
    return Core(nthreads, memory=MemoryLimits(LIMIT, **thresholds))


def kinds(out: list) -> list[type]:
    return [type(c) for c in out]


# -- the worker core ------------------------------------------------------------------


def test_no_limit_means_no_spill_and_no_pause() -> None:
    core = Core()
    assert core(MemorySample(rss=10**12, managed=10**12)) == []


def test_managed_memory_over_target_spills_down_to_target() -> None:
    core = memory_core()
    assert core(MemorySample(rss=500 * MiB, managed=590 * MiB)) == []
    out = core(MemorySample(rss=650 * MiB, managed=620 * MiB))
    assert out == [Spill(20 * MiB)]


def test_resident_memory_over_spill_spills_until_under_target() -> None:
    core = memory_core()
    # Little managed memory, much unmanaged: everything managed goes.
    out = core(MemorySample(rss=750 * MiB, managed=100 * MiB))
    assert out == [Spill(100 * MiB)]
    out = core(MemorySample(rss=750 * MiB, managed=500 * MiB))
    assert out == [Spill(150 * MiB)]  # rss - target


def test_pause_stops_starting_tasks_and_fetching_and_resume_restarts_them() -> None:
    core = memory_core()
    w1 = "tcp://w1:1"
    core(compute("a"))
    assert core.status("a") is Status.EXECUTING
    core(compute("b"))  # the one slot is taken: b is ready
    out = core(MemorySample(rss=850 * MiB, managed=0, running=("a",)))
    assert kinds(out) == [Pause, type(out[1])]
    assert worker_sent(out) == [m.WorkerPaused(memory=850 * MiB, limit=LIMIT, running=("a",))]
    assert core.state.paused
    core(done("a"))
    assert core.status("b") is Status.READY  # not started while paused
    out = core(compute("c", deps=["x"], who_has={"x": (w1,)}))
    assert core.status("x") is Status.FETCH and out == []  # nor fetched
    # Resumed at the threshold: b starts, x is fetched.
    out = core(MemorySample(rss=800 * MiB, managed=0))
    assert kinds(out)[0] is Resume and not core.state.paused
    assert core.status("b") is Status.EXECUTING and core.status("x") is Status.FLIGHT


def test_resume_starts_what_waited() -> None:
    core = memory_core()
    core(MemorySample(rss=900 * MiB, managed=0))
    core(compute("a"))
    assert core.status("a") is Status.READY
    out = core(MemorySample(rss=700 * MiB, managed=0))
    assert kinds(out)[0] is Resume
    assert worker_sent(out)[0] == m.WorkerResumed(memory=700 * MiB)
    assert core.status("a") is Status.EXECUTING
    assert [c.key for c in out if type(c).__name__ == "Execute"] == ["a"]


def test_a_paused_worker_pauses_once() -> None:
    core = memory_core()
    assert kinds(core(MemorySample(rss=900 * MiB, managed=0))).count(Pause) == 1
    out = core(MemorySample(rss=950 * MiB, managed=0))
    assert Pause not in kinds(out) and worker_sent(out) == []


def test_thresholds_can_be_turned_off() -> None:
    core = memory_core(target=None, spill=None, pause=None)
    assert core(MemorySample(rss=990 * MiB, managed=990 * MiB)) == []


def test_trim_after_large_frees() -> None:
    core = Core()
    assert core(MemorySample(rss=0, managed=0, freed=TRIM_BYTES // 2)) == []
    assert core(MemorySample(rss=0, managed=0, freed=TRIM_BYTES // 2)) == [Trim()]
    assert core(MemorySample(rss=0, managed=0, freed=TRIM_BYTES // 2)) == []


@pytest.mark.parametrize(
    "thresholds",
    [{"target": 0.0}, {"spill": 1.5}, {"pause": -1}, {"terminate": float("nan")}],
)
def test_thresholds_out_of_range_are_refused(thresholds) -> None:
    with pytest.raises(ValueError, match="fraction must be above 0 and at most 1"):
        MemoryLimits(LIMIT, **thresholds)


def test_a_threshold_of_the_wrong_type_is_refused() -> None:
    with pytest.raises(TypeError, match="memory pause fraction"):
        MemoryLimits(LIMIT, pause="high")  # type: ignore[arg-type]


# -- the scheduler core -----------------------------------------------------------------


def paused(h: Harness, peer: str, running: tuple = ()) -> list:
    return h.handle(peer, m.WorkerPaused(memory=900 * MiB, limit=LIMIT, running=running))


def test_a_paused_worker_gets_no_new_tasks_and_its_unstarted_ones_move() -> None:
    h = Harness()
    a = h.worker("a", nthreads=2)
    b = h.worker("b", nthreads=2)
    c = h.client()
    out = h.submit(c, {f"t{i}": [] for i in range(6)})
    on_a = h.processing(a)
    assert on_a and h.processing(b)
    running = on_a[0]
    h.start(running)  # a's thread started this one
    out = paused(h, a, running=(running,))
    # Everything else it had goes back and is placed on b (or queued for it).
    assert set(freed(out, a)) == set(on_a) - {running}
    assert h.processing(a) == [running]
    assert not computed(out, a)
    out = h.finish(running)
    assert not computed(out, a) and h.processing(a) == []
    # b takes over the rest of the graph.
    while h.processing(b):
        out = h.finish(h.processing(b)[0])
        assert not computed(out, a)
    assert all(h.status(f"t{i}") == "memory" for i in range(6))
    assert h.state.info()["workers"]["a"]["paused"] is True


def test_a_task_whose_input_is_on_a_paused_worker_runs_elsewhere() -> None:
    h = Harness()
    a = h.worker("a")
    b = h.worker("b")
    c = h.client()
    h.submit(c, {"x": []}, wanted=["x"])
    holder = h.on("x")
    h.finish("x", nbytes=10**9)  # a big input: locality would keep "y" with it
    other = b if holder == a else a
    paused(h, holder)
    out = h.submit(c, {"y": ["x"]}, wanted=["y"])
    assert computed(out, other) == ["y"] and computed(out, holder) == []
    ask = sent(out, other, m.ComputeTask)[0]
    assert ask.who_has == {"x": (h.state.workers[holder].address,)}  # fetched from it


def test_resumed_worker_gets_work_again() -> None:
    h = Harness()
    a = h.worker("a")
    c = h.client()
    paused(h, a)
    out = h.submit(c, {"t": []})
    assert h.status("t") == "queued" and not computed(out)
    out = h.handle(a, m.WorkerResumed(memory=100 * MiB))
    assert computed(out, a) == ["t"]
    assert h.state.info()["workers"]["a"]["paused"] is False


def test_every_worker_paused_is_told_to_the_clients_once() -> None:
    h = Harness()
    a = h.worker("a")
    b = h.worker("b")
    c = h.client()
    idle = h.client("idle")
    h.submit(c, {"t1": [], "t2": [], "t3": []})
    out = paused(h, a, running=tuple(h.processing(a)[:1]))
    assert sent(out, c, m.WorkersPaused) == []
    out = paused(h, b, running=tuple(h.processing(b)[:1]))
    (told,) = sent(out, c, m.WorkersPaused)
    assert (told.workers, told.waiting) == (2, 3)
    assert told.limit == 0 and told.memory == 2 * 900 * MiB
    assert sent(out, idle, m.WorkersPaused) == []  # it waits for nothing
    assert sent(paused(h, b), c, m.WorkersPaused) == []  # once
    # The work already running finishes; the queued task waits, and runs on resume.
    h.finish(h.processing(a)[0])
    h.finish(h.processing(b)[0])
    (left,) = h.keys_in(TS.QUEUED)
    out = h.handle(b, m.WorkerResumed())
    assert computed(out, b) == [left]
    paused(h, b)
    assert len(sent(h.log, c, m.WorkersPaused)) == 2  # a new episode is told again


def test_heartbeats_report_managed_spilled_and_unmanaged_bytes() -> None:
    h = Harness()
    a = h.worker("a")
    h.handle(a, m.Heartbeat(memory=500, managed=300, spilled=7000, unspillable=100))
    info = h.state.info()["workers"]["a"]
    assert (info["memory"], info["managed"], info["unmanaged"]) == (500, 300, 200)
    assert (info["spilled"], info["unspillable"]) == (7000, 100)


def test_the_client_warns_in_words_when_every_worker_is_paused() -> None:
    from shoal.client.link import paused_text

    text = paused_text(m.WorkersPaused(workers=2, waiting=5, memory=900 * MiB, limit=1000 * MiB))
    assert text.startswith("all 2 workers are paused for memory (900 of 1000 MiB in use): 5 task")
