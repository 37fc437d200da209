"""Giving freed memory back to the operating system.

glibc keeps freed heap pages for reuse; after the store lets go of large values
the worker asks it to return them (malloc_trim), so that its resident memory,
which the nanny and the pause threshold watch, falls.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any

_libc: Any = None


def trim_heap() -> bool:
    """Return freed heap memory to the operating system (glibc's malloc_trim);
    False where there is no such call."""
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        try:
            _libc = ctypes.CDLL(name) if name else False
        except OSError:
            _libc = False
        if _libc and not hasattr(_libc, "malloc_trim"):
            _libc = False
    if not _libc:
        return False
    _libc.malloc_trim(0)
    return True
