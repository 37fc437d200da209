"""A stand-in for cupy: "device" arrays that live in host memory.

It has what shoal's CUDA row uses (asarray, ascontiguousarray, empty,
ndarray.get/set, cuda.alloc_pinned_memory, cuda.runtime.getDeviceCount) and
counts what it does, so that tests can see which copies were made: `PINNED`
lists the pinned buffers handed out, `ALLOCATED` the arrays made by `empty`,
`MADE` the ids of arrays made by `array`. FAKE_CUPY_DEVICES sets the number of
devices it reports (default 1).
"""

from __future__ import annotations

import ctypes
import os
from types import SimpleNamespace
from typing import Any

import numpy as np

PINNED: list[bytearray] = []
ALLOCATED: list[ndarray] = []
MADE: list[int] = []


class ndarray:
    """A device array: a numpy array standing in for device memory."""

    def __init__(self, memory: np.ndarray) -> None:
        self._memory = memory

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        m = self._memory
        return {
            "shape": m.shape,
            "typestr": m.dtype.str,
            "data": (m.ctypes.data, False),
            "strides": None if m.flags.c_contiguous else m.strides,
            "version": 3,
        }

    dtype = property(lambda self: self._memory.dtype)
    shape = property(lambda self: self._memory.shape)
    size = property(lambda self: self._memory.size)
    nbytes = property(lambda self: self._memory.nbytes)
    flags = property(lambda self: self._memory.flags)
    T = property(lambda self: ndarray(self._memory.T))

    def __getitem__(self, index: Any) -> ndarray:
        return ndarray(self._memory[index])

    def __matmul__(self, other: ndarray) -> ndarray:
        return ndarray(self._memory @ other._memory)

    def sum(self) -> Any:
        return self._memory.sum()

    def get(self, out: np.ndarray | None = None) -> np.ndarray:
        """Device to host, into `out` when given."""
        if out is None:
            return self._memory.copy()
        assert out.shape == self.shape and out.dtype == self.dtype and out.flags.c_contiguous
        out[...] = self._memory
        return out

    def set(self, host: np.ndarray) -> None:
        """Host to device."""
        assert host.shape == self.shape and host.dtype == self.dtype
        self._memory[...] = host


def _view(cai: dict[str, Any]) -> np.ndarray:
    """The memory an array interface describes, without a copy."""
    dtype = np.dtype(cai["typestr"])
    shape = tuple(cai["shape"])
    strides = tuple(cai.get("strides") or _c_strides(shape, dtype.itemsize))
    if 0 in shape:
        return np.empty(shape, dtype)
    span = dtype.itemsize + sum((n - 1) * s for n, s in zip(shape, strides, strict=True))
    raw = (ctypes.c_char * span).from_address(cai["data"][0])
    return np.ndarray(shape, dtype, buffer=raw, strides=strides)


def _c_strides(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    strides, step = [], itemsize
    for n in reversed(shape):
        strides.append(step)
        step *= n
    return tuple(reversed(strides))


def asarray(obj: Any) -> ndarray:
    if isinstance(obj, ndarray):
        return obj
    if isinstance(obj, np.ndarray):
        return array(obj)
    return ndarray(_view(obj.__cuda_array_interface__))


def array(host: Any) -> ndarray:
    made = ndarray(np.array(host))
    MADE.append(id(made))
    return made


def ascontiguousarray(arr: ndarray) -> ndarray:
    return ndarray(np.ascontiguousarray(arr._memory))


def empty(shape: Any, dtype: Any) -> ndarray:
    made = ndarray(np.empty(shape, dtype))
    ALLOCATED.append(made)
    return made


class _CUDARuntimeError(RuntimeError):
    pass


def _device_count() -> int:
    count = int(os.environ.get("FAKE_CUPY_DEVICES", "1"))
    if count < 0:
        raise _CUDARuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")
    return count


def _alloc_pinned_memory(nbytes: int) -> bytearray:
    buffer = bytearray(nbytes)
    PINNED.append(buffer)
    return buffer


cuda = SimpleNamespace(
    alloc_pinned_memory=_alloc_pinned_memory,
    runtime=SimpleNamespace(getDeviceCount=_device_count, CUDARuntimeError=_CUDARuntimeError),
)
