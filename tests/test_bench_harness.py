"""The `make bench` harness at a small size: it runs, checks answers, stops its processes.

Timings are never asserted; the machine running the tests may be busy.
"""

from __future__ import annotations

import math

import psutil
import pytest

from benchmarks import memory
from benchmarks.table import Metric, format_table, summarize


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_memory_workload_runs_on_shoal_and_stops_its_processes() -> None:
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    figures = memory.run_memory("shoal", 200)
    assert figures["tasks"] == 200
    for key in ("bytes_per_task_pending", "bytes_per_task_held", "cpu_us_per_task"):
        assert math.isfinite(figures[key]), key
    assert figures["rss_base_mb"] > 0
    left = {p.pid for p in me.children(recursive=True)} - before
    assert not left, f"processes left running: {left}"


def test_table_gives_medians_ranges_and_ratios() -> None:
    metrics = [Metric("gb_s", "move", "GB/s"), Metric("absent", "not measured", "s")]
    values = {"gb_s": {"shoal": [1.0, 3.0, 2.0], "dask": [4.0, 4.0, 4.0], "raw": [8.0]}}
    table = summarize(metrics, values)
    row = table["gb_s"]
    assert row["shoal"] == {"median": 2.0, "min": 1.0, "max": 3.0, "values": [1.0, 3.0, 2.0]}
    assert (row["shoal/dask"], row["shoal/raw"], row["dask/raw"]) == (0.5, 0.25, 0.5)
    assert "shoal" not in table["absent"]
    text = format_table(table)
    assert "2.00 (1.00..3.00)" in text
    assert "shoal/raw 0.25, dask/raw 0.50" in text


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_larger_than_memory_workload_spills_gets_the_answer_and_kills_nobody() -> None:
    from benchmarks import spill

    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    figures = spill.run_spill("shoal", "200MiB", 10, 1.2)  # 480 MiB through 400 MiB
    assert figures["right_answer"] and figures["workers_restarted"] == 0
    assert figures["spilled_mb"] > 0 and figures["data_mb"] >= 480
    assert set(figures["peak_rss_mb_each"]) == {"w0", "w1"}
    left = {p.pid for p in me.children(recursive=True)} - before
    assert not left, f"processes left running: {left}"
