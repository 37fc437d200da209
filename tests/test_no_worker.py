"""Real processes: a task asking for a resource no worker offers is reported to
its client, and fails with NoValidWorker past the scheduler's no_workers_timeout."""

from __future__ import annotations

import logging
import time

import pytest

from shoal import Client
from shoal.errors import NoValidWorker

WAIT_S = 30.0


def inc(x: int) -> int:
    return x + 1


@pytest.mark.timeout(60)
def test_the_client_logs_a_warning_naming_the_stalled_key_and_its_needs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="shoal.client.link")
    with Client(n_workers=1, threads_per_worker=1, no_worker_warning=0.5, timeout=WAIT_S) as c:
        future = c.submit(inc, 1, resources={"GPU": 1})
        deadline = time.monotonic() + WAIT_S
        while not any(future.key in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, "no warning about the stalled task"
            time.sleep(0.05)
        line = next(r.getMessage() for r in caplog.records if future.key in r.getMessage())
        assert "for a worker with GPU=1" in line and "none of the 1 workers" in line
        assert not future.done()  # it still waits (no timeout set)
        assert c.submit(inc, 2).result(timeout=WAIT_S) == 3  # the rest runs meanwhile


@pytest.mark.timeout(60)
def test_no_workers_timeout_fails_the_future_with_no_valid_worker() -> None:
    with Client(n_workers=1, threads_per_worker=1, no_workers_timeout=1.0, timeout=WAIT_S) as c:
        future = c.submit(inc, 1, workers=["nobody"])
        with pytest.raises(NoValidWorker, match="workers=nobody"):
            future.result(timeout=WAIT_S)
        assert c.submit(inc, 2).result(timeout=WAIT_S) == 3
