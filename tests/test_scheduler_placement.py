"""Which worker runs which task: resources, restrictions, load, and the queue of ready tasks."""

from __future__ import annotations

import itertools

import pytest

from shoal.protocol import messages as m
from shoal.scheduler.model import Status, TaskState
from shoal.scheduler.placement import Placement
from shoal.scheduler.queues import ReadyQueue
from tests.scheduler_harness import Harness, computed

GPU = {"GPU": 1.0}


def test_gpu_tasks_go_only_to_the_gpu_worker() -> None:
    h = Harness()
    cpu = h.worker("cpu", nthreads=8)
    gpu = h.worker("gpu", nthreads=1, resources=GPU)
    c = h.client()
    out = h.submit(c, {"g": [], "u": [], "h": ["u"]}, resources={"g": GPU, "h": GPU})
    assert computed(out, gpu) == ["g"] and computed(out, cpu) == ["u"]
    out = h.finish("u")
    assert computed(out, cpu) == [] and h.status("h") == "queued"


def test_resources_are_counted_while_a_task_runs() -> None:
    h = Harness()
    cpu = h.worker("cpu", nthreads=1)
    gpu = h.worker("gpu", nthreads=2, resources=GPU)
    c = h.client()
    out = h.submit(c, {"g1": [], "g2": []}, resources={"g1": GPU, "g2": GPU})
    assert computed(out) == ["g1"] and h.status("g2") == "queued"
    assert h.state.workers[gpu].free == {"GPU": 0.0}
    # gpu has free slots for work without resources meanwhile (cpu is busier by then).
    out = h.submit(c, {"u1": [], "u2": [], "u3": []})
    assert computed(out, cpu) == ["u1", "u3"] and computed(out, gpu) == ["u2"]
    out = h.finish("g1")
    assert computed(out, gpu) == ["g2"]
    assert h.state.workers[gpu].free == {"GPU": 0.0}
    h.finish("g2")
    assert h.state.workers[gpu].free == {"GPU": 1.0}
    assert computed(h.log, cpu) == ["u1", "u3"]


def test_a_task_needing_more_than_any_worker_has_waits() -> None:
    h = Harness()
    h.worker("one-gpu", resources=GPU)
    c = h.client()
    h.submit(c, {"big": []}, resources={"big": {"GPU": 2.0}})
    assert h.status("big") == "queued"
    w = h.worker("two-gpus", resources={"GPU": 2.0})
    assert computed(h.out, w) == ["big"]


@pytest.mark.parametrize("by", ["name", "address"])
def test_restrictions_by_name_or_address(by: str) -> None:
    h = Harness()
    h.worker("a", nthreads=4)
    b = h.worker("b", nthreads=1, address="tcp://10.0.0.2:7000")
    c = h.client()
    where = ("b",) if by == "name" else ("tcp://10.0.0.2:7000",)
    out = h.submit(c, {"x": [], "y": [], "z": []}, restrict={"x": where, "y": where, "z": where})
    assert computed(out, b) == ["x", "y"] and h.status("z") == "queued"
    assert computed(h.finish("x"), b) == ["z"]


def test_the_least_loaded_worker_is_chosen_relative_to_its_threads() -> None:
    h = Harness()
    w1 = h.worker("a", nthreads=1)  # 2 slots
    w4 = h.worker("b", nthreads=4)  # 8 slots
    c = h.client()
    out = h.submit(c, {f"t{i}": [] for i in range(11)})
    # load = processing / nthreads; ties go to the worker that registered first.
    assert computed(out, w1) == ["t0", "t5"]
    assert computed(out, w4) == ["t1", "t2", "t3", "t4", "t6", "t7", "t8", "t9"]
    assert h.status("t10") == "queued"
    assert computed(h.finish("t5"), w1) == ["t10"]


def test_ties_go_to_the_worker_registered_first() -> None:
    h = Harness()
    peers = [h.worker(name) for name in ("zed", "alpha", "mid")]
    c = h.client()
    out = h.submit(c, {"x": [], "y": [], "z": []})
    assert [computed(out, p) for p in peers] == [["x"], ["y"], ["z"]]
    # Constrained tasks break ties the same way.
    out = h.submit(c, {"r": []}, restrict={"r": ("alpha", "mid")})
    assert computed(out) == ["r"] and h.on("r") == "w:alpha"


@pytest.mark.parametrize("constraint", ["resources", "restrict"])
def test_a_task_no_worker_can_run_waits_for_one_to_join(constraint: str) -> None:
    h = Harness()
    cpu = h.worker("cpu", nthreads=4)
    c = h.client()
    kwargs = (
        {"resources": {"x": GPU}} if constraint == "resources" else {"restrict": {"x": ("late",)}}
    )
    out = h.submit(c, {"x": [], "after": ["x"]}, **kwargs)
    assert computed(out) == [] and h.status("x") == "queued"
    assert h.state.workers[cpu].processing == {}
    late = h.worker("late", resources=GPU)
    assert computed(h.out, late) == ["x"]
    # no constraint, both idle: the worker holding its input
    assert computed(h.finish("x"), late) == ["after"]


def test_a_restricted_task_whose_worker_leaves_waits_for_it_to_return() -> None:
    h = Harness()
    h.worker("cpu")
    special = h.worker("special")
    c = h.client()
    h.submit(c, {"x": []}, restrict={"x": ("special",)})
    assert h.on("x") == special
    out = h.handle(special, m.WorkerLeaving())
    assert computed(out) == [] and h.status("x") == "queued"
    h.lose(special)
    again = h.worker("special")
    assert computed(h.out, again) == ["x"]


def test_depth_follows_task_durations() -> None:
    h = Harness()
    w1, w2 = h.worker("a"), h.worker("b")
    c = h.client()
    h.submit(c, {f"t{i}": [] for i in range(1_000)})
    placement = h.state.placement
    assert placement.depth == 2
    assert [len(h.processing(w)) for w in (w1, w2)] == [2, 2]
    # One task far shorter than a round trip does not move it: the mean starts
    # from a prior, and the first report only replaces the finished task.
    out = h.finish("t0", duration=1e-6)
    assert placement.depth == 2 and computed(out, w1) == ["t4"]
    # A run of them raises it one step per report at most; each step fills
    # every worker to the new depth at once.
    depth = 2
    while depth < 16:
        out = h.finish(h.processing(w1)[0], duration=1e-6)
        assert placement.depth in (depth, depth + 1)
        if placement.depth > depth:
            depth = placement.depth
            assert len(computed(out, w2)) == 1
        assert [len(h.processing(w)) for w in (w1, w2)] == [depth, depth]
    # Long tasks: one step down per report; nothing more is sent until the
    # backlog drains below the new depth.
    out = h.finish(h.processing(w1)[0], duration=10.0)
    assert placement.depth == 15 and computed(out) == []
    out = h.finish(h.processing(w2)[0], duration=10.0)
    assert placement.depth == 14 and computed(out) == []


def test_depth_grows_one_step_per_round_trip_at_most() -> None:
    # Reports of very short tasks every 0.3 ms: each would raise the depth, but
    # the first reports after many tasks start together are the shortest ones.
    placement = Placement(initial_depth=2, max_depth=16, round_trip_s=0.002)
    grew = [placement.observe(1e-6, now=i * 3e-4) for i in range(40)]
    times = [i * 3e-4 for i, up in enumerate(grew) if up]
    assert len(times) == placement.depth - 2 >= 2
    assert all(later - earlier >= 0.002 for earlier, later in itertools.pairwise(times))
    # A long task lowers it at once, one step.
    assert not placement.observe(10.0, now=1.0) and placement.depth == len(times) + 1


def test_root_tasks_are_queued_not_flooded() -> None:
    n = 10_000
    h = Harness()
    w1, w2 = h.worker("a"), h.worker("b")
    c = h.client()
    keys = [f"t{i}" for i in range(n)]
    priority = {key: i % 3 for i, key in enumerate(keys)}
    out = h.submit(c, dict.fromkeys(keys, ()), priority=priority)
    depth = h.state.placement.depth
    assert len(computed(out, w1)) == len(computed(out, w2)) == 1 * depth == 2
    assert len(h.keys_in(Status.QUEUED)) == n - 4
    running = set(computed(out))
    # Queued: highest priority first, then submission order.
    order = {key: i for i, key in enumerate(keys)}
    expected = sorted(set(keys) - running, key=lambda k: (-priority[k], order[k]))
    for step in range(30):  # each step validates 10,000 tasks
        key = min(running, key=order.__getitem__)
        worker = h.on(key)
        out = h.finish(key)
        assert [type(cmd.msg) for cmd in out] == [m.KeyInMemory, m.ComputeTask], step
        assert computed(out, worker) == [expected[step]], step
        running.discard(key)
        running.add(expected[step])
        assert len(h.state.workers[w1].processing) == len(h.state.workers[w2].processing) == 2


def test_the_first_wave_of_a_submission_follows_priority() -> None:
    h = Harness()
    w = h.worker("a")  # 2 slots
    c = h.client()
    out = h.submit(c, {f"t{i}": [] for i in range(6)}, priority={"t5": 10, "t4": 5})
    assert computed(out, w) == ["t5", "t4"]


# -- data locality ------------------------------------------------------------------------


def placed_on(h: Harness, key: object) -> str:
    return h.state.tasks[key].processing_on.name


def with_data(sizes: dict[str, tuple[str, int]], workers: str = "abc", **options):
    """Workers named by the letters of `workers`; each key made on the worker named."""
    h = Harness(**options)
    for name in workers:
        h.worker(name, nthreads=2, resources={"GPU": 1.0} if name == "c" else None)
    c = h.client()
    for key, (where, nbytes) in sizes.items():
        h.submit(c, {key: []}, restrict={key: (where,)})
        h.finish(key, nbytes=nbytes, duration=0.0015)
    return h, c


def test_the_worker_holding_most_input_bytes_runs_the_task() -> None:
    h, c = with_data({"x": ("b", 50_000_000), "y": ("c", 1_000_000), "z": ("c", 1_000_000)})
    h.submit(c, {"t": ["x", "y", "z"]})
    assert placed_on(h, "t") == "b"
    h.submit(c, {"u": ["y", "z"]})
    assert placed_on(h, "u") == "c"


def test_resources_and_restrictions_beat_locality() -> None:
    h, c = with_data({"x": ("b", 50_000_000)})
    h.submit(c, {"g": ["x"], "r": ["x"]}, resources={"g": GPU}, restrict={"r": ("a",)})
    assert placed_on(h, "g") == "c" and placed_on(h, "r") == "a"


def test_equal_bytes_go_to_the_worker_that_joined_first() -> None:
    h, c = with_data({"x": ("c", 1_000), "y": ("b", 1_000)})
    h.submit(c, {"t": ["x", "y"]})
    assert placed_on(h, "t") == "b"


def test_a_busy_holder_loses_small_inputs_and_keeps_large_ones() -> None:
    h, c = with_data({"small": ("a", 1_000), "big": ("a", 500_000_000)}, workers="ab")
    h.state.placement.mean_duration = 1.0  # tasks take a second
    h.submit(c, {"busy": []}, restrict={"busy": ("a",)})  # a: 1 task per thread
    h.submit(c, {"t": ["small"]})
    assert placed_on(h, "t") == "b"  # 1 KB moves faster than half a task waits
    h.submit(c, {"u": ["big"]})
    assert placed_on(h, "u") == "a"  # 5 s of transfer at 100 MB/s: a is sooner


def test_a_queued_task_goes_to_the_holder_of_its_inputs_when_it_frees_a_slot() -> None:
    h = Harness()
    wa, wb = h.worker("a"), h.worker("b")
    c = h.client()
    h.submit(c, {"x": []}, restrict={"x": ("a",)})
    h.finish("x", nbytes=50_000_000)
    h.submit(c, {f"f{i}": [] for i in range(4)})  # both workers full (2 slots each)
    h.submit(c, {"hi": []}, priority={"hi": 5})
    h.submit(c, {"t": ["x"]})
    assert h.status("t") == h.status("hi") == "queued"
    out = h.finish(h.processing(wa)[0])
    assert computed(out, wa) == ["t"]  # its own input beats a higher priority elsewhere
    out = h.finish(h.processing(wb)[0])
    assert computed(out, wb) == ["hi"]


def test_an_idle_worker_takes_queued_work_whatever_its_affinity() -> None:
    h = Harness()
    h.worker("a")
    wb = h.worker("b")
    c = h.client()
    h.submit(c, {"x": []}, restrict={"x": ("a",)})
    h.finish("x", nbytes=50_000_000)
    h.submit(c, {f"f{i}": [] for i in range(4)})
    h.submit(c, {"t": ["x"]})
    out = h.finish(h.processing(wb)[0])
    assert computed(out, wb) == ["t"]


def test_a_ready_queue_gives_the_lowest_priority_value_first() -> None:
    tasks = {p: TaskState(f"t{p}", None, None, p) for p in (5, 1, 7, 3, 9, 2)}
    for ts in tasks.values():
        ts.status = Status.QUEUED
    queue = ReadyQueue()
    for p in (1, 3, 5, 2, 7, 9):  # 2 comes out of order
        queue.push((p, tasks[p]))
    tasks[3].status = Status.PROCESSING  # taken meanwhile: its entry is dropped
    taken = []
    while (entry := queue.first()) is not None:
        assert queue.pop() is entry[1]
        taken.append(entry[0])
    assert taken == [1, 2, 5, 7, 9] and len(queue) == 0
