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

LOCK_IN_TEST = (
    "holds a lock in the test process and expects tasks to see it held; "
    "a task in another process has its own copy of the lock"
)
MEMMAP_CRASH = (
    "stores into an np.memmap of the test process (a task in another process writes "
    "a copy), then closes it before pytest prints the failure: the test process crashes"
)
GENERATOR = (
    "a task returns, or is given, a generator (a lazy partition), which cannot be "
    "pickled to move between processes"
)
WEAKREF = (
    "a task returns a weakref.proxy of a frame, which cannot be pickled to move "
    "between processes (and would name an object of the worker's)"
)
CONFIG = (
    "sets dask's configuration in the test process and expects tasks to read it; "
    "tasks in other processes read their own"
)
NO_PLUGIN = "needs the pytest-mock fixture `mocker`, not installed: errors on every scheduler"

CORE = "dask/array/tests/test_array_core.py::"
CANNOT_PASS: dict[str, str] = {
    "dask/tests/test_delayed.py::test_traverse_false": IDENTITY,
    "dask/tests/test_delayed.py::test_callable_obj": IDENTITY,
    "dask/bag/tests/test_bag.py::test_to_delayed_optimize_graph": MUTATES,
    "dask/bag/tests/test_bag.py::test_from_delayed_iterator": GENERATOR,
    "dask/bag/tests/test_bag.py::test_repartition_partition_size_complex_dtypes": IDENTITY,
    "dask/bag/tests/test_bag.py::test_bag_with_single_callable": IDENTITY,
    "dask/bag/tests/test_bag.py::test_reductions_are_lazy": GENERATOR,
    "dask/bag/tests/test_bag.py::test_temporary_directory": CONFIG,
    "dask/dataframe/tests/test_dataframe.py::test_use_of_weakref_proxy": WEAKREF,
    # da.store writes into a numpy array (or memmap) of the test process.
    CORE + "test_store_delayed_target": MUTATES,
    CORE + "test_store": MUTATES,
    CORE + "test_store_regions": MUTATES,
    CORE + "test_store_compute_false": MUTATES,
    CORE + "test_store_locks_failure_lock_released": MUTATES,
    CORE + "test_store_locks_one_lock_two_stores": MUTATES,
    CORE + "test_store_locks_dont_assume_threadsafe": MUTATES,
    CORE + "test_store_locks_no_lock": MUTATES,
    CORE + "test_store_locks_count_calls": MUTATES,
    CORE + "test_memmap": MEMMAP_CRASH,
    CORE + "test_from_array_with_lock": LOCK_IN_TEST,
    CORE + "test_from_array_getitem": MUTATES,  # a getter sets a `nonlocal` flag
    CORE + "test_binary_operator_delegation": NO_PLUGIN,
}


def reason_for(nodeid: str) -> str | None:
    """The reason a test cannot pass on shoal, if it is listed."""
    base = nodeid.split("[", 1)[0]
    at = base.find("dask/")
    return CANNOT_PASS.get(base[at:] if at >= 0 else base)
