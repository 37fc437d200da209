"""The worker core without I/O: feed events, assert the exact commands, validate() after
every step, and check that the scenarios together walk every allowed transition."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from shoal.errors import InvalidTransition
from shoal.protocol.limits import Limits
from shoal.protocol.messages import (
    AcquireKeys,
    ComputeTask,
    DataFetched,
    DataMissing,
    FreeKeys,
    KeysAcquired,
    TaskErred,
    TaskFinished,
)
from shoal.protocol.serialize import serialize
from shoal.protocol.taskspec import ArgSpec
from shoal.worker.events import (
    DataPut,
    Drop,
    Execute,
    ExecutionDone,
    Fetch,
    FetchDone,
    FetchFailed,
    Hold,
    Restart,
    SendToScheduler,
    Tick,
    Value,
)
from shoal.worker.state import TOO_LARGE_TYPENAME, TRANSITIONS, Status, WorkerState

S = Status
FUNC = serialize(len)
ARGS = serialize(ArgSpec((), {}, False))
# Cores with more records than this check their Hold and Drop commands only as a
# count, not against every record after every event.
FULL_CHECK_KEYS = 2_000
LIVE: list[WorkerState] = []  # every core made since the last clear: for transition coverage


class Core:
    """A WorkerState driven by a fake clock, validated after every event.

    Its Hold and Drop commands are checked against the keys in memory after
    every event (what a store given them holds is exactly those values), then
    left out of what a call returns unless `store_commands`.
    """

    def __init__(self, nthreads: int = 1, *, store_commands: bool = False, **options: Any) -> None:
        self.state = WorkerState(nthreads, history_size=100_000, **options)
        self.now = 0.0
        self.held: dict[object, Value] = {}
        self.store_commands = store_commands
        LIVE.append(self.state)

    def __call__(self, event: object) -> list:
        self.now += 1.0
        out = self.state.handle(event, self.now)
        self.state.validate()
        for command in out:
            if type(command) is Hold:
                assert command.key not in self.held, f"{command.key!r} held twice"
                self.held[command.key] = command.value
            elif type(command) is Drop:
                del self.held[command.key]
                rec = self.state.keys.get(command.key)
                assert rec is None or rec.status is not S.MEMORY, f"{command.key!r} dropped"
        if len(self.state.keys) <= FULL_CHECK_KEYS:  # each step of a long chain: O(n^2)
            memory = {k: r.value for k, r in self.state.keys.items() if r.status is S.MEMORY}
            assert memory.keys() == self.held.keys(), "the store would hold other keys"
            assert all(self.held[k] is v for k, v in memory.items()), "a value not the store's"
        if self.store_commands:
            return out
        return [c for c in out if type(c) is not Hold and type(c) is not Drop]

    def status(self, key: object) -> Status | None:
        rec = self.state.keys.get(key)
        return rec.status if rec is not None else None


def compute(key, deps=(), values=None, who_has=None, priority=(), nbytes=None) -> ComputeTask:
    return ComputeTask(
        key=key,
        func=FUNC,
        args=ARGS,
        deps=tuple(deps),
        values=values or {},
        who_has=who_has or {},
        priority=priority,
        nbytes=nbytes or {},
    )


def done(key, obj: object = 1) -> ExecutionDone:
    payload = serialize(obj)
    msg = TaskFinished(key=key, nbytes=payload.nbytes, typename="int", duration=0.5, value=payload)
    return ExecutionDone(key, msg, Value(payload, obj))


def failed(key) -> ExecutionDone:
    return ExecutionDone(key, TaskErred(key=key, typename="builtins.E", message="m", traceback=""))


def sent(commands: list) -> list:
    return [c.msg for c in commands if type(c) is SendToScheduler]


def ran(commands: list) -> list:
    return [c.key for c in commands if type(c) is Execute]


def fetched(commands: list) -> list:
    return [(c.address, c.keys) for c in commands if type(c) is Fetch]


# -- running ---------------------------------------------------------------------------


def test_task_without_deps_runs_then_stays_in_memory() -> None:
    core = Core()
    assert core(compute("x")) == [Execute("x", FUNC, ARGS, ())]
    event = done("x")
    assert core(event) == [SendToScheduler(event.outcome)]
    assert core.status("x") is S.MEMORY
    assert core.state.value_of("x") is event.value


def test_dependency_held_here_is_used_in_place() -> None:
    core = Core()
    core(compute("a"))
    event = done("a", [1, 2])
    core(event)
    (cmd,) = core(compute("b", deps=["a"], who_has={"a": ("tcp://w1:1",)}))
    assert type(cmd) is Execute
    assert cmd.deps == (("a", event.value),) and cmd.deps[0][1] is event.value
    core(done("b"))
    assert core.status("a") is S.MEMORY  # still wanted by the scheduler


def test_inline_dependency_is_stored_and_dropped_after_use() -> None:
    core = Core()
    payload = serialize(41)
    (cmd,) = core(compute("b", deps=["a"], values={"a": payload}))
    assert cmd.deps[0][0] == "a" and cmd.deps[0][1].payload is payload
    assert core.status("a") is S.MEMORY
    core(done("b"))
    assert core.status("a") is None  # a copy held for b only
    assert core.state.value_of("a") is None


def test_dependencies_from_one_peer_come_in_one_fetch() -> None:
    core = Core(nthreads=2)
    w1, w2 = "tcp://w1:1", "tcp://w2:2"
    out = core(compute("c", deps=["a", "b", "z"], who_has={"a": (w1,), "b": (w1, w2), "z": (w2,)}))
    assert fetched(out) == [(w1, ("a", "b")), (w2, ("z",))]
    assert core.status("c") is S.WAITING
    assert core(FetchDone(w1, ("a", "b"), {"a": serialize(1), "b": serialize(2)})) == []
    out = core(FetchDone(w2, ("z",), {"z": serialize(3)}))
    assert ran(out) == ["c"]
    assert [k for k, _ in out[0].deps] == ["a", "b", "z"]


def test_failed_fetch_tries_the_next_holder() -> None:
    core = Core()
    w1, w2 = "tcp://w1:1", "tcp://w2:2"
    core(compute("t", deps=["a", "b"], who_has={"a": (w1, w2), "b": (w1, w2)}))
    assert fetched(core(FetchFailed(w1, ("a", "b"), "refused"))) == [(w2, ("a", "b"))]
    # an answer lacking a key counts as a miss from that holder
    out = core(FetchDone(w2, ("a", "b"), {"a": serialize(1)}))
    assert sent(out) == [DataMissing(key="b", tried=(w1, w2), tasks=("t",))]
    assert core.state.keys == {}


def test_every_holder_failing_drops_the_task_and_tells_the_scheduler() -> None:
    core = Core()
    w1, w2 = "tcp://w1:1", "tcp://w2:2"
    core(compute("t", deps=["a", "b"], who_has={"a": (w1, w2), "b": (w1,)}))
    out = core(FetchFailed(w1, ("a", "b"), "connection lost"))
    assert sent(out) == [DataMissing(key="b", tried=(w1,), tasks=("t",))]
    assert fetched(out) == []  # a is no longer needed: not fetched from w2
    assert core.state.keys == {}
    assert core(FetchDone(w2, ("a",), {"a": serialize(1)})) == []  # a late answer


def test_dependency_nobody_holds_is_reported_at_once() -> None:
    core = Core()
    assert sent(core(compute("t", deps=["a"]))) == [DataMissing(key="a", tried=(), tasks=("t",))]
    assert core.state.keys == {}


def test_fetches_are_bounded_in_number_and_bytes() -> None:
    core = Core(max_fetches=2, fetch_bytes=100)
    w1, w2, w3 = "tcp://w1:1", "tcp://w2:2", "tcp://w3:3"
    who_has = {"a": (w1,), "b": (w1,), "c": (w1,), "d": (w2,), "e": (w3,)}
    nbytes = {"a": 60, "b": 60, "c": 30, "d": 10, "e": 10}
    out = core(compute("t", deps=list(who_has), who_has=who_has, nbytes=nbytes))
    # a and c fit one request to w1 (b would pass 100 bytes); only two requests at once
    assert fetched(out) == [(w1, ("a", "c")), (w1, ("b",))]
    assert core.status("d") is S.FETCH and core.status("e") is S.FETCH
    out = core(FetchDone(w1, ("b",), {"b": serialize(2)}))
    assert fetched(out) == [(w2, ("d",))]
    out = core(FetchFailed(w2, ("d",), "refused"))
    assert sent(out) == [DataMissing(key="d", tried=(w2,), tasks=("t",))]
    assert fetched(out) == [] and core.status("e") is None  # t is dropped: e is not needed
    assert core(FetchDone(w1, ("a", "c"), {})) == []  # a late answer closes its request
    assert core.state.requests == {} and core.state.keys == {}


def test_the_least_busy_holder_is_asked() -> None:
    core = Core(nthreads=2)
    w1, w2 = "tcp://w1:1", "tcp://w2:2"
    core(compute("s", deps=["a"], who_has={"a": (w1,)}))
    out = core(compute("t", deps=["b"], who_has={"b": (w1, w2)}))
    assert fetched(out) == [(w2, ("b",))]


def test_large_fetches_report_their_bandwidth() -> None:
    core = Core()
    big = serialize(bytes(2**21))
    core(compute("t", deps=["a"], who_has={"a": ("tcp://w1:1",)}))
    out = core(FetchDone("tcp://w1:1", ("a",), {"a": big}))  # one second later
    assert sent(out) == [DataFetched(nbytes=big.nbytes, duration=1.0)]


# -- values over this worker's limits --------------------------------------------------

SMALL = Limits(max_frames=4, max_header_bytes=4096, max_batch_bytes=65536)


def too_large_text(key: str, nbytes: int, holder: str) -> str:
    return (
        f"the value of {key!r} ({nbytes} bytes, held by {holder}) is over the limits this "
        "worker accepts from a peer (max_batch_bytes=65536, max_header_bytes=4096, "
        "max_frames=4)"
    )


def test_a_value_too_large_to_come_here_errs_its_tasks_and_keeps_its_holder() -> None:
    core = Core(limits=SMALL)
    w1 = "tcp://w1:1"
    core(compute("t", deps=["a"], who_has={"a": (w1,)}))
    core(compute("u", deps=["t"]))  # waits here on t
    out = core(FetchDone(w1, ("a",), {}, too_large={"a": 100_000}))
    cause = too_large_text("a", 100_000, w1)
    # w1 is not in `tried`: it has the value, and the scheduler keeps it
    assert out == [
        SendToScheduler(DataMissing(key="a", tried=())),
        SendToScheduler(TaskErred(key="t", typename=TOO_LARGE_TYPENAME, message=cause,
                                  traceback="")),
        SendToScheduler(DataMissing(key="t", tried=())),
        SendToScheduler(TaskErred(key="u", typename=TOO_LARGE_TYPENAME, message=cause,
                                  traceback="")),
    ]  # fmt: skip
    assert core.state.keys == {} and core.state.requests == {}


def test_a_value_too_large_from_one_holder_is_asked_of_the_next() -> None:
    core = Core(limits=SMALL)
    w1, w2 = "tcp://w1:1", "tcp://w2:2"
    core(compute("t", deps=["a", "b"], who_has={"a": (w1, w2), "b": (w1,)}))
    out = core(FetchDone(w1, ("a", "b"), {"b": serialize(2)}, too_large={"a": 100_000}))
    assert out == [Fetch(w2, ("a",))]
    # w2 lacks it: only w2 is reported; the task errs, for w1 holds a value too large
    out = core(FetchDone(w2, ("a",), {}))
    assert out == [
        SendToScheduler(DataMissing(key="a", tried=(w2,))),
        SendToScheduler(TaskErred(key="t", typename=TOO_LARGE_TYPENAME,
                                  message=too_large_text("a", 100_000, w1), traceback="")),
    ]  # fmt: skip
    assert core.state.keys == {}


def test_a_value_too_large_to_acquire_settles_the_copy_and_keeps_the_holder() -> None:
    core = Core(limits=SMALL)
    w1 = "tcp://w1:1"
    core(AcquireKeys(who_has={"a": (w1,)}))
    out = core(FetchDone(w1, ("a",), {}, too_large={"a": 100_000}))
    assert out == [SendToScheduler(DataMissing(key="a", tried=()))]
    assert core.state.keys == {}


# -- replication and scatter -------------------------------------------------------------


def test_acquired_keys_are_fetched_held_and_reported() -> None:
    core = Core()
    w1 = "tcp://w1:1"
    core(compute("block"))
    core(done("block"))
    out = core(AcquireKeys(who_has={"a": (w1,), "block": (w1,)}, nbytes={"a": 8}))
    assert fetched(out) == [(w1, ("a",))]
    assert sent(out) == [KeysAcquired(keys=("block",))]  # held here already
    assert core.status("a") is S.FLIGHT
    out = core(FetchDone(w1, ("a",), {"a": serialize(1)}))
    assert sent(out) == [KeysAcquired(keys=("a",))]
    assert core.state.value_of("a") is not None
    core(FreeKeys(keys=("a", "block")))
    assert core.state.keys == {}


def test_acquiring_a_key_no_holder_gives_is_reported() -> None:
    core = Core()
    out = core(AcquireKeys(who_has={"a": ("tcp://w1:1",)}))
    out = core(FetchFailed("tcp://w1:1", ("a",), "refused"))
    assert sent(out) == [DataMissing(key="a", tried=("tcp://w1:1",), tasks=())]
    assert sent(core(AcquireKeys(who_has={"b": ()}))) == [DataMissing(key="b", tried=())]
    assert core.state.keys == {}


def test_acquiring_a_key_whose_task_is_here_is_settled_at_once() -> None:
    core = Core()
    core(compute("a"))
    core(FreeKeys(keys=("a",)))  # still running, no longer owed
    out = core(AcquireKeys(who_has={"a": ("tcp://w1:1",)}))
    assert sent(out) == [DataMissing(key="a", tried=())] and fetched(out) == []


def test_acquire_freed_in_flight_drops_the_key() -> None:
    core = Core()
    core(AcquireKeys(who_has={"a": ("tcp://w1:1",)}))
    assert core(FreeKeys(keys=("a",))) == []
    assert core.state.keys == {}
    assert core(FetchDone("tcp://w1:1", ("a",), {"a": serialize(1)})) == []


def test_put_values_are_held_until_freed_and_serve_tasks() -> None:
    core = Core()
    core(DataPut({"x": serialize(3)}))
    assert core.status("x") is S.MEMORY and core.state.value_of("x") is not None
    assert ran(core(compute("t", deps=["x"]))) == ["t"]  # no holder needed: it is here
    core(done("t"))
    core(FreeKeys(keys=("x", "t")))
    assert core.state.keys == {}


def test_put_completes_a_fetch_waiting_its_turn() -> None:
    core = Core(max_fetches=1)
    w1 = "tcp://w1:1"
    core(compute("s", deps=["a"], who_has={"a": (w1,)}))
    core(AcquireKeys(who_has={"b": (w1,)}))
    core(compute("t", deps=["c"], who_has={"c": (w1,)}))
    assert core.status("b") is S.FETCH and core.status("c") is S.FETCH
    out = core(DataPut({"b": serialize(1), "c": serialize(2)}))
    assert sent(out) == [KeysAcquired(keys=("b",))]
    assert ran(out) == ["t"]
    assert core.status("b") is S.MEMORY and core.status("c") is S.MEMORY


def test_compute_for_a_key_waiting_to_be_fetched_runs_it_here() -> None:
    for deps in ({}, {"deps": ["z"], "who_has": {"z": ("tcp://w9:9",)}}):
        core = Core(max_fetches=1)
        core(compute("s", deps=["a"], who_has={"a": ("tcp://w1:1",)}))
        core(compute("t", deps=["b"], who_has={"b": ("tcp://w1:1",)}))
        assert core.status("b") is S.FETCH
        core(compute("b", **deps))
        assert core.status("b") is (S.WAITING if deps else S.EXECUTING)


def test_ready_tasks_run_by_priority_then_arrival() -> None:
    core = Core(nthreads=1)
    assert ran(core(compute("block"))) == ["block"]
    for key, prio in [("x", (2,)), ("y", (1, 5)), ("z", (1, 5)), ("w", (0,))]:
        assert core(compute(key, priority=prio)) == []
    order = []
    for key in ["block", "w", "y", "z", "x"]:
        order += ran(core(done(key)))
    assert order == ["w", "y", "z", "x"]


def test_at_most_nthreads_run_at_once() -> None:
    core = Core(nthreads=2)
    started = []
    for i in range(5):
        started += ran(core(compute(f"t{i}")))
    assert started == ["t0", "t1"]
    assert ran(core(done("t1"))) == ["t2"]
    assert len(core.state.executing) == 2


# -- freeing ---------------------------------------------------------------------------


def test_free_in_memory_drops_the_value() -> None:
    core = Core()
    core(compute("x"))
    core(done("x"))
    assert core(FreeKeys(keys=("x", "unknown"))) == []
    assert core.state.keys == {}


def test_free_waiting_task_drops_its_fetch() -> None:
    core = Core()
    core(compute("t", deps=["a"], who_has={"a": ("tcp://w1:1",)}))
    assert core(FreeKeys(keys=("t",))) == []
    assert core.state.keys == {}
    assert core(FetchDone("tcp://w1:1", ("a",), {"a": serialize(1)})) == []


def test_free_ready_task_never_runs() -> None:
    core = Core(nthreads=1)
    core(compute("block"))
    core(compute("t"))
    assert core.status("t") is S.READY
    core(FreeKeys(keys=("t",)))
    assert core.status("t") is None
    assert ran(core(done("block"))) == []


def test_free_executing_task_discards_its_result() -> None:
    core = Core(nthreads=1)
    core(compute("t"))
    core(compute("next"))
    assert core(FreeKeys(keys=("t",))) == []
    assert core.status("t") is S.CANCELLED
    assert core(compute("t2")) == []  # the thread is still busy with t
    out = core(done("t"))
    assert sent(out) == [] and ran(out) == ["next"]
    assert core.status("t") is None


def test_freed_then_recomputed_while_running_reports_once() -> None:
    core = Core()
    core(compute("t"))
    core(FreeKeys(keys=("t",)))
    assert core(compute("t")) == []  # the run under way counts
    assert core.status("t") is S.EXECUTING
    event = done("t")
    assert core(event) == [SendToScheduler(event.outcome)]


def test_cancelled_task_needed_here_is_kept_silently() -> None:
    core = Core(nthreads=2)
    core(compute("a"))
    core(FreeKeys(keys=("a",)))
    core(compute("b", deps=["a"], who_has={"a": ("tcp://w1:1",)}))
    out = core(done("a"))
    assert sent(out) == [] and ran(out) == ["b"]
    core(done("b"))
    assert core.state.keys.keys() == {"b"}


def test_cancelled_task_failing_is_fetched_for_its_dependents() -> None:
    core = Core(nthreads=2)
    core(compute("a"))
    core(FreeKeys(keys=("a",)))
    core(compute("b", deps=["a"], who_has={"a": ("tcp://w1:1",)}))
    out = core(failed("a"))
    assert sent(out) == [] and fetched(out) == [("tcp://w1:1", ("a",))]


def test_cancelled_task_failing_unneeded_is_forgotten() -> None:
    core = Core()
    core(compute("a"))
    core(FreeKeys(keys=("a",)))
    assert core(failed("a")) == []
    assert core.state.keys == {}


def test_free_copy_keeps_it_for_tasks_here() -> None:
    core = Core(nthreads=1)
    core(compute("block"))
    core(compute("b", deps=["a"], values={"a": serialize(1)}))
    assert core(FreeKeys(keys=("a",))) == []
    assert core.status("a") is S.MEMORY


@pytest.mark.parametrize("ready", [False, True])
def test_freed_pending_task_with_dependents_here_is_fetched_instead(ready: bool) -> None:
    core = Core(nthreads=1)
    core(compute("block"))
    deps = {} if ready else {"deps": ["z"], "who_has": {"z": ("tcp://w9:9",)}}
    core(compute("a", **deps))
    assert core.status("a") is (S.READY if ready else S.WAITING)
    core(compute("b", deps=["a"], who_has={"a": ("tcp://w1:1",)}))
    out = core(FreeKeys(keys=("a",)))
    assert fetched(out) == [("tcp://w1:1", ("a",))]
    assert core.status("z") is None


def test_freed_pending_task_with_no_other_holder_fails_its_dependents() -> None:
    core = Core(nthreads=1)
    core(compute("block"))
    core(compute("a"))
    core(compute("b", deps=["a"], who_has={}))  # a is known here: no holder needed
    core(compute("c", deps=["b"]))
    # c waited on b, which now has no holder to fetch from: both are dropped,
    # each report naming the tasks it dropped, outermost first
    assert sent(core(FreeKeys(keys=("a",)))) == [
        DataMissing(key="a", tried=(), tasks=("b",)),
        DataMissing(key="b", tried=(), tasks=("c",)),
    ]
    assert core.state.keys.keys() == {"block"}


# -- other paths -----------------------------------------------------------------------


def test_compute_for_key_in_memory_answers_again() -> None:
    core = Core()
    core(compute("x"))
    event = done("x")
    core(event)
    assert core(compute("x")) == [SendToScheduler(event.outcome)]


def test_compute_for_copy_reports_from_its_payload() -> None:
    core = Core(nthreads=1)
    core(compute("block"))
    payload = serialize("small")
    core(compute("b", deps=["a"], values={"a": payload}))
    (msg,) = sent(core(compute("a")))
    assert msg == TaskFinished(
        key="a", nbytes=payload.nbytes, typename="str", duration=0.0, value=payload
    )
    core(FreeKeys(keys=("a",)))
    assert core.status("a") is S.MEMORY  # b still needs it


def test_duplicate_compute_is_answered_once() -> None:
    core = Core()
    core(compute("t", deps=["a"], who_has={"a": ("tcp://w1:1",)}))
    assert core(compute("t", deps=["a"], who_has={"a": ("tcp://w1:1",)})) == []
    core(FetchDone("tcp://w1:1", ("a",), {"a": serialize(1)}))
    assert core(compute("t")) == []
    assert len(sent(core(done("t")))) == 1


def test_key_being_fetched_is_computed_when_asked() -> None:
    core = Core(nthreads=2)
    w1 = "tcp://w1:1"
    core(compute("b", deps=["a"], who_has={"a": (w1,)}))
    core(compute("c", deps=["x"], who_has={"x": (w1,)}))
    assert ran(core(compute("a"))) == ["a"]  # FLIGHT -> READY
    out = core(compute("x", deps=["z"], who_has={"z": (w1,)}))  # FLIGHT -> WAITING
    assert fetched(out) == [(w1, ("z",))]
    assert core(FetchDone(w1, ("a", "x"), {"a": serialize(0), "x": serialize(0)})) == []
    assert ran(core(done("a"))) == ["b"]


def test_failed_task_needed_here_is_fetched_from_a_holder() -> None:
    core = Core(nthreads=2)
    core(compute("a"))
    core(compute("b", deps=["a"], who_has={"a": ("tcp://w1:1",)}))
    out = core(failed("a"))
    assert [m.key for m in sent(out)] == ["a"]
    assert fetched(out) == [("tcp://w1:1", ("a",))]
    assert ran(core(FetchDone("tcp://w1:1", ("a",), {"a": serialize(2)}))) == ["b"]


def test_failed_task_is_reported_and_forgotten() -> None:
    core = Core()
    core(compute("a"))
    event = failed("a")
    assert core(event) == [SendToScheduler(event.outcome)]
    assert core.state.keys == {}


def test_inline_value_arriving_while_fetching_is_taken() -> None:
    core = Core(nthreads=2)
    core(compute("b", deps=["a"], who_has={"a": ("tcp://w1:1",)}))
    out = core(compute("c", deps=["a"], values={"a": serialize(5)}))
    assert ran(out) == ["b", "c"]
    assert core(FetchDone("tcp://w1:1", ("a",), {"a": serialize(5)})) == []


def test_bugs_raise() -> None:
    core = Core()
    with pytest.raises(TypeError):
        core.state.handle(object(), 0.0)
    with pytest.raises(InvalidTransition):
        core.state.handle(done("never-sent"), 0.0)
    core(compute("x"))
    core(done("x"))
    with pytest.raises(InvalidTransition, match="memory -> executing"):
        core.state._move(core.state.keys["x"], S.EXECUTING)


def test_history_is_bounded_and_explains() -> None:
    state = WorkerState(1, history_size=3)
    state.handle(compute("x"), 7.0)
    state.handle(done("x"), 8.0)
    assert list(state.history) == [
        ("x", S.RELEASED, S.READY, "ComputeTask-1", 7.0),
        ("x", S.READY, S.EXECUTING, "ComputeTask-1", 7.0),
        ("x", S.EXECUTING, S.MEMORY, "ExecutionDone-2", 8.0),
    ]
    state.handle(FreeKeys(keys=("x",)), 9.0)
    assert len(state.history) == 3


def test_same_events_same_commands() -> None:
    def run() -> list[str]:
        core = Core(nthreads=2)
        events = [
            compute("c", deps=["a", "b"], who_has={"a": ("w1", "w2"), "b": ("w2",)}),
            compute("d", priority=(3,)),
            compute("e", priority=(1,)),
            compute("f", priority=(1,)),
            FetchFailed("w1", ("a",), "x"),
            FetchDone("w2", ("a", "b"), {"a": serialize(1), "b": serialize(2)}),
            done("d"),
            FreeKeys(keys=("f", "c")),
            done("e"),
        ]
        return [repr(core(event)) for event in events]

    first = run()
    assert run() == first


def test_every_transition_is_exercised() -> None:
    LIVE.clear()
    for name, test in list(globals().items()):
        if name.startswith("test_") and test not in (
            test_every_transition_is_exercised,
            test_a_transition_outside_the_table_raises,  # moves only by hand
        ):
            params = getattr(test, "pytestmark", [])
            if params:
                for ready in (False, True):
                    test(ready)
            else:
                test()
    seen = {(entry[1], entry[2]) for state in LIVE for entry in state.history}
    assert not TRANSITIONS - seen, sorted(TRANSITIONS - seen)
    assert seen <= TRANSITIONS


# -- timeouts ------------------------------------------------------------------------------


def timed(key: object, seconds: float) -> ComputeTask:
    return dataclasses.replace(compute(key), timeout=seconds)


def test_a_task_past_its_timeout_fails_once_and_its_late_result_is_discarded() -> None:
    core = Core(2, timeout_grace=5.0, can_restart=True)
    core(timed("slow", 2.0))
    core(compute("quick"))
    started = core.now
    # Not started by a thread yet: its clock has not begun.
    assert core(Tick({})) == []
    assert core(Tick({"slow": started})) == []  # 2 s after it started: at the limit
    out = core(Tick({"slow": started}))
    (msg,) = sent(out)
    assert (msg.key, msg.typename) == ("slow", "shoal.errors.TaskTimeout")
    assert msg.message == "task 'slow' ran past its timeout of 2 s (it ran for 3.0 s)"
    assert core.status("slow") is Status.CANCELLED
    assert core(Tick({"slow": started})) == []  # reported once
    # It finishes after all: nothing is sent, the record goes.
    assert core(done("slow")) == []
    assert core.status("slow") is None and not core.state.timed
    # The other task was never touched.
    assert core.status("quick") is Status.EXECUTING


def test_a_task_stuck_past_the_grace_restarts_the_worker_once() -> None:
    core = Core(1, timeout_grace=1.5, can_restart=True)
    core(timed("hang", 1.0))
    started = core.now
    assert core(Tick({"hang": started})) == []  # t+1: at its timeout
    (msg,) = sent(core(Tick({"hang": started})))  # t+2: 1 s over, within the grace
    assert msg.typename == "shoal.errors.TaskTimeout"
    out = core(Tick({"hang": started}))  # t+3: 2 s over
    assert out == [Restart("task 'hang' is still running 2.0 s past its timeout of 1 s")]
    assert core(Tick({"hang": started})) == []


def test_without_a_nanny_a_stuck_task_only_holds_its_thread() -> None:
    core = Core(1, timeout_grace=0.5)
    core(timed("hang", 1.0))
    started = core.now
    for _ in range(5):
        out = core(Tick({"hang": started}))
        assert not any(type(c) is Restart for c in out)


def test_computing_a_key_still_stuck_past_its_timeout_fails_at_once() -> None:
    core = Core(1)
    core(timed("hang", 1.0))
    started = core.now
    core(Tick({"hang": started}))
    core(Tick({"hang": started}))
    core(FreeKeys(keys=("hang",)))
    (msg,) = sent(core(timed("hang", 1.0)))
    assert msg.typename == "shoal.errors.TaskTimeout"
    assert "an earlier run is still stuck here past it" in msg.message


# -- the transition table ---------------------------------------------------------------


def one_key_in_each_status() -> tuple[Core, dict[Status, object]]:
    """A core holding a record in every status but FORGOTTEN."""
    core = Core(nthreads=2, max_fetches=1)
    core(compute("m"))
    core(done("m"))  # memory
    core(compute("x"))  # executing
    core(compute("c"))
    core(FreeKeys(keys=("c",)))  # cancelled: freed while its thread runs it
    core(compute("r"))  # ready: both threads are taken
    core(compute("w", deps=["f"], who_has={"f": ("tcp://h1:1",)}))  # waiting on f, in flight
    core(compute("w2", deps=["g"], who_has={"g": ("tcp://h2:1",)}))  # g: to fetch, one at a time
    core.state._record("new")  # released: made, not yet placed
    by_status = {core.status(key): key for key in ("m", "x", "c", "r", "w", "f", "g", "new")}
    return core, by_status


@pytest.mark.parametrize(
    ("start", "to"),
    [
        (a, b)
        for a in Status
        for b in Status
        if (a, b) not in TRANSITIONS and a is not Status.FORGOTTEN
    ],
)
def test_a_transition_outside_the_table_raises(start: Status, to: Status) -> None:
    core, by_status = one_key_in_each_status()
    assert set(by_status) == set(Status) - {Status.FORGOTTEN}
    rec = core.state.keys[by_status[start]]
    history = len(core.state.history)
    with pytest.raises(InvalidTransition) as info:
        core.state._move(rec, to)
    assert (info.value.key, info.value.start, info.value.finish) == (rec.key, start, to)
    assert rec.status is start and len(core.state.history) == history
    del core.state.keys["new"]  # a released record lives only within one event
    core.state.validate()
