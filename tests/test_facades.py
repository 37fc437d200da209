"""The concurrent.futures.Executor and multiprocessing.Pool facades on a real
cluster (`shoal scheduler` and two `shoal worker`s on loopback).

The Executor checks follow what the standard library's own tests ask of any
Executor: submit with positional and keyword arguments, map in order with its
timeout and chunksize, errors raised on iteration, shutdown with and without
waiting or cancelling, no new work after shutdown, no references kept to
results or callables, and standard futures for wait, as_completed and asyncio.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import gc
import multiprocessing
import threading
import time
import weakref
from collections.abc import Iterator

import pytest

import shoal
from shoal import Client
from shoal.client.executor import MAP_BATCH, ClientExecutor
from tests.test_dynamic import cli  # noqa: F401  (the module's own cluster)
from tests.test_failures import Cluster
from tests.test_integration import TOKEN, WAIT_S

pytestmark = pytest.mark.timeout(180)


def mul(x: int, y: int) -> int:
    return x * y


def capture(*args: object, **kwargs: object) -> tuple[tuple[object, ...], dict[str, object]]:
    return args, kwargs


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def square(x: int) -> int:
    return x * x


def fail_if(x: int, bad: int) -> int:
    if x == bad:
        raise ZeroDivisionError(f"item {x}")
    return x


class Dummy:
    def method(self) -> int:
        return 1


def make_dummy(_: int) -> Dummy:
    return Dummy()


@pytest.fixture
def client(cli: Cluster) -> Iterator[Client]:  # noqa: F811
    with Client(cli.address, token=TOKEN, timeout=WAIT_S) as c:
        c.wait_for_workers(2, WAIT_S)
        yield c


@pytest.fixture
def executor(client: Client) -> Iterator[ClientExecutor]:
    with client.get_executor() as ex:
        yield ex


# -- the Executor ----------------------------------------------------------------------------


def test_submit_gives_standard_futures_with_any_keyword(executor: ClientExecutor) -> None:
    future = executor.submit(pow, 2, 8)
    assert isinstance(future, cf.Future) and future.result(WAIT_S) == 256
    assert executor.submit(mul, 2, y=8).result(WAIT_S) == 16
    # Keywords submit() would take for itself all go to the function here.
    got = executor.submit(capture, 1, self=2, fn=3, workers=4, key=5).result(WAIT_S)
    assert got == ((1,), {"self": 2, "fn": 3, "workers": 4, "key": 5})


def test_map_keeps_order_stops_at_the_shortest_and_takes_chunks(executor: ClientExecutor) -> None:
    assert list(executor.map(pow, range(10), range(10))) == [pow(i, i) for i in range(10)]
    assert list(executor.map(mul, range(10), range(3))) == [0, 1, 4]
    assert list(executor.map(square, range(25), chunksize=4)) == [i * i for i in range(25)]
    assert list(executor.map(square, [])) == []
    with pytest.raises(ValueError, match="chunksize"):
        executor.map(square, range(3), chunksize=0)


def test_map_sends_batches_not_one_message_per_item(executor: ClientExecutor) -> None:
    sent: list[int] = []
    original = executor.client.map

    def counting_map(*args: object, **kwargs: object) -> object:
        sent.append(len(args[1]))  # type: ignore[arg-type]
        return original(*args, **kwargs)  # type: ignore[arg-type]

    executor.client.map = counting_map  # type: ignore[method-assign]
    try:
        items = 2 * MAP_BATCH + 10
        expected = sum(i * i for i in range(items))
        assert sum(executor.map(square, range(items))) == expected
        assert sent == [MAP_BATCH, MAP_BATCH, 10]  # three submissions, not 2,010
        sent.clear()
        assert sum(executor.map(square, range(items), chunksize=10)) == expected
        assert sent == [201]  # 201 tasks of 10 items (the last of 10 too)
    finally:
        del executor.client.map


def test_map_raises_a_failure_where_it_comes_in_order(executor: ClientExecutor) -> None:
    results = executor.map(fail_if, [1, 2, 3, 4], [3] * 4)
    assert next(results) == 1 and next(results) == 2
    with pytest.raises(ZeroDivisionError, match="item 3"):
        next(results)


def test_map_times_out_from_the_call(executor: ClientExecutor) -> None:
    results = executor.map(nap, [0, 0, 3], timeout=1)
    got = []
    with pytest.raises(TimeoutError):
        for value in results:
            got.append(value)
    assert got == [0, 0]


def test_map_submits_without_being_iterated(executor: ClientExecutor) -> None:
    executor.map(square, range(4))
    executor.shutdown(wait=True)  # waits for the map's tasks too
    assert not executor._pending


def test_wait_as_completed_and_asyncio_take_its_futures(executor: ClientExecutor) -> None:
    fast = executor.submit(nap, 0.0)
    slow = executor.submit(nap, 2)
    failing = executor.submit(fail_if, 1, 1)
    done, not_done = cf.wait([fast, failing, slow], timeout=WAIT_S,
                             return_when=cf.FIRST_EXCEPTION)  # fmt: skip
    assert failing in done and slow in not_done
    assert set(cf.as_completed([fast, failing])) == {fast, failing}
    with pytest.raises(TimeoutError):
        list(cf.as_completed([slow], timeout=0.2))

    async def awaited() -> int:
        return await asyncio.wrap_future(executor.submit(mul, 6, 7))

    assert asyncio.run(awaited()) == 42
    slow.cancel()


def test_shutdown_refuses_new_work_waits_and_cancels(client: Client) -> None:
    executor = client.get_executor()
    running = [executor.submit(nap, 0.5) for _ in range(2)]
    queued = [executor.submit(nap, 0.5) for _ in range(20)]
    executor.shutdown(wait=True, cancel_futures=True)
    assert all(f.done() for f in running + queued)
    assert any(f.cancelled() for f in queued)
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(pow, 2, 2)
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.map(square, range(2))
    with client.get_executor() as ex:
        futures = [ex.submit(nap, 0.2) for _ in range(3)]
    assert all(f.done() and not f.cancelled() for f in futures)  # the exit waited
    assert client.status == "running"  # an executor of a client leaves it open


def test_cancelling_a_pending_future_cancels_its_task(executor: ClientExecutor) -> None:
    blockers = [executor.submit(nap, 1) for _ in range(2)]
    future = executor.submit(nap, 3)
    assert future.cancel() and future.cancelled()
    with pytest.raises(cf.CancelledError):
        future.result()
    cf.wait(blockers, timeout=WAIT_S)


def test_no_reference_is_kept_to_callables_or_results(executor: ClientExecutor) -> None:
    dummy = Dummy()
    collected = threading.Event()
    ref = weakref.ref(dummy, lambda _: collected.set())
    future = executor.submit(dummy.method)
    del dummy
    gc.collect()
    assert collected.wait(WAIT_S), "the executor kept the callable alive"
    assert ref() is None and future.result(WAIT_S) == 1
    for value in executor.map(make_dummy, range(3)):
        seen = weakref.ref(value)
        del value
        gc.collect()
        assert seen() is None, "map kept a yielded result alive"


def test_executor_options_and_an_executor_with_its_own_client(cli: Cluster) -> None:  # noqa: F811
    with Client(cli.address, token=TOKEN) as c:
        with pytest.raises(TypeError, match="'bogus'"):
            c.get_executor(bogus=1)
        with c.get_executor(workers=["a"]) as ex:
            assert ex.submit(lambda: shoal.get_worker().name).result(WAIT_S) == "a"
    ex = shoal.Executor(cli.address, client_options={"token": TOKEN})
    assert ex.submit(mul, 3, 4).result(WAIT_S) == 12
    ex.shutdown()
    assert ex.client.status == "closed"


# -- the Pool ----------------------------------------------------------------------------------


@pytest.fixture
def pool(cli: Cluster) -> Iterator[shoal.Pool]:  # noqa: F811
    with shoal.Pool(address=cli.address, client_options={"token": TOKEN}) as p:
        yield p


def test_pool_maps_as_multiprocessing_does(pool: shoal.Pool) -> None:
    assert pool.map(square, range(10)) == [x * x for x in range(10)]
    assert pool.map(square, range(10), chunksize=3) == [x * x for x in range(10)]
    assert pool.starmap(mul, [(1, 2), (3, 4)]) == [2, 12]
    assert list(pool.imap(square, range(7))) == [x * x for x in range(7)]
    assert list(pool.imap(square, range(7), chunksize=2)) == [x * x for x in range(7)]
    assert sorted(pool.imap_unordered(square, range(7))) == [x * x for x in range(7)]
    assert pool.apply(mul, (6,), {"y": 7}) == 42
    with pytest.raises(ZeroDivisionError):
        pool.starmap(fail_if, [(1, 2), (2, 2)])


def test_pool_async_results_and_callbacks(pool: shoal.Pool) -> None:
    seen: list[object] = []
    errors: list[BaseException] = []
    result = pool.map_async(square, range(4), callback=seen.append)
    assert result.get(WAIT_S) == [0, 1, 4, 9] and result.ready() and result.successful()
    assert seen == [[0, 1, 4, 9]]
    failed = pool.apply_async(fail_if, (1, 1), error_callback=errors.append)
    failed.wait(WAIT_S)
    assert not failed.successful() and isinstance(errors[0], ZeroDivisionError)
    with pytest.raises(ZeroDivisionError):
        failed.get()
    slow = pool.apply_async(nap, (2,))
    with pytest.raises(ValueError, match="not ready"):
        slow.successful()
    with pytest.raises(multiprocessing.TimeoutError):
        slow.get(timeout=0.1)
    assert pool.starmap_async(mul, [(2, 3)]).get(WAIT_S) == [6]


def test_pool_close_join_and_terminate(cli: Cluster) -> None:  # noqa: F811
    pool = shoal.Pool(address=cli.address, client_options={"token": TOKEN})
    pending = pool.map_async(nap, [0.2, 0.2])
    with pytest.raises(ValueError, match="still running"):
        pool.join()
    pool.close()
    with pytest.raises(ValueError, match="not running"):
        pool.apply_async(square, (2,))
    pool.join()
    assert pending.ready() and pending.get() == [0.2, 0.2]
    pool = shoal.Pool(address=cli.address, client_options={"token": TOKEN})
    slow = pool.apply_async(nap, (2,))
    pool.terminate()
    with pytest.raises(cf.CancelledError):
        slow.get(WAIT_S)
    with pytest.raises(ValueError, match="must be at least 1"):
        shoal.Pool(0)
    with pytest.raises(ValueError, match="maxtasksperchild"):
        shoal.Pool(2, maxtasksperchild=10, address=cli.address)


def test_a_pool_moves_to_a_cluster_by_adding_an_address(cli: Cluster) -> None:  # noqa: F811
    with shoal.Pool(2) as local:  # a LocalCluster of two one-thread workers
        # (its workers do not import the tests: a builtin function)
        assert local.map(abs, range(-5, 5)) == [abs(x) for x in range(-5, 5)]
        assert len(local.client.scheduler_info()["workers"]) == 2
    with shoal.Pool(address=cli.address, client_options={"token": TOKEN}) as remote:
        assert remote.map(square, range(10)) == [x * x for x in range(10)]
