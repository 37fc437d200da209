"""Client methods for graphs and dask collections: get, compute, persist, as_default.

A mixin of Client. Dict graphs of shoal's own form take graph.py's path; dask
objects (expressions, HighLevelGraphs, collections, graphs of dask nodes) are
translated by shoal.client.dask, imported only when dask is in use. Nothing
here touches the connection except through the Client's own hand-over.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from shoal.client import graph as graphs
from shoal.client import nesting
from shoal.client.futures import Future
from shoal.errors import GraphError

if TYPE_CHECKING:
    from shoal.client.state import Key, KeyTable

# Keywords dask's compute() and persist() may forward to a scheduler, which mean
# nothing to shoal: accepted and ignored (the local schedulers' pools, callbacks
# and caches; dask.distributed's options that shoal has no counterpart for).
IGNORED_DASK_KEYWORDS = frozenset(
    {
        "num_workers",
        "pool",
        "chunksize",
        "cache",
        "callbacks",
        "rerun_exceptions_locally",
        "raise_exception",
        "pack_exception",
        "get_id",
        "dumps",
        "loads",
        "optimize_graph",
        "sync",
        "asynchronous",
        "direct",
        "fifo_timeout",
        "allow_other_workers",
        "actors",
        "traverse",
        "user_priority",
    }
)


def _dask_module() -> Any:
    from shoal.client import dask as translator

    return translator


def is_dask_graph(graph: object) -> bool:
    """Whether `graph` is for the dask translator: anything but a plain dict of
    shoal's own form (str and flat tuple keys, no dask nodes)."""
    if type(graph) is not dict:
        return True
    if "dask" not in sys.modules:
        return False
    from dask.task_spec import GraphNode, TaskRef

    for key, value in graph.items():
        if isinstance(value, GraphNode | TaskRef) or not graphs.is_key(key):
            return True
    return False


def _check_keywords(method: str, kwargs: dict[str, Any]) -> None:
    """Raises:
    TypeError: a keyword neither shoal's nor one dask forwards (named)."""
    for name in kwargs:
        if name not in IGNORED_DASK_KEYWORDS:
            raise TypeError(f"{method}() got an unexpected keyword argument {name!r}")


def _pack(keys: Any, values: Mapping[Any, Any], normal: Any) -> Any:
    """Values in the nesting of `keys`, lists as tuples, as dask's schedulers return them."""
    if type(keys) is list:
        return tuple(_pack(k, values, normal) for k in keys)
    return values[normal(keys)]


class Collections:
    """compute/get/persist/as_default: mixed into Client."""

    _keys: KeyTable
    _funcs: graphs.FunctionCache
    asynchronous: bool

    if TYPE_CHECKING:

        def _hand_over(
            self, submission: graphs.Submission, keys: list[Key], keepalive: object
        ) -> None: ...

        def gather(self, futures: Any, errors: str = "raise") -> Any: ...

    def compute(
        self,
        graph: Any,
        keys: Any = None,
        priority: int = 0,
        timeout: float | None = None,
        *,
        workers: Iterable[str] | str | None = None,
        resources: dict[str, float] | None = None,
        retries: int | None = 0,
        optimize_graph: bool = True,
        **kwargs: Any,
    ) -> Any:
        """Futures for a graph's `keys`, or for dask collections.

        With `keys`, `graph` is a dict graph, where a task is `(callable, *args)`
        and any other value is a literal, and arguments name other keys of the
        graph (inside lists, tuples and dicts too) or hold Futures; or a dask
        graph, expression or HighLevelGraph. Returns Futures in the nesting of
        `keys`; only what `keys` needs is sent.

        Without `keys`, `graph` is a dask collection (one Future of its computed
        value) or a list or tuple of them (a list of Futures), optimised first
        unless `optimize_graph=False`.

        `priority`, `workers`, `resources`, `retries` and `timeout` apply to every
        task that `dask.annotate` leaves unset. Keywords dask forwards to its
        schedulers (IGNORED_DASK_KEYWORDS) are ignored.

        Raises:
            GraphError: a cycle, a bad key, a requested key not in the graph, a
                dask node shoal cannot run.
            SerializationError: a function or an argument cannot be pickled.
            TypeError: an unknown keyword (named); a bad option.
            ValueError: `timeout` is not positive; a bad option.
            CommClosedError: the client is not running.
        """
        _check_keywords("compute", kwargs)
        options = graphs.TaskOptions(priority, resources, workers, retries, timeout)
        if keys is None:
            return self._compute_collections(graph, options, optimize_graph)
        if is_dask_graph(graph):
            return self._submit_dask(graph, keys, options)
        return self._submit_dict(graph, keys, options)

    def get(
        self,
        graph: Any,
        keys: Any,
        priority: int = 0,
        timeout: float | None = None,
        *,
        workers: Iterable[str] | str | None = None,
        resources: dict[str, float] | None = None,
        retries: int | None = 0,
        **kwargs: Any,
    ) -> Any:
        """compute() then gather(): the values of `keys`, in the nesting of `keys`.

        This is dask's scheduler call: `dask.compute(x, scheduler=client.get)`
        and `dask.config.set(scheduler=client.get)` use it. A dask graph's values
        come back with lists of keys as tuples, as dask's own schedulers return
        them. As dask's scheduler-call contract asks, keywords beyond these (the
        ones dask.compute() forwards from its caller) are accepted and ignored.
        Awaitable when the client is asynchronous.

        Raises:
            GraphError, TypeError, ValueError: as compute() does.
            Exception: the first failing task's exception (see Future.result).
        """
        options = graphs.TaskOptions(priority, resources, workers, retries, timeout)
        if not is_dask_graph(graph):
            return self.gather(self._submit_dict(graph, keys, options))
        futures = self._submit_dask(graph, keys, options)
        normal = _dask_module().normal_key
        flat = {f.key: f for f in nesting.futures_in(futures)}
        if self.asynchronous:
            return self._get_async(keys, flat, normal)
        values = self.gather(flat)
        return _pack(keys, values, normal)

    async def _get_async(self, keys: Any, flat: dict[Any, Future], normal: Any) -> Any:
        values = await self.gather(flat)
        return _pack(keys, values, normal)

    def persist(
        self,
        collections: Any,
        optimize_graph: bool = True,
        priority: int = 0,
        timeout: float | None = None,
        *,
        workers: Iterable[str] | str | None = None,
        resources: dict[str, float] | None = None,
        retries: int | None = 0,
        **kwargs: Any,
    ) -> Any:
        """Start computing dask collections; returns at once with collections of
        the same kinds whose partitions are Futures, so that later computations
        start from the values held on the cluster.

        One collection gives one; a list or tuple of them gives a list. Other
        keywords (those dask.persist() forwards) are accepted and ignored.

        Raises:
            GraphError, SerializationError, TypeError, ValueError, CommClosedError:
                as compute() does.
        """
        options = graphs.TaskOptions(priority, resources, workers, retries, timeout)
        from shoal.client import dask_collections

        single = not isinstance(collections, list | tuple)
        listed = [collections] if single else list(collections)
        expr, keys, rebuild = dask_collections.persist_plan(listed, optimize_graph)
        futures = self._submit_dask(expr, keys, options)
        out = rebuild(dict(zip(keys, futures, strict=True)))
        return out[0] if single else out

    @contextmanager
    def as_default(self) -> Iterator[Any]:
        """Make this client dask's scheduler within a `with` block: `x.compute()`,
        `dask.compute(...)` and `x.persist()` then run on the cluster.

        Raises:
            ImportError: dask is not installed.
        """
        import dask

        with dask.config.set(scheduler=self.get):
            yield self

    # -- the two paths -------------------------------------------------------------------

    def _submit_dict(self, graph: dict[Any, Any], keys: Any, options: graphs.TaskOptions) -> Any:
        leaves = nesting.key_leaves(keys)
        wanted = list(dict.fromkeys(k for k in leaves if not isinstance(k, Future)))
        for k in wanted:
            if not graphs.is_key(k):
                raise GraphError(f"bad requested key {k!r}: not a key of the graph nor a Future")
        rows = graphs.graph_rows(graph, wanted, self._funcs)
        made = {k: Future(k, self) for k in wanted}  # type: ignore[arg-type]
        submission = graphs.messages(rows, wanted, options)
        self._hand_over(submission, wanted, graph)
        return nesting.replace_keys(keys, lambda leaf: made.get(leaf, leaf))

    def _submit_dask(self, graph: Any, keys: Any, options: graphs.TaskOptions) -> Any:
        """Futures for `keys` (nested lists of dask keys) of a dask graph."""
        translator = _dask_module()
        leaves = nesting.key_leaves(keys)
        counts = self._keys.counts
        held = lambda k: bool(counts.get(k))  # noqa: E731
        done = translator.translate(graph, leaves, self._funcs, held, options)
        # Futures first: a requested key already on the cluster must stay held.
        made = {}
        for leaf in leaves:
            nk = translator.normal_key(leaf)
            if nk not in made:
                made[nk] = Future(nk, self)  # type: ignore[arg-type]
        task_keys = [row.key for row in done.rows]
        wanted = [k for k in made if k not in done.existing or k in task_keys]
        submission = graphs.messages(done.rows, wanted, options, done.options)
        if done.rows:
            self._hand_over(submission, wanted, (graph, done.futures))
        return nesting.replace_keys(keys, lambda leaf: made[translator.normal_key(leaf)])

    def _compute_collections(
        self, collections: Any, options: graphs.TaskOptions, optimize_graph: bool
    ) -> Any:
        from shoal.client import dask_collections

        single = not isinstance(collections, list | tuple)
        listed = [collections] if single else list(collections)
        expr, keys = dask_collections.compute_plan(listed, optimize_graph)
        futures = self._submit_dask(expr, keys, options)
        return futures[0] if single else futures
