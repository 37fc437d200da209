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
from shoal.deploy.status import render
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
        shown = shoal_status(address)
        assert shown.splitlines()[0] == f"scheduler {address}  (dashboard {http}/)"
        assert "1 workers, 2 threads, 0 clients" in shown
        assert re.search(r"^cli-w +tcp://127\.0\.0\.1:\d+ +2 ", shown, re.M), shown
        assert shown.splitlines()[-1] == "tasks: none"  # the client let its futures go
        as_json = json.loads(shoal_status(address, "--json"))
        assert list(as_json["workers"]) == ["cli-w"]
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


def shoal_status(address: str, *options: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "shoal", "status", address, *options],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        cwd=ROOT,
        env=subprocess_env(),
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_status_text() -> None:
    info = {
        "address": "tcp://10.0.0.5:7786",
        "dashboard": "",
        "clients": 2,
        "workers": {
            "gpu-0": {
                "address": "tcp://10.0.0.6:4000",
                "nthreads": 4,
                "cpu": 150.0,
                "memory": 3 * 2**30,
                "memory_limit": 8 * 2**30,
                "resources": {"GPU": 1},
                "processing": 7,
                "executing": 4,
                "keys": 12,
                "nbytes": 5 * 2**20,
            }
        },
        "tasks": {"processing": 7, "memory": 12, "queued": 3},
    }
    lines = render(info).splitlines()
    assert lines[:2] == ["scheduler tcp://10.0.0.5:7786", "1 workers, 4 threads, 2 clients"]
    header, row = (re.split(r" {2,}", line) for line in lines[2:4])
    assert header == [
        "NAME",
        "ADDRESS",
        "THREADS",
        "CPU",
        "MEMORY",
        "GPU",
        "TASKS",
        "RUNNING",
        "HELD",
    ]
    assert row == [
        "gpu-0",
        "tcp://10.0.0.6:4000",
        "4",
        "150%",
        "3.0 GiB / 8.0 GiB",
        "1",
        "7",
        "4",
        "12 (5.0 MiB)",
    ]
    assert lines[2].index("MEMORY") == lines[3].index("3.0 GiB")  # columns line up
    assert lines[4] == "tasks: queued 3, processing 7, memory 12"


def test_status_of_nothing_is_one_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "shoal", "status", "tcp://127.0.0.1:1", "--timeout", "0.5"],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        cwd=ROOT,
        env=subprocess_env(),
    )
    assert done.returncode == 1
    assert done.stderr.startswith("shoal status: no scheduler answered at tcp://127.0.0.1:1")


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


@pytest.mark.timeout(60)
def test_the_default_http_port_gives_way_when_taken() -> None:
    import socket

    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", 8787))
        holder.listen()
    except OSError:
        pass  # someone else holds it: taken all the same
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    scheduler = Proc.start("scheduler", "--port", port)
    try:
        scheduler.expect("shoal scheduler listening at")
        http = scheduler.expect("shoal scheduler dashboard and metrics at").split()[-1]
        assert not http.endswith(":8787")
        assert get(f"{http}/health") == "ok\n"
    finally:
        scheduler.stop()
        holder.close()
    assert "HTTP port 8787 is taken; serving HTTP on a free port instead" in scheduler.text
