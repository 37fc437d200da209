"""The scheduler core and copies of values: data missing at a holder, replication,
scattered data, and the bandwidth it learns from fetches."""

from __future__ import annotations

from shoal.protocol import messages as m
from shoal.scheduler.placement import DEFAULT_BANDWIDTH
from tests.scheduler_harness import Harness, computed, freed, sent
from tests.test_scheduler_state import scenario

A, B, C = "tcp://a:1", "tcp://b:1", "tcp://c:1"
WA, WB, WC = "w:a", "w:b", "w:c"


def three_workers() -> tuple[Harness, str]:
    """Workers a, b, c (peers WA, WB, WC; addresses A, B, C) and a client."""
    h = Harness()
    assert (h.worker("a"), h.worker("b"), h.worker("c")) == (WA, WB, WC)
    return h, h.client()


def holders(h: Harness, key: object) -> list[str]:
    return [ws.name for ws in h.task(key).who_has]


# -- a holder that does not give the value --------------------------------------------------


@scenario
def test_data_missing_at_one_holder_places_the_task_again_with_the_others() -> None:
    h, c = three_workers()
    h.submit(c, {"x": []}, restrict={"x": ("a",)})
    h.finish("x", nbytes=10_000)
    h.handle(c, m.Replicate(keys=("x",), n=2, request_id=1))
    h.handle(WB, m.KeysAcquired(keys=("x",)))
    out = h.submit(c, {"t": ["x"]}, restrict={"t": ("c",)})
    assert sent(out, WC, m.ComputeTask)[0].who_has == {"x": (A, B)}
    out = h.handle(WC, m.DataMissing(key="x", tried=(A,), tasks=("t",)))
    assert freed(out, WA) == ["x"] and holders(h, "x") == ["b"]
    (again,) = sent(out, WC, m.ComputeTask)
    assert again.key == "t" and again.who_has == {"x": (B,)}
    assert freed(out, WC) == ["t"]  # sent before the new ComputeTask
    assert [type(msg) for msg in sent(out, WC)] == [m.FreeKeys, m.ComputeTask]


@scenario
def test_data_missing_at_the_only_holder_recomputes_it() -> None:
    h, c = three_workers()
    h.submit(c, {"x": [], "t": ["x"]}, wanted=["t"], restrict={"x": ("a",), "t": ("b",)})
    h.finish("x", nbytes=10_000)
    out = h.handle(WB, m.DataMissing(key="x", tried=(A,), tasks=("t",)))
    assert freed(out, WA) == ["x"]
    assert computed(out) == ["x"] and h.status("t") == "waiting"
    out = h.finish("x", nbytes=10_000)
    assert computed(out, WB) == ["t"]


def test_data_missing_for_a_task_placed_elsewhere_since_changes_nothing() -> None:
    h, c = three_workers()
    h.submit(c, {"x": []}, restrict={"x": ("a",)})
    h.finish("x", nbytes=10_000)
    h.submit(c, {"t": ["x"]}, restrict={"t": ("c",)})
    # b never ran t, and does not hold x: its report moves nothing
    assert h.handle(WB, m.DataMissing(key="x", tried=(B,), tasks=("t",))) == []
    assert h.on("t") == WC and holders(h, "x") == ["a"]


def test_a_worker_missing_a_value_it_was_thought_to_hold_is_no_longer_its_holder() -> None:
    h, c = three_workers()
    h.submit(c, {"x": []}, restrict={"x": ("a",)})
    h.finish("x", nbytes=10_000)
    h.handle(c, m.Replicate(keys=("x",), n=2, request_id=1))
    h.handle(WB, m.KeysAcquired(keys=("x",)))
    out = h.submit(c, {"t": ["x"]}, restrict={"t": ("b",)})
    assert sent(out, WB, m.ComputeTask)[0].who_has == {}  # b is thought to hold x
    out = h.handle(WB, m.DataMissing(key="x", tried=(), tasks=("t",)))
    assert holders(h, "x") == ["a"] and freed(out, WB) == ["x", "t"]
    assert sent(out, WB, m.ComputeTask)[0].who_has == {"x": (A,)}


# -- replication ----------------------------------------------------------------------------


@scenario
def test_replicate_asks_the_emptiest_workers_and_answers_when_copies_are_made() -> None:
    h, c = three_workers()
    h.submit(c, {"x": [], "y": []}, restrict={"x": ("a",), "y": ("b",)})
    h.finish("x", nbytes=100)
    h.finish("y", nbytes=5_000)
    out = h.handle(c, m.Replicate(keys=("x", "gone"), n=2, request_id=7))
    # c holds nothing, b holds y: c is asked for x
    assert sent(out) == [m.AcquireKeys(who_has={"x": (A,)}, nbytes={"x": 100})]
    assert out[0].peer == WC
    out = h.handle(WC, m.KeysAcquired(keys=("x",)))
    assert sent(out, c) == [m.Replicated(copies={"x": 2, "gone": 0}, request_id=7)]
    assert holders(h, "x") == ["a", "c"]
    # every worker: b fetches it as well
    out = h.handle(c, m.Replicate(keys=("x",), n=0, request_id=8))
    assert [cmd.peer for cmd in out] == [WB]
    out = h.handle(WB, m.DataMissing(key="x", tried=(A,)))  # a did not give it
    assert sent(out, c) == [m.Replicated(copies={"x": 1}, request_id=8)]
    assert holders(h, "x") == ["c"] and freed(out, WA) == ["x"]


def test_replicate_to_fewer_copies_frees_the_fullest_holders() -> None:
    h, c = three_workers()
    h.submit(c, {"x": [], "big": []}, restrict={"x": ("a",), "big": ("b",)})
    h.finish("x", nbytes=10)
    h.finish("big", nbytes=10_000)
    h.handle(c, m.Replicate(keys=("x",), n=3, request_id=1))
    h.handle(WB, m.KeysAcquired(keys=("x",)))
    h.handle(WC, m.KeysAcquired(keys=("x",)))
    out = h.handle(c, m.Replicate(keys=("x",), n=1, request_id=2))
    assert freed(out) == ["x", "x"] and freed(out, WB) == ["x"]
    assert holders(h, "x") == ["a"]
    assert sent(out, c) == [m.Replicated(copies={"x": 1}, request_id=2)]


def test_a_worker_leaving_settles_the_copies_it_owed() -> None:
    h, c = three_workers()
    h.submit(c, {"x": []}, restrict={"x": ("a",)})
    h.finish("x", nbytes=100)
    h.handle(c, m.Replicate(keys=("x",), n=3, request_id=3))
    h.handle(WB, m.KeysAcquired(keys=("x",)))
    out = h.lose(WC)
    assert sent(out, c, m.Replicated) == [m.Replicated(copies={"x": 2}, request_id=3)]
    assert h.state.replications == {}


def test_copies_acquired_after_a_release_are_freed() -> None:
    h, c = three_workers()
    h.submit(c, {"x": []}, restrict={"x": ("a",)})
    h.finish("x", nbytes=100)
    h.handle(c, m.Replicate(keys=("x",), n=2, request_id=1))
    h.handle(c, m.ReleaseFutures(keys=("x",)))
    out = h.handle(WB, m.KeysAcquired(keys=("x",)))
    assert freed(out, WB) == ["x"] and h.status("x") == "forgotten"


# -- scattered data -------------------------------------------------------------------------


@scenario
def test_scattered_values_are_held_used_and_freed_everywhere() -> None:
    h, c = three_workers()
    out = h.handle(c, m.AddData(who_has={"s": (A, B)}, nbytes={"s": 800}, typenames={"s": "T"}))
    assert sent(out, c) == [m.KeyInMemory(key="s", nbytes=800, typename="T", who_has=(A, B))]
    assert h.status("s") == "memory" and holders(h, "s") == ["a", "b"]
    out = h.submit(c, {"t": ["s"]})
    (task,) = sent(out, WA, m.ComputeTask)  # a holder runs it: nothing to fetch
    assert task.who_has == {} and task.values == {}
    h.finish("t")
    out = h.handle(c, m.ReleaseFutures(keys=("s",)))
    assert freed(out, WA) == ["s"] and freed(out, WB) == ["s"]
    h.handle(c, m.ReleaseFutures(keys=("t",)))
    assert h.state.tasks == {}


@scenario
def test_scattered_value_lost_with_its_workers_errs_with_data_lost() -> None:
    h, c = three_workers()
    h.handle(c, m.AddData(who_has={"s": (A,)}, nbytes={"s": 800}))
    h.submit(c, {"t": ["s"]}, restrict={"t": ("b",)}, wanted=["t"])
    h.handle(c, m.AddData(who_has={"s": (A,)}, nbytes={"s": 800}))  # again: one copy still
    out = h.lose(WA)
    errors = {msg.key: msg for msg in sent(out, c, m.KeyErred)}
    assert errors.keys() == {"s", "t"}
    assert errors["s"].typename == "shoal.errors.DataLost"
    assert "scatter" in errors["s"].message and errors["t"].blame == "s"
    assert h.status("t") == "erred"


def test_scatter_to_workers_already_gone_errs_at_once() -> None:
    h, c = three_workers()
    out = h.handle(c, m.AddData(who_has={"s": ("tcp://gone:1",)}, nbytes={"s": 8}))
    (err,) = sent(out, c, m.KeyErred)
    assert err.key == "s" and err.typename == "shoal.errors.DataLost"


def test_scatter_of_a_key_in_memory_adds_holders() -> None:
    h, c = three_workers()
    h.handle(c, m.AddData(who_has={"s": (A,)}, nbytes={"s": 8}))
    d = h.client("d")
    out = h.handle(d, m.AddData(who_has={"s": (B,)}, nbytes={"s": 8}))
    assert sent(out, d) == [m.KeyInMemory(key="s", nbytes=8, typename="", who_has=(A, B))]


def test_scatter_of_a_key_being_computed_frees_the_copies() -> None:
    h, c = three_workers()
    h.submit(c, {"s": []}, restrict={"s": ("a",)})
    out = h.handle(c, m.AddData(who_has={"s": (B, C)}, nbytes={"s": 8}))
    assert freed(out) == ["s", "s"] and h.on("s") == WA
    assert sent(out, c) == []  # its own report will tell


def test_fetches_teach_the_bandwidth() -> None:
    h, _ = three_workers()
    assert h.state.placement.bandwidth == DEFAULT_BANDWIDTH
    for _ in range(40):
        h.handle(WA, m.DataFetched(nbytes=2_000_000_000, duration=1.0))
    assert abs(h.state.placement.bandwidth - 2e9) < 1e6
    h.handle(WA, m.DataFetched(nbytes=10, duration=0.0))  # no time measured: ignored
    assert abs(h.state.placement.bandwidth - 2e9) < 1e6
