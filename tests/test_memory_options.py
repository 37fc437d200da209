"""The memory options where they enter: `shoal worker` flags, LocalCluster and
Client keywords, and the environment a worker process starts with."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import psutil
import pytest

from shoal import Client
from shoal.deploy import options
from shoal.deploy.local import LocalCluster
from shoal.deploy.worker_env import THREAD_VARIABLES, worker_environment


def children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


@pytest.mark.parametrize(
    ("text", "value"), [("0.7", 0.7), ("1", 1.0), ("off", None), ("False", None), ("none", None)]
)
def test_a_threshold_from_the_command_line(text: str, value: float | None) -> None:
    assert options.fraction(text) == value


@pytest.mark.parametrize("text", ["0", "1.5", "-0.2", "nan", "inf", "high"])
def test_a_bad_threshold_from_the_command_line(text: str) -> None:
    with pytest.raises(ValueError, match="not a fraction of the memory limit"):
        options.fraction(text)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--memory-pause-fraction", "2"], "argument --memory-pause-fraction: not a fraction"),
        (["--memory-target-fraction", "x"], "argument --memory-target-fraction: not a fraction"),
        (["--spill-compression", "gzip"], "argument --spill-compression: invalid choice"),
    ],
)
def test_bad_memory_flags_exit_2_with_one_line(args: list[str], words: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "shoal", "worker", "tcp://127.0.0.1:1", *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert done.returncode == 2
    assert words in done.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"memory_pause_fraction": 1.5}, ValueError, "memory pause fraction must be above 0"),
        ({"memory_target_fraction": 0}, ValueError, "memory target fraction must be above 0"),
        ({"memory_spill_fraction": True}, TypeError, "memory spill fraction must be a number"),
        ({"memory_terminate_fraction": "0.9"}, TypeError, "terminate fraction must be a number"),
        ({"spill_compression": "gzip"}, ValueError, "spill_compression: spill compression must"),
        ({"spill_compression": 4}, TypeError, "spill_compression must be a str"),
    ],
)
@pytest.mark.parametrize("make", [LocalCluster, Client])
def test_bad_memory_keywords_are_refused_before_any_process(make, kwargs, error, words) -> None:
    before = children()
    with pytest.raises(error, match=words):
        make(n_workers=1, **kwargs)
    assert children() == before


def test_the_thresholds_reach_the_workers_command_line() -> None:
    cluster = LocalCluster(
        n_workers=0,
        memory_limit="1GB",
        memory_target_fraction=0.5,
        memory_spill_fraction=False,
        memory_pause_fraction=None,
        local_directory="/tmp/spill-here",
        spill_compression="lz4",
    )
    try:
        argv = cluster._worker_argv(0, "tcp://127.0.0.1:1")
    finally:
        cluster.close()
    pairs = dict(itertools.pairwise(argv))  # each flag to what follows it
    assert pairs["--memory-target-fraction"] == "0.5"
    assert pairs["--memory-spill-fraction"] == "off"
    assert pairs["--memory-pause-fraction"] == "off"
    assert pairs["--memory-terminate-fraction"] == "0.95"
    assert pairs["--local-directory"] == "/tmp/spill-here"
    assert pairs["--spill-compression"] == "lz4"


def test_a_worker_environment_sets_threads_and_trim_unless_given() -> None:
    env = worker_environment({"MKL_NUM_THREADS": "7", "PATH": "/bin"}, 3)
    assert env["MKL_NUM_THREADS"] == "7" and env["PATH"] == "/bin"
    assert all(env[name] == "3" for name in THREAD_VARIABLES if name != "MKL_NUM_THREADS")
    assert env["MALLOC_TRIM_THRESHOLD_"] == "65536"


@pytest.mark.timeout(120)
def test_a_nanny_starts_its_worker_with_that_environment(monkeypatch) -> None:
    monkeypatch.setenv("MKL_NUM_THREADS", "7")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)

    def environment() -> dict[str, str | None]:  # local: it travels by value

        names = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
        return {name: os.environ.get(name) for name in (*names, "MALLOC_TRIM_THRESHOLD_")}

    with (
        LocalCluster(n_workers=1, threads_per_worker=2, nanny=True) as cluster,
        Client(cluster.scheduler_address, token=cluster.token) as client,
    ):
        env = client.submit(environment, pure=False).result(timeout=60)
    assert env == {
        "OMP_NUM_THREADS": "2",
        "OPENBLAS_NUM_THREADS": "2",
        "MKL_NUM_THREADS": "7",
        "MALLOC_TRIM_THRESHOLD_": "65536",
    }
