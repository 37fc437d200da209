"""The dask translator, pure: keys normalised, every task-spec node converted,
dask's order kept, annotations turned into task options. No cluster."""

from __future__ import annotations

import operator

import numpy as np
import pytest

dask = pytest.importorskip("dask")

import dask.array as da  # noqa: E402
from dask._task_spec import Alias  # noqa: E402  # public only from dask 2025.5
from dask.task_spec import DataNode, GraphNode, List, Task, TaskRef  # noqa: E402

from shoal.client import graph as graphs  # noqa: E402
from shoal.client.dask import normal_key, translate  # noqa: E402
from shoal.errors import GraphError  # noqa: E402
from shoal.protocol.serialize import deserialize  # noqa: E402
from shoal.protocol.taskspec import ArgSpec, Call, Ref, run  # noqa: E402

pytestmark = pytest.mark.timeout(60)


def rows_of(dsk: object, keys: list, held: frozenset = frozenset()) -> dict:
    done = translate(dsk, keys, graphs.FunctionCache(), held.__contains__)
    return {row.key: row for row in done.rows}


def evaluate(dsk: object, keys: list) -> dict:
    """Run the translated rows here, in order, as a worker would."""
    done = translate(dsk, keys, graphs.FunctionCache(), lambda k: False)
    values: dict = {}
    for row in done.rows:
        func = deserialize(row.func)
        spec = deserialize(row.args)
        assert isinstance(spec, ArgSpec)
        values[row.key] = run(func, spec, values)  # type: ignore[arg-type]
    return values


def test_keys_are_normalised_and_bad_ones_refused() -> None:
    assert normal_key(("x", np.int64(3))) == ("x", 3)
    assert type(normal_key(("x", np.int64(3)))[1]) is int
    assert normal_key(np.float32(1.5)) == 1.5
    nested = ("shuffle-group-ab", 2, (3, 7))
    assert normal_key(nested) is nested
    assert normal_key(b"raw") == b"raw"
    for bad in [(), True, None, float("nan"), ("x", [1]), ("x", ()), object()]:
        with pytest.raises(GraphError, match="bad key"):
            normal_key(bad)


def test_a_graph_of_task_nodes_computes_values_not_nodes() -> None:
    dsk = {
        "a": DataNode("a", 2),
        "b": Task("b", operator.add, TaskRef("a"), 1),
        # nested tasks, containers, keywords
        "c": Task("c", sum, List(TaskRef("a"), Task(None, operator.mul, TaskRef("b"), 10))),
        "d": Task("d", dict, x=TaskRef("c"), y=List(TaskRef("a"))),
        "e": Alias("e", "d"),
    }
    values = evaluate(dsk, ["e"])
    assert values["b"] == 3
    assert values["c"] == 32
    assert values["e"] == {"x": 32, "y": [2]}


def test_tuple_set_and_dict_containers_are_dask_s_own() -> None:
    from dask._task_spec import Dict, Set, Tuple  # only to build the nodes dask makes

    dsk = {
        "a": DataNode("a", 1),
        "t": Task("t", tuple, Tuple(TaskRef("a"), 2)),
        "s": Task("s", sorted, Set(TaskRef("a"), 5)),
        "d": Task("d", dict, Dict({"k": TaskRef("a"), "j": 0})),
    }
    values = evaluate(dsk, ["t", "s", "d"])
    assert values["t"] == (1, 2)
    assert values["s"] == [1, 5]
    assert values["d"] == {"k": 1, "j": 0}


def test_legacy_tuples_and_nested_tuple_keys() -> None:
    key = ("shuffle-group-ab", np.int64(2), (3, 7))
    dsk = {
        key: (operator.add, 1, 2),
        ("x", 1): (sum, [key, (operator.neg, key)]),
        "lit": [("x", 1), 5],
    }
    values = evaluate(dsk, ["lit"])
    assert values[("shuffle-group-ab", 2, (3, 7))] == 3
    assert values[("x", 1)] == 0
    assert values["lit"] == [0, 5]


def test_a_node_shoal_cannot_run_is_refused_not_returned() -> None:
    class Odd(GraphNode):
        def __init__(self, key: str) -> None:
            self.key = key
            self._dependencies = frozenset()

    with pytest.raises(GraphError, match="not callable"):
        rows_of({"x": Odd("x")}, ["x"])


def test_an_unknown_callable_node_runs_through_dask_s_own_call() -> None:
    class Doubler(GraphNode):
        __slots__ = ("target",)

        def __init__(self, key: str, target: str) -> None:
            self.key, self.target = key, target
            self._dependencies = frozenset([target])

        def __call__(self, values: dict) -> object:
            return 2 * values[self.target]

    values = evaluate({"a": DataNode("a", 21), "b": Doubler("b", "a")}, ["b"])
    assert values["b"] == 42


def test_missing_dependencies_and_keys_are_refused() -> None:
    with pytest.raises(GraphError, match="not in the graph"):
        rows_of({"a": DataNode("a", 1)}, ["zz"])
    with pytest.raises(GraphError, match="no Future holds"):
        rows_of({"b": Task("b", operator.neg, TaskRef("elsewhere"))}, ["b"])
    # ...but a key the client holds a Future for is a dependency like any other.
    rows = rows_of(
        {"b": Task("b", operator.neg, TaskRef("elsewhere"))}, ["b"], frozenset({"elsewhere"})
    )
    assert rows["b"].deps == ("elsewhere",)


def test_rows_follow_dask_order_and_dependencies_come_first() -> None:
    x = da.ones((40, 40), chunks=5)
    y = (x + x.T).sum(axis=0)
    graph = dict(y.__dask_graph__())
    done = translate(y.__dask_graph__(), list(y.__dask_keys__()), graphs.FunctionCache(), bool)
    position = {row.key: i for i, row in enumerate(done.rows)}
    for row in done.rows:
        assert all(position[d] < position[row.key] for d in row.deps)
    rank = dask.order.order(graph)
    keys = [row.key for row in done.rows]
    assert keys == sorted(keys, key=rank.__getitem__)


def test_annotations_become_the_columns_of_the_submission() -> None:
    base = da.ones(4, chunks=2)
    with dask.annotate(priority=7, retries=2, resources={"GPU": 1}, workers=["w1"]):
        a = base + 1
    b = a.sum()
    done = translate(b.__dask_graph__(), list(b.__dask_keys__()), graphs.FunctionCache(), bool)
    (msg,) = graphs.messages(done.rows, list(b.__dask_keys__()), None, done.options).msgs
    annotated = {i for i, key in enumerate(msg.keys) if key[0] == a.name}
    assert annotated
    assert {msg.priority[i] for i in annotated} == {7}
    assert {msg.priority[i] for i in range(len(msg.keys)) if i not in annotated} == {0}
    assert set(msg.retries) == annotated and set(msg.retries.values()) == {2}
    assert set(msg.resources) == annotated and msg.resources[min(annotated)] == {"GPU": 1}
    assert set(msg.restrict) == annotated and msg.restrict[min(annotated)] == ("w1",)


def test_refs_and_calls_are_shoal_s_own() -> None:
    done = translate(
        {"a": DataNode("a", 1), "b": Task("b", operator.add, TaskRef("a"), Task(None, abs, -1))},
        ["b"],
        graphs.FunctionCache(),
        bool,
    )
    spec = deserialize(done.rows[-1].args)
    assert isinstance(spec, ArgSpec) and spec.walk
    assert spec.args[0] == Ref("a")
    assert isinstance(spec.args[1], Call) and spec.args[1].func is abs
