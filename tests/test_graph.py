"""Graph building without a network: keys, references, nested tasks, literals,
validation, ordering, chunking, pure keys and function payload reuse."""

from __future__ import annotations

import operator
import time

import pytest

from shoal.client import graph as g
from shoal.client.futures import Future
from shoal.client.state import KeyTable
from shoal.errors import GraphError, SerializationError
from shoal.protocol.serialize import deserialize
from shoal.protocol.taskspec import ArgSpec, Call, Ref, resolve, run


def inc(x: int) -> int:
    return x + 1


def add(x: int, y: int) -> int:
    return x + y


class Owner:
    """Just enough of a client to make Futures."""

    asynchronous = False
    loop = None

    def __init__(self) -> None:
        self._keys = KeyTable(lambda: None, lambda fn, fut: fn(fut))


def spec(row: g.Row) -> ArgSpec:
    out = deserialize(row.args)
    assert isinstance(out, ArgSpec)
    return out


def rows_of(graph: dict, keys: list) -> dict:
    return {row.key: row for row in g.graph_rows(graph, keys, g.FunctionCache())}


def evaluate(rows: list[g.Row]) -> dict:
    """Run rows in order, as a worker would: checks the payloads end to end."""
    values: dict = {}
    for row in rows:
        values[row.key] = run(deserialize(row.func), spec(row), values)
    return values


# -- keys ----------------------------------------------------------------------


@pytest.mark.parametrize("key", ["x", ("x", 1), ("a", "b", 2), ("",)])
def test_valid_keys(key: object) -> None:
    assert g.is_key(key)
    assert g.check_key(key) == key


@pytest.mark.parametrize("key", [1, (), ("x", 1.5), ("x", ("y",)), b"x", None, ["x"]])
def test_bad_keys_named(key: object) -> None:
    assert not g.is_key(key)
    with pytest.raises(TypeError, match="bad key"):
        g.check_key(key)


def test_bad_graph_key_is_graph_error() -> None:
    with pytest.raises(GraphError, match=r"bad key 3"):
        g.graph_rows({3: (inc, 1), "a": 1}, ["a"], g.FunctionCache())


# -- references ----------------------------------------------------------------


def test_references_in_nested_containers() -> None:
    graph = {
        "a": 1,
        ("b", 0): 2,
        "c": (add, "a", [("b", 0), {"k": "a", "other": "not-a-key"}]),
    }
    rows = rows_of({**graph, "c": (lambda x, y: (x, y), "a", [("b", 0), {"k": "a"}])}, ["c"])
    s = spec(rows["c"])
    assert s.walk is True
    assert s.args == (Ref("a"), [Ref(("b", 0)), {"k": Ref("a")}])
    assert set(rows["c"].deps) == {"a", ("b", 0)}
    ordered = g.graph_rows(graph, ["c"], g.FunctionCache())
    assert [r.key for r in ordered][-1] == "c"
    # The dict keeps its non-key string as is.
    s2 = spec({r.key: r for r in ordered}["c"])
    assert s2.args[1][1] == {"k": Ref("a"), "other": "not-a-key"}


def test_nested_tasks_become_calls() -> None:
    graph = {"a": 1, "b": (add, (inc, "a"), [(inc, 10)])}
    rows = g.graph_rows({"a": 1, "b": (add, (inc, "a"), 5)}, ["b"], g.FunctionCache())
    s = spec(rows[-1])
    assert s.args == (Call(inc, (Ref("a"),), {}), 5)
    assert evaluate(rows)["b"] == 7
    s_list = spec(g.graph_rows(graph, ["b"], g.FunctionCache())[-1])
    assert s_list.args[1] == [Call(inc, (10,), {})]


def test_literals_compute_as_themselves() -> None:
    graph = {"a": 1, "lit": [1, "a", {"x": "a"}], "alias": "a", "fn": inc, "s": "plain"}
    rows = g.graph_rows(graph, ["lit", "alias", "fn", "s"], g.FunctionCache())
    assert all(deserialize(r.func) is operator.getitem for r in rows)
    values = evaluate(rows)
    assert values["lit"] == [1, 1, {"x": 1}]
    assert values["alias"] == 1
    assert values["fn"] is inc  # a callable literal is not called
    assert values["s"] == "plain"


def test_walk_false_when_nothing_to_resolve() -> None:
    rows = rows_of({"a": (add, 1, [2, "x"])}, ["a"])
    s = spec(rows["a"])
    assert s.walk is False
    assert rows["a"].deps == ()


def test_argument_tuple_is_never_a_task() -> None:
    # submit(map, inc, [1, 2]): the first argument is callable, the tuple is not a task.
    row = g.call_row(map, (inc, [1, 2]), {}, g.FunctionCache())
    s = spec(row)
    assert s.walk is False
    assert s.args == (inc, [1, 2])


def test_futures_become_refs_and_deps() -> None:
    owner = Owner()
    fut = Future("x-1", owner)
    row = g.call_row(add, (fut,), {"y": [fut, 2]}, g.FunctionCache())
    s = spec(row)
    assert s.args == (Ref("x-1"),)
    assert s.kwargs == {"y": [Ref("x-1"), 2]}
    assert row.deps == ("x-1",)
    assert resolve(s.kwargs, {"x-1": 5}) == {"y": [5, 2]}
    # In a graph, a Future is a known key: no row for it, a dep all the same.
    rows = g.graph_rows({"b": (inc, fut)}, ["b"], g.FunctionCache())
    assert [r.key for r in rows] == ["b"]
    assert rows[0].deps == ("x-1",)


# -- validation ------------------------------------------------------------------


def test_cycle_names_its_keys() -> None:
    graph = {"a": (inc, "c"), "b": (inc, "a"), "c": (inc, "b"), "d": (inc, "a")}
    with pytest.raises(GraphError, match="cycle") as info:
        g.graph_rows(graph, ["d"], g.FunctionCache())
    for key in ("'a'", "'b'", "'c'"):
        assert key in str(info.value)
    assert "'d'" not in str(info.value)


def test_self_cycle() -> None:
    with pytest.raises(GraphError, match="'a' -> 'a'"):
        g.graph_rows({"a": (inc, "a")}, ["a"], g.FunctionCache())


def test_missing_requested_key() -> None:
    with pytest.raises(GraphError, match=r"not in the graph.*'zz'"):
        g.graph_rows({"a": 1}, ["a", "zz"], g.FunctionCache())


def test_unpicklable_argument_names_its_type() -> None:
    import threading

    with pytest.raises(SerializationError, match="task arguments"):
        g.call_row(inc, (threading.Lock(),), {}, g.FunctionCache())


# -- order and chunks ----------------------------------------------------------------


def test_depth_first_post_order_and_culling() -> None:
    graph = {
        "x": 1,
        "a": (inc, "x"),
        "b": (inc, "x"),
        "c": (add, "a", "b"),
        "unused": (inc, "x"),
    }
    order = [r.key for r in g.graph_rows(graph, ["c"], g.FunctionCache())]
    assert order == ["x", "a", "b", "c"]


def test_chunks_reference_only_known_keys() -> None:
    n = 25_000
    graph: dict = {"k-0": 0}
    for i in range(1, n):
        graph[f"k-{i}"] = (inc, f"k-{i - 1}")
    rows = g.graph_rows(graph, [f"k-{n - 1}", "k-5"], g.FunctionCache())
    msgs, bridges = g.messages(rows, [f"k-{n - 1}", "k-5"])
    assert [len(m.keys) for m in msgs] == [5_000] * 5
    # The last task of each chunk is read by the next: wanted there, released after.
    assert bridges == ["k-4999", "k-9999", "k-14999", "k-19999"]
    assert msgs[1].wanted == ("k-9999",)
    seen: set = set()
    for m in msgs:
        for key, deps in zip(m.keys, m.deps, strict=True):
            assert set(deps) <= seen
            seen.add(key)
        assert len(m.funcs) <= 2  # getitem for the literal, inc
        assert len(m.func) == len(m.keys) == len(m.args)
    assert msgs[0].wanted == ("k-5", "k-4999")
    assert msgs[-1].wanted == (f"k-{n - 1}",)
    assert msgs[0].priority == ()


def test_chunks_are_bounded_by_tasks_and_dependency_links() -> None:
    assert g.chunk_bounds([]) == []
    assert g.chunk_bounds([0] * 25, max_tasks=10) == [range(0, 10), range(10, 20), range(20, 25)]
    # Weight is tasks plus links: 1 + 3 each here, so 3 tasks fit in 12.
    assert g.chunk_bounds([3] * 7, max_weight=12) == [range(0, 3), range(3, 6), range(6, 7)]
    # A task heavier than the bound goes alone.
    assert g.chunk_bounds([0, 50, 0], max_weight=10) == [range(0, 1), range(1, 2), range(2, 3)]
    # Many leaves, then reducers over 20 leaves each: the reducers come in smaller messages.
    leaves = {f"leaf-{i}": i for i in range(10_000)}
    reducers = {
        f"r-{j}": (sum, [f"leaf-{(j * 20 + i) % 10_000}" for i in range(20)]) for j in range(3_000)
    }
    rows = g.graph_rows({**leaves, **reducers}, list(reducers), g.FunctionCache())
    msgs, bridges = g.messages(rows, list(reducers))
    weights = [len(m.keys) + sum(map(len, m.deps)) for m in msgs]
    assert max(weights) <= g.MAX_WEIGHT_PER_MESSAGE and len(msgs) > 2
    seen: set = set()
    for m in msgs:
        for key, deps in zip(m.keys, m.deps, strict=True):
            assert set(deps) <= seen
            seen.add(key)
    assert len(seen) == 13_000 and set(bridges) <= set(leaves)


def test_large_graph_is_linear_enough() -> None:
    n = 10_000
    graph: dict = {f"leaf-{i}": i for i in range(n)}
    graph.update({f"t-{i}": (add, f"leaf-{i}", f"leaf-{(i + 1) % n}") for i in range(n)})
    start = time.perf_counter()
    rows = g.graph_rows(graph, [f"t-{i}" for i in range(n)], g.FunctionCache())
    assert len(rows) == 2 * n
    assert time.perf_counter() - start < 20  # generous: well under a second here


def test_options_columns() -> None:
    row = g.call_row(inc, (1,), {}, g.FunctionCache())
    (msg,), bridges = g.messages([row], [row.key], g.TaskOptions(3, {"GPU": 1}, "w1", 2))
    assert bridges == []
    assert msg.priority == (3,)
    assert msg.resources == {0: {"GPU": 1}}
    assert msg.restrict == {0: ("w1",)}
    assert msg.retries == {0: 2}
    assert msg.wanted == (row.key,)


# -- keys for submit and function payloads ---------------------------------------------


def test_pure_keys_equal_for_equal_calls() -> None:
    cache = g.FunctionCache()
    a = g.call_row(add, (1, 2), {}, cache)
    b = g.call_row(add, (1, 2), {}, cache)
    c = g.call_row(add, (1, 3), {}, cache)
    d = g.call_row(inc, (1, 2), {}, cache)
    assert a.key == b.key
    assert a.key.startswith("add-")
    assert len({a.key, c.key, d.key}) == 3
    assert g.call_row(add, (1, 2), {}, g.FunctionCache()).key == a.key  # not per cache


def test_impure_keys_differ() -> None:
    cache = g.FunctionCache()
    keys = {g.call_row(add, (1, 2), {}, cache, pure=False).key for _ in range(3)}
    assert len(keys) == 3
    assert all(k.startswith("add-") for k in keys)


def test_explicit_and_named_keys() -> None:
    cache = g.FunctionCache()
    assert g.call_row(inc, (1,), {}, cache, key=("mine", 1)).key == ("mine", 1)
    assert g.call_row(lambda: 1, (), {}, cache).key.startswith("lambda-")
    assert g.call_row(inc, (1,), {}, cache, name="step").key.startswith("step-")
    with pytest.raises(TypeError, match="bad key"):
        g.call_row(inc, (1,), {}, cache, key=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not callable"):
        g.call_row(3, (1,), {}, cache)  # type: ignore[arg-type]


def test_function_serialized_once_per_object() -> None:
    cache = g.FunctionCache()
    rows = [g.call_row(inc, (i,), {}, cache) for i in range(100)]
    assert len(cache) == 1
    assert all(r.func is rows[0].func for r in rows)
    (msg,), _ = g.messages(rows, [r.key for r in rows])
    assert len(msg.funcs) == 1
    assert set(msg.func) == {0}


def test_function_cache_is_bounded() -> None:
    cache = g.FunctionCache(size=4)
    funcs = [lambda x, i=i: x + i for i in range(10)]
    for fn in funcs:
        cache.get(fn)
    assert len(cache) == 4
    payload, _ = cache.get(funcs[-1])
    assert cache.get(funcs[-1])[0] is payload
