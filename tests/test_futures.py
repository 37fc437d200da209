"""Futures driven without a network: a stub client feeds scheduler reports
into the key table the way the client's loop does, and checks what users see."""

from __future__ import annotations

import asyncio
import gc
import pickle
import threading
import time
import traceback

import pytest

from shoal import Future, as_completed, wait
from shoal.client.link import SchedulerLink
from shoal.client.state import KeyTable
from shoal.errors import (
    CommClosedError,
    FutureCancelled,
    GraphError,
    RemoteTraceback,
    TaskFailed,
)
from shoal.protocol.messages import (
    GraphRejected,
    KeyErred,
    KeyInMemory,
    KeysCancelled,
    WorkersChanged,
)
from shoal.protocol.serialize import Serialized, serialize

# Generous bound on any wait in these tests; each completes in milliseconds.
WAIT_S = 10.0


class Stub:
    """The parts of a Client a Future uses, with the real reader's dispatch."""

    def __init__(self, asynchronous: bool = False) -> None:
        self.asynchronous = asynchronous
        self.loop = asyncio.get_running_loop() if asynchronous else None
        self.flushes = 0
        self.store: dict = {}
        self._keys = KeyTable(self._schedule_flush, lambda fn, fut: fn(fut))
        self.link = SchedulerLink(self._keys, "tcp://scheduler:1", WAIT_S)

    def _schedule_flush(self) -> None:
        self.flushes += 1

    def feed(self, *msgs: object) -> None:
        with self._keys.batch():
            for msg in msgs:
                self.link._dispatch(msg)  # type: ignore[arg-type]

    def _fetch(self, states: list) -> dict:
        return {st.key: self.store[st.key] for st in states}

    async def _fetch_async(self, states: list) -> dict:
        return self._fetch(states)

    def _cancel_now(self, keys: list) -> None:
        self.feed(KeysCancelled(keys=tuple(keys), reason="by the test"))


def in_memory(key: object, value: object, inline: bool = True) -> KeyInMemory:
    payload = serialize(value)
    return KeyInMemory(
        key=key,
        nbytes=payload.nbytes,
        typename=payload.typename,
        who_has=("tcp://w:1",),
        value=payload if inline else None,
    )


def erred(key: object, exc: BaseException | None, tb: str = "File 'remote.py', line 7") -> KeyErred:
    return KeyErred(
        key=key,
        typename="ZeroDivisionError",
        message="division by zero",
        traceback=tb,
        exception=serialize(exc) if exc is not None else None,
    )


class Unpicklable(Exception):
    pass


# -- results and errors ----------------------------------------------------------


def test_inline_result() -> None:
    c = Stub()
    f = Future("a", c)
    assert not f.done() and f.status == "pending"
    c.feed(in_memory("a", {"x": [1, 2]}))
    assert f.done() and f.status == "finished"
    assert f.result() == {"x": [1, 2]}
    assert f.exception() is None
    assert "finished" in repr(f) and "'a'" in repr(f)


def test_fetched_result() -> None:
    c = Stub()
    f = Future("big", c)
    c.store["big"] = serialize(b"x" * 5000)
    c.feed(in_memory("big", None, inline=False))
    assert f.result(timeout=WAIT_S) == b"x" * 5000


def test_remote_exception_rebuilt_with_traceback() -> None:
    c = Stub()
    f = Future("a", c)
    c.feed(erred("a", ZeroDivisionError("division by zero")))
    assert f.status == "error"
    with pytest.raises(ZeroDivisionError, match="division by zero") as info:
        f.result()
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "remote.py" in "".join(traceback.format_exception(info.value))
    # Each raise is a fresh exception: tracebacks do not pile up.
    with pytest.raises(ZeroDivisionError) as again:
        f.result()
    assert again.value is not info.value
    assert isinstance(f.exception(), ZeroDivisionError)


def test_exception_that_cannot_be_rebuilt() -> None:
    c = Stub()
    f = Future("a", c)
    g = Future("b", c)
    garbage = Serialized("mod.Missing", [b"not a pickle"])
    c.feed(erred("a", None), KeyErred("b", "mod.Missing", "gone", "tb", exception=garbage))
    for fut, typename in ((f, "ZeroDivisionError"), (g, "mod.Missing")):
        with pytest.raises(TaskFailed) as info:
            fut.result()
        assert info.value.typename == typename
        assert isinstance(info.value.__cause__, RemoteTraceback)


def test_cancelled() -> None:
    c = Stub()
    f = Future("a", c)
    f.cancel()
    assert f.cancelled() and f.done()
    with pytest.raises(FutureCancelled, match="by the test"):
        f.result()
    with pytest.raises(FutureCancelled):
        f.exception()
    c.feed(in_memory("a", 1))  # a late report does not revive it
    assert f.cancelled()


def test_graph_rejected() -> None:
    c = Stub()
    f, g = Future("a", c), Future("b", c)
    c.feed(GraphRejected(keys=("a", "b"), reason="unknown dependency 'z'"))
    for fut in (f, g):
        with pytest.raises(GraphError, match="unknown dependency"):
            fut.result()


def test_timeout() -> None:
    c = Stub()
    f = Future("a", c)
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        f.result(timeout=0.05)
    with pytest.raises(TimeoutError):
        f.exception(timeout=0.01)
    assert time.monotonic() - start < WAIT_S


def test_blocked_result_wakes_when_fed_from_another_thread() -> None:
    c = Stub()
    f = Future("a", c)
    got: list = []
    reader = threading.Thread(target=lambda: got.append(f.result(timeout=WAIT_S)))
    reader.start()
    c.feed(in_memory("a", 42))  # this thread plays the client's loop
    reader.join(WAIT_S)
    assert got == [42]


def test_connection_lost_fails_pending_futures() -> None:
    c = Stub()
    done, pending = Future("a", c), Future("b", c)
    c.feed(in_memory("a", 1))
    c.link._lose("connection to the scheduler at tcp://scheduler:1 lost: reset")
    assert done.result() == 1
    with pytest.raises(CommClosedError, match="tcp://scheduler:1"):
        pending.result(timeout=WAIT_S)


def test_futures_do_not_pickle() -> None:
    c = Stub()
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(Future("a", c))


# -- callbacks -----------------------------------------------------------------------


def test_done_callbacks() -> None:
    c = Stub()
    f = Future("a", c)
    calls: list = []
    f.add_done_callback(lambda fut: calls.append(("before", fut.result())))
    assert calls == []
    c.feed(in_memory("a", 7))
    assert calls == [("before", 7)]
    f.add_done_callback(lambda fut: calls.append(("after", fut.key)))
    assert calls == [("before", 7), ("after", "a")]
    c.feed(in_memory("a", 8))  # a second report runs nothing again
    assert len(calls) == 2


# -- many futures ---------------------------------------------------------------------


def test_as_completed_in_completion_order() -> None:
    c = Stub()
    a, b, b2 = Future("a", c), Future("b", c), Future("b", c)
    c.feed(in_memory("b", 2))
    it = as_completed([a, b, b2], with_results=True)
    first = [next(it), next(it)]
    assert {id(first[0][0]), id(first[1][0])} == {id(b), id(b2)}
    assert [r for _, r in first] == [2, 2]
    c.feed(in_memory("a", 1))
    assert next(it) == (a, 1)
    with pytest.raises(StopIteration):
        next(it)


def test_as_completed_add_and_errors() -> None:
    c = Stub()
    a = Future("a", c)
    ac = as_completed([a])
    c.feed(erred("a", ValueError("bad")))
    assert next(ac) is a
    b = Future("b", c)
    ac.add(b)
    assert ac.count() == 1
    c.feed(in_memory("b", 1))
    assert list(ac) == [b]


def test_wait_all_and_first() -> None:
    c = Stub()
    a, b = Future("a", c), Future("b", c)
    with pytest.raises(TimeoutError):
        wait([a, b], timeout=0.01)
    c.feed(in_memory("a", 1))
    done, not_done = wait([a, b], return_when="FIRST_COMPLETED")
    assert done == {a} and not_done == {b}
    c.feed(erred("b", ValueError("bad")))
    done, not_done = wait([a, b], timeout=WAIT_S)
    assert done == {a, b} and not_done == set()
    with pytest.raises(ValueError):
        wait([a], return_when="SOMETIMES")


def test_wait_wakes_from_another_thread() -> None:
    c = Stub()
    futures = [Future(("k", i), c) for i in range(100)]
    out: list = []
    waiter = threading.Thread(target=lambda: out.append(wait(futures, timeout=WAIT_S)))
    waiter.start()
    c.feed(*(in_memory(("k", i), i) for i in range(50)))
    c.feed(*(in_memory(("k", i), i) for i in range(50, 100)))
    waiter.join(WAIT_S)
    assert len(out[0].done) == 100


def test_twenty_thousand_futures_stay_cheap() -> None:
    c = Stub()
    futures = [Future(("m", i), c) for i in range(20_000)]
    start = time.perf_counter()
    c.feed(*(in_memory(("m", i), i) for i in range(20_000)))
    done, _ = wait(futures, timeout=WAIT_S)
    assert len(done) == 20_000
    assert [f.result() for f in futures[:3]] == [0, 1, 2]
    assert time.perf_counter() - start < WAIT_S


def test_futures_of_two_clients_are_refused() -> None:
    with pytest.raises(ValueError, match="different clients"):
        wait([Future("a", Stub()), Future("a", Stub())])


# -- reference counts -------------------------------------------------------------------


def test_futures_of_one_key_share_state_and_release_once() -> None:
    c = Stub()
    f, g = Future("a", c), Future("a", c)
    assert f._state is g._state
    c.feed(in_memory("a", 1))
    assert g.result() == 1
    del f
    assert c.flushes == 0
    del g
    gc.collect()
    assert c.flushes == 1
    assert c._keys.take_released() == ["a"]
    assert "a" not in c._keys.states


def test_releases_batched_into_one_flush() -> None:
    c = Stub()
    futures = [Future(("r", i), c) for i in range(1000)]
    del futures
    assert c.flushes == 1  # one flush scheduled for the whole lot
    assert len(c._keys.take_released()) == 1000
    assert c._keys.take_released() == []


def test_key_wanted_again_before_the_flush_is_not_released() -> None:
    c = Stub()
    Future("a", c)  # dropped at once
    again = Future("a", c)
    assert c._keys.take_released() == []
    assert again._state is c._keys.states["a"]
    del again
    assert c._keys.take_released() == ["a"]


def test_release_from_another_thread() -> None:
    c = Stub()
    box = [Future("a", c)]
    t = threading.Thread(target=box.clear)
    t.start()
    t.join(WAIT_S)
    assert c._keys.take_released() == ["a"]


def test_unknown_keys_and_other_messages_are_ignored() -> None:
    c = Stub()
    c.feed(in_memory("nobody", 1), erred("nobody", None), WorkersChanged(workers=3))
    assert c.link.workers == 3
    assert c._keys.states == {}


# -- asynchronous client ------------------------------------------------------------------


async def test_await_future_and_async_helpers() -> None:
    c = Stub(asynchronous=True)
    a, b = Future("a", c), Future("b", c)
    asyncio.get_running_loop().call_soon(c.feed, in_memory("a", 1))
    async with asyncio.timeout(WAIT_S):
        assert await a == 1
        assert await a.result() == 1
        with pytest.raises(TimeoutError):
            await b.result(timeout=0.01)
        asyncio.get_running_loop().call_soon(c.feed, erred("b", KeyError("k")))
        seen = [f async for f in as_completed([a, b])]
        assert set(map(id, seen)) == {id(a), id(b)}
        done, _ = await wait([a, b])
        assert done == {a, b}
        assert isinstance(await b.exception(), KeyError)
        with pytest.raises(KeyError):
            await b
