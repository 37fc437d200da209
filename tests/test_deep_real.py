"""Chains of 100,000 tasks through real processes: a local cluster of two worker
processes computes them, fails them from their head, and lets them go when they
are released, cancelled or abandoned while pending, then serves on.

The task functions live at module level: the worker processes import this
module by name to unpickle them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal import Client
from tests.test_integration import poll

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
N = 100_000


def inc(x: int) -> int:
    return x + 1


def boom() -> int:
    raise ValueError("the head of the chain")


def wait_for(path: str) -> int:
    """Run until `path` exists (bounded: a test that forgot it does not hang a thread)."""
    deadline = time.monotonic() + 120
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return 0


def chain(n: int, head: tuple) -> dict:
    return {"k0": head, **{f"k{i}": (inc, f"k{i - 1}") for i in range(1, n)}}


def tasks_held(client: Client) -> dict[str, int]:
    return client.scheduler_info()["tasks"]


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    with Client(n_workers=2, threads_per_worker=1) as client:
        yield client


def test_a_100000_task_chain_computes(client: Client) -> None:
    assert client.get(chain(N, (inc, 0)), f"k{N - 1}") == N
    poll(lambda: tasks_held(client) == {}, "the chain to be let go")


@pytest.mark.parametrize("n", [5_000, N])
def test_a_chain_whose_head_raises_fails_its_last_key_with_that_error(
    client: Client, n: int
) -> None:
    (last,) = client.compute(chain(n, (boom,)), [f"k{n - 1}"])
    with pytest.raises(ValueError, match="the head of the chain"):
        last.result(timeout=60)
    del last
    poll(lambda: tasks_held(client) == {}, "the erred chain to be let go")


@pytest.mark.parametrize("how", ["released", "cancelled", "abandoned"])
def test_a_pending_100000_task_chain_let_go_leaves_nothing_behind(
    client: Client, tmp_path: Path, how: str
) -> None:
    gate = str(tmp_path / "open")
    graph = chain(N, (wait_for, gate))
    if how == "abandoned":
        with Client(client.address, token=client.token) as other:
            (last,) = other.compute(graph, [f"k{N - 1}"])
            poll(lambda: tasks_held(client).get("waiting", 0) == N - 1, "the chain to wait")
            # The other client goes with its futures still pending.
    else:
        (last,) = client.compute(graph, [f"k{N - 1}"])
        poll(lambda: tasks_held(client).get("waiting", 0) == N - 1, "the chain to wait")
        if how == "released":
            del last  # the client's last reference: the scheduler hears it is let go
        else:
            client.cancel([last])
            assert last.cancelled()
    poll(lambda: tasks_held(client) == {}, f"the {how} chain to be let go")
    Path(gate).touch()  # the head's thread ends; its late result is dropped
    assert client.submit(inc, 1).result(timeout=30) == 2
