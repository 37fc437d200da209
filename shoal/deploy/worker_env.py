"""The environment a worker process starts with: thread counts for numeric
libraries and the C allocator's trim threshold, unless the user set them; and,
for a worker a LocalCluster starts, the starting process's import path.

numpy's BLAS and OpenMP start a thread per core by default; in a worker that
runs `nthreads` tasks at once that is nthreads x cores threads fighting for
the cores. glibc keeps freed memory for reuse above a threshold that grows
with use; a low fixed one returns it to the system, so the worker's resident
memory (which its thresholds and nanny watch) falls when values are freed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence

# Libraries' thread-count variables, each set to the worker's thread count.
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "BLIS_NUM_THREADS",
)
# Bytes of free memory at the top of the heap past which glibc gives it back.
MALLOC_TRIM_THRESHOLD = 65536


def worker_environment(base: Mapping[str, str], nthreads: int) -> dict[str, str]:
    """`base` with the variables above added where `base` does not set them."""
    env = dict(base)
    for name in THREAD_VARIABLES:
        env.setdefault(name, str(nthreads))
    env.setdefault("MALLOC_TRIM_THRESHOLD_", str(MALLOC_TRIM_THRESHOLD))
    return env


def import_path(path: Sequence[str], own: Iterable[str], first: str = "") -> str:
    """PYTHONPATH for a worker started from this process, so that it imports what
    this process imports: `first` (the PYTHONPATH it is to start with), then the
    entries of `path` (sys.path) outside the interpreter's own folders `own` (its
    prefixes: the standard library and site-packages, which the worker has
    anyway), in order, each once, with "" (the working directory) made absolute.
    A task's function pickled by reference to a module of the user's script
    folder is then found by the worker too."""
    prefixes = tuple(os.path.join(p, "") for p in own if p)
    entries = [entry for entry in first.split(os.pathsep) if entry]
    for entry in path:
        full = os.path.abspath(entry or os.getcwd())
        if os.path.join(full, "").startswith(prefixes) or full in entries:
            continue
        entries.append(full)
    return os.pathsep.join(entries)
