"""Running one task (results, errors, nested specs, caches) and the thread pool."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import numpy as np
import pytest

from shoal.protocol.messages import INLINE_VALUE_BYTES, TaskErred, TaskFinished
from shoal.protocol.serialize import Serialized, deserialize, serialize
from shoal.protocol.taskspec import ArgSpec, Call, Ref
from shoal.worker.events import NO_OBJECT, Execute, ExecutionDone, Value
from shoal.worker.execute import Executor, FunctionCache, ThreadPool

WAIT_S = 10.0
LOADS: list[str] = []


def _loaded(tag: str) -> str:
    LOADS.append(tag)
    return tag


class CountsLoads:
    """Unpickling one appends to LOADS."""

    def __reduce__(self):
        return (_loaded, ("loaded",))


class Unpicklable(Exception):
    def __init__(self, msg: str) -> None:
        super().__init__(msg)
        self.lock = threading.Lock()


class NeedsTwoArgs(Exception):
    """Does not unpickle the usual way: __init__ wants two arguments, args holds one."""

    def __init__(self, a: str, b: str) -> None:
        super().__init__(f"{a}/{b}")
        self.a, self.b = a, b


# Module-level so that tasks refer to them rather than pickling a copy.
RELEASE_STUCK = threading.Event()
STUCK_STARTED = threading.Event()


def stuck() -> int:
    STUCK_STARTED.set()
    RELEASE_STUCK.wait(WAIT_S)
    return 0


def add(x: int, y: int) -> int:
    return x + y


def boom(msg: str) -> None:
    raise ValueError(msg)


def spec(*args: object, walk: bool = False, **kwargs: object) -> Serialized:
    return serialize(ArgSpec(args, kwargs, walk))


def run(func, args: Serialized, deps=(), executor: Executor | None = None):
    return (executor or Executor()).run("k", serialize(func), args, tuple(deps))


def test_success_small_result_travels_inline() -> None:
    outcome, value = run(add, spec(2, 3))
    assert type(outcome) is TaskFinished
    assert (outcome.key, outcome.typename) == ("k", "int")
    assert outcome.duration > 0
    assert deserialize(outcome.value) == 5
    assert value.obj == 5 and value.payload == outcome.value
    assert outcome.nbytes == value.payload.nbytes <= INLINE_VALUE_BYTES


def test_large_result_stays_here() -> None:
    outcome, value = run(np.arange, spec(10_000))
    assert type(outcome) is TaskFinished
    assert outcome.value is None and outcome.typename == "numpy.ndarray"
    assert outcome.nbytes == value.payload.nbytes >= 80_000
    assert value.obj is not NO_OBJECT


def test_exception_is_reported_with_traceback_and_pickled() -> None:
    outcome, value = run(boom, spec("went wrong"))
    assert value is None and type(outcome) is TaskErred
    assert outcome.typename == "builtins.ValueError"
    assert outcome.message == "went wrong"
    assert "in boom" in outcome.traceback and "ValueError: went wrong" in outcome.traceback
    exc = deserialize(outcome.exception)
    assert type(exc) is ValueError and exc.args == ("went wrong",)


def test_exception_that_cannot_travel_is_described_only() -> None:
    def raises() -> None:
        raise Unpicklable("no pickling")

    outcome, _ = run(raises, spec())
    assert type(outcome) is TaskErred
    assert outcome.typename == f"{__name__}.Unpicklable"
    assert outcome.exception is None and outcome.traceback


def test_exception_with_other_constructor_arguments_travels_as_itself() -> None:
    def raises() -> None:
        raise NeedsTwoArgs("a", "b")

    outcome, _ = run(raises, spec())
    assert outcome.typename == f"{__name__}.NeedsTwoArgs"
    exc = deserialize(outcome.exception)
    assert type(exc) is NeedsTwoArgs and exc.args == ("a/b",)
    assert (exc.a, exc.b) == ("a", "b")


def test_system_exit_in_a_task_is_an_error_not_an_exit() -> None:
    outcome, _ = run(lambda: exit(3), spec())
    assert outcome.typename == "builtins.SystemExit" and outcome.message == "3"


def test_unpicklable_result_errs_naming_serialization() -> None:
    outcome, value = run(threading.Lock, spec())
    assert value is None and type(outcome) is TaskErred
    assert outcome.typename == "shoal.errors.SerializationError"
    assert "result of task 'k'" in outcome.message and "lock" in outcome.message


def test_arguments_that_do_not_unpickle_err() -> None:
    outcome, _ = run(add, Serialized("x", [b"not a pickle"]))
    assert outcome.typename == "shoal.errors.SerializationError"
    assert "arguments of task 'k'" in outcome.message


def test_nested_calls_and_references_resolve() -> None:
    args = spec(Ref("a"), Call(add, (Ref("b"), 10), {}), walk=True, extra=[Ref("a"), (Ref("b"),)])
    a = Value(serialize(1))
    b = Value(None, 2)  # a result made here: no unpickling

    def f(x, y, extra):
        return (x, y, extra)

    _, value = run(f, args, deps=[("a", a), ("b", b)])
    assert value.obj == (1, 12, [1, (2,)])
    assert a.obj == 1  # unpickled once, kept for the next task


def test_dependency_is_unpickled_once_across_tasks_and_threads() -> None:
    LOADS.clear()
    dep = Value(serialize(CountsLoads()))
    executor = Executor()
    threads = [
        threading.Thread(target=run, args=(len, spec(Ref("d"), walk=True), [("d", dep)], executor))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S)
    assert LOADS == ["loaded"] and dep.obj == "loaded"


def test_functions_are_cached_by_payload_bytes() -> None:
    cache = FunctionCache(maxsize=2)
    executor = Executor(cache)
    for _ in range(3):  # a fresh payload each time, as off the wire
        executor.run("k", Serialized("f", [bytes(serialize(add).frames[0])]), spec(1, 1), ())
    assert (cache.misses, cache.hits, len(cache)) == (1, 2, 1)
    for func in (len, abs, add):
        cache.get(serialize(func))
    assert len(cache) == 2
    assert cache.get(serialize(add)) is add


# -- the pool -----------------------------------------------------------------------------


def command(key: str, func=add, args: Serialized | None = None) -> Execute:
    return Execute(key, serialize(func), args or spec(1, 2), ())


@pytest.mark.timeout(30)
async def test_pool_runs_tasks_and_delivers_in_bursts() -> None:
    results: dict[str, ExecutionDone] = {}
    calls = 0
    all_done = asyncio.Event()

    def on_done(batch: list[ExecutionDone]) -> None:
        nonlocal calls
        calls += 1
        results.update((e.key, e) for e in batch)
        if len(results) == 500:
            all_done.set()

    pool = ThreadPool(4, on_done, name="test-pool")
    assert sorted(t.name for t in pool.threads) == [f"test-pool-{i}" for i in range(4)]
    for i in range(500):
        pool.submit(command(f"t{i}"))
    async with asyncio.timeout(WAIT_S):
        await all_done.wait()
    assert all(e.value.obj == 3 for e in results.values())
    assert calls < 500  # several completions per wake-up of the loop
    await pool.close()
    assert not any(t.is_alive() for t in pool.threads)
    with pytest.raises(RuntimeError):
        pool.submit(command("late"))


@pytest.mark.timeout(30)
async def test_pool_close_drops_queued_tasks_and_names_stuck_ones(
    caplog: pytest.LogCaptureFixture,
) -> None:
    release, started = RELEASE_STUCK, STUCK_STARTED
    release.clear()
    started.clear()
    delivered: list[str] = []
    pool = ThreadPool(1, lambda batch: delivered.extend(e.key for e in batch))
    pool.submit(command("stuck", stuck, spec()))
    pool.submit(command("queued"))
    assert started.wait(WAIT_S)
    with caplog.at_level(logging.WARNING, logger="shoal.worker.execute"):
        start = time.monotonic()
        await pool.close(timeout=0.2)
    assert time.monotonic() - start < WAIT_S
    assert "'stuck'" in caplog.text
    release.set()
    for thread in pool.threads:
        thread.join(WAIT_S)
        assert not thread.is_alive()
    assert delivered == []  # closed: nothing more reaches the shell
