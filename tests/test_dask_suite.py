"""CI's fast subset of dask's own test suite, run on a shoal LocalCluster.

A pytest process of its own runs these tests of dask's package through
tests.dask_suite.plugin, with shoal as dask's default scheduler and the named
"sync" and "threads" schedulers routed to it; every test must pass (or skip
or xfail as it does under dask's own scheduler), except those listed in
tests/dask_suite/known.py as impossible on any multi-process scheduler.
`make test-dask` runs the whole selection beside dask's local scheduler.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("dask")
pytest.importorskip("pandas")

from tests.dask_suite.known import reason_for
from tests.dask_suite.run import run_side

FAST_SUBSET = (
    "tests/test_delayed.py",
    "bag/tests/test_bag.py::test_bag_map",
    "bag/tests/test_bag.py::test_frequencies",
    "bag/tests/test_bag.py::test_fold",
    "bag/tests/test_bag.py::test_topk",
    "bag/tests/test_bag.py::test_reductions",
    "array/tests/test_reductions.py::test_reductions_1D",
    "array/tests/test_reductions.py::test_arg_reductions",
    "array/tests/test_array_core.py::test_chunked_transpose_plus_one",
    "array/tests/test_array_core.py::test_Array_computation",
    "array/tests/test_array_core.py::test_stack",
    "array/tests/test_slicing.py::test_slicing_with_numpy_arrays",
    "array/tests/test_creation.py::test_arange",
    "dataframe/tests/test_groupby.py::test_full_groupby",
    "dataframe/tests/test_groupby.py::test_series_groupby",
    "dataframe/tests/test_dataframe.py::test_head_tail",
)


@pytest.mark.timeout(300)
def test_the_fast_subset_passes_on_shoal(tmp_path: Path) -> None:
    found = run_side("shoal", list(FAST_SUBSET), None, tmp_path, timeout=280)
    outcomes = found["outcomes"]
    assert len(outcomes) > 80, f"only {len(outcomes)} tests ran: see {tmp_path}/shoal.log"
    assert found["shoal_calls"] > 80  # the tests computed on shoal, not locally
    bad = {t: o for t, o in outcomes.items() if o in ("failed", "error") and not reason_for(t)}
    if bad:  # those that fail under dask's own scheduler too are not shoal's
        (tmp_path / "local").mkdir()
        again = [t.removeprefix("dask/") for t in sorted(bad)]  # node ids -> paths in dask
        local = run_side("local", again, None, tmp_path / "local", timeout=120)
        bad = {t: o for t, o in bad.items() if local["outcomes"].get(t) == "passed"}
    assert not bad, f"{sorted(bad)} (log: {(tmp_path / 'shoal.log').read_text()[-3000:]})"
