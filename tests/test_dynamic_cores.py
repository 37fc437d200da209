"""The pure cores' side of tasks that submit tasks and of the cluster-wide helpers:
seceded thread slots in the worker core; task-seceded, datasets, fire-and-forget,
restarts and uploads in the scheduler core. Every step is validated."""

from __future__ import annotations

from shoal.protocol import messages as m
from shoal.protocol.serialize import serialize
from shoal.scheduler.model import Send
from shoal.worker.events import Execute, GrantSlot, ThreadRejoining, ThreadSeceded
from tests.scheduler_harness import Harness
from tests.test_worker_state import Core, compute, done, ran, sent

# -- the worker core: slots ------------------------------------------------------------------


def test_a_seceded_task_gives_its_slot_to_the_next_ready_task() -> None:
    core = Core(nthreads=1)
    assert ran(core(compute("parent"))) == ["parent"]
    assert ran(core(compute("child"))) == []  # the one slot is taken
    out = core(ThreadSeceded("parent"))
    assert sent(out) == [m.TaskSeceded(key="parent")]
    assert ran(out) == ["child"] and core.state.busy() == 1


def test_a_rejoining_task_waits_for_a_slot_ahead_of_ready_tasks() -> None:
    core = Core(nthreads=1)
    core(compute("parent"))
    core(ThreadSeceded("parent"))
    assert ran(core(compute("child"))) == ["child"]
    core(compute("other"))  # ready, behind the rejoin asked next
    assert core(ThreadRejoining("parent")) == []  # child holds the slot
    out = core(done("child"))
    assert [c for c in out if type(c) is GrantSlot] == [GrantSlot("parent")]
    assert ran(out) == []  # "other" waits: the parent has the slot again
    out = core(done("parent"))
    assert ran(out) == ["other"]


def test_seceding_twice_or_after_finishing_changes_nothing() -> None:
    core = Core(nthreads=1)
    core(compute("x"))
    core(ThreadSeceded("x"))
    assert core(ThreadSeceded("x")) == []
    core(done("x"))
    assert core(ThreadSeceded("x")) == []
    # A rejoin the core knows nothing of is granted at once: no thread waits for ever.
    assert core(ThreadRejoining("x")) == [GrantSlot("x")]


def test_many_seceded_parents_never_fill_the_threads() -> None:
    core = Core(nthreads=2)
    started = []
    for i in range(50):
        out = core(compute(f"p{i}"))
        started += ran(out)
        for key in ran(out):
            started += ran(core(ThreadSeceded(key)))
    assert sorted(started) == sorted(f"p{i}" for i in range(50))
    assert core.state.busy() == 0 and len(core.state.seceded) == 50


def test_execute_carries_the_priority_for_what_the_task_submits() -> None:
    core = Core(nthreads=1)
    out = core(compute("x", priority=(-3, 7)))
    assert [c.priority for c in out if type(c) is Execute] == [(-3, 7)]


# -- the scheduler core ------------------------------------------------------------------------


def test_a_seceded_task_no_longer_counts_against_its_worker() -> None:
    h = Harness(initial_depth=1, max_depth=1)
    w = h.worker("a", nthreads=1)
    c = h.client()
    h.submit(c, {"parent": []})
    h.submit(c, {"child": []})
    assert h.status("child") == "queued"
    out = h.handle(w, m.TaskSeceded(key="parent"))
    assert h.status("child") == "processing" and h.on("child") == w
    assert any(type(cmd.msg) is m.ComputeTask for cmd in out if type(cmd) is Send)
    assert h.state.workers[w].started == {h.task("parent"): None}
    h.finish("parent")
    assert not h.state.workers[w].seceded


def test_fire_and_forget_holds_a_key_until_it_is_done() -> None:
    h = Harness()
    w = h.worker("a")
    c = h.client()
    h.submit(c, {"x": [], "y": ["x"]}, wanted=["y"])
    h.handle(c, m.FireAndForget(keys=("y",)))
    h.handle(c, m.ReleaseFutures(keys=("y",)))
    assert h.status("y") == "waiting"  # still wanted, by the keeper
    h.finish("x")
    h.finish("y", worker=w)
    assert h.status("y") == "forgotten" and h.status("x") == "forgotten"
    assert "fire-and-forget" not in h.state.clients


def test_fire_and_forget_of_a_task_that_fails_lets_it_go() -> None:
    h = Harness()
    h.worker("a")
    c = h.client()
    h.submit(c, {"x": []})
    h.handle(c, m.FireAndForget(keys=("x",)))
    h.lose(c)
    assert h.status("x") == "processing"
    h.err("x")
    assert h.status("x") == "forgotten"


def test_datasets_keep_keys_for_other_clients_until_unpublished() -> None:
    h = Harness()
    h.worker("a")
    c, d = h.client("c"), h.client("d")
    h.submit(c, {"x": []})
    h.finish("x")
    payload = serialize(["x"])
    out = h.handle(c, m.PublishDataset(name="ds", keys=("x",), payload=payload, request_id=1))
    assert out == [Send(c, m.DatasetAnswer(request_id=1))]
    out = h.handle(c, m.PublishDataset(name="ds", keys=("x",), payload=payload, request_id=2))
    assert "published already" in out[0].msg.error
    h.lose(c)
    assert h.status("x") == "memory"
    out = h.handle(d, m.GetDataset(name="ds", request_id=3))
    assert out == [Send(d, m.DatasetAnswer(request_id=3, payload=payload, keys=("x",)))]
    out = h.handle(d, m.ListDatasets(request_id=4))
    assert out[0].msg.names == ("ds",)
    h.handle(d, m.UnpublishDataset(name="ds", request_id=5))
    assert h.status("x") == "forgotten"
    out = h.handle(d, m.GetDataset(name="ds", request_id=6))
    assert out[0].msg.error == "no dataset 'ds'"


def test_restart_cancels_every_key_and_asks_each_nanny() -> None:
    h = Harness()
    wa = h.worker("a", nanny=True)
    h.worker("b")  # no nanny: it stays
    c = h.client()
    h.submit(c, {"x": [], "y": []})
    out = h.handle(c, m.RestartWorkers(request_id=9))
    assert Send(c, m.KeysCancelled(keys=("x", "y"), reason="the cluster restarted")) in out
    assert Send("n:a", m.RestartWorker(reason="the cluster restarted")) in out
    assert Send(c, m.WorkersRestarting(restarting=1, workers=2, request_id=9)) in out
    assert wa not in h.state.workers and not h.state.tasks


def test_uploaded_files_reach_each_worker_that_joins_before_any_task() -> None:
    h = Harness()
    c = h.client()
    out = h.handle(c, m.UploadFile(filename="mod.py", data=b"x = 1\n", request_id=1))
    assert out == [Send(c, m.FileStored(request_id=1))]
    out = h.handle(c, m.UploadFile(filename="../evil.py", data=b"", request_id=2))
    assert "plain name" in out[0].msg.error
    h.submit(c, {"t": []})
    w = h.worker("a")
    kinds = [type(cmd.msg) for cmd in h.out if type(cmd) is Send and cmd.peer == w]
    assert kinds[:3] == [m.WorkerRegistered, m.StoreFile, m.ComputeTask]
