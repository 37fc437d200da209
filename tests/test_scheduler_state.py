"""The scheduler core, driven message by message: exact commands, validate() after every step."""

from __future__ import annotations

import itertools

import pytest

from shoal.errors import InvalidTransition
from shoal.protocol import codec, frames
from shoal.protocol import messages as m
from shoal.protocol.limits import DEFAULT_LIMITS
from shoal.protocol.serialize import serialize
from shoal.scheduler.model import Disconnect, Send, Status
from shoal.scheduler.state import TRANSITIONS
from tests import payloads
from tests.scheduler_harness import (
    ARGS,
    FUNC,
    Harness,
    computed,
    freed,
    graph_message,
    recording,
    sent,
    started,
)

# Test functions that also run, in one go, under the transition-coverage check.
SCENARIOS = []


def scenario(test):
    SCENARIOS.append(test)
    return test


def two_workers_one_client(**kwargs) -> tuple[Harness, str, str, str]:
    h = Harness(**kwargs)
    w1, w2 = h.worker("a"), h.worker("b")
    return h, w1, w2, h.client()


# -- peers ------------------------------------------------------------------------------


def test_registration_answers_and_counts_workers() -> None:
    h = Harness()
    c = h.client()
    assert h.out == [Send(c, m.ClientRegistered(client_id="client-1", workers=0))]
    w = h.worker("a", nthreads=4, resources={"GPU": 1})
    assert h.out == [
        Send(w, m.WorkerRegistered(name="a")),
        Send(c, m.WorkersChanged(workers=1)),
    ]
    c2 = h.client("d")
    assert h.out == [Send(c2, m.ClientRegistered(client_id="client-2", workers=1))]


def test_duplicate_worker_name_is_refused() -> None:
    h = Harness()
    c = h.client()
    h.worker("a")
    h.state.connected("w:other", "worker")
    out = h.handle("w:other", m.RegisterWorker(name="a", address="tcp://other:1", nthreads=1))
    # The connection stays open so that the refusal is delivered.
    reason = "a worker named 'a' is already registered"
    assert out == [Send("w:other", m.RegistrationRefused(reason=reason))]
    assert list(h.state.workers) == ["w:a"]
    h.state.connected("w:zero", "worker")
    out = h.handle("w:zero", m.RegisterWorker(name="z", address="tcp://z:1", nthreads=0))
    reason = "nthreads must be at least 1, not 0"
    assert out == [Send("w:zero", m.RegistrationRefused(reason=reason))]
    # A refused worker can do nothing else on its connection.
    out = h.handle("w:zero", m.TaskFinished(key="k", nbytes=1, typename="int", duration=0.0))
    assert out == [Disconnect("w:zero", "task-finished from a worker before it registered")]
    assert sent(h.log, c, m.WorkersChanged) == [m.WorkersChanged(workers=1)]
    assert h.lose("w:other") == [] and h.lose("w:zero") == []
    assert list(h.state.workers) == ["w:a"]


@pytest.mark.parametrize(
    ("role", "registered", "msg"),
    [
        ("client", True, m.TaskFinished(key="x", nbytes=1, typename="int", duration=0.0)),
        ("client", True, m.WorkerLeaving()),
        ("client", True, m.RegisterClient(name="again")),
        ("client", True, m.RegisterWorker(name="w", address="tcp://w:1", nthreads=1)),
        ("worker", True, m.SubmitGraph((), (), (), (), (), ())),
        ("worker", True, m.RegisterWorker(name="again", address="tcp://x:1", nthreads=1)),
        ("worker", True, m.ReleaseFutures(keys=("x",))),
        ("worker", False, m.TaskFinished(key="x", nbytes=1, typename="int", duration=0.0)),
        ("worker", False, m.TaskErred(key="x", typename="E", message="", traceback="")),
        ("client", False, m.SubmitGraph((), (), (), (), (), ())),
        ("client", False, m.WhoHas(keys=("x",))),
        ("", False, m.RegisterClient()),
        ("", False, m.Ping(id=1)),
    ],
)
def test_unexpected_messages_disconnect(role: str, registered: bool, msg: m.Message) -> None:
    h = Harness()
    peer = "p"
    if role:
        h.state.connected(peer, role)
    if registered:
        if role == "worker":
            h.handle(peer, m.RegisterWorker(name="w", address="tcp://w:1", nthreads=1))
        else:
            h.handle(peer, m.RegisterClient())
    before = (dict(h.state.workers), dict(h.state.clients), dict(h.state.tasks))
    out = h.handle(peer, msg)
    if registered or not role or msg.op.startswith("register"):
        reason = f"unexpected {msg.op} from a {role or 'peer'}"
    else:
        reason = f"{msg.op} from a {role} before it registered"
    assert out == [Disconnect(peer, reason)]
    assert (dict(h.state.workers), dict(h.state.clients), dict(h.state.tasks)) == before


def test_losing_an_unknown_or_unregistered_peer_changes_nothing() -> None:
    h = Harness()
    h.state.connected("p", "client")
    assert h.lose("p") == []
    assert h.lose("never-seen") == []
    assert h.state.roles == {}


# -- graph ingestion ----------------------------------------------------------------------


@scenario
def test_dependencies_inside_one_message() -> None:
    h, w1, w2, c = two_workers_one_client()
    args = {key: serialize((key, 1), "arguments") for key in "abc"}
    out = h.submit(c, {"a": [], "b": ["a"], "c": ["a", "b"]}, wanted=["c"], args=args)
    assert out == [
        Send(w1, m.ComputeTask(key="a", func=FUNC, args=args["a"], priority=(0, 0))),
    ]
    assert [h.status(k) for k in "abc"] == ["processing", "waiting", "waiting"]
    assert h.task("c").waiting_on == 2
    out = h.finish("a", nbytes=100)
    # b is sent with its dependency's holder; the slot on w1 goes to b (least loaded: tie -> a).
    assert out == [
        Send(w1, m.ComputeTask(key="b", func=FUNC, args=args["b"], deps=("a",), priority=(0, 1))),
    ]
    h.handle(c, m.GetSchedulerInfo())  # an unrelated step in between
    out = h.finish("b", nbytes=50)
    assert sent(out, w1, m.ComputeTask) == [
        m.ComputeTask(key="c", func=FUNC, args=args["c"], deps=("a", "b"), priority=(0, 2))
    ]
    out = h.finish("c", nbytes=7)
    assert sent(out, c) == [
        m.KeyInMemory(key="c", nbytes=7, typename="int", who_has=("tcp://a:1",)),
    ]
    # a and b are dropped from w1 now that c, their last dependent, is done.
    assert freed(out, w1) == ["a", "b"]
    assert h.status("a") == h.status("b") == "released"
    assert computed(h.log, w2) == []


def test_compute_task_names_holders_on_other_workers_and_inline_values() -> None:
    h = Harness()
    w1 = h.worker("a")
    c = h.client()
    h.submit(c, {"big": [], "tiny": []})
    tiny = serialize(3, "result")
    h.finish("big", nbytes=10_000)
    h.finish("tiny", value=tiny)
    h.submit(c, {"x1": [], "x2": []})  # both slots of a
    w2 = h.worker("b")
    out = h.submit(c, {"user": ["big", "tiny"]})
    assert out == [
        Send(
            w2,
            m.ComputeTask(
                key="user",
                func=FUNC,
                args=ARGS,
                deps=("big", "tiny"),
                values={"tiny": tiny},
                who_has={"big": ("tcp://a:1",)},
                priority=(0, 4),
                nbytes={"big": 10_000},
            ),
        )
    ]
    assert h.processing(w1) == ["x1", "x2"]


@scenario
def test_dependencies_on_already_known_keys() -> None:
    h = Harness()
    w = h.worker("a")
    c = h.client()
    h.submit(c, {"a": []})
    out = h.submit(c, {"b": ["a"]})  # a is still processing: b waits for it
    assert computed(out) == [] and h.status("b") == "waiting"
    out = h.finish("a")
    assert computed(out, w) == ["b"]
    out = h.submit(c, {"c": ["a"]})  # a is in memory: c is ready at once
    assert computed(out, w) == ["c"]
    assert h.task("a").pending == 2


@pytest.mark.parametrize(
    ("graph", "cycle"),
    [
        ({"a": ["b"], "b": ["a"]}, {"a", "b"}),
        ({"a": ["a"]}, {"a"}),
        (
            {"x": ["a"], "a": ["b"], "b": ["c"], "c": ["d"], "d": ["a"], "y": []},
            {"a", "b", "c", "d"},
        ),
        ({"ok": [], "p": ["ok", "q"], "q": ["r"], "r": ["p"]}, {"p", "q", "r"}),
    ],
    ids=["2-cycle", "self-loop", "long-cycle-behind-a-root", "cycle-beside-good-keys"],
)
def test_a_cycle_is_rejected_and_nothing_is_created(graph: dict, cycle: set) -> None:
    h = Harness()
    w = h.worker("a")
    c = h.client()
    h.submit(c, {"known": []})
    before = dict(h.state.tasks)
    history = len(h.state.history)
    out = h.submit(c, graph)
    (msg,) = sent(out)
    assert out == [Send(c, msg)] and type(msg) is m.GraphRejected
    assert msg.keys == tuple(graph)
    assert msg.reason.startswith("the graph has a cycle: ")
    named = msg.reason.removeprefix("the graph has a cycle: ").split(" -> ")
    assert named[0] == named[-1] and {eval(k) for k in named} == cycle
    assert h.state.tasks == before and len(h.state.history) == history
    assert computed(h.log, w) == ["known"]


@pytest.mark.parametrize(
    ("msg", "reason"),
    [
        (
            graph_message({"a": ["nowhere"]}),
            "task 'a' depends on 'nowhere', which is not in the graph",
        ),
        (graph_message({"a": []}, wanted=["a", "b"]), "wanted key 'b' is not in the graph"),
        (
            m.SubmitGraph(("a", "a"), (FUNC,), (0, 0), (ARGS, ARGS), ((), ()), ("a",)),
            "key 'a' appears twice in one submission",
        ),
        (
            m.SubmitGraph(("a", "b"), (FUNC,), (0, 0), (ARGS,), ((), ()), ("a",)),
            "column 'args' has 1 entries for 2 keys",
        ),
        (
            m.SubmitGraph(("a",), (FUNC,), (0,), (ARGS,), ((), ()), ("a",)),
            "column 'deps' has 2 entries for 1 keys",
        ),
        (
            m.SubmitGraph(("a",), (FUNC,), (), (ARGS,), ((),), ("a",)),
            "column 'func' has 0 entries for 1 keys",
        ),
        (
            m.SubmitGraph(("a",), (FUNC,), (0,), (ARGS,), ((),), ("a",), priority=(1, 2)),
            "column 'priority' has 2 entries for 1 keys",
        ),
        (
            m.SubmitGraph(("a",), (FUNC,), (1,), (ARGS,), ((),), ("a",)),
            "function index 1 is out of range (1 functions)",
        ),
        (
            m.SubmitGraph(("a",), (FUNC,), (0,), (ARGS,), ((),), ("a",), resources={1: {}}),
            "resources given for task index 1, out of range (1 tasks)",
        ),
        (
            m.SubmitGraph(("a",), (FUNC,), (0,), (ARGS,), ((),), ("a",), retries={0: -1}),
            "negative retries for 'a'",
        ),
    ],
    ids=[
        "missing-dependency",
        "wanted-not-in-graph",
        "duplicate-key",
        "short-args",
        "long-deps",
        "short-func",
        "long-priority",
        "func-index",
        "resources-index",
        "negative-retries",
    ],
)
def test_a_malformed_graph_is_rejected_whole(msg: m.SubmitGraph, reason: str) -> None:
    h = Harness()
    h.worker("a")
    c = h.client()
    out = h.handle(c, msg)
    assert out == [Send(c, m.GraphRejected(keys=msg.wanted, reason=reason))]
    assert h.state.tasks == {} and len(h.state.history) == 0


def test_keys_no_wanted_key_needs_are_not_created() -> None:
    h = Harness()
    h.worker("a", nthreads=8)
    c = h.client()
    out = h.submit(c, {"a": [], "b": ["a"], "z": [], "y": ["z", "a"]}, wanted=["b"])
    assert sorted(h.state.tasks) == ["a", "b"]
    assert computed(out) == ["a"]


def test_tasks_are_ordered_as_listed_or_else_dependencies_first() -> None:
    h = Harness()
    h.worker("a", nthreads=8)
    c = h.client()
    h.submit(c, {"a": [], "b": ["a"], "x": []})  # dependencies first: kept as listed
    h.submit(c, {"r": ["q", "p"], "q": ["p"], "p": [], "y": []})  # sorted (Kahn)
    rank = {key: ts.priority for key, ts in h.state.tasks.items()}
    assert sorted(rank, key=rank.__getitem__) == ["a", "b", "x", "p", "y", "q", "r"]


@scenario
def test_resubmitting_known_keys_reports_at_once() -> None:
    h = Harness()
    w = h.worker("a")
    c1, c2 = h.client("one"), h.client("two")
    h.submit(c1, {"ok": [], "bad": []})
    h.finish("ok", nbytes=3)
    h.err("bad")
    # Known keys keep their first definition; the answer comes at once.
    out = h.handle(c2, graph_message({"ok": ["whatever"], "bad": []}))
    assert out == [
        Send(c2, m.KeyInMemory(key="ok", nbytes=3, typename="int", who_has=("tcp://a:1",))),
        Send(
            c2,
            m.KeyErred(
                key="bad", typename="ValueError", message="boom", traceback="Traceback: 'bad'"
            ),
        ),
    ]
    assert h.task("ok").deps == ()
    assert set(h.task("ok").wanted_by) == {h.state.clients[c1], h.state.clients[c2]}
    # The same client again: reported again, still wanted once.
    out = h.submit(c1, {"ok": []})
    assert sent(out, c1, m.KeyInMemory) and len(h.state.clients[c1].wants) == 2
    assert computed(h.log, w) == ["ok", "bad"]


@scenario
def test_new_tasks_on_released_lineage_recompute_it() -> None:
    h = Harness()
    w = h.worker("a")
    c = h.client()
    h.submit(c, {"a": [], "b": ["a"]}, wanted=["b"])
    h.finish("a")
    out = h.finish("b")
    assert freed(out, w) == ["a"] and h.status("a") == "released"
    out = h.submit(c, {"c": ["a"]})
    assert computed(out, w) == ["a"] and h.status("c") == "waiting"
    assert computed(h.finish("a"), w) == ["c"]
    h.finish("c")
    # Asking for a released key itself brings it back as well.
    h.handle(c, m.ReleaseFutures(keys=("c",)))
    assert h.status("a") == "released"
    out = h.submit(c, {"a": []})
    assert computed(out, w) == ["a"]


# -- reference counting ----------------------------------------------------------------------


@scenario
def test_release_of_a_key_in_memory_frees_it_everywhere() -> None:
    h, w1, _, c = two_workers_one_client()
    h.submit(c, {"x": [], "y": []})
    h.finish("x", nbytes=5)
    out = h.handle(c, m.ReleaseFutures(keys=("x",)))
    assert out == [Send(w1, m.FreeKeys(keys=("x",)))]
    assert "x" not in h.state.tasks and h.state.workers[w1].nbytes == 0
    # Releasing a key the client does not hold (or that is unknown) is a no-op.
    assert h.handle(c, m.ReleaseFutures(keys=("x", "nope"))) == []


@scenario
def test_intermediates_are_freed_after_their_last_dependent() -> None:
    h = Harness()
    w = h.worker("a", nthreads=4)
    c = h.client()
    h.submit(c, {"a": [], "b": ["a"], "c": ["a"]}, wanted=["b", "c"])
    h.finish("a")
    out = h.finish("b")
    assert freed(out) == [] and h.status("a") == "memory" and h.task("a").pending == 1
    out = h.finish("c")
    assert freed(out, w) == ["a"]
    assert h.status("a") == "released" and h.task("a").deps == ()  # kept: lineage of b and c
    h.handle(c, m.ReleaseFutures(keys=("b",)))
    assert h.status("a") == "released"
    out = h.handle(c, m.ReleaseFutures(keys=("c",)))
    assert out == [Send(w, m.FreeKeys(keys=("c",)))]
    assert h.state.tasks == {}


@scenario
def test_releasing_unfinished_work_stops_it() -> None:
    h = Harness()
    w = h.worker("a", nthreads=1)  # 2 slots
    c = h.client()
    h.submit(c, {"a": [], "b": [], "q": [], "x": ["a", "b"]}, wanted=["x", "q"])
    assert h.status("q") == "queued" and h.status("x") == "waiting"
    out = h.handle(c, m.ReleaseFutures(keys=("q", "x")))
    assert out == [Send(w, m.FreeKeys(keys=("a", "b")))]
    assert h.state.tasks == {} and h.state.workers[w].processing == {}
    moves = {(k, a, b) for k, a, b, _, _ in list(h.state.history)[-8:]}
    assert {("q", Status.QUEUED, Status.RELEASED), ("x", Status.WAITING, Status.RELEASED)} <= moves
    assert ("a", Status.PROCESSING, Status.RELEASED) in moves


@scenario
def test_a_lost_client_releases_everything_it_wanted() -> None:
    h = Harness()
    w = h.worker("a", nthreads=4)
    c1, c2 = h.client("one"), h.client("two")
    h.submit(c1, {"shared": [], "mine": [], "run": []})
    h.submit(c2, {"shared": [], "theirs": ["shared"]})
    out = h.finish("shared")
    assert (
        sent(out, c1)
        == sent(out, c2)
        == [m.KeyInMemory(key="shared", nbytes=8, typename="int", who_has=("tcp://a:1",))]
    )
    h.finish("mine")
    out = h.lose(c1)
    assert out == [Send(w, m.FreeKeys(keys=("mine", "run")))]
    assert sorted(h.state.tasks) == ["shared", "theirs"]
    assert h.state.roles.get(c1) is None and c1 not in h.state.clients
    h.finish("theirs")
    out = h.lose(c2)
    assert sorted(freed(out, w)) == ["shared", "theirs"] and h.state.tasks == {}


def test_two_clients_wanting_one_key() -> None:
    h = Harness()
    w = h.worker("a")
    c1, c2 = h.client("one"), h.client("two")
    h.submit(c1, {"k": []})
    h.submit(c2, {"k": []})
    assert computed(h.log, w) == ["k"]
    out = h.finish("k")
    assert [cmd.peer for cmd in out] == [c1, c2]
    assert h.handle(c1, m.ReleaseFutures(keys=("k",))) == []
    assert h.status("k") == "memory"
    assert h.handle(c2, m.ReleaseFutures(keys=("k",))) == [Send(w, m.FreeKeys(keys=("k",)))]
    assert h.state.tasks == {}


# -- errors and retries -------------------------------------------------------------------------


@scenario
def test_a_failed_task_with_retries_left_is_sent_again() -> None:
    h = Harness()
    w1 = h.worker("a")
    c = h.client()
    h.submit(c, {"x": [], "other": []}, retries={"x": 1})
    w2 = h.worker("b")  # idle: the least loaded once x fails on a
    out = h.err("x")
    assert computed(out) == ["x"] and h.on("x") == w2
    assert not sent(out, c)
    assert h.task("x").retries == 0
    out = h.err("x")
    assert out == [
        Send(
            c,
            m.KeyErred(key="x", typename="ValueError", message="boom", traceback="Traceback: 'x'"),
        )
    ]
    assert h.status("x") == "erred" and h.processing(w1) == ["other"]


@scenario
def test_a_failure_errs_its_dependents_with_blame() -> None:
    h = Harness()
    w = h.worker("a", nthreads=2)
    c = h.client()
    exc = serialize(ValueError("boom"), "exception")
    h.submit(c, {"a": [], "b": ["a"], "c": ["b"], "side": []}, wanted=["a", "c", "side"])
    out = h.handle(
        w,
        m.TaskErred(key="a", typename="ValueError", message="boom", traceback="tb", exception=exc),
    )
    err = {"typename": "ValueError", "message": "boom", "traceback": "tb", "exception": exc}
    assert sent(out, c) == [m.KeyErred(key="a", **err), m.KeyErred(key="c", blame="a", **err)]
    assert [h.status(k) for k in "abc"] == ["erred", "erred", "erred"]
    assert computed(out) == []
    # A later graph on an erred key errs at once with the same blame.
    out = h.submit(c, {"d": ["c"]})
    assert sent(out, c) == [m.KeyErred(key="d", blame="a", **err)]
    # Released erred tasks are forgotten.
    h.handle(c, m.ReleaseFutures(keys=("a", "c", "d")))
    assert sorted(h.state.tasks) == ["side"]


@scenario
def test_stale_reports_are_ignored() -> None:
    h, w1, w2, c = two_workers_one_client()
    h.submit(c, {"x": [], "y": []})
    assert h.on("x") == w1 and h.on("y") == w2
    assert h.err("x", worker=w2) == []
    assert h.err("gone", worker=w2) == []
    assert h.status("x") == "processing"
    # A finish from the wrong worker, or of a key the scheduler does not know: free it there.
    assert h.finish("x", worker=w2) == [Send(w2, m.FreeKeys(keys=("x",)))]
    assert h.finish("gone", worker=w1) == [Send(w1, m.FreeKeys(keys=("gone",)))]
    assert h.status("x") == "processing" and h.on("x") == w1


def test_a_retry_on_the_same_worker_is_freed_before_it_is_sent() -> None:
    h = Harness()
    w = h.worker("a")
    c = h.client()
    h.submit(c, {"x": []}, retries={"x": 1})
    out = h.err("x")
    # The worker reads in order: a FreeKeys after the ComputeTask would drop the retry.
    assert out == [
        Send(w, m.FreeKeys(keys=("x",))),
        Send(w, m.ComputeTask(key="x", func=FUNC, args=ARGS, priority=(0, 0))),
    ]


def test_a_repeated_finish_from_the_holder_changes_nothing() -> None:
    h = Harness()
    w = h.worker("a")
    c = h.client()
    h.submit(c, {"x": []})
    h.finish("x")
    assert h.finish("x", worker=w) == []
    assert [ws.peer for ws in h.task("x").who_has] == [w]


def test_a_finish_that_crossed_free_keys_does_not_add_a_holder() -> None:
    h = Harness()
    w1 = h.worker("a")
    c = h.client()
    h.submit(c, {"x": [], "o": []})
    w2 = h.worker("b")
    assert h.on("x") == w1
    assert h.handle(c, m.ReleaseFutures(keys=("x",))) == [Send(w1, m.FreeKeys(keys=("x",)))]
    h.submit(c, {"x": []})
    assert h.on("x") == w2
    h.finish("x")
    # a finished x before it read FreeKeys, and drops x on reading it: its report is stale.
    out = h.finish("x", worker=w1)
    assert out == [Send(w1, m.FreeKeys(keys=("x",)))]
    assert [ws.peer for ws in h.task("x").who_has] == [w2]


# -- cancelling ---------------------------------------------------------------------------------


@scenario
def test_cancelling_a_processing_task() -> None:
    h = Harness()
    w = h.worker("a")
    c = h.client()
    h.submit(c, {"x": []})
    out = h.handle(c, m.CancelKeys(keys=("x", "unknown")))
    # The client knows it cancelled x: only the worker hears of it.
    assert out == [Send(w, m.FreeKeys(keys=("x",)))]
    assert h.state.tasks == {}
    assert h.handle(c, m.CancelKeys(keys=("x",))) == []


@scenario
def test_cancelling_a_key_cancels_what_waits_on_it() -> None:
    h = Harness()
    w = h.worker("a", nthreads=4)
    c1, c2 = h.client("one"), h.client("two")
    h.submit(c1, {"a": [], "b": ["a"], "c": ["b"], "free": []})
    h.submit(c2, {"c": []})
    out = h.handle(c1, m.CancelKeys(keys=("a",)))
    (cancelled,) = sent(out, c1)
    assert sorted(cancelled.keys) == ["b", "c"]  # not a: c1 named it
    assert not sent(out, c2)
    # c2 still wants c: the chain stays and keeps running.
    assert [h.status(k) for k in "abc"] == ["processing", "waiting", "waiting"]
    assert freed(out) == []
    out = h.handle(c2, m.CancelKeys(keys=("a",)))
    assert sent(out, c2) == [m.KeysCancelled(keys=("c",))]
    assert freed(out, w) == ["a"] and sorted(h.state.tasks) == ["free"]


def test_a_slot_freed_by_a_release_goes_to_a_queued_task() -> None:
    h = Harness()
    w = h.worker("a", nthreads=1)  # 2 slots
    c = h.client()
    h.submit(c, {"a": [], "b": [], "c": []})
    assert h.status("c") == "queued"
    out = h.handle(c, m.CancelKeys(keys=("a",)))
    # The worker forgets a and will not report again; nothing else would start c.
    assert computed(out, w) == ["c"]


# -- workers leaving ---------------------------------------------------------------------------


@scenario
def test_a_leaving_worker_hands_its_tasks_over() -> None:
    h, w1, w2, c = two_workers_one_client()
    h.submit(c, {"x": [], "y": [], "z": []})
    assert h.processing(w1) == ["x", "z"] and h.processing(w2) == ["y"]
    out = h.handle(w1, m.WorkerLeaving(reason="bye"))
    # b has one free slot left: x takes it, z waits for the next.
    assert out == [
        Send(w2, m.ComputeTask(key="x", func=FUNC, args=ARGS, priority=(0, 0))),
        Send(c, m.WorkersChanged(workers=1)),
    ]
    assert h.status("z") == "queued"
    assert h.lose(w1) == []  # the connection closing afterwards changes nothing
    assert list(h.state.placement.workers) == ["b"]
    out = h.finish("y")
    assert computed(out, w2) == ["z"]


@scenario
def test_values_only_a_lost_worker_held_are_recomputed() -> None:
    h = Harness()
    w1 = h.worker("a")
    c = h.client()
    h.submit(c, {"a": [], "b": ["a"], "c": ["b"], "d": ["c"], "e": []}, wanted=["d", "e"])
    for key in "abc":
        h.finish(key)
    h.finish("e")
    assert [h.status(k) for k in "abcde"] == [
        "released",
        "released",
        "memory",
        "processing",
        "memory",
    ]
    w2 = h.worker("b")
    out = h.lose(w1)
    # d goes back to waiting, c is lost, and its released ancestors come back first; e is
    # wanted and lost too.
    assert started(out, w2) == ["a", "e"]
    assert [h.status(k) for k in "abcd"] == ["processing", "waiting", "waiting", "waiting"]
    assert sent(out, c) == [m.WorkersChanged(workers=1)]
    for key, after in zip("abc", "bcd", strict=True):
        assert computed(h.finish(key), w2) == [after]
    out = h.finish("d")
    assert sent(out, c, m.KeyInMemory)[0].key == "d"


def test_tasks_of_a_lost_worker_are_not_sent_to_fetch_from_it() -> None:
    h = Harness()
    w1 = h.worker("a")
    c = h.client()
    h.submit(c, {"a": [], "b": ["a"]}, wanted=["b"])
    h.finish("a")
    w2 = h.worker("b")
    out = h.lose(w1)
    # a is lost with w1 and recomputed on w2 first; b waits for it, so no ComputeTask
    # ever names the departed worker as a holder.
    assert computed(out, w2) == ["a"]


@scenario
def test_a_queued_task_whose_input_is_lost_waits_again() -> None:
    h = Harness()
    w1 = h.worker("a")
    c = h.client()
    h.submit(c, {"a": []}, wanted=[])
    h.submit(c, {"a": [], "b": ["a"], "c": ["a"], "d": ["a"]}, wanted=["b", "c", "d"])
    h.finish("a")
    assert h.processing(w1) == ["b", "c"] and h.status("d") == "queued"
    out = h.lose(w1)
    assert [h.status(k) for k in "abcd"] == ["queued", "waiting", "waiting", "waiting"]
    assert computed(out) == [] and sent(out, c) == [m.WorkersChanged(workers=0)]
    w2 = h.worker("b")
    assert computed(h.out, w2) == ["a"]
    assert computed(h.finish("a"), w2) == ["b", "c"]


@scenario
def test_tiny_values_survive_their_worker() -> None:
    h = Harness()
    w1 = h.worker("a")
    c = h.client()
    tiny = serialize(b"small", "result")
    h.submit(c, {"t": [], "user": ["t"]}, wanted=["t", "user"])
    out = h.finish("t", value=tiny)
    assert sent(out, c, m.KeyInMemory) == [
        m.KeyInMemory(key="t", nbytes=8, typename="int", who_has=("tcp://a:1",), value=tiny)
    ]
    w2 = h.worker("b")
    out = h.lose(w1)
    assert out == [
        Send(
            w2,
            m.ComputeTask(
                key="user",
                func=FUNC,
                args=ARGS,
                deps=("t",),
                values={"t": tiny},
                priority=(0, 1),
            ),
        ),
        Send(c, m.WorkersChanged(workers=1)),
    ]
    assert h.status("t") == "memory" and not h.task("t").who_has
    # Only small values are kept: a larger one comes back as a holder only.
    big = serialize(b"x" * (m.INLINE_VALUE_BYTES + 1), "result")
    h.submit(c, {"big": []})
    out = h.finish("big", value=big)
    assert sent(out, c, m.KeyInMemory) == [
        m.KeyInMemory(key="big", nbytes=8, typename="int", who_has=("tcp://b:1",))
    ]
    answer = h.handle(c, m.WhoHas(keys=("t",), request_id=3))
    assert answer == [Send(c, m.WhoHasAnswer(who_has={"t": ()}, request_id=3))]


def test_the_scheduler_never_unpickles_payloads() -> None:
    payloads.UNPICKLED.clear()
    side_effect = serialize(payloads.SideEffect(), "payload")
    h, w1, _, c = two_workers_one_client()
    h.submit(c, {"a": [], "b": ["a"]}, args={"a": side_effect, "b": side_effect})
    h.finish("a", value=side_effect)
    h.lose(w1)
    h.finish("b", value=side_effect)
    h.handle(c, m.GetSchedulerInfo())
    assert payloads.UNPICKLED == []
    assert sent(h.log, c, m.KeyInMemory)[-1].value == side_effect


# -- questions ----------------------------------------------------------------------------------


def test_who_has_answers_with_addresses() -> None:
    h, _, _, c = two_workers_one_client()
    h.submit(c, {"x": [], "y": []})
    h.finish("x")
    out = h.handle(c, m.WhoHas(keys=("x", "y", "nope"), request_id=9))
    assert out == [
        Send(c, m.WhoHasAnswer(who_has={"x": ("tcp://a:1",), "y": (), "nope": ()}, request_id=9))
    ]


def roundtrip(msg: m.Message) -> m.Message:
    decoder = frames.FrameDecoder(DEFAULT_LIMITS)
    for buf in frames.encode_frames(codec.encode_batch([msg])):
        decoder.feed(buf)
    (batch,) = decoder.pop()
    (back,) = codec.decode_batch(batch)
    return back


def test_scheduler_info_is_plain_data() -> None:
    h = Harness(address="tcp://sched:8786")
    w1 = h.worker("a", nthreads=2, resources={"GPU": 1})
    h.state.workers[w1].pid = 0
    c = h.client()
    h.submit(c, {"x": [], "y": [], "z": ["x"]})
    h.finish("x", nbytes=40)
    (out,) = h.handle(c, m.GetSchedulerInfo(request_id=4))
    assert out.peer == c and out.msg.request_id == 4
    info = out.msg.info
    assert info == {
        "address": "tcp://sched:8786",
        "http_address": "",
        "dashboard": "",
        "workers": {
            "a": {
                "address": "tcp://a:1",
                "nthreads": 2,
                "memory_limit": 0,
                "resources": {"GPU": 1},
                "processing": 2,
                "keys": 1,
                "nbytes": 40,
                "pid": 0,
                "host": "",
                "http_address": "",
                "nanny": False,
                "cpu": 0.0,
                "memory": 0,
                "executing": 0,
                "managed": 0,
                "unmanaged": 0,
                "spilled": 0,
                "unspillable": 0,
                "paused": False,
                "gpus": (),
            }
        },
        "clients": 1,
        "tasks": {"memory": 1, "processing": 2},
    }
    assert roundtrip(out.msg) == out.msg


# -- the transition table -----------------------------------------------------------------------


def test_every_transition_in_the_table_is_exercised() -> None:
    import tests.test_scheduler_data  # noqa: F401  (its scenarios join SCENARIOS)
    from tests import test_scheduler_stalls  # noqa: F401

    with recording() as seen:
        for test in SCENARIOS:
            test()
    assert seen <= set(TRANSITIONS), seen - set(TRANSITIONS)
    assert set(TRANSITIONS) - seen == set()


def one_task_in_each_status() -> tuple[Harness, dict[Status, object]]:
    h = Harness()
    h.worker("a")  # 2 slots
    c = h.client()
    h.submit(c, {"r": [], "rd": ["r"]}, wanted=["rd"])
    h.finish("r")
    h.finish("rd")  # r: released, kept as the lineage of rd
    h.submit(c, {"m": []})
    h.finish("m")
    h.submit(c, {"e": []})
    h.err("e")
    h.submit(c, {"p": [], "p2": [], "q": [], "w": ["p"]})
    by_status = {Status(h.status(k)): k for k in ("r", "m", "e", "p", "q", "w")}
    return h, by_status


@pytest.mark.parametrize(
    ("start", "to"),
    [
        (a, b)
        for a, b in itertools.product(Status, Status)
        if (a, b) not in TRANSITIONS and a is not Status.FORGOTTEN
    ],
)
def test_a_transition_outside_the_table_raises(start: Status, to: Status) -> None:
    h, by_status = one_task_in_each_status()
    assert set(by_status) == set(Status) - {Status.FORGOTTEN}
    ts = h.task(by_status[start])
    history = len(h.state.history)
    with pytest.raises(InvalidTransition) as info:
        h.state._move(ts, to)
    assert (info.value.key, info.value.start, info.value.finish) == (ts.key, start, to)
    assert ts.status is start and len(h.state.history) == history
    h.state.validate()
