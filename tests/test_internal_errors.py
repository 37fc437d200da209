"""Internal errors: a core that raises is logged once with the story of its keys and
stops its process (real `shoal scheduler` and `shoal worker` processes on loopback,
and an in-process scheduler that must not take the user's interpreter with it).

Faults are injected into the subprocesses with a `sitecustomize` module on their
PYTHONPATH that wraps a method of the core; nothing in shoal knows about it. Task
functions live at module level: the worker processes import this module by name.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

import pytest

from shoal import Client
from shoal.errors import InternalError, InvalidTransition, SchedulerLost, ShoalError
from shoal.protocol.messages import SubmitGraph, TaskFinished
from shoal.protocol.story import keys_named, tell
from shoal.scheduler.history import History
from shoal.scheduler.state import SchedulerState
from shoal.worker.history import TransitionLog
from tests.test_failures import cluster, free_port, nap_long, slow_inc
from tests.test_integration import ROOT, TOKEN, WAIT_S, Proc, poll, subprocess_env

pytestmark = pytest.mark.timeout(120)

INTERNAL_ERROR_EXIT = 70


def inc(x: int) -> int:
    return x + 1


# -- the pure pieces ------------------------------------------------------------------


def test_bugs_are_not_shoal_errors_that_a_user_could_swallow() -> None:
    assert not issubclass(InvalidTransition, ShoalError)
    assert not issubclass(InternalError, ShoalError)
    assert issubclass(InvalidTransition, InternalError)


def test_the_story_of_keys_is_their_recent_transitions_oldest_first() -> None:
    history = History(4)
    moves = [
        ("a", "released", "waiting"),
        ("b", "released", "waiting"),
        ("a", "waiting", "queued"),
        (("t", 1), "released", "waiting"),
        ("a", "queued", "processing"),
    ]
    for i, (key, start, finish) in enumerate(moves):
        history.record((key, start, finish, i, float(i)))
    # The oldest entry fell out of the bounded record.
    assert history.story(["a"]) == [
        ("a", "waiting", "queued", 2, 2.0),
        ("a", "queued", "processing", 4, 4.0),
    ]
    assert history.story([("t", 1), "b"], limit=1) == [(("t", 1), "released", "waiting", 3, 3.0)]
    assert "'a': queued -> processing (stimulus 4, t=4.000)" in tell(history.story(["a"]))
    assert tell([]) == "  (no recorded transitions)"
    log = TransitionLog(maxlen=2)
    log.extend([("x", "waiting", "ready", "ComputeTask-1", 0.5), ("y", "a", "b", "E-2", 1.0)])
    assert log.story({"x"}) == [("x", "waiting", "ready", "ComputeTask-1", 0.5)]


def test_the_keys_of_an_error_are_its_transitions_and_those_its_event_names() -> None:
    exc = InvalidTransition("k", "memory", "waiting", "s-1", [])
    finished = TaskFinished(key="done", nbytes=1, typename="int", duration=0.1)
    assert keys_named(finished, exc) == ["k", "done"]
    graph = SubmitGraph(
        keys=tuple(f"x{i}" for i in range(50)), funcs=(), func=(), args=(), deps=(), wanted=()
    )
    assert keys_named(graph, limit=3) == ["x0", "x1", "x2"]
    assert keys_named(None) == []


# -- real processes ----------------------------------------------------------------------

SCHEDULER_HANDLE_FAULT = """
import shoal.scheduler.state as state

_submit_graph = state.SchedulerState._submit_graph

def _faulty(self, peer, msg):
    _submit_graph(self, peer, msg)
    if "boom" in msg.keys:
        raise RuntimeError("injected fault in handle")

state.SchedulerState._submit_graph = _faulty
"""

SCHEDULER_TICK_FAULT = """
import shoal.scheduler.state as state

def _next_deadline(self):
    return 0.0 if self.clients else None

def _tick(self, now):
    raise RuntimeError("injected fault in tick")

state.SchedulerState.next_deadline = _next_deadline
state.SchedulerState.tick = _tick
"""

# The first worker process to finish "boom" raises; the one its nanny starts next does not.
WORKER_FAULT = """
import pathlib
import shoal.worker.state as state
from shoal.worker.events import ExecutionDone

_handle = state.WorkerState.handle
_fired = pathlib.Path(__file__).with_name("fired")

def _faulty(self, event, now):
    out = _handle(self, event, now)
    if type(event) is ExecutionDone and event.key == "boom" and not _fired.exists():
        _fired.write_text("once")
        raise RuntimeError("injected fault in the worker core")
    return out

state.WorkerState.handle = _faulty
"""


def faulty_env(tmp_path: Path, code: str) -> dict[str, str]:
    """The environment of a `shoal` process whose core carries an injected fault."""
    (tmp_path / "sitecustomize.py").write_text(code)
    env = subprocess_env()
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(ROOT)])
    return env


def start_scheduler(env: dict[str, str]) -> tuple[Proc, str]:
    proc = Proc.start("scheduler", "--port", "0", "--token", TOKEN, env=env)
    line = proc.expect("shoal scheduler listening at")
    return proc, line.rsplit(" ", 1)[1].strip()


def error_lines(proc: Proc) -> list[str]:
    return [line for line in proc.output if " ERROR " in line]


def exit_code(proc: Proc) -> int:
    """The process's exit code, once it exits by itself (it must, within WAIT_S)."""
    try:
        return proc.popen.wait(WAIT_S)
    finally:
        proc.stop()


def test_an_error_in_the_scheduler_core_stops_it_and_clients_are_told_why(
    tmp_path: Path,
) -> None:
    proc, address = start_scheduler(faulty_env(tmp_path, SCHEDULER_HANDLE_FAULT))
    try:
        with Client(address, token=TOKEN, timeout=WAIT_S, reconnect_timeout=0) as client:
            waiting = client.submit(inc, 1, key="waiting")  # no workers: it stays pending
            boom = client.submit(inc, 2, key="boom")
            why = r"internal error in the scheduler .*RuntimeError: injected fault in handle"
            with pytest.raises(SchedulerLost, match=why):
                boom.result(timeout=WAIT_S)
            with pytest.raises(SchedulerLost, match=why):
                waiting.result(timeout=WAIT_S)
        assert exit_code(proc) == INTERNAL_ERROR_EXIT
    finally:
        proc.stop()
    errors = error_lines(proc)
    assert len(errors) == 1, proc.text
    assert "internal error while handling submit-graph" in errors[0]
    # The story of the key: its transitions, with their stimulus and time.
    assert "recent transitions of ['boom']" in proc.text
    assert "'boom': released -> " in proc.text and "(stimulus " in proc.text


def test_a_clock_task_that_raises_stops_the_scheduler_loudly(tmp_path: Path) -> None:
    proc, address = start_scheduler(faulty_env(tmp_path, SCHEDULER_TICK_FAULT))
    try:
        with Client(address, token=TOKEN, timeout=WAIT_S, reconnect_timeout=0) as client:
            pending = client.submit(inc, 1, key="pending")
            with pytest.raises(SchedulerLost, match=r"tick of the clock.*injected fault in tick"):
                pending.result(timeout=WAIT_S)
        assert exit_code(proc) == INTERNAL_ERROR_EXIT
    finally:
        proc.stop()
    errors = error_lines(proc)
    assert len(errors) == 1, proc.text
    assert "internal error while handling a tick of the clock" in errors[0]


def test_an_error_in_the_worker_core_stops_the_worker_and_its_nanny_restarts_it(
    tmp_path: Path,
) -> None:
    with cluster() as c:
        c.start_scheduler()
        worker = Proc.start(
            "worker", c.address, "--nthreads", "1", "--name", "w", "--token", TOKEN,
            env=faulty_env(tmp_path, WORKER_FAULT),
        )  # fmt: skip
        c.procs.append(worker)
        worker.expect("shoal worker w joined")
        with Client(c.address, token=TOKEN, timeout=WAIT_S) as client:
            # The first worker dies with the result; the restarted one computes it again.
            assert client.submit(inc, 41, key="boom").result(timeout=WAIT_S) == 42
        poll(lambda: "restarting worker w" in worker.text, "the nanny restarting the worker")
    text = worker.text
    errors = error_lines(worker)
    assert len(errors) == 1, text
    assert "internal error in worker w while handling ExecutionDone" in errors[0]
    assert "recent transitions of ['boom']" in text and "'boom': ready -> executing" in text
    assert f"stopped by an internal error (exit code {INTERNAL_ERROR_EXIT}" in text


def test_an_unsupervised_worker_exits_non_zero_on_an_internal_error(tmp_path: Path) -> None:
    with cluster() as c:
        c.start_scheduler()
        worker = Proc.start(
            "worker", c.address, "--nthreads", "1", "--name", "solo", "--token", TOKEN,
            "--no-nanny", env=faulty_env(tmp_path, WORKER_FAULT),
        )  # fmt: skip
        c.procs.append(worker)
        worker.expect("shoal worker solo joined")
        with Client(c.address, token=TOKEN, timeout=WAIT_S) as client:
            client.submit(inc, 1, key="boom")
            assert exit_code(worker) == INTERNAL_ERROR_EXIT
    assert len(error_lines(worker)) == 1, worker.text


# -- an in-process scheduler ---------------------------------------------------------------


def test_an_in_process_scheduler_that_fails_stops_alone_and_its_futures_say_why(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    submit_graph = SchedulerState._submit_graph
    lost_after_failure: list[str] = []
    real_lost = SchedulerState.lost

    def faulty(self: SchedulerState, peer: str, msg: SubmitGraph) -> None:
        submit_graph(self, peer, msg)
        if "boom" in msg.keys:
            self.broken = True
            raise RuntimeError("injected fault in-process")

    def lost(self: SchedulerState, peer: str, now: float) -> list:
        if getattr(self, "broken", False):
            lost_after_failure.append(peer)
        return real_lost(self, peer, now)

    monkeypatch.setattr(SchedulerState, "_submit_graph", faulty)
    monkeypatch.setattr(SchedulerState, "lost", lost)
    caplog.set_level(logging.ERROR, logger="shoal")
    client = Client(n_workers=0, processes=False)
    try:
        pending = client.submit(inc, 1, key="pending")
        with pytest.raises(SchedulerLost, match="injected fault in-process"):
            client.submit(inc, 2, key="boom").result(timeout=WAIT_S)
        with pytest.raises(SchedulerLost, match="internal error in the scheduler"):
            pending.result(timeout=WAIT_S)
        assert isinstance(client.cluster.failure, RuntimeError)
        assert client.status == "lost"  # no scheduler will come back at its address
        with pytest.raises(SchedulerLost, match="injected fault in-process"):
            client.submit(inc, 3)
    finally:
        client.close()
    records = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(records) == 1 and "'boom': released -> " in records[0].getMessage()
    assert lost_after_failure == []  # the half-changed core was never called again


# -- outages -------------------------------------------------------------------------------


def test_reconnect_timeout_is_checked() -> None:
    with pytest.raises(ValueError, match="reconnect_timeout"):
        Client("tcp://127.0.0.1:1", reconnect_timeout=-1)
    with pytest.raises(ValueError, match="reconnect_timeout"):
        Client("tcp://127.0.0.1:1", reconnect_timeout=float("nan"))
    with pytest.raises(TypeError, match="reconnect_timeout"):
        Client("tcp://127.0.0.1:1", reconnect_timeout="10")
    with pytest.raises(TypeError, match="reconnect_timeout"):
        Client("tcp://127.0.0.1:1", reconnect_timeout=True)


OUTAGE_S = 30.0
CLIENT_TIMEOUT_S = 10.0


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_a_client_outlives_a_scheduler_outage_longer_than_its_timeout() -> None:
    port = free_port()
    with cluster(port) as c:
        c.start_scheduler()
        worker = c.start_worker("w", "--no-nanny")
        with Client(c.address, token=TOKEN, timeout=CLIENT_TIMEOUT_S) as client:
            client.wait_for_workers(1, timeout=WAIT_S)
            pending = client.submit(nap_long, 0)
            assert c.scheduler is not None
            c.scheduler.stop(signal.SIGKILL)
            lost_at = time.monotonic()
            with pytest.raises(SchedulerLost, match=f"127.0.0.1:{port}"):
                pending.result(timeout=WAIT_S)
            poll(lambda: client.status == "reconnecting", "the client reconnecting")
            with pytest.raises(SchedulerLost):
                client.submit(slow_inc, 0).result(timeout=WAIT_S)  # meanwhile: at once
            # The outage lasts well past the client's timeout (this sleep makes it last).
            time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - lost_at)))
            assert client.status == "reconnecting"
            c.start_scheduler()
            worker.expect("shoal worker w joined")
            poll(lambda: client.status == "running", "the client back", timeout=WAIT_S)
            client.wait_for_workers(1, timeout=WAIT_S)
            assert client.submit(slow_inc, 1).result(timeout=WAIT_S) == 2
