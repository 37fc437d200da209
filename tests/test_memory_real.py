"""Memory management with real worker processes: values past the target spill to
disk and come back right; a worker past its pause threshold is routed around
and gets work again once its memory falls."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from shoal import Client
from shoal.deploy.local import LocalCluster

MiB = 2**20
WAIT_S = 60.0
pytestmark = pytest.mark.timeout(180)


def poll(check, what: str, timeout: float = WAIT_S):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout} s")
        time.sleep(0.05)


def chunk(i: int, mib: int) -> np.ndarray:
    return np.full(mib * MiB // 8, float(i))


def total(*chunks: np.ndarray) -> float:
    return float(sum(c.sum() for c in chunks))


def hold_memory(mib: int, gate: str) -> int:
    """Keep `mib` MiB of unmanaged memory until `gate` exists; then let it go."""
    block = np.ones(mib * MiB, dtype="uint8")
    deadline = time.monotonic() + WAIT_S
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.02)
    del block
    return os.getpid()


def pid_of(_: int = 0) -> int:
    return os.getpid()


def test_values_past_the_target_spill_and_come_back_right(tmp_path: Path) -> None:
    spill_dir = tmp_path / "spill"
    cluster = LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        memory_limit="400MiB",
        local_directory=str(spill_dir),
        spill_compression="lz4",
    )
    with cluster, Client(cluster.scheduler_address, token=cluster.token) as client:
        pid = client.scheduler_info()["workers"]["local-0"]["pid"]
        # 30 chunks of 20 MiB held by futures: 600 MiB, 1.5 times the memory limit.
        chunks = [client.submit(chunk, i, 20) for i in range(30)]
        # A reduction reads them back five at a time.
        parts = [client.submit(total, *chunks[i : i + 5]) for i in range(0, 30, 5)]
        expected = sum(i * 20 * MiB / 8 for i in range(30))
        assert client.submit(sum, parts).result(timeout=WAIT_S) == expected
        held = 30 * 20 * MiB
        target = 400 * MiB * 0.6

        def settled() -> dict | None:  # heartbeats come once a second
            info = client.scheduler_info()["workers"]["local-0"]
            every = info["managed"] + info["spilled"] >= held
            return info if every and info["managed"] <= target + 20 * MiB else None

        info = poll(settled, "values spilled down to the target")
        assert info["pid"] == pid  # never restarted
        assert info["spilled"] > 0 and info["unspillable"] == 0
        assert info["managed"] + info["spilled"] < held + 64 * 1024  # plus pickle headers
        assert list(spill_dir.glob("shoal-spill-*/*.spill"))
        # Each comes back whole, from disk or memory.
        for i in (0, 1, 2, 27, 28, 29):
            value = chunks[i].result(timeout=WAIT_S)
            assert value.shape == (20 * MiB // 8,) and (value == i).all()
        del chunks, parts, value
        poll(lambda: not list(spill_dir.glob("shoal-spill-*/*.spill")), "spill files removed")


def test_a_paused_worker_is_routed_around_and_resumes(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            memory_limit="400MiB",
            memory_target_fraction=False,
            memory_spill_fraction=False,
            memory_pause_fraction=0.7,
            memory_terminate_fraction=None,
        ) as cluster,
        Client(cluster.scheduler_address, token=cluster.token) as client,
    ):
        workers = client.scheduler_info()["workers"]
        pids = {name: w["pid"] for name, w in workers.items()}
        hog = client.submit(hold_memory, 300, str(gate), workers=["local-0"], pure=False)

        def paused() -> bool:
            return client.scheduler_info()["workers"]["local-0"]["paused"]

        poll(paused, "local-0 paused")
        # Work goes to the other worker while local-0 is paused, none of it lost.
        ran = [f.result(timeout=WAIT_S) for f in client.map(pid_of, range(40), pure=False)]
        assert set(ran) == {pids["local-1"]}
        assert not hog.done()
        gate.touch()
        assert hog.result(timeout=WAIT_S) == pids["local-0"]
        poll(lambda: not paused(), "local-0 resumed")
        later = client.submit(pid_of, 1, workers=["local-0"], pure=False)
        assert later.result(timeout=WAIT_S) == pids["local-0"]
        assert {name: w["pid"] for name, w in client.scheduler_info()["workers"].items()} == pids


def test_a_forked_worker_does_not_count_its_parents_memory_as_its_own() -> None:
    from shoal.deploy.forked import ForkedProcess, can_fork

    if not can_fork():
        pytest.skip("this process cannot fork its workers now (other threads are alive)")
    # The parent holds more than the worker's whole limit; a forked worker starts
    # with those pages mapped, shared copy on write, and must not pause for them.
    ballast = np.ones(450 * MiB, dtype="uint8")
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, memory_limit="400MiB") as cluster,
        Client(cluster.scheduler_address, token=cluster.token) as client,
    ):
        assert isinstance(cluster.procs[0], ForkedProcess)
        assert client.submit(pid_of, 1, pure=False).result(timeout=WAIT_S) != os.getpid()

        def reported() -> dict | None:  # the first heartbeat with a figure
            info = client.scheduler_info()["workers"]["local-0"]
            return info if info["memory"] > 0 else None

        info = poll(reported, "a heartbeat from local-0")
        assert not info["paused"]
        assert info["memory"] < 200 * MiB
    del ballast
