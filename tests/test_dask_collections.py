"""dask collections on a real shoal LocalCluster: the three ways in, compute,
persist, futures inside collections, annotations, keys of every form."""

from __future__ import annotations

import operator
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

dask = pytest.importorskip("dask")
pd = pytest.importorskip("pandas")

import dask.array as da  # noqa: E402
import dask.bag as db  # noqa: E402
import dask.dataframe as dd  # noqa: E402
from dask.task_spec import DataNode, Task, TaskRef  # noqa: E402

from shoal.client.client import Client  # noqa: E402
from shoal.client.futures import Future  # noqa: E402
from shoal.errors import GraphError  # noqa: E402

pytestmark = pytest.mark.timeout(120)
# Whether dask.persist() asks the scheduler's client to persist (recent dask does).
DELEGATES_PERSIST = "persist(collections" in Path(dask.base.__file__).read_text()


@pytest.fixture(scope="module")
def client() -> Client:
    with Client(n_workers=2, threads_per_worker=2) as c:
        c.wait_for_workers(2, timeout=60)
        yield c


def frame() -> pd.DataFrame:
    return pd.DataFrame({"g": np.arange(60) % 4, "v": np.arange(60, dtype=float)})


def test_three_ways_in(client: Client) -> None:
    x = da.arange(100, chunks=10)
    # 1. scheduler= on the call
    (total,) = dask.compute(x.sum(), scheduler=client.get)
    assert total == 4950
    # 2. dask's configuration
    with dask.config.set(scheduler=client.get):
        assert x.max().compute() == 99
    # 3. the client as dask's default
    with client.as_default():
        assert db.from_sequence(range(10), npartitions=3).map(operator.neg).sum().compute() == -45
        groups = dd.from_pandas(frame(), npartitions=6).groupby("g").v.sum().compute()
    pd.testing.assert_series_equal(groups.sort_index(), frame().groupby("g").v.sum())
    # and the client object itself, as dask.distributed users pass it
    assert x.mean().compute(scheduler=client) == 49.5


def test_get_meets_dask_s_scheduler_call_contract(client: Client) -> None:
    dsk = {"a": DataNode("a", 1), ("b", 0): Task(("b", 0), operator.add, TaskRef("a"), 1)}
    # Nested lists of keys come back as tuples; extra keywords are accepted.
    assert client.get(dsk, [["a"], [("b", 0)]], num_workers=4, bogus=1) == ((1,), (2,))
    assert client.get(dsk, ("b", 0)) == 2
    # The graph of Task nodes computes values, never hands back a Task.
    assert client.get(dsk, [("b", 0)]) == (2,)


def warn_and_negate(x: int) -> int:
    import warnings

    warnings.warn(f"negating {x}", FutureWarning, stacklevel=1)
    return -x


def test_warnings_raised_inside_tasks_are_raised_again_in_the_caller(client: Client) -> None:
    # numpy's own RuntimeWarning in the inner tasks of a reduction: the client
    # wants only the final key.
    with pytest.warns(RuntimeWarning, match="invalid value encountered in log"):
        assert np.isnan(da.log(-da.ones(100, chunks=10)).sum().compute(scheduler=client.get))
    # An inner delayed task's warning, under dask.compute with client.get.
    inner = dask.delayed(warn_and_negate)(3)
    with pytest.warns(FutureWarning, match="negating 3"):
        assert dask.compute(dask.delayed(operator.add)(inner, 1), scheduler=client.get) == (-2,)
    # A plain future's, before its result.
    with pytest.warns(FutureWarning, match="negating 7"):
        assert client.submit(warn_and_negate, 7, pure=False).result() == -7
    # The caller's filters decide, a filter naming the module included.
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", category=FutureWarning, module=__name__)
        assert client.submit(warn_and_negate, 8, pure=False).result() == -8
    assert not [w for w in got if issubclass(w.category, FutureWarning)]


def test_every_key_form_reaches_the_cluster_and_back(client: Client) -> None:
    nested = ("shuffle-group-ab", np.int64(2), (3, 7))
    dsk = {
        nested: (operator.add, 1, 2),
        b"raw": (operator.mul, nested, 10),
        7: Task(7, operator.neg, TaskRef(b"raw")),  # a legacy tuple never names bytes
        2.5: (abs, 7),
    }
    assert client.get(dsk, [2.5, 7, nested]) == (30, -30, 3)
    futures = client.compute(dsk, [nested])
    assert futures[0].key == ("shuffle-group-ab", 2, (3, 7))
    assert futures[0].result() == 3


def test_a_node_shoal_cannot_run_is_an_error(client: Client) -> None:
    from dask.task_spec import GraphNode

    class Odd(GraphNode):
        def __init__(self, key: str) -> None:
            self.key, self._dependencies = key, frozenset()

    with pytest.raises(GraphError, match="not callable"):
        client.get({"x": Odd("x")}, "x")


def test_compute_returns_futures(client: Client) -> None:
    x = da.ones((20, 20), chunks=5)
    future = client.compute(x.sum())
    assert isinstance(future, Future)
    assert future.result() == 400
    a, b = client.compute([x.sum(), db.from_sequence([1, 2, 3]).sum()])
    assert (a.result(), b.result()) == (400, 6)
    df = client.compute(dd.from_pandas(frame(), npartitions=3)).result()
    pd.testing.assert_frame_equal(df, frame())


def counted(path: str, x: int) -> int:
    with open(path, "a") as f:
        f.write("x")
    return x


def test_persist_keeps_partitions_on_the_cluster(client: Client, tmp_path: Path) -> None:
    log = str(tmp_path / "calls")
    base = db.from_sequence(range(8), npartitions=4).map(lambda v: counted(log, v))
    kept = client.persist(base)
    assert isinstance(kept, db.Bag)
    held = [v for v in dict(kept.__dask_graph__()).values()]
    assert held and all(isinstance(v, Future) for v in held)
    assert kept.sum().compute(scheduler=client.get) == 28
    assert kept.map(operator.neg).sum().compute(scheduler=client.get) == -28
    # Each element ran once: the later computations read the persisted partitions.
    assert len(Path(log).read_text()) == 8
    # dask.persist through the default scheduler gives the same kind of collection,
    # backed by Futures where dask hands persist() to the scheduler's client (recent
    # dask), by the values where it computes them itself (older dask).
    with client.as_default():
        arr = dask.persist(da.arange(10, chunks=5) * 2)[0]
        assert isinstance(arr, da.Array)
        held = [type(v) for v in dict(arr.__dask_graph__()).values()]
        assert set(held) == {Future} or DELEGATES_PERSIST is False, held
        assert arr.sum().compute() == 90
        df = dd.from_pandas(frame(), npartitions=3).persist()
        assert df.v.sum().compute() == frame().v.sum()


def test_futures_inside_delayed_and_as_collection_inputs(client: Client) -> None:
    fut = client.submit(operator.add, 40, 1)
    assert dask.delayed(operator.add)(fut, 1).compute(scheduler=client.get) == 42
    parts = [client.submit(pd.DataFrame, {"a": [i, i + 1]}) for i in range(3)]
    df = dd.from_delayed(parts, meta=pd.DataFrame({"a": pd.Series([], dtype="int64")}))
    assert df.a.sum().compute(scheduler=client.get) == sum(2 * i + 1 for i in range(3))
    block = client.submit(np.ones, 5)
    arr = da.from_delayed(block, shape=(5,), dtype=float)
    assert (arr * 2).sum().compute(scheduler=client.get) == 10.0


def flaky(path: str) -> int:
    marker = Path(path)
    if not marker.exists():
        marker.write_text("failed once")
        raise RuntimeError("first attempt fails")
    return 1


def test_annotations_reach_the_scheduler(client: Client, tmp_path: Path) -> None:
    with dask.annotate(retries=1):
        value = dask.delayed(flaky)(str(tmp_path / "marker"))
    assert value.compute(scheduler=client.get, optimize_graph=False) == 1
    # workers=: every task runs on the worker it names.
    workers = client.scheduler_info()["workers"]
    name = sorted(workers)[0]
    with dask.annotate(workers=[name]):
        pids = [dask.delayed(os.getpid, pure=False)() for _ in range(6)]
    assert set(dask.compute(*pids, scheduler=client.get, optimize_graph=False)) == {
        workers[name]["pid"]
    }
