"""The scheduler process's garbage collection policy (shoal.scheduler.server.Collector)."""

from __future__ import annotations

import gc
from types import SimpleNamespace

import pytest

from shoal.protocol import messages as m
from shoal.scheduler import server
from tests.scheduler_harness import graph_message


@pytest.fixture
def collector_state():
    """Leave the process's collector as the test found it."""
    was_enabled, was_frozen = gc.isenabled(), gc.get_freeze_count()
    yield
    if was_enabled:
        gc.enable()
    if not was_frozen:
        gc.unfreeze()


def test_without_freeze_the_collector_is_left_alone(collector_state: None) -> None:
    collector = server.Collector(freeze=False)
    state = SimpleNamespace(tasks=dict.fromkeys(range(server.FREEZE_AT_TASKS)))
    frozen = gc.get_freeze_count()
    msg = graph_message({"a": []})
    collector.before(msg)
    assert gc.isenabled()
    collector.after(msg, state)
    assert gc.get_freeze_count() == frozen and not collector.frozen


def test_large_graphs_are_frozen_and_collected_once_idle(
    collector_state: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server, "FREEZE_AT_TASKS", 2)
    monkeypatch.setattr(server, "FREEZE_EVERY", 3)
    gc.unfreeze()
    collector = server.Collector(freeze=True)
    state = SimpleNamespace(tasks={"a": None})
    msg = graph_message({"a": []})
    collector.before(msg)
    assert not gc.isenabled()  # no collection while a graph comes in
    collector.after(msg, state)
    assert gc.isenabled() and not collector.frozen  # below FREEZE_AT_TASKS
    state.tasks = {"a": None, "b": None}
    collector.before(msg)
    collector.after(msg, state)
    assert collector.frozen and gc.get_freeze_count() > 0
    # Other messages freeze every FREEZE_EVERY while the scheduler is large.
    gc.unfreeze()
    finished = m.TaskFinished(key="a", nbytes=1, typename="int", duration=0.0)
    for _ in range(2):
        collector.before(finished)
        collector.after(finished, state)
        assert gc.get_freeze_count() == 0
    collector.after(finished, state)
    assert gc.get_freeze_count() > 0
    # Holding no tasks again: what was frozen is collected, and frozen again.
    cycle: list = []
    cycle.append(cycle)
    gc.freeze()
    del cycle
    state.tasks = {}
    collected = gc.get_stats()[2]["collected"]
    collector.after(m.ReleaseFutures(keys=("a", "b")), state)
    assert not collector.frozen and gc.get_stats()[2]["collected"] > collected
