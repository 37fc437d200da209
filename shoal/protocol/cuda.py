"""Device arrays on the wire: the CUDA row of the serializer registry.

Anything exposing `__cuda_array_interface__` (cupy, numba, torch) travels as a
header (dtype, shape, type) and one buffer. The sender copies the array once,
device to pinned host memory, and that buffer is the frame written to the
socket. The receiver copies the received frame once, host to a new cupy array
on its own device (the one CUDA_VISIBLE_DEVICES gives its process), or, asked
for host data, returns a numpy array over the frame itself. cupy does the
copies; it is imported only when a device array is met.
"""

from __future__ import annotations

import importlib
import math
from typing import Any

from shoal.errors import SerializationError

# What a process that cannot hold a device array should do, said in its errors.
FIX = (
    "install cupy where the value is wanted (pip install 'shoal[gpu]', on a machine with an "
    "NVIDIA GPU), or ask for host data: future.result(host=True) or "
    "client.gather(futures, host=True) give numpy arrays"
)

Header = tuple[str, tuple[int, ...], str]  # dtype, shape, the sender's type name
_device_count: int | None = None  # CUDA devices this process sees, once asked


def interface(obj: object) -> dict[str, Any] | None:
    """The object's `__cuda_array_interface__`, or None when it has none.

    A class may declare the attribute while an instance refuses it (a torch
    tensor in host memory raises AttributeError): that instance is no device array.
    """
    try:
        cai = obj.__cuda_array_interface__  # type: ignore[attr-defined]
    except AttributeError:
        return None
    return cai if isinstance(cai, dict) else None


def nbytes(cai: dict[str, Any]) -> int:
    """The bytes of device memory an array interface describes."""
    import numpy as np

    return math.prod(cai["shape"]) * np.dtype(cai["typestr"]).itemsize


def describe(typename: str, dtype: str, shape: tuple[int, ...]) -> str:
    return f"a device array ({typename} of {dtype}, shape {shape})"


def to_host(obj: object) -> tuple[Header, list[Any]] | None:
    """(header, [pinned host buffer]) for a device array; None for anything else.

    Raises:
        SerializationError: this process has a device array but no cupy to copy it.
    """
    if interface(obj) is None:
        return None
    import numpy as np

    cls = type(obj)
    typename = f"{cls.__module__}.{cls.__qualname__}"
    cupy = _cupy(f"{typename} value")
    arr = cupy.asarray(obj)  # the same device memory, seen through cupy: no copy
    if not arr.flags.c_contiguous:
        arr = cupy.ascontiguousarray(arr)  # one copy on the device, so that one frame holds it
    header = (arr.dtype.str, tuple(int(n) for n in arr.shape), typename)
    if arr.nbytes == 0:
        return header, [np.empty(0, np.uint8)]
    # Pinned memory: the device copies into it at full speed, and it is the frame
    # that goes to the socket, so the value is copied once on this side.
    pinned = cupy.cuda.alloc_pinned_memory(arr.nbytes)
    host = np.frombuffer(pinned, arr.dtype, arr.size).reshape(arr.shape)
    arr.get(out=host)
    return header, [host]


def from_host(header: Header, buffers: list[memoryview], host: bool) -> Any:
    """The array again: a numpy view of the frame with `host`, else a new cupy array
    on this process's device, filled from the frame.

    Raises:
        SerializationError: a device array is wanted here and this process has no
            cupy or no device; the message says how to fix it.
    """
    import numpy as np

    dtype, shape, typename = header
    view = np.frombuffer(buffers[0], np.dtype(dtype)).reshape(shape)
    if host:
        return view
    cupy = _cupy(describe(typename, dtype, shape))
    out = cupy.empty(shape, dtype)
    if view.size:
        out.set(view)
    return out


def _cupy(what: str) -> Any:
    """The cupy module, with a device to use.

    Raises:
        SerializationError: naming `what` needed it, and the fix.
    """
    global _device_count
    try:
        cupy = importlib.import_module("cupy")
    except ImportError as exc:
        raise SerializationError(f"{what}: cupy is not installed here ({exc}); {FIX}") from None
    if _device_count is None:
        try:
            _device_count = int(cupy.cuda.runtime.getDeviceCount())
        except cupy.cuda.runtime.CUDARuntimeError as exc:  # no driver, or no device
            raise SerializationError(
                f"{what}: cupy finds no CUDA device here ({exc}); {FIX}"
            ) from None
    if _device_count < 1:
        raise SerializationError(f"{what}: cupy finds no CUDA device here; {FIX}")
    return cupy


def forget_devices() -> None:
    """Ask cupy again, next time, how many devices there are (tests change it)."""
    global _device_count
    _device_count = None
