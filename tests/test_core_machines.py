"""Rule-based state machines for both cores: long chains and wide fan-outs, with
finishes, errors, releases, cancels, clients gone and workers lost interleaved.

Each core is validated after every step (the harnesses do it). The chains are
longer than Python's recursion limit allows a recursive cascade to walk.
"""

from __future__ import annotations

import itertools
import os

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from shoal.protocol import messages as m
from shoal.protocol.messages import FreeKeys, TaskErred
from shoal.scheduler.model import Status
from shoal.worker.events import ExecutionDone, FetchDone, FetchFailed, Tick
from shoal.worker.state import Status as WS
from tests.scheduler_harness import Harness
from tests.test_worker_state import Core, compute, done

LONG = 1_500  # a recursive cascade overflows the stack well before this
# More examples with SHOAL_MACHINE_EXAMPLES=N; each example validates tens of thousands of tasks.
EXAMPLES = int(os.environ.get("SHOAL_MACHINE_EXAMPLES", "10"))
MACHINE = settings(
    max_examples=EXAMPLES,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
pytestmark = pytest.mark.timeout(600)
lengths = st.one_of(st.integers(1, 5), st.integers(LONG - 10, LONG))


class SchedulerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.h = Harness(initial_depth=1, max_depth=4)
        self.names = itertools.count()
        self.workers: list[str] = []
        self.client = self.h.client("c0")
        self.join()

    def fresh(self, prefix: str) -> str:
        return f"{prefix}{next(self.names)}"

    def pick(self, data: st.DataObject, keys: list[object]) -> object:
        return data.draw(st.sampled_from(sorted(keys, key=str)))

    def processing(self) -> list[object]:
        return self.h.keys_in(Status.PROCESSING)

    @rule()
    def join(self) -> None:
        self.workers.append(self.h.worker(self.fresh("w"), nthreads=2))

    @precondition(lambda self: self.workers)
    @rule(data=st.data(), politely=st.booleans())
    def worker_goes(self, data: st.DataObject, politely: bool) -> None:
        peer = data.draw(st.sampled_from(self.workers))
        self.workers.remove(peer)
        if politely:
            self.h.handle(peer, m.WorkerLeaving())
        else:
            self.h.lose(peer)

    @rule(length=lengths, data=st.data(), every_key=st.booleans())
    def chain(self, length: int, data: st.DataObject, every_key: bool) -> None:
        prefix = self.fresh("chain")
        keys = [f"{prefix}-{i}" for i in range(length)]
        graph: dict[object, list[object]] = {key: [prev] for prev, key in itertools.pairwise(keys)}
        known = list(self.h.state.tasks)
        head = [self.pick(data, known)] if known and data.draw(st.booleans()) else []
        graph = {keys[0]: head, **graph}
        self.h.submit(self.client, graph, wanted=keys if every_key else keys[-1:])

    @rule(width=lengths)
    def fan_out(self, width: int) -> None:
        root = self.fresh("root")
        graph = {root: [], **{f"{root}-{i}": [root] for i in range(width)}}
        self.h.submit(self.client, graph)

    @precondition(lambda self: self.processing())
    @rule(data=st.data(), fails=st.booleans())
    def outcome(self, data: st.DataObject, fails: bool) -> None:
        key = self.pick(data, self.processing())
        if fails:
            self.h.err(key)
        else:
            self.h.finish(key)

    @precondition(lambda self: self.h.state.clients[self.client].wants)
    @rule(data=st.data(), cancel=st.booleans())
    def let_go(self, data: st.DataObject, cancel: bool) -> None:
        wanted = [ts.key for ts in self.h.state.clients[self.client].wants]
        key = self.pick(data, wanted)
        kind = m.CancelKeys if cancel else m.ReleaseFutures
        self.h.handle(self.client, kind(keys=(key,)))

    @rule()
    def client_goes(self) -> None:
        self.h.lose(self.client)
        assert self.h.state.tasks == {}  # only this client wanted anything
        self.client = self.h.client(self.fresh("c"))

    @invariant()
    def settled_or_pending(self) -> None:
        for ts in self.h.state.clients[self.client].wants:
            assert ts.status is not Status.RELEASED, ts.key

    def teardown(self) -> None:
        """Run everything to its end: every wanted key is in memory or erred."""
        h = self.h
        h.validate = False  # once at the end: the state has thousands of tasks
        if not self.workers:
            self.join()
        for _ in range(10 * len(h.state.tasks) + 10):
            running = self.processing()
            if not running:
                break
            h.finish(running[0])
        h.state.validate()
        for ts in h.state.clients[self.client].wants:
            assert ts.status in (Status.MEMORY, Status.ERRED), (ts.key, ts.status)
        h.lose(self.client)
        assert h.state.tasks == {}
        h.state.validate()


class WorkerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.core = Core(nthreads=2, max_fetches=2)
        self.names = itertools.count()

    def keys(self, *statuses: WS) -> list[object]:
        return sorted(
            (key for key, rec in self.core.state.keys.items() if rec.status in statuses), key=str
        )

    @rule(length=lengths, data=st.data(), remote=st.booleans())
    def chain(self, length: int, data: st.DataObject, remote: bool) -> None:
        """Tasks each waiting on the one before, the first on a remote value or a local key."""
        prefix = f"t{next(self.names)}"
        local = self.keys(*WS)
        if remote or not local:
            first = (f"{prefix}-data", {f"{prefix}-data": ("tcp://h1:1", "tcp://h2:1")})
        else:
            first = (data.draw(st.sampled_from(local)), {})
        previous, who_has = first
        state = self.core.state
        state.validate = lambda: None  # each step checks every record: once, at the end
        for i in range(length):
            key = f"{prefix}-{i}"
            self.core(compute(key, deps=[previous], who_has=who_has))
            previous, who_has = key, {}
        del state.validate
        state.validate()

    @precondition(lambda self: self.core.state.executing)
    @rule(data=st.data(), fails=st.booleans())
    def executed(self, data: st.DataObject, fails: bool) -> None:
        key = data.draw(st.sampled_from(sorted(self.core.state.executing, key=str)))
        if fails:
            erred = TaskErred(key=key, typename="ValueError", message="boom", traceback="")
            self.core(ExecutionDone(key, erred))
        else:
            self.core(done(key))

    @precondition(lambda self: self.core.state.requests)
    @rule(data=st.data(), answered=st.booleans())
    def fetch_settles(self, data: st.DataObject, answered: bool) -> None:
        address, keys = data.draw(st.sampled_from(sorted(self.core.state.requests, key=str)))
        if answered:
            payload = done("x").outcome.value
            self.core(FetchDone(address, keys, {key: payload for key in keys}))
        else:
            self.core(FetchFailed(address, keys, "connection refused"))

    @precondition(lambda self: self.core.state.keys)
    @rule(data=st.data())
    def freed(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(self.keys(*WS)))
        self.core(FreeKeys(keys=(key,)))

    @rule()
    def tick(self) -> None:
        self.core(Tick({}))

    def teardown(self) -> None:
        """Free everything and let every thread and fetch finish: nothing is left."""
        core = self.core
        core.state.validate = lambda: None  # once at the end
        for _ in range(10 * len(core.state.keys) + 10):
            wanted = [k for k, rec in core.state.keys.items() if rec.wanted]
            if wanted:
                core(FreeKeys(keys=tuple(wanted)))
            elif core.state.executing:
                core(done(next(iter(core.state.executing))))
            elif core.state.requests:
                address, keys = next(iter(core.state.requests))
                core(FetchFailed(address, keys, "gone"))
            else:
                break
        type(core.state).validate(core.state)
        assert core.state.keys == {}, sorted(core.state.keys, key=str)[:5]


TestSchedulerMachine = SchedulerMachine.TestCase
TestSchedulerMachine.settings = MACHINE
TestWorkerMachine = WorkerMachine.TestCase
TestWorkerMachine.settings = settings(MACHINE, max_examples=3 * EXAMPLES)
