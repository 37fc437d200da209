"""What a task's `args` payload holds: arguments with references to other keys.

The client builds an `ArgSpec`, pickles it, and the worker unpickles and
resolves it; the scheduler never opens it. `Ref(key)` stands for the value
of another key; `Call(func, args, kwargs)` is a nested task evaluated in
place (a graph's `(func, *args)` tuple inside another task's arguments).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from shoal.protocol.serialize import register_plain

# How deep a task's arguments, or a structure of futures, may nest containers.
# Past it the client refuses them (NestingTooDeep) rather than exhaust Python's
# recursion limit in some walk on the client or the worker, far from the cause.
MAX_NESTING = 100


class Ref:
    """The value of another task, `key`, resolved on the worker."""

    __slots__ = ("key",)

    def __init__(self, key: object) -> None:
        self.key = key

    def __reduce__(self) -> tuple[type, tuple[object]]:
        return (Ref, (self.key,))

    def __eq__(self, other: object) -> bool:
        return type(other) is Ref and other.key == self.key

    def __hash__(self) -> int:
        return hash((Ref, self.key))

    def __repr__(self) -> str:
        return f"Ref({self.key!r})"


class Call:
    """A nested call, evaluated on the worker before the task that holds it."""

    __slots__ = ("args", "func", "kwargs")

    def __init__(self, func: Callable[..., object], args: tuple, kwargs: dict) -> None:
        self.func, self.args, self.kwargs = func, args, kwargs

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:
        return (Call, (self.func, self.args, self.kwargs))

    def __eq__(self, other: object) -> bool:
        return (
            type(other) is Call
            and other.func == self.func
            and other.args == self.args
            and other.kwargs == self.kwargs
        )

    def __repr__(self) -> str:
        return f"Call({self.func!r}, {self.args!r}, {self.kwargs!r})"


class ArgSpec:
    """Positional and keyword arguments of one task.

    `walk` is False when the arguments hold no Ref and no Call, so the worker
    can pass them as they are.
    """

    __slots__ = ("args", "kwargs", "walk")

    def __init__(self, args: tuple, kwargs: dict, walk: bool) -> None:
        self.args, self.kwargs, self.walk = args, kwargs, walk

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:
        return (ArgSpec, (self.args, self.kwargs, self.walk))

    def __repr__(self) -> str:
        return f"ArgSpec({self.args!r}, {self.kwargs!r}, walk={self.walk})"


register_plain(Ref, lambda ref: (ref.key,))
register_plain(ArgSpec, lambda spec: (spec.args, spec.kwargs))


def resolve(obj: Any, values: Mapping[object, object]) -> Any:
    """Replace every Ref in `obj` by its value and evaluate every Call.

    Lists, tuples and dicts are walked; other objects are returned as they are.

    Raises:
        KeyError: a Ref to a key missing from `values`.
        Exception: whatever a nested Call raises.
    """
    kind = type(obj)
    if kind is Ref:
        return values[obj.key]
    if kind is Call:
        return obj.func(*resolve(obj.args, values), **resolve(obj.kwargs, values))
    if kind is tuple:
        return tuple([resolve(item, values) for item in obj])
    if kind is list:
        return [resolve(item, values) for item in obj]
    if kind is dict:
        return {k: resolve(v, values) for k, v in obj.items()}
    return obj


def run(func: Callable[..., object], spec: ArgSpec, values: Mapping[object, object]) -> object:
    """Call `func` with the arguments of `spec`, references resolved from `values`."""
    if not spec.walk:
        return func(*spec.args, **spec.kwargs)
    return func(*resolve(spec.args, values), **resolve(spec.kwargs, values))
