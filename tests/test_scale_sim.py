"""The scale simulation (benchmarks/scale.py) at a small size: correct, not timed.

Every wanted key must end in memory and validate() must pass, both after the
run and after the client releases everything; simulate() asserts both.
"""

from __future__ import annotations

import random

import pytest

from benchmarks import scale


@pytest.mark.timeout(60)
@pytest.mark.parametrize("workload", scale.WORKLOADS)
@pytest.mark.parametrize("want", ["all", "sinks"])
def test_simulation_finishes_every_wanted_key(
    workload: str, want: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small chunks, so that the graph arrives in several messages with bridges.
    monkeypatch.setattr(scale, "MAX_TASKS_PER_MESSAGE", 500)
    graph = scale.BUILDERS[workload](2_000, random.Random(1))
    assert len(graph.deps) == 2_000
    opts = scale.make_parser().parse_args(["--want", want, "--seed", "1"])
    bridges = scale.bridges_of(graph, range(2_000) if want == "all" else graph.sinks)
    # Map-reduce's reducers read maps of earlier chunks: with only the final key
    # wanted, those maps travel as bridges, released by one more message.
    assert bool(bridges) == (workload == "mapreduce" and want == "sinks")
    point = scale.simulate(graph, 20, opts)
    assert point["ok"]
    assert point["ingest_calls"] == 4 + bool(bridges)
    assert point["to_memory"] == 2_000  # every task is needed and ran once
    assert point["transitions"] >= 3 * 2_000  # released -> waiting -> processing -> memory


@pytest.mark.timeout(60)
def test_memory_run_reports_per_task_sizes() -> None:
    graph = scale.chains(1_000, random.Random(0))
    opts = scale.make_parser().parse_args([])
    point = scale.simulate(graph, 5, opts, memory=True)
    assert 0 < point["held_B_per_task"] <= point["peak_B_per_task"]
