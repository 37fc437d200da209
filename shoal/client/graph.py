"""User input -> SubmitGraph messages: keys, references, validation, ordering, chunking.

Pure: no I/O, no clock, no threads. Everything a graph can get wrong (a cycle,
a missing key, a bad key) is refused here with GraphError, before anything is sent.
"""

from __future__ import annotations

import functools
import hashlib
import math
import operator
import threading
import types
import uuid
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any, NamedTuple

from shoal.client import blocking
from shoal.client.futures import Future
from shoal.errors import GraphError, NestingTooDeep
from shoal.protocol.messages import SubmitGraph
from shoal.protocol.serialize import Serialized, serialize
from shoal.protocol.taskspec import MAX_NESTING, ArgSpec, Call, Ref

Key = str | tuple[str | int, ...]

# Tasks per SubmitGraph, and tasks plus dependency links per SubmitGraph. The
# scheduler takes in one message in one go, nothing else running meanwhile,
# in time that grows with both: with a million tasks held, about 5 to 10 us
# per task and 4 us per link on a small VM. These bounds keep each message
# under about 50 ms there; they also keep messages far below the wire's batch
# limits and let the scheduler start on one chunk while the next is in flight.
MAX_TASKS_PER_MESSAGE = 5_000
MAX_WEIGHT_PER_MESSAGE = 12_000
# Serialized functions kept per client; lambdas made in a loop must not pile up.
FUNCTION_CACHE_SIZE = 512

_NO_KEYS: frozenset[Key] = frozenset()


def is_key(obj: object) -> bool:
    """True for a str, or a non-empty tuple of str and int."""
    if type(obj) is str:
        return True
    if type(obj) is tuple and obj:
        return all(type(part) is str or type(part) is int for part in obj)
    return False


def check_key(obj: object) -> Key:
    """Return `obj` if it is a valid key.

    Raises:
        TypeError: naming the bad key and what a key must be.
    """
    if not is_key(obj):
        raise TypeError(f"bad key {obj!r}: a key is a str or a non-empty tuple of str and int")
    return obj  # type: ignore[return-value]


def funcname(func: Callable[..., object]) -> str:
    """A short readable name for key prefixes: `add`, `lambda`, `partial-add`."""
    inner = getattr(func, "func", None)  # functools.partial
    if inner is not None and callable(inner):
        return "partial-" + funcname(inner)
    name = getattr(func, "__name__", None) or type(func).__name__
    return name.strip("<>") or "task"


# Callables usually made anew for each call (`obj.method`, functools.partial): not
# cached, since the cache would hold them, and with them their objects and arguments.
_MADE_PER_CALL = (types.MethodType, functools.partial)


class FunctionCache:
    """Serialized functions by function object, least recently used dropped first.

    Entries hold the function itself, so its id() cannot be reused while cached.
    Safe to share between threads that submit at once.
    """

    def __init__(self, size: int = FUNCTION_CACHE_SIZE) -> None:
        self.size = size
        self._entries: OrderedDict[int, tuple[object, Serialized, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, func: Callable[..., object]) -> tuple[Serialized, bytes]:
        """The function's payload and a digest of it, serialized on first use.

        Raises:
            SerializationError: the function cannot be pickled.
        """
        if isinstance(func, _MADE_PER_CALL):  # caching one would only keep its object alive
            payload = serialize(func, "function")
            return payload, _digest(payload.frames)
        with self._lock:
            entry = self._entries.get(id(func))
            if entry is not None and entry[0] is func:
                self._entries.move_to_end(id(func))
                return entry[1], entry[2]
        payload = serialize(func, "function")  # outside the lock: it may be slow
        digest = _digest(payload.frames)
        with self._lock:
            self._entries[id(func)] = (func, payload, digest)
            self._entries.move_to_end(id(func))
            if len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return payload, digest


def _digest(frames: Iterable[bytes | bytearray | memoryview], prefix: bytes = b"") -> bytes:
    h = hashlib.blake2b(prefix, digest_size=16)
    for frame in frames:
        h.update(frame)
    return h.digest()


# -- arguments -----------------------------------------------------------------


def convert(
    obj: Any, keys: Mapping[Key, object] | frozenset[Key], deps: dict[Key, None], depth: int = 0
) -> Any:
    """`obj` with graph keys and Futures replaced by Ref and tasks by Call.

    Lists, tuples and dicts (values) are walked. Keys referenced are added to
    `deps` in first-seen order. Returns `obj` itself when nothing was replaced,
    so `converted is obj` tells that no walk is needed on the worker.

    Raises:
        NestingTooDeep: containers nested more than MAX_NESTING deep.
    """
    kind = type(obj)
    if kind is str:
        if obj in keys:
            deps[obj] = None
            return Ref(obj)
        return obj
    if kind is tuple:
        if obj and callable(obj[0]):
            return Call(obj[0], tuple(_convert_items(obj[1:], keys, deps, depth)), {})
        if keys and is_key(obj) and obj in keys:
            deps[obj] = None
            return Ref(obj)
        items = _convert_items(obj, keys, deps, depth)
        return obj if items is obj else items
    if kind is list:
        items = _convert_items(obj, keys, deps, depth)
        return obj if items is obj else list(items)
    if kind is dict:
        _check_depth(depth)
        changed = False
        out = {}
        for k, v in obj.items():
            new = convert(v, keys, deps, depth + 1)
            changed = changed or new is not v
            out[k] = new
        return out if changed else obj
    if isinstance(obj, Future):
        deps[obj.key] = None
        return Ref(obj.key)
    return obj


def _check_depth(depth: int) -> None:
    if depth >= MAX_NESTING:
        raise NestingTooDeep(
            f"task arguments nest containers more than {MAX_NESTING} deep; "
            "pass deeply nested data as one object that is not a list, tuple or dict"
        )


def _convert_items(
    items: tuple | list, keys: Any, deps: dict[Key, None], depth: int = 0
) -> tuple | list:
    """Converted items as a tuple, or `items` itself when none changed."""
    _check_depth(depth)
    out = [convert(item, keys, deps, depth + 1) for item in items]
    if all(new is old for new, old in zip(out, items, strict=True)):
        return items
    return tuple(out)


def arg_payload(args: tuple, kwargs: dict, keys: Any) -> tuple[Serialized, tuple[Key, ...]]:
    """Serialized ArgSpec of one task and the keys it reads.

    Raises:
        SerializationError: an argument cannot be pickled.
        NestingTooDeep: containers nested more than MAX_NESTING deep.
    """
    deps: dict[Key, None] = {}
    # The argument tuple itself is never a task, even when its first item is callable.
    new_args = _convert_items(args, keys, deps)
    new_kwargs = convert(kwargs, keys, deps)
    walk = new_args is not args or new_kwargs is not kwargs
    spec = ArgSpec(tuple(new_args), new_kwargs, walk)
    return serialize(spec, "task arguments"), tuple(deps)


# -- rows and messages ------------------------------------------------------------


class Row:
    """One task ready to send: its key, payloads and the keys it reads."""

    __slots__ = ("args", "deps", "func", "key")

    def __init__(self, key: Key, func: Serialized, args: Serialized, deps: tuple) -> None:
        self.key, self.func, self.args, self.deps = key, func, args, deps

    def __repr__(self) -> str:
        return f"Row({self.key!r}, deps={self.deps!r})"


class TaskOptions:
    """What submit() and map() may ask of every task they make."""

    __slots__ = ("priority", "resources", "restrict", "retries", "timeout")

    def __init__(
        self,
        priority: int = 0,
        resources: dict[str, float] | None = None,
        workers: Iterable[str] | str | None = None,
        retries: int | None = 0,
        timeout: float | None = None,
    ) -> None:
        """Raises:
        TypeError: an option of the wrong type (named).
        ValueError: a timeout that is not a positive finite number of seconds, a
            negative number of retries, or a resource amount that is negative
            or not finite."""
        if timeout is not None and not 0 < timeout < math.inf:
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
        if not _is_int(priority):
            raise TypeError(f"priority must be an int, not {priority!r}")
        retries = 0 if retries is None else retries  # dask's default
        if not _is_int(retries) or retries < 0:
            raise ValueError(f"retries must be a whole number at least 0, not {retries!r}")
        self.timeout = timeout
        self.priority = blocking.nested_priority(priority)  # inside a task: above it
        if resources is not None and not isinstance(resources, dict):
            raise TypeError(f"resources must be a dict such as {{'GPU': 1}}, not {resources!r}")
        for name, amount in (resources or {}).items():
            if not isinstance(name, str) or isinstance(amount, bool):
                raise TypeError(f"resources must map names to numbers, not {name!r}: {amount!r}")
            if not isinstance(amount, int | float) or not 0 <= amount < math.inf:
                raise ValueError(f"resource {name!r} must be a finite number >= 0, not {amount!r}")
        self.resources = dict(resources) if resources else None
        if isinstance(workers, str):
            workers = [workers]
        self.restrict = tuple(workers) if workers else None
        if self.restrict and not all(isinstance(w, str) for w in self.restrict):
            raise TypeError(f"workers must be worker names or addresses, not {workers!r}")
        self.retries = retries


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def call_row(
    func: Callable[..., object],
    args: tuple,
    kwargs: dict,
    cache: FunctionCache,
    key: Key | None = None,
    pure: bool = True,
    name: str | None = None,
) -> Row:
    """The row of one call `func(*args, **kwargs)`; Futures in the arguments are deps.

    Without `key`: pure calls are named by a digest of both payloads (equal
    submissions share a key), impure ones by a random uuid; `name` replaces
    the function's name in front.

    Raises:
        SerializationError: the function or an argument cannot be pickled.
        TypeError: `func` is not callable, or `key` is not a valid key.
    """
    if not callable(func):
        raise TypeError(f"{func!r} is not callable")
    fpayload, fdigest = cache.get(func)
    apayload, deps = arg_payload(args, kwargs, _NO_KEYS)
    if key is not None:
        check_key(key)
    elif pure:
        key = f"{name or funcname(func)}-{_digest(apayload.frames, fdigest).hex()}"
    else:
        key = f"{name or funcname(func)}-{uuid.uuid4().hex}"
    return Row(key, fpayload, apayload, deps)


class Submission(NamedTuple):
    """SubmitGraph messages to send in order, then the bridge keys to release.

    The scheduler keeps only the tasks a message's `wanted` keys need, so a
    task that only a later message reads is listed as wanted in its own
    message (a bridge) and released once every message is sent.
    """

    msgs: list[SubmitGraph]
    bridges: list[Key]


def chunk_bounds(
    links: Iterable[int],
    max_tasks: int = MAX_TASKS_PER_MESSAGE,
    max_weight: int = MAX_WEIGHT_PER_MESSAGE,
) -> list[range]:
    """Positions of the tasks of each message, given each task's number of
    dependencies: at most `max_tasks` tasks, and at most `max_weight` tasks
    plus dependencies unless a single task has more."""
    bounds = []
    start = weight = 0
    stop = -1
    for stop, n in enumerate(links):
        if stop > start and (stop - start >= max_tasks or weight + 1 + n > max_weight):
            bounds.append(range(start, stop))
            start, weight = stop, 0
        weight += 1 + n
    if stop >= start:
        bounds.append(range(start, stop + 1))
    return bounds


def messages(
    rows: list[Row],
    wanted: Iterable[Key],
    options: TaskOptions | None = None,
    per_task: Mapping[Key, TaskOptions] | None = None,
) -> Submission:
    """Split rows (already dependencies first) into SubmitGraph messages.

    A wanted key is listed in the message that defines it, so each message
    references only keys in itself, in earlier messages, or already known.
    `per_task` gives some keys options of their own in place of `options`.
    """
    options = options or TaskOptions()
    want = set(wanted)
    bounds = chunk_bounds(len(row.deps) for row in rows)
    chunks = [rows[b.start : b.stop] for b in bounds]
    bridges: dict[Key, None] = {}
    if len(chunks) > 1:
        chunk_of = {rows[i].key: j for j, b in enumerate(bounds) for i in b}
        for j, chunk in enumerate(chunks):
            for row in chunk:
                for dep in row.deps:
                    if chunk_of.get(dep, j) < j and dep not in want:
                        bridges[dep] = None
    listed = want.union(bridges)
    if per_task:
        msgs = [_mixed_message(chunk, listed, options, per_task) for chunk in chunks]
    else:
        msgs = [_message(chunk, listed, options) for chunk in chunks]
    return Submission(msgs, list(bridges))


def _mixed_message(
    chunk: list[Row], want: set[Key], options: TaskOptions, per_task: Mapping[Key, TaskOptions]
) -> SubmitGraph:
    """A message whose tasks do not all share one set of options."""
    msg = _message(chunk, want, TaskOptions(timeout=options.timeout))
    chosen = [per_task.get(row.key, options) for row in chunk]
    everyone = list(enumerate(chosen))
    msg.priority = tuple(o.priority for o in chosen) if any(o.priority for o in chosen) else ()
    msg.resources = {i: o.resources for i, o in everyone if o.resources}
    msg.restrict = {i: o.restrict for i, o in everyone if o.restrict}
    msg.retries = {i: o.retries for i, o in everyone if o.retries}
    return msg


def _message(chunk: list[Row], want: set[Key], options: TaskOptions) -> SubmitGraph:
    funcs: list[Serialized] = []
    index: dict[int, int] = {}
    func = []
    for row in chunk:
        i = index.get(id(row.func))
        if i is None:
            i = index[id(row.func)] = len(funcs)
            funcs.append(row.func)
        func.append(i)
    n = len(chunk)
    everyone = range(n)
    return SubmitGraph(
        keys=tuple(row.key for row in chunk),
        funcs=tuple(funcs),
        func=tuple(func),
        args=tuple(row.args for row in chunk),
        deps=tuple(row.deps for row in chunk),
        wanted=tuple(row.key for row in chunk if row.key in want),
        priority=(options.priority,) * n if options.priority else (),
        resources={i: options.resources for i in everyone} if options.resources else {},
        restrict={i: options.restrict for i in everyone} if options.restrict else {},
        retries={i: options.retries for i in everyone} if options.retries else {},
        timeout={i: float(options.timeout) for i in everyone} if options.timeout else {},
    )


# -- dict graphs -------------------------------------------------------------------


def graph_rows(
    graph: Mapping[Hashable, object], requested: Iterable[Key], cache: FunctionCache
) -> list[Row]:
    """Rows of the tasks `requested` needs, dependencies first.

    Tasks nothing requested reads are left out. `requested` are keys of the
    graph; the caller resolves Futures before.

    Raises:
        GraphError: a bad key, a requested key not in the graph, or a cycle.
        SerializationError: a function or an argument cannot be pickled.
    """
    for key in graph:
        if not is_key(key):
            raise GraphError(f"bad key {key!r}: a key is a str or a non-empty tuple of str and int")
    roots = list(requested)
    missing = [k for k in roots if k not in graph]
    if missing:
        raise GraphError(f"requested keys not in the graph: {missing[:10]!r}")
    specs: dict[Key, tuple[Callable[..., object], Serialized, tuple[Key, ...]]] = {}
    for key, value in graph.items():
        specs[key] = _task_spec(value, graph)  # type: ignore[index]
    order = topological_order(roots, {k: v[2] for k, v in specs.items()})
    rows = []
    for key in order:
        func, args, deps = specs[key]
        rows.append(Row(key, cache.get(func)[0], args, deps))
    return rows


def _task_spec(value: object, graph: Mapping) -> tuple[Callable[..., object], Serialized, tuple]:
    if type(value) is tuple and value and callable(value[0]):
        args, deps = arg_payload(value[1:], {}, graph)
        return value[0], args, deps
    # A literal computes as itself: getitem([value], 0) is a builtin, so the
    # worker needs nothing from shoal.client to run it. The list keeps a
    # callable literal from reading as a task.
    args, deps = arg_payload(([value], 0), {}, graph)
    return operator.getitem, args, deps


def topological_order(roots: list[Key], deps_of: Mapping[Key, tuple[Key, ...]]) -> list[Key]:
    """Keys reachable from `roots`, each after its dependencies (depth-first post-order).

    Dependencies not in `deps_of` (keys of existing Futures) are skipped.

    Raises:
        GraphError: naming the keys of a cycle.
    """
    done: set[Key] = set()
    order: list[Key] = []
    for root in roots:
        if root in done:
            continue
        stack = [(root, iter(deps_of[root]))]
        depth = {root: 0}  # keys on the stack -> their position in it
        while stack:
            key, deps = stack[-1]
            for dep in deps:
                if dep in done or dep not in deps_of:
                    continue
                if dep in depth:
                    cycle = [k for k, _ in stack[depth[dep] :]] + [dep]
                    raise GraphError(f"the graph has a cycle: {' -> '.join(map(repr, cycle))}")
                depth[dep] = len(stack)
                stack.append((dep, iter(deps_of[dep])))
                break
            else:
                stack.pop()
                del depth[key]
                done.add(key)
                order.append(key)
    return order
