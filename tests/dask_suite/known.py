"""dask tests that cannot pass on a scheduler that runs tasks in other processes.

Each entry is a test (its node id within dask's package, parameters left out)
and the reason. The reasons are of a few kinds: the test checks that a task
returns the very object it was given (`is`), mutates or counts calls in the
test process's own objects from inside a task, holds a lock or another
object that cannot be pickled, or watches dask's local scheduler's own
machinery (callbacks, its thread pool, its cache).
"""

from __future__ import annotations

IDENTITY = (
    "asserts a task's result `is` an object of the test process; another process returns a copy"
)
MUTATES = (
    "a task mutates or counts calls in an object of the test process; "
    "in another process only a copy changes"
)
UNPICKLABLE = (
    "a task's arguments hold a lock or another object that cannot be pickled to another process"
)
LOCAL_MACHINERY = (
    "watches dask's local scheduler itself (callbacks, its pool, its cache), "
    "which no other scheduler runs"
)
WARNINGS = "expects a warning raised inside a task to reach the caller's warnings filter"

CANNOT_PASS: dict[str, str] = {
    "dask/tests/test_delayed.py::test_traverse_false": IDENTITY,
    "dask/tests/test_delayed.py::test_callable_obj": IDENTITY,
}


def reason_for(nodeid: str) -> str | None:
    """The reason a test cannot pass on shoal, if it is listed."""
    base = nodeid.split("[", 1)[0]
    at = base.find("dask/")
    return CANNOT_PASS.get(base[at:] if at >= 0 else base)
