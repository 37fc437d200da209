"""dask graphs -> shoal rows, on the client: materialised, converted, ordered, annotated.

Reads dask's public interfaces only: `dask.task_spec` (Task, TaskRef, Alias,
DataNode, GraphNode, List), `dask.core.istask` for legacy tuples, `dask.order`,
and the collection protocol (`__dask_graph__`, `__dask_annotations__`). Pure
apart from dask's own materialisation: no I/O. A node shoal cannot run is
refused with GraphError here, never sent and never returned as a value.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any, NamedTuple

import dask.task_spec
from dask.core import istask
from dask.order import order as dask_order
from dask.task_spec import DataNode, GraphNode, List, Task, TaskRef

from shoal.client import graph as graphs
from shoal.client.futures import Future
from shoal.errors import GraphError, NestingTooDeep
from shoal.protocol.schema import MAX_KEY_DEPTH
from shoal.protocol.serialize import serialize
from shoal.protocol.taskspec import MAX_NESTING, ArgSpec, Call, Ref

Key = Any  # str, bytes, int, float, or a tuple of them, tuples nesting

# dask.task_spec names Alias only in later versions; every version's nodes make
# one with their public ref().
Alias: type = getattr(dask.task_spec, "Alias", None) or type(DataNode("shoal-probe", 0).ref())

# The annotations of dask.annotate() that reach shoal's scheduler; others are ignored.
ANNOTATIONS = ("priority", "retries", "resources", "workers")


# -- keys ------------------------------------------------------------------------------


def normal_key(key: object, depth: int = 0) -> Key:
    """`key` in the form the wire carries: numpy integers become int, numpy
    floats float; the key itself when it already is.

    Raises:
        GraphError: naming a key of no form shoal or dask accepts.
    """
    kind = type(key)
    if kind is str or kind is int or kind is bytes:
        return key
    if kind is tuple and key and depth < MAX_KEY_DEPTH:
        for part in key:  # type: ignore[attr-defined]
            if type(part) is not str and type(part) is not int:
                break
        else:
            return key  # the usual key, ("name", i, j): nothing to change
        parts = tuple([normal_key(part, depth + 1) for part in key])  # type: ignore[attr-defined]
        return key if all(a is b for a, b in zip(parts, key, strict=True)) else parts  # type: ignore[call-overload]
    if kind is float and math.isfinite(key):  # type: ignore[arg-type]
        return key
    if isinstance(key, numbers.Integral) and kind is not bool:
        return int(key)
    if isinstance(key, numbers.Real) and kind is not bool and math.isfinite(key):
        return float(key)
    raise GraphError(
        f"bad key {key!r}: a key is a str, bytes, int, finite float, or a non-empty "
        f"tuple of them (tuples nesting at most {MAX_KEY_DEPTH} deep)"
    )


def is_future(obj: object) -> bool:
    return type(obj) is Future or isinstance(obj, Future)


# -- materialising -----------------------------------------------------------------------


def materialise(dsk: Any) -> tuple[Mapping[Hashable, Any], dict[str, dict[Any, Any]]]:
    """A dask expression, HighLevelGraph, collection or dict -> (graph, annotations).

    Annotations are by kind ("priority", ...) then by dask key.

    Raises:
        GraphError: `dsk` is none of these.
    """
    if not isinstance(dsk, Mapping):
        if not hasattr(dsk, "__dask_graph__"):
            raise GraphError(f"cannot compute {type(dsk).__name__}: not a graph nor a dask object")
        graph = dsk.__dask_graph__()
        if not isinstance(graph, Mapping):
            raise GraphError(f"{type(dsk).__name__} gave no graph")
        annotate = getattr(dsk, "__dask_annotations__", None)
        if annotate is not None and not hasattr(graph, "layers"):  # an expression
            return graph, annotate() or {}
        dsk = graph
    layers = getattr(dsk, "layers", None)
    return dsk, (_layer_annotations(layers) if layers is not None else {})


def _layer_annotations(layers: Mapping[str, Any]) -> dict[str, dict[Any, Any]]:
    """Annotations of a HighLevelGraph's layers, as dask.annotate() set them."""
    found: dict[str, dict[Any, Any]] = {}
    for layer in layers.values():
        annotations = getattr(layer, "annotations", None)
        if not annotations:
            continue
        for kind, value in annotations.items():
            if kind not in ANNOTATIONS:
                continue
            per_key = found.setdefault(kind, {})
            for key in layer:
                per_key[key] = value(key) if callable(value) else value
    return found


# -- converting one node -------------------------------------------------------------------


def run_node(node: GraphNode, keys: tuple, *values: object) -> object:
    """Run on a worker: a dask node of a kind shoal has no translation for, called
    as dask calls it, with the values of its dependencies by key."""
    return node(dict(zip(keys, values, strict=True)))


class Converter:
    """Turns the nodes of one graph into (function, arguments, dependencies).

    `keys` are the graph's keys (original and normalised) for legacy references.
    Dependencies are gathered per node in first-seen order; shoal Futures met on
    the way are kept in `futures` so that their keys stay held until sent.
    """

    __slots__ = ("deps", "futures", "keys", "walk")

    def __init__(self, keys: Mapping[Any, Any]) -> None:
        self.keys = keys
        self.futures: list[Future] = []
        self.deps: dict[Key, None] = {}
        self.walk = False

    def _ref(self, key: object) -> Ref:
        nk = normal_key(key)
        self.deps[nk] = None
        self.walk = True
        return Ref(nk)

    def node(self, key: Key, value: object) -> tuple[Callable[..., object], tuple, dict] | None:
        """The call that computes `value`; None when `value` is a Future of `key`
        itself (a persisted value: no task). Resets `deps` and `walk`.

        Raises:
            GraphError: a node shoal cannot run.
            NestingTooDeep: nested tasks or containers deeper than MAX_NESTING.
        """
        self.deps, self.walk = {}, False
        kind = type(value)
        if kind is Task or (isinstance(value, Task) and kind.__call__ is Task.__call__):
            args = value.args  # type: ignore[attr-defined]
            if _is_subgraph(value.func):  # type: ignore[attr-defined]
                args = self._lift_futures(args)
            return value.func, self._args(args, 0), self._kwargs(value.kwargs, 0)  # type: ignore[attr-defined]
        if kind is Alias:
            return _alias(self._ref(value.target))  # type: ignore[attr-defined]
        if kind is DataNode:
            value = value.value  # type: ignore[attr-defined]
            if is_future(value):
                self.futures.append(value)  # type: ignore[arg-type]
                if value.key == key:  # type: ignore[attr-defined]
                    return None
                return _alias(self._ref(value.key))  # type: ignore[attr-defined]
            return _alias(value)
        if isinstance(value, GraphNode):
            return self._opaque(value)
        if is_future(value):
            self.futures.append(value)  # type: ignore[arg-type]
            if value.key == key:  # type: ignore[attr-defined]
                return None
            return _alias(self._ref(value.key))  # type: ignore[attr-defined]
        if isinstance(value, TaskRef):
            return _alias(self._ref(value.key))
        return self._legacy_top(key, value)

    def _lift_futures(self, args: tuple) -> tuple:
        """A fused task's inner graph with its Futures taken out as inputs: dask
        fuses a node holding a Future (da.from_delayed of one) into a subgraph,
        where it would be pickled; as an input it is a dependency on its key."""
        inner, outkey, inkeys, *values = args
        lifted = {
            k: v.value for k, v in inner.items() if type(v) is DataNode and is_future(v.value)
        }
        if not lifted:
            return args
        self.futures.extend(lifted.values())
        inner = {k: v for k, v in inner.items() if k not in lifted}
        inkeys = (*inkeys, *lifted)
        return (inner, outkey, inkeys, *values, *(TaskRef(f.key) for f in lifted.values()))

    def _opaque(self, node: GraphNode) -> tuple[Callable[..., object], tuple, dict]:
        """A GraphNode of a kind shoal does not translate, run by dask's own call."""
        if type(node).__call__ is GraphNode.__call__:
            kind = type(node).__name__
            raise GraphError(f"cannot run dask node {node!r}: a {kind} is not callable")
        keys = tuple(node.dependencies)
        refs = tuple(self._ref(k) for k in keys)
        return run_node, (node, tuple(normal_key(k) for k in keys), *refs), {}

    # Arguments of a Task, as Task.__call__ evaluates them: top-level nodes and
    # references only; plain containers are literals.
    def _arg(self, arg: object, depth: int) -> object:
        if isinstance(arg, TaskRef):
            return self._ref(arg.key)
        if is_future(arg):
            self.futures.append(arg)  # type: ignore[arg-type]
            return self._ref(arg.key)  # type: ignore[attr-defined]
        if not isinstance(arg, GraphNode):
            return arg
        if depth >= MAX_NESTING:
            raise NestingTooDeep(f"dask tasks nested more than {MAX_NESTING} deep")
        kind = type(arg)
        if kind is DataNode:  # a literal, unless it holds a Future
            return self._arg(arg.value, depth + 1)  # type: ignore[attr-defined]
        self.walk = True
        if kind is List:
            return list(self._args(arg.args, depth + 1))  # type: ignore[attr-defined]
        if isinstance(arg, Task) and kind.__call__ is Task.__call__:
            args = self._args(arg.args, depth + 1)
            return Call(arg.func, args, self._kwargs(arg.kwargs, depth + 1))
        if kind is Alias:
            return self._ref(arg.target)  # type: ignore[attr-defined]
        func, args, kwargs = self._opaque(arg)
        return Call(func, args, kwargs)

    def _args(self, args: tuple, depth: int) -> tuple:
        return tuple([self._arg(a, depth) for a in args])

    def _kwargs(self, kwargs: dict, depth: int) -> dict:
        return {k: self._arg(v, depth) for k, v in kwargs.items()} if kwargs else kwargs

    # Legacy graphs: (func, *args) tuples, keys as references, lists walked.
    def _legacy_top(self, key: Key, value: object) -> tuple[Callable[..., object], tuple, dict]:
        if istask(value):
            head = value[0]  # type: ignore[index]
            return head, tuple(self._legacy(a, 0) for a in value[1:]), {}  # type: ignore[index]
        return _alias(self._legacy(value, 0))

    def _legacy(self, obj: object, depth: int) -> object:
        kind = type(obj)
        if kind is str or kind is int or kind is float or kind is tuple:
            try:
                if obj in self.keys:
                    return self._ref(obj)
            except TypeError:  # a tuple holding something unhashable
                pass
        if kind is tuple or kind is list or kind is set or kind is frozenset:
            if depth >= MAX_NESTING:
                raise NestingTooDeep(f"dask task arguments nested more than {MAX_NESTING} deep")
            if kind is tuple and obj and callable(obj[0]):  # type: ignore[index]
                head = obj[0]  # type: ignore[index]
                args = tuple(self._legacy(a, depth + 1) for a in obj[1:])  # type: ignore[index]
                self.walk = True
                return Call(head, args, {})
            items = [self._legacy(a, depth + 1) for a in obj]  # type: ignore[attr-defined]
            if all(a is b for a, b in zip(items, obj, strict=True)):  # type: ignore[call-overload]
                return obj
            if kind is list:
                return items
            if kind is tuple:
                return tuple(items)
            return Call(kind, (items,), {})
        if isinstance(obj, GraphNode | TaskRef) or is_future(obj):
            return self._arg(obj, depth)
        return obj


def _is_subgraph(func: object) -> bool:
    """Whether `func` runs a fused subgraph: (inner graph, out key, input keys, *inputs)."""
    return getattr(func, "__name__", "") == "_execute_subgraph" and getattr(
        func, "__module__", ""
    ).startswith("dask.")


def _alias(value: object) -> tuple[Callable[..., object], tuple, dict]:
    """The call whose result is `value` (a Ref resolves to its key's value):
    getitem([value], 0) is a builtin, and the list keeps a callable from running."""
    return operator.getitem, ([value], 0), {}


# -- the whole graph ------------------------------------------------------------------------


class Translation(NamedTuple):
    """A dask graph as shoal rows, dependencies first in dask's order."""

    rows: list[graphs.Row]
    options: dict[Key, graphs.TaskOptions]  # from annotations, by normalised key
    futures: list[Future]  # met in the graph: held until the rows are sent
    existing: frozenset[Key]  # keys the graph names that are already on the cluster


def translate(
    dsk: Any,
    wanted: Iterable[object],
    cache: graphs.FunctionCache,
    held: Callable[[Key], bool],
    defaults: graphs.TaskOptions | None = None,
) -> Translation:
    """Rows of the tasks of `dsk` that the `wanted` keys need, in dask's order.

    `held(key)` tells whether this client holds a Future for a key that the
    graph reads but does not define. `defaults` are the options of every task
    that annotations leave unset.

    Raises:
        GraphError: a bad key, a wanted key not in the graph, a dependency
            neither in the graph nor held, a node shoal cannot run, a cycle.
        SerializationError: a function or an argument cannot be pickled.
    """
    graph, annotations = materialise(dsk)
    nodes: dict[Key, Any] = {}
    original: dict[Key, Any] = {}
    for key, value in graph.items():
        nk = normal_key(key)
        nodes[nk] = value
        original[nk] = key
    known: Any = nodes if nodes.keys() == graph.keys() else _BothKeys(nodes, graph)
    convert = Converter(known)
    specs: dict[Key, tuple[Callable[..., object], tuple, dict, bool]] = {}
    deps_of: dict[Key, tuple[Key, ...]] = {}
    existing: set[Key] = set()
    for nk, value in nodes.items():
        call = convert.node(nk, value)
        if call is None:
            existing.add(nk)
            continue
        specs[nk] = (*call, convert.walk)
        deps_of[nk] = tuple(convert.deps)
    roots = []
    for key in wanted:
        nk = normal_key(key)
        if nk in deps_of:
            roots.append(nk)
        elif nk not in existing and not held(nk):
            raise GraphError(f"requested key {key!r} is not in the graph")
    needed = graphs.topological_order(roots, deps_of)
    missing = {d for k in needed for d in deps_of[k] if d not in deps_of and d not in existing}
    missing = {d for d in missing if not held(d)}
    if missing:
        raise GraphError(
            f"the graph reads keys it does not define and no Future holds: "
            f"{sorted(map(repr, missing))[:10]}"
        )
    if len(needed) > 1 and any(deps_of[k] for k in needed):
        needed = _in_dask_order(needed, deps_of, graph, nodes, original)
    rows = []
    for nk in needed:
        func, args, kwargs, walk = specs[nk]
        payload = serialize(ArgSpec(args, kwargs, walk), "task arguments")
        rows.append(graphs.Row(nk, cache.get(func)[0], payload, deps_of[nk]))
    options = task_options(annotations, set(needed), defaults)
    return Translation(rows, options, convert.futures, frozenset(existing))


def _in_dask_order(
    needed: list[Key],
    deps_of: Mapping[Key, tuple[Key, ...]],
    graph: Mapping[Hashable, Any],
    nodes: Mapping[Key, Any],
    original: Mapping[Key, Any],
) -> list[Key]:
    """`needed` sorted by dask.order, then put right where it puts a task before
    a dependency (it places pure aliases last): a depth-first walk from each key
    in turn emits its dependencies first."""
    if len(needed) == len(graph) and nodes.keys() == graph.keys():
        priority = dask_order(graph)  # type: ignore[arg-type]  # the whole graph
        rank = priority
    else:
        priority = dask_order({original[k]: graph[original[k]] for k in needed})
        rank = {normal_key(k): p for k, p in priority.items()}
    return graphs.topological_order(sorted(needed, key=rank.__getitem__), deps_of)


class _BothKeys:
    """Membership by original or normalised key, for legacy references."""

    __slots__ = ("a", "b")

    def __init__(self, a: Mapping[Any, Any], b: Mapping[Any, Any]) -> None:
        self.a, self.b = a, b

    def __contains__(self, key: object) -> bool:
        return key in self.a or key in self.b


def task_options(
    annotations: Mapping[str, Mapping[Any, Any]],
    needed: set[Key],
    defaults: graphs.TaskOptions | None,
) -> dict[Key, graphs.TaskOptions]:
    """TaskOptions of each needed key that an annotation names, over `defaults`.

    Raises:
        TypeError, ValueError: an annotation of the wrong type or out of range.
    """
    base = defaults or graphs.TaskOptions()
    by_key: dict[Key, dict[str, Any]] = {}
    for kind in ANNOTATIONS:
        for key, value in annotations.get(kind, {}).items():
            nk = normal_key(key)
            if nk in needed:
                by_key.setdefault(nk, {})[kind] = value
    out: dict[Key, graphs.TaskOptions] = {}
    made: dict[tuple, graphs.TaskOptions] = {}
    for nk, given in by_key.items():
        workers = given.get("workers", base.restrict)
        signature = (
            given.get("priority", base.priority),
            _frozen(given.get("resources", base.resources)),
            tuple(workers) if isinstance(workers, list | tuple | set) else workers,
            given.get("retries", base.retries),
        )
        options = made.get(signature)
        if options is None:
            options = made[signature] = graphs.TaskOptions(
                priority=signature[0],
                resources=given.get("resources", base.resources),
                workers=list(workers) if isinstance(workers, set) else workers,
                retries=signature[3],
                timeout=base.timeout,
            )
        out[nk] = options
    return out


def _frozen(resources: object) -> object:
    if isinstance(resources, dict):
        return tuple(sorted(resources.items()))
    return resources
