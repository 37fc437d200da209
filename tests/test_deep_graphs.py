"""Graphs of any depth and width through both cores: chains and fan-outs of 100,000
tasks finish, err, are released, cancelled, abandoned, and survive a worker death.

Each cascade here is far deeper than Python's recursion limit: the cores walk them
from work lists. The scheduler's state is validated after every step that a
100,000-task graph takes in a handful of steps; the long runs of finishes are
validated at their end.
"""

from __future__ import annotations

import pytest

from shoal.protocol import messages as m
from shoal.protocol.messages import DataMissing, FreeKeys
from shoal.scheduler.model import Status
from shoal.worker.state import Status as WS
from tests.scheduler_harness import STEADY_S, Harness, computed, freed, sent
from tests.test_worker_state import Core, compute

N = 100_000
E, M, W, P, Q = Status.ERRED, Status.MEMORY, Status.WAITING, Status.PROCESSING, Status.QUEUED


def chain(n: int) -> dict[str, list[str]]:
    return {f"k{i}": [f"k{i - 1}"] if i else [] for i in range(n)}


def fan_out(n: int) -> dict[str, list[str]]:
    return {"root": [], **{f"leaf{i}": ["root"] for i in range(n)}}


def pending_chain(n: int, wanted: list[str] | None = None) -> tuple[Harness, str, str]:
    h = Harness()
    worker = h.worker("a")
    client = h.client()
    graph = chain(n)
    out = h.submit(client, graph, wanted=wanted or [f"k{n - 1}"])
    assert computed(out) == ["k0"]
    return h, worker, client


@pytest.mark.parametrize("n", [5_000, N])
def test_a_chain_whose_head_raises_fails_every_dependent(n: int) -> None:
    h, _, client = pending_chain(n)
    out = h.err("k0")
    (report,) = sent(out, client, m.KeyErred)
    assert (report.key, report.typename, report.message, report.blame) == (
        f"k{n - 1}",
        "ValueError",
        "boom",
        "k0",
    )
    assert {ts.status for ts in h.state.tasks.values()} == {E}
    assert len(h.state.tasks) == n  # the lineage of the erred key the client holds
    h.handle(client, m.ReleaseFutures(keys=(f"k{n - 1}",)))
    assert h.state.tasks == {}


def test_every_key_of_a_chain_hears_the_error_of_its_head() -> None:
    n = 5_000
    h, _, client = pending_chain(n, wanted=list(chain(n)))
    out = h.err("k0")
    reports = sent(out, client, m.KeyErred)
    assert [r.key for r in reports] == list(chain(n))
    assert {r.blame for r in reports[1:]} == {"k0"}


@pytest.mark.parametrize("n", [5_000, N])
def test_a_released_pending_chain_leaves_nothing_behind(n: int) -> None:
    h, worker, client = pending_chain(n)
    out = h.handle(client, m.ReleaseFutures(keys=(f"k{n - 1}",)))
    assert freed(out, worker) == ["k0"]
    assert h.state.tasks == {}
    assert not h.state.workers[worker].processing
    # The scheduler serves on: a new graph runs.
    assert computed(h.submit(client, {"x": []})) == ["x"]


@pytest.mark.parametrize("n", [5_000, N])
def test_a_cancelled_pending_chain_leaves_nothing_behind(n: int) -> None:
    h, worker, client = pending_chain(n, wanted=["k0", f"k{n - 1}"])
    out = h.handle(client, m.CancelKeys(keys=("k0",)))
    (cancelled,) = sent(out, client, m.KeysCancelled)
    assert cancelled.keys == (f"k{n - 1}",)
    assert freed(out, worker) == ["k0"]
    assert h.state.tasks == {}


@pytest.mark.parametrize("n", [5_000, N])
def test_a_chain_abandoned_by_its_client_leaves_nothing_behind(n: int) -> None:
    h, worker, client = pending_chain(n)
    out = h.lose(client)
    assert freed(out, worker) == ["k0"]
    assert h.state.tasks == {} and h.state.clients == {}


def test_a_fan_out_whose_root_raises_fails_every_leaf() -> None:
    h = Harness()
    h.worker("a")
    client = h.client()
    h.submit(client, fan_out(N))
    out = h.err("root")
    assert len(sent(out, client, m.KeyErred)) == N + 1
    assert {ts.status for ts in h.state.tasks.values()} == {E}
    h.lose(client)
    assert h.state.tasks == {}


def test_a_fan_out_runs_and_is_released() -> None:
    h = Harness()
    worker = h.worker("a", nthreads=2)
    client = h.client()
    h.submit(client, fan_out(N))
    running = computed(h.finish("root"), worker)
    assert len(running) == 4  # 2 threads x depth 2; the rest queue
    assert sum(ts.status is Q for ts in h.state.tasks.values()) == N - 4
    out = h.handle(client, m.ReleaseFutures(keys=tuple(fan_out(N))))
    assert sorted(freed(out, worker)) == sorted(["root", *running])
    assert h.state.tasks == {}


def quick_finish(h: Harness, key: str) -> None:
    """Finish `key` on the core directly: no validation or recording per step."""
    h.now += 1.0
    msg = m.TaskFinished(key=key, nbytes=8, typename="int", duration=STEADY_S, value=None)
    h.state.handle(h.on(key), msg, h.now)


def test_a_long_chain_survives_the_death_of_the_worker_holding_it() -> None:
    n = N
    h = Harness(validate=False, check_commands=False)
    first = h.worker("a")
    client = h.client()
    h.submit(client, chain(n), wanted=[f"k{n - 1}"])
    for i in range(n // 2):
        quick_finish(h, f"k{i}")
    h.state.validate()
    # Only the newest value is held; the rest were let go as their dependent finished.
    held = [ts.key for ts in h.state.workers[first].has_what]
    assert held == [f"k{n // 2 - 1}"]
    second = h.worker("b")
    h.lose(first)
    h.state.validate()
    # Lost with its worker: the whole prefix is brought back from its lineage.
    assert h.task("k0").status is P and h.on("k0") == second
    assert all(h.task(f"k{i}").status is W for i in range(1, n))
    for i in range(n - 1):
        quick_finish(h, f"k{i}")
    out = h.finish(f"k{n - 1}")
    assert h.task(f"k{n - 1}").status is M
    assert sent(out, client, m.KeyInMemory)[0].key == f"k{n - 1}"
    h.handle(client, m.ReleaseFutures(keys=(f"k{n - 1}",)))
    assert h.state.tasks == {}


def test_a_chain_held_by_a_worker_that_dies_mid_run_is_recomputed() -> None:
    n = 5_000
    h = Harness()
    first = h.worker("a")
    client = h.client()
    h.submit(client, chain(n), wanted=list(chain(n)))  # every value kept
    for i in range(10):
        h.finish(f"k{i}")
    second = h.worker("b")
    h.lose(first)
    assert h.task("k0").status is P and h.on("k0") == second
    assert h.task("k10").status is W


# -- the worker core ------------------------------------------------------------------


def test_a_worker_drops_a_long_chain_waiting_on_a_value_it_cannot_get() -> None:
    core = Core(nthreads=1)
    core.state.validate = lambda: None  # validated once below: it walks every record
    core(compute("block"))
    core(compute("a"))
    previous = "a"
    for i in range(N):
        core(compute(f"t{i}", deps=[previous]))
        previous = f"t{i}"
    assert core.status("a") is WS.READY and core.status(previous) is WS.WAITING
    out = core(FreeKeys(keys=("a",)))
    missing = [msg for msg in sent_to_scheduler(out) if type(msg) is DataMissing]
    assert missing[0] == DataMissing(key="a", tried=(), tasks=("t0",))
    assert [msg.key for msg in missing] == ["a"] + [f"t{i}" for i in range(N - 1)]
    assert core.state.keys.keys() == {"block"}
    type(core.state).validate(core.state)


def sent_to_scheduler(out: list) -> list:
    return [command.msg for command in out if hasattr(command, "msg")]
