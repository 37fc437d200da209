"""`shoal scheduler` and `shoal worker` serve HTTP as real processes: the addresses
are printed at start, /metrics moves while a graph runs, --no-http turns it off,
--log-format json logs one JSON object per event."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from shoal import Client
from shoal.deploy.cli import main
from tests.test_http import samples
from tests.test_integration import ROOT, Proc, subprocess_env

WAIT_S = 30.0


def sleepy(x: int) -> int:
    time.sleep(0.01)
    return x


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return answer.read().decode()


@pytest.mark.timeout(120)
def test_metrics_move_while_a_cli_cluster_runs_a_graph() -> None:
    scheduler = Proc.start("--log-format", "json", "scheduler", "--port", "0", "--http-port", "0")
    worker = None
    try:
        address = scheduler.expect("shoal scheduler listening at").split()[-1]
        http = scheduler.expect("shoal scheduler dashboard and metrics at").split()[-1]
        worker = Proc.start("worker", address, "--nthreads", "2", "--name", "cli-w")
        worker_http = worker.expect("shoal worker cli-w metrics at").split()[-1]
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", worker_http)
        with Client(address, timeout=WAIT_S) as client:
            client.wait_for_workers(1, timeout=WAIT_S)
            futures = client.map(sleepy, range(400))
            seen: list[float] = []
            done = threading.Event()
            deadline = time.monotonic() + WAIT_S
            while not done.is_set() and time.monotonic() < deadline:
                runs = samples(get(f"{http}/metrics"))["shoal_scheduler_task_runs_total", ()]
                seen.append(runs)
                if runs >= 400:
                    done.set()
                time.sleep(0.1)
            assert client.gather(futures) == list(range(400))
            info = client.scheduler_info()
        assert seen[-1] == 400
        assert len(set(seen)) >= 3, seen  # scraped part way through, more than once
        assert info["http_address"] == http
        assert info["workers"]["cli-w"]["http_address"] == worker_http
        worker_samples = samples(get(f"{worker_http}/metrics"))
        assert worker_samples["shoal_worker_tasks_finished_total", ()] == 400
        assert get(f"{worker_http}/ready") == "ready\n"
    finally:
        if worker is not None:
            worker.stop()
        scheduler.stop()
    events = []
    for line in scheduler.output:
        if line.startswith("{"):
            record = json.loads(line)
            assert {"time", "level", "logger", "message"} <= record.keys()
            if "event" in record:
                events.append(record)
    kinds = [e["event"] for e in events]
    assert "worker-joined" in kinds and "client-connected" in kinds and "client-gone" in kinds
    (graph,) = [e for e in events if e["event"] == "graph-received"]
    assert graph["tasks"] == 400 and graph["message"].startswith("graph of 400 tasks")
    (left,) = [e for e in events if e["event"] in ("worker-left", "worker-died")]
    assert left["worker"] == "cli-w"


@pytest.mark.timeout(60)
def test_no_http() -> None:
    scheduler = Proc.start("scheduler", "--port", "0", "--no-http")
    try:
        scheduler.expect("listening at")
    finally:  # all its output is in once it stopped
        scheduler.stop()
    assert "dashboard" not in scheduler.text and "HTTP endpoints" not in scheduler.text


@pytest.mark.parametrize("command", [["scheduler"], ["worker", "tcp://127.0.0.1:1"]])
def test_a_bad_http_port_exits_2(command: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--http-port", "70000"])
    assert exit_.value.code == 2
    assert "--http-port" in capsys.readouterr().err


@pytest.mark.timeout(60)
def test_a_taken_http_port_is_one_line() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        done = subprocess.run(
            [sys.executable, "-m", "shoal", "scheduler", "--port", "0", "--http-port", port],
            capture_output=True,
            text=True,
            timeout=WAIT_S,
            cwd=ROOT,
            env=subprocess_env(),
        )
    assert done.returncode == 1
    assert "shoal scheduler:" in done.stderr and "Address already in use" in done.stderr
