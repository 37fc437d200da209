"""dask collections -> a graph and its keys for compute() and persist(), and back.

Through dask's collection protocol: `dask.base.collections_to_expr` (dask
2025.4 and later) or `collections_to_dsk` (earlier), `__dask_keys__`,
`__dask_postcompute__` and `__dask_postpersist__`. No I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dask.base
from dask.core import flatten
from dask.task_spec import List, Task, TaskRef

from shoal.errors import GraphError

_TO_EXPR: Any = getattr(dask.base, "collections_to_expr", None)
# Before dask 2025.4: the graph of several collections, optimised.
_TO_DSK: Any = getattr(dask.base, "collections_to_dsk", None)


def _check(collections: list[Any]) -> None:
    """Raises:
    GraphError: something that is not a dask collection, or nothing at all."""
    if not collections:
        raise GraphError("no dask collections to compute")
    for c in collections:
        if not dask.base.is_dask_collection(c):
            raise GraphError(f"cannot compute {type(c).__name__}: not a dask collection")


def compute_plan(collections: list[Any], optimize_graph: bool) -> tuple[Any, list[Any]]:
    """(graph, keys): one key per collection, whose value is that collection's
    computed value.

    Raises:
        GraphError: not dask collections.
    """
    _check(collections)
    if _TO_EXPR is not None:
        expr = _TO_EXPR(collections, optimize_graph).finalize_compute().optimize()
        keys = list(flatten(expr.__dask_keys__()))
        if len(keys) != len(collections):
            raise GraphError(f"dask finalised {len(collections)} collections into {len(keys)} keys")
        return expr, keys
    graph = dict(_TO_DSK(collections, optimize_graph))
    keys = []
    for i, c in enumerate(collections):
        func, extra = c.__dask_postcompute__()
        key = (f"finalize-{dask.base.tokenize(c, optimize_graph)}", i)
        graph[key] = Task(key, func, _refs(c.__dask_keys__()), *extra)
        keys.append(key)
    return graph, keys


def _refs(keys: Any) -> Any:
    if isinstance(keys, list):
        return List(*[_refs(k) for k in keys])
    return TaskRef(keys)


def persist_plan(
    collections: list[Any], optimize_graph: bool
) -> tuple[Any, list[Any], Callable[[dict[Any, Any]], list[Any]]]:
    """(graph, keys, rebuild): `rebuild(futures by key)` makes the persisted
    collections, in order.

    Raises:
        GraphError: not dask collections.
    """
    _check(collections)
    if _TO_EXPR is not None:
        expr = _TO_EXPR(collections, optimize_graph).optimize()
        per = [list(flatten(k)) for k in expr.__dask_keys__()]
        if len(per) != len(collections):
            raise GraphError(f"dask optimised {len(collections)} collections into {len(per)}")
        graph: Any = expr
    else:
        graph = _TO_DSK(collections, optimize_graph)
        per = [list(flatten(c.__dask_keys__())) for c in collections]

    def rebuild(futures: dict[Any, Any]) -> list[Any]:
        out = []
        for c, keys in zip(collections, per, strict=True):
            make, state = c.__dask_postpersist__()
            out.append(make({k: futures[k] for k in keys}, *state))
        return out

    keys = [k for ks in per for k in ks]
    return graph, keys, rebuild
