"""User data <-> opaque payloads: cloudpickle, protocol 5, buffers out of band.

A `Serialized` is what crosses the wire for a function, an argument tuple or a
result: the pickle stream plus the raw buffers lifted out of it. Routing one
never unpickles it; only `deserialize` runs user code, and only on request.

Arrays go through one registry of array families (numpy; device arrays, see
shoal.protocol.cuda): each row turns an array into a small header, pickled in
the stream, and buffers that travel as frames of their own, and back. The
rows apply wherever an array sits in a value (a dict of arrays, a tuple), and
spilling a value to disk writes the same frames.
"""

from __future__ import annotations

import contextvars
import io
import itertools
import pickle
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import cloudpickle

from shoal.errors import SerializationError
from shoal.protocol import cuda

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
        frames = self.frames
        if len(frames) != 1:
            return False
        first = frames[0]
        return (len(first) if type(first) is bytes else memoryview(first).nbytes) <= INLINE_MAX

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


# -- the registry of array families ------------------------------------------------


class ArrayFamily:
    """One row of the registry: how arrays of one kind become a header and buffers.

    `claims(cls)` says whether instances of `cls` may belong (asked once per type).
    `dumps(obj)` returns (header, buffers), or None to leave `obj` to pickle: the
    header is pickled in the stream, and each buffer (anything exposing the buffer
    protocol, contiguous) travels as a frame of its own, referenced, not copied.
    `loads(header, buffers, host)` makes the array again; with `host`, a device
    array comes back in host memory (a numpy array).
    """

    __slots__ = ("claims", "dumps", "loads", "name")

    def __init__(
        self,
        name: str,
        claims: Callable[[type], bool],
        dumps: Callable[[Any], tuple[Any, list[Any]] | None],
        loads: Callable[[Any, list[memoryview], bool], object],
    ) -> None:
        self.name, self.claims, self.dumps, self.loads = name, claims, dumps, loads

    def __repr__(self) -> str:
        return f"<ArrayFamily {self.name}>"


_FAMILIES: dict[str, ArrayFamily] = {}
_BY_TYPE: dict[type, ArrayFamily | None] = {}  # what family_of found, by type
_BY_TYPE_MAX = 4096  # types remembered before the cache starts afresh
# Set by deserialize(host=True) while it unpickles: device arrays come back as numpy.
_HOST: contextvars.ContextVar[bool] = contextvars.ContextVar("shoal_host_arrays", default=False)


def register_array_family(
    name: str,
    claims: Callable[[type], bool],
    dumps: Callable[[Any], tuple[Any, list[Any]] | None],
    loads: Callable[[Any, list[memoryview], bool], object],
) -> None:
    """Add a row to the registry (or replace the row of that name); earlier rows win.

    `loads` must be importable where payloads are unpickled: the receiving side
    finds the row by `name`, so the module that registers it must be imported there.
    """
    _FAMILIES[name] = ArrayFamily(name, claims, dumps, loads)
    _BY_TYPE.clear()


def array_families() -> list[str]:
    """The names of the registered rows, in the order they are tried."""
    return list(_FAMILIES)


def family_of(cls: type) -> ArrayFamily | None:
    """The row claiming instances of `cls`, if any."""
    try:
        return _BY_TYPE[cls]
    except KeyError:
        pass
    found = next((family for family in _FAMILIES.values() if family.claims(cls)), None)
    if len(_BY_TYPE) >= _BY_TYPE_MAX:
        _BY_TYPE.clear()
    _BY_TYPE[cls] = found
    return found


def _rebuild(name: str, header: Any, *buffers: Any) -> object:
    """Called by the unpickler for each array a registry row wrote."""
    family = _FAMILIES.get(name)
    if family is None:
        raise SerializationError(f"no array family {name!r} is registered in this process")
    return family.loads(header, [memoryview(b) for b in buffers], _HOST.get())


class _Pickler(cloudpickle.Pickler):
    """cloudpickle, with the registry's rows tried first for every object pickled."""

    def reducer_override(self, obj: Any) -> Any:
        cls = type(obj)
        # Called for every object that is not a plain builtin: the cache is read inline.
        family = _BY_TYPE[cls] if cls in _BY_TYPE else family_of(cls)
        if family is not None:
            parts = family.dumps(obj)
            if parts is not None:
                header, buffers = parts
                return _rebuild, (family.name, header, *map(pickle.PickleBuffer, buffers))
        return _cloudpickle_reduce(self, obj)


_cloudpickle_reduce = cloudpickle.Pickler.reducer_override


def _dumps(obj: object, buffer_callback: Callable[[pickle.PickleBuffer], Any] | None) -> bytes:
    out = io.BytesIO()
    _Pickler(out, protocol=PICKLE_PROTOCOL, buffer_callback=buffer_callback).dump(obj)
    return out.getvalue()


# numpy: an exact ndarray of a plain dtype, as its dtype, shape, order and data
# (a strided view is made contiguous first: one copy, still out of band).


def _is_ndarray(cls: type) -> bool:
    # By name: this module never imports numpy itself (it costs every process 0.2 s).
    return cls.__name__ == "ndarray" and cls.__module__ == "numpy"


def _numpy_dumps(arr: Any) -> tuple[Any, list[Any]] | None:
    dtype = arr.dtype
    if dtype.hasobject or dtype.itemsize == 0:
        return None  # objects are pickled one by one; a zero-width dtype has no data
    import numpy as np

    if not (arr.flags.c_contiguous or arr.flags.f_contiguous):
        arr = np.ascontiguousarray(arr)
    order = "C" if arr.flags.c_contiguous else "F"
    # As bytes in memory order (a view): some dtypes (datetimes) export no buffer.
    return (dtype, arr.shape, order), [arr.ravel(order="K").view(np.uint8)]


def _numpy_loads(header: Any, buffers: list[memoryview], host: bool) -> object:
    import numpy as np

    dtype, shape, order = header
    return np.frombuffer(buffers[0], dtype=dtype).reshape(shape, order=order)


def _device_claims(cls: type) -> bool:
    return hasattr(cls, "__cuda_array_interface__")


register_array_family("numpy", _is_ndarray, _numpy_dumps, _numpy_loads)
register_array_family("cuda", _device_claims, cuda.to_host, cuda.from_host)


def device_nbytes(obj: object) -> int | None:
    """Bytes of device memory `obj` holds: a device array, or a list, tuple or dict
    with device arrays among its first items; None when it holds none (the host
    arrays beside them count too).
    """
    cai = _device_interface(obj)
    if cai is not None:
        return cuda.nbytes(cai)
    kind = type(obj)
    if kind is tuple or kind is list:
        items: Iterable[object] = obj  # type: ignore[assignment]
    elif kind is dict:
        items = obj.values()  # type: ignore[attr-defined]
    else:
        return None
    total, found = 0, False
    for item in itertools.islice(items, _PLAIN_BUDGET):
        cai = _device_interface(item)
        if cai is not None:
            total += cuda.nbytes(cai)
            found = True
        elif _is_ndarray(type(item)):
            total += item.nbytes  # type: ignore[attr-defined]
    return total if found else None


def _device_interface(obj: object) -> dict[str, Any] | None:
    family = family_of(type(obj))
    return cuda.interface(obj) if family is not None and family.name == "cuda" else None


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
        stream = _dumps(obj, buffers.append)
        frames: list[bytes | memoryview] = [stream]
        # raw() fails for non-contiguous buffers; pickle those in band instead.
        try:
            frames.extend(b.raw() for b in buffers)
        except BufferError:
            frames = [_dumps(obj, None)]
    except Exception as exc:
        raise SerializationError(
            f"cannot serialize {what} of type {typename_of(obj)}: {type(exc).__name__}: {exc}"
        ) from exc
    return Serialized(typename_of(obj), frames)


def deserialize(payload: Serialized, what: str = "object", *, host: bool = False) -> object:
    """Unpickle a payload; this runs code named by its sender.

    Device arrays in it are made on this process's device, or, with `host`,
    returned as numpy arrays over the received frames (no copy, no cupy needed).

    Raises:
        SerializationError: naming the payload's type and `what` it was (for a
            device array where this process has no cupy or no device, the fix).
    """
    token = _HOST.set(host)
    try:
        return pickle.loads(payload.frames[0], buffers=payload.frames[1:])
    except Exception as exc:
        raise SerializationError(
            f"cannot deserialize {what} of type {payload.typename}: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        _HOST.reset(token)
