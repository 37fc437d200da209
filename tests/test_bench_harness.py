"""The `make bench` harness at a small size: it runs, checks answers, stops its processes.

Timings are never asserted; the machine running the tests may be busy.
"""

from __future__ import annotations

import math
from pathlib import Path

import psutil
import pytest

from benchmarks import e2e, memory
from benchmarks.table import Metric, format_table, summarize


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_memory_workload_runs_on_shoal_and_stops_its_processes() -> None:
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    figures = memory.run_memory("shoal-cli", 200)
    assert figures["tasks"] == 200
    keys = ("bytes_per_task_pending", "bytes_per_task_held", "client_bytes_per_task_held")
    for key in (*keys, "cpu_us_per_task"):
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


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_dataframe_groupby_over_more_than_memory_spills_and_matches_pandas() -> None:
    from benchmarks import spill_frame

    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    # 720 MiB through 2 x 300 MiB: a worker that has imported pandas and pyarrow
    # holds about 150 MiB before any data, so smaller limits leave it no room.
    figures = spill_frame.run_frame("shoal", "300MiB", 10, 1.2, 100)
    assert figures["right_answer"] and figures["workers_restarted"] == 0
    assert figures["spilled_mb"] > 0 and figures["data_mb"] >= 720
    assert set(figures["peak_rss_mb_each"]) == {"w0", "w1"}
    left = {p.pid for p in me.children(recursive=True)} - before
    assert not left, f"processes left running: {left}"


def test_ratios_take_each_project_at_its_best_shape_and_the_load_is_shown() -> None:
    metrics = [Metric("rate", "map", "tasks/s"), Metric("mem", "bytes", "B", lower=True)]
    values = {
        "rate": {"shoal": [10.0], "shoal-cli": [8.0], "dask": [1.0], "dask-cli": [2.0]},
        "mem": {"shoal-cli": [100.0], "dask-cli": [400.0], "ray": [50.0]},
    }
    values["rate"]["ray"] = [4.0]
    loads = {"rate": [1.5, 2.5, 2.0], "mem": [3.0]}
    table = summarize(metrics, values, loads)
    # Higher is better for a rate: shoal's 10 over dask's better shape, 2.
    assert (table["rate"]["shoal/dask"], table["rate"]["shoal/ray"]) == (5.0, 2.5)
    # Lower is better for bytes: the ratio is shoal's over the peer's, lowest of each.
    assert (table["mem"]["shoal/dask"], table["mem"]["shoal/ray"]) == (0.25, 2.0)
    assert table["rate"]["load"]["min"] == 1.5 and table["rate"]["load"]["max"] == 2.5
    text = format_table(table)
    assert "1.5..2.5" in text
    assert all(name in text for name in ("shoal-cli", "dask-cli", "ray"))


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_an_e2e_round_charges_cpu_to_each_process_kind(tmp_path: Path) -> None:
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    # CPU times tick in 10 ms steps: the tree is large enough (1,023 tasks) that
    # the client's share is sure to be more than one tick.
    shape = {"tasks": 200, "round_trips": 20, "leaves": 512}
    out = e2e.run_round("shoal-cli", "map", shape, tmp_path)
    assert out["throughput_tasks_s"] > 0
    # The workers ran 200 tasks and the scheduler placed them: both used CPU.
    assert out["map_cpu_workers_us"] > 0
    assert out["map_cpu_scheduler_us"] > 0
    tree = e2e.run_round("shoal", "tree", shape, tmp_path)
    assert tree["tree_tasks_s"] > 0 and tree["tree_cpu_client_us"] > 0
    left = {p.pid for p in me.children(recursive=True)} - before
    assert not left, f"processes left running: {left}"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_observed_round_polls_only_in_its_polled_runs(tmp_path: Path) -> None:
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    out = e2e.run_round("shoal", "observed", {"tasks": 300}, tmp_path)
    # Each polled run starts with one poll of /metrics and one of the dashboard.
    polled_runs = e2e.OBSERVED_RUNS.count(True)
    assert out["observed_requests"] >= 2 * polled_runs
    assert out["closed_tasks_s"] > 0 and out["observed_tasks_s"] > 0
    assert out["closed_sched_cpu_us"] > 0
    left = {p.pid for p in me.children(recursive=True)} - before
    assert not left, f"processes left running: {left}"


def test_tree_graph_has_string_keys_and_sums_right() -> None:
    graph, top = e2e.tree_graph(5)
    assert all(type(key) is str for key in graph)
    assert len(graph) == 9 and top in graph


def test_the_codec_comparison_reads_each_others_bytes() -> None:
    pytest.importorskip("msgspec", reason="msgspec is in the bench extra")
    from benchmarks import codecs

    figures = codecs.measure(200, 1)  # asserts that each codec decodes the other's bytes
    assert set(figures) == {"task-finished", "compute-task", "key-in-memory"}
    assert all(v > 0 for row in figures.values() for v in row.values())
    assert "per task at the scheduler" in codecs.report(figures, 200, 1)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_the_wire_protocol_benchmark_runs_to_its_report() -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.protocol", "--quick"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Sequential round trips" in done.stdout and "Array transfer" in done.stdout
