"""Ready tasks no worker can run: their clients are told; no_workers_timeout fails them."""

from __future__ import annotations

from shoal.protocol import messages as m
from shoal.scheduler.model import Send
from tests.scheduler_harness import Harness, computed, sent
from tests.test_scheduler_state import scenario

GPU = {"GPU": 1.0}


def stalled(keys: tuple, waited: float, workers: int = 1, **needs: object) -> m.TasksStalled:
    return m.TasksStalled(keys=keys, count=len(keys), waited=waited, workers=workers, **needs)


def test_a_task_asking_for_a_resource_nobody_offers_is_reported_after_the_delay() -> None:
    h = Harness(no_worker_warning=5.0)
    h.worker("cpu")
    c = h.client()
    assert h.submit(c, {"g": []}, resources={"g": GPU}) == []
    since = h.now
    assert h.state.next_deadline() == since  # dated by the next tick, at once
    assert h.tick() == []
    assert h.state.next_deadline() == since + 5.0
    assert h.tick(4.5) == []
    out = h.tick(0.5)
    assert out == [Send(c, stalled(("g",), 5.0, resources=GPU))]
    assert h.tick(20.0) == []  # once per stall; the task keeps waiting
    assert h.status("g") == "queued"


@scenario
def test_no_workers_timeout_fails_the_stalled_task_with_no_valid_worker() -> None:
    h = Harness(no_worker_warning=5.0, no_workers_timeout=8.0)
    h.worker("cpu")
    c = h.client()
    h.submit(c, {"g": [], "after": ["g"]}, resources={"g": GPU}, wanted=["after"])
    h.tick()
    assert h.tick(5.0) == [Send(c, stalled(("g",), 5.0, resources=GPU))]
    assert h.state.next_deadline() == h.now + 3.0
    out = h.tick(3.0)
    message = (
        "task 'g' waited 8.0 s for a worker with GPU=1, and none of the 1 workers has it "
        "(no_workers_timeout)"
    )
    assert out == [
        Send(
            c,
            m.KeyErred(
                key="after",
                typename="shoal.errors.NoValidWorker",
                message=message,
                traceback="",
                exception=None,
                blame="g",
            ),
        )
    ]
    assert h.status("after") == "erred"
    assert h.status("g") == "erred"
    assert not h.state.stalls and not h.state.placement.unrunnable


def test_a_worker_that_can_run_it_joining_in_time_ends_the_stall() -> None:
    h = Harness(no_worker_warning=5.0, no_workers_timeout=8.0)
    h.worker("cpu")
    c = h.client()
    h.submit(c, {"g": []}, resources={"g": GPU})
    h.tick()
    h.worker("gpu", resources=GPU)
    assert computed(h.out, "w:gpu") == ["g"]
    assert h.tick(10.0) == []
    assert not h.state.stalls


def test_tasks_restricted_to_a_worker_that_left_stall_and_dependents_count() -> None:
    h = Harness(no_worker_warning=2.0)
    w = h.worker("w1")
    c = h.client()
    h.submit(c, {"busy": [], "x": [], "y": ["x"]}, restrict={"busy": ("w1",), "x": ("w1",)},
             wanted=["busy", "y"])  # fmt: skip
    # Slots: two on w1 (depth 2) for busy and x; fill it so that x would queue.
    assert h.processing(w) == ["busy", "x"]
    h.submit(c, {"z": []}, restrict={"z": ("w1",)})
    assert h.status("z") == "queued"
    assert h.state.next_deadline() != h.now  # queued for room, not stalled
    h.handle(w, m.WorkerLeaving())
    assert h.keys_in(h.task("x").status) == ["busy", "x", "z"]
    h.tick()
    out = h.tick(2.0)
    needs = {"restrict": ("w1",), "workers": 0}
    assert sent(out, c, m.TasksStalled) == [stalled(("busy", "x", "z"), 2.0, **needs)]


def test_a_stalled_task_released_before_the_delay_is_never_reported() -> None:
    h = Harness(no_worker_warning=5.0, no_workers_timeout=8.0)
    h.worker("cpu")
    c = h.client()
    h.submit(c, {"g": []}, resources={"g": GPU})
    h.tick()
    h.handle(c, m.ReleaseFutures(keys=("g",)))
    assert h.status("g") == "forgotten"
    assert h.tick(10.0) == []
    assert not h.state.stalls and not h.state.placement.unrunnable


def test_only_the_clients_waiting_on_a_stalled_task_hear_of_it() -> None:
    h = Harness(no_worker_warning=1.0)
    h.worker("cpu")
    c1, c2 = h.client("one"), h.client("two")
    h.submit(c1, {"g": []}, resources={"g": GPU})
    h.submit(c2, {"plain": []})
    h.tick()
    out = h.tick(1.0)
    assert [cmd.peer for cmd in out] == [c1]
