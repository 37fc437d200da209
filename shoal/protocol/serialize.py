"""User data <-> opaque payloads: cloudpickle, protocol 5, buffers out of band.

A `Serialized` is what crosses the wire for a function, an argument tuple or a
result: the pickle stream plus the raw buffers that pickle-5 lifted out of it
(numpy arrays and other objects exposing PickleBuffer). Routing one never
unpickles it; only `deserialize` runs user code, and only on request.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import cloudpickle

from shoal.errors import SerializationError

PICKLE_PROTOCOL = 5

# A payload this small with no out-of-band buffers travels inside the msgpack
# header instead of in frames of its own.
INLINE_MAX = 16 * 1024


class Serialized:
    """An opaque pickled payload: `frames[0]` is the pickle stream, the rest its buffers.

    `typename` is the qualified name of the top-level object's type, kept so
    errors can name it without unpickling. `frames` is a tuple (smaller than a
    list: a scheduler holds one per task).
    """

    __slots__ = ("frames", "typename")

    def __init__(self, typename: str, frames: Sequence[bytes | bytearray | memoryview]) -> None:
        if not frames:
            raise ValueError("a Serialized needs at least the pickle stream")
        self.typename = typename
        self.frames = tuple(frames)

    @property
    def nbytes(self) -> int:
        return sum(memoryview(f).nbytes for f in self.frames)

    @property
    def inline(self) -> bool:
        """True when it travels inside the header rather than as frames."""
        return len(self.frames) == 1 and memoryview(self.frames[0]).nbytes <= INLINE_MAX

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Serialized):
            return NotImplemented
        return (
            self.typename == other.typename
            and len(self.frames) == len(other.frames)
            and all(bytes(a) == bytes(b) for a, b in zip(self.frames, other.frames, strict=True))
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<Serialized {self.typename} frames={len(self.frames)} nbytes={self.nbytes}>"


def typename_of(obj: object) -> str:
    cls = type(obj)
    module = cls.__module__
    if module == "builtins":
        return cls.__qualname__
    return f"{module}.{cls.__qualname__}"


# Values made only of these types pickle the same with the standard pickler,
# which is about four times faster than cloudpickle on small objects.
_PLAIN_SCALARS = frozenset({int, float, str, bytes, bool, type(None), complex})
_PLAIN_BUDGET = 64  # objects inspected before giving up and using cloudpickle


def _is_plain(obj: object) -> bool:
    """Whether `obj` is small plain data: scalars in tuples, lists and dicts."""
    stack, budget = [obj], _PLAIN_BUDGET
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind in _PLAIN_SCALARS:
            continue
        budget -= 1
        if budget < 0:
            return False
        if kind is tuple or kind is list:
            stack.extend(item)  # type: ignore[arg-type]
        elif kind is dict:
            stack.extend(item.keys())  # type: ignore[attr-defined]
            stack.extend(item.values())  # type: ignore[attr-defined]
        elif kind in _PLAIN_WRAPPERS:
            stack.extend(_PLAIN_WRAPPERS[kind](item))
        else:
            return False
    return True


# Classes whose instances are plain when what they hold is (registered by the
# modules that define them, to keep this module free of their imports).
_PLAIN_WRAPPERS: dict[type, Callable[[Any], Iterable[object]]] = {}


def register_plain(cls: type, parts: Callable[[Any], Iterable[object]]) -> None:
    """Declare `cls` plain when every object `parts(instance)` returns is plain.

    `cls` must be importable by name on the receiving side.
    """
    _PLAIN_WRAPPERS[cls] = parts


def serialize(obj: object, what: str = "object") -> Serialized:
    """Pickle `obj` (functions and lambdas by value) with its buffers out of band.

    Contiguous buffers are referenced, not copied: the returned frames share
    memory with `obj`, so `obj` must not be mutated until they are sent.

    Raises:
        SerializationError: naming the type of `obj` and `what` it was.
    """
    if _is_plain(obj):
        try:
            return Serialized(typename_of(obj), [pickle.dumps(obj, protocol=PICKLE_PROTOCOL)])
        except RecursionError:
            pass  # a deeply nested value: cloudpickle reports it below
    buffers: list[pickle.PickleBuffer] = []
    try:
        stream = cloudpickle.dumps(obj, protocol=PICKLE_PROTOCOL, buffer_callback=buffers.append)
        frames: list[bytes | memoryview] = [stream]
        # raw() fails for non-contiguous buffers; pickle those in band instead.
        try:
            frames.extend(b.raw() for b in buffers)
        except BufferError:
            frames = [cloudpickle.dumps(obj, protocol=PICKLE_PROTOCOL)]
    except Exception as exc:
        raise SerializationError(
            f"cannot serialize {what} of type {typename_of(obj)}: {type(exc).__name__}: {exc}"
        ) from exc
    return Serialized(typename_of(obj), frames)


def deserialize(payload: Serialized, what: str = "object") -> object:
    """Unpickle a payload; this runs code named by its sender.

    Raises:
        SerializationError: naming the payload's type and `what` it was.
    """
    try:
        return pickle.loads(payload.frames[0], buffers=payload.frames[1:])
    except Exception as exc:
        raise SerializationError(
            f"cannot deserialize {what} of type {payload.typename}: {type(exc).__name__}: {exc}"
        ) from exc
