"""GPU nodes end to end, without a GPU: `shoal worker --gpus`, LocalCluster(gpus=...)
and device arrays between real processes, over stand-ins for NVML and cupy.

The worker processes import tests/fakes/pynvml.py and tests/fakes/cupy.py as
`pynvml` and `cupy` (that folder is first on their PYTHONPATH); the stand-in
NVML answers from a JSON file that a task may rewrite, to play a process that
fills its device. Task functions live at module level: the workers import this
module by name.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shoal import Client
from shoal.deploy import local
from shoal.deploy.cli import _worker_options, main
from shoal.errors import KilledWorker, NoDevice, SerializationError
from shoal.protocol import cuda
from tests.fakes import cupy as fake_cupy
from tests.fakes import pynvml as fake_pynvml
from tests.test_failures import cluster
from tests.test_integration import ROOT, TOKEN, WAIT_S, Proc, poll, subprocess_env

pytestmark = pytest.mark.timeout(120)

GiB = 2**30
FAKES = Path(__file__).parent / "fakes"
TWO_GPUS = {
    "devices": [
        {"uuid": "GPU-aa", "name": "Fake T4", "total": 8 * GiB, "used": 1 * GiB, "utilization": 10},
        {
            "uuid": "GPU-bb",
            "name": "Fake L4",
            "total": 16 * GiB,
            "used": 2 * GiB,
            "utilization": 20,
        },
    ]
}


# -- tasks ---------------------------------------------------------------------------------------


def visible(_: object = None) -> str:
    return os.environ.get("CUDA_VISIBLE_DEVICES", "")


def make_device(n: int) -> Any:
    import cupy  # the stand-in, in a worker

    return cupy.array(np.arange(n, dtype="f8"))


def arrived(arr: Any) -> tuple[str, float, bool, str]:
    """What a task on another worker got: cupy's array, allocated here, on which device."""
    import cupy

    made_here = any(a is arr for a in cupy.ALLOCATED)
    return type(arr).__module__, float(arr.sum()), made_here, visible()


def same_array(arr: Any) -> bool:
    """Whether a task on the producer's worker got the producer's own array, uncopied."""
    import cupy

    return id(arr) in cupy.MADE and not cupy.ALLOCATED  # (it was pinned to be sent, once)


def fill_device(gib: float) -> None:
    """Play a task that fills its device: NVML now lists this process using `gib`."""
    path, uuid = os.environ[fake_pynvml.STATE_ENV], visible()
    state = json.loads(Path(path).read_text())
    for device in state["devices"]:
        if device["uuid"] == uuid:
            device.setdefault("processes", []).append([os.getpid(), int(gib * GiB)])
    Path(f"{path}.{os.getpid()}").write_text(json.dumps(state))
    os.replace(f"{path}.{os.getpid()}", path)
    time.sleep(30)  # its nanny kills it first


# -- helpers ---------------------------------------------------------------------------------------


@pytest.fixture
def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Two stand-in GPUs, seen by this process and by the processes it starts."""
    state = tmp_path / "nvml.json"
    state.write_text(json.dumps(TWO_GPUS))
    monkeypatch.setenv(fake_pynvml.STATE_ENV, str(state))
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("FAKE_CUPY_DEVICES", "1")
    cuda.forget_devices()
    yield state
    cuda.forget_devices()


def gpu_env() -> dict[str, str]:
    env = subprocess_env()
    env["PYTHONPATH"] = os.pathsep.join([str(FAKES), str(ROOT), env.get("PYTHONPATH", "")])
    return env


def workers(client: Client) -> dict[str, Any]:
    return client.scheduler_info()["workers"]


# -- shoal worker --gpus --------------------------------------------------------------------------


def test_shoal_worker_gpus_all_runs_a_pinned_worker_per_device_and_moves_device_arrays(
    node: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with cluster() as c:
        c.start_scheduler()
        args = ["--gpus", "all", "--name", "node", "--nthreads", "1", "--token", TOKEN]
        c.procs.append(Proc.start("worker", c.address, *args, env=gpu_env()))
        with Client(c.address, token=TOKEN, timeout=WAIT_S) as client:
            client.wait_for_workers(2, timeout=WAIT_S)
            assert sorted(workers(client)) == ["node-gpu0", "node-gpu1"]
            for name, uuid in (("node-gpu0", "GPU-aa"), ("node-gpu1", "GPU-bb")):
                assert workers(client)[name]["resources"] == {"GPU": 1.0}
                assert client.submit(visible, name, workers=[name]).result(WAIT_S) == uuid
            # Heartbeats carry each worker's own device, and only that one.
            poll(lambda: workers(client)["node-gpu1"]["gpus"][0]["memory_total"] > 0, "figures")
            (gpu1,) = workers(client)["node-gpu1"]["gpus"]
            assert gpu1 == {
                "index": "1",
                "uuid": "GPU-bb",
                "name": "Fake L4",
                "memory_limit": int(0.8 * 16 * GiB),
                "memory_used": 2 * GiB,
                "memory_total": 16 * GiB,
                "utilization": 20.0,
            }
            assert client.submit(visible, 1, resources={"GPU": 1}).result(WAIT_S) in (
                "GPU-aa", "GPU-bb",
            )  # fmt: skip

            # A device array stays where it was made; another worker gets its own copy,
            # allocated on its own device; a task beside it gets the very same array.
            x = client.submit(make_device, 1000, workers=["node-gpu0"])
            there = client.submit(arrived, x, workers=["node-gpu1"])
            assert there.result(WAIT_S) == ("cupy", float(sum(range(1000))), True, "GPU-bb")
            assert client.submit(same_array, x, workers=["node-gpu0"]).result(WAIT_S) is True

            # The client: without cupy, told how to get the value; host data, as numpy.
            monkeypatch.setitem(sys.modules, "cupy", None)
            with pytest.raises(SerializationError, match=r"cupy is not installed here.*host=True"):
                x.result(WAIT_S)
            host = x.result(WAIT_S, host=True)
            assert type(host) is np.ndarray and host.sum() == sum(range(1000))
            assert type(client.gather([x], host=True)[0]) is np.ndarray
            monkeypatch.setitem(sys.modules, "cupy", fake_cupy)
            back = x.result(WAIT_S)
            assert isinstance(back, fake_cupy.ndarray) and float(back.sum()) == sum(range(1000))

            # Past its device memory limit (0.8 of 8 GiB), a worker is restarted, and the
            # task that did it fails with KilledWorker naming the cause.
            pid = workers(client)["node-gpu0"]["pid"]
            hog = client.submit(fill_device, 7.5, workers=["node-gpu0"])
            with pytest.raises(KilledWorker) as caught:
                hog.result(timeout=90)
            said = str(caught.value)
            cause = "device memory limit exceeded: it used 7.5 GiB of its 6.4 GiB limit on GPU 0"
            assert said.count(cause) == 3, said
            poll(lambda: workers(client).get("node-gpu0", {}).get("pid") not in (None, pid), "back")
            assert client.submit(visible, 2, workers=["node-gpu0"]).result(WAIT_S) == "GPU-aa"


def test_worker_options_are_set_anew_for_each_device() -> None:
    argv = "worker 10.0.0.5 --gpus 0,1 --device-memory-limit=0.5 --nthreads 2 --name n".split()
    argv += ["--memory-limit", "4GB"]
    assert _worker_options(argv, per_device=True) == ["--nthreads", "2"]
    assert "--gpus" in _worker_options(argv) and "--memory-limit" in _worker_options(argv)


@pytest.mark.parametrize(
    ("state", "args", "words"),
    [
        ({"devices": []}, ["--gpus", "all"], "--gpus all: NVML finds no GPU on this node"),
        ({"devices": [], "no_driver": True}, ["--gpus", "0"], "NVML did not start"),
        (TWO_GPUS, ["--gpus", "5"], "there is no GPU 5 on this node; NVML finds: GPU 0 (Fake T4"),
        (TWO_GPUS, ["--gpus", "all", "--no-nanny"], "--no-nanny runs one worker, and --gpus all"),
        (TWO_GPUS, ["--gpus", "0", "--device-memory-limit", "lots"], "not a size: 'lots'"),
        (TWO_GPUS, ["--device-memory-limit", "0.5"], "--device-memory-limit needs --gpus"),
        (TWO_GPUS, ["--gpus", "first"], "argument --gpus: not a GPU: 'first'"),
    ],
)
def test_a_node_without_the_gpus_asked_for_is_told_before_any_process_starts(
    node: Path,
    capsys: pytest.CaptureFixture[str],
    state: dict[str, Any],
    args: list[str],
    words: str,
) -> None:
    node.write_text(json.dumps(state))
    with pytest.raises(SystemExit) as caught:
        main(["worker", "127.0.0.1:1", *args])
    assert caught.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error:" in error and words in error, error


def test_a_node_without_nvml_bindings_names_what_it_looked_for(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    with pytest.raises(SystemExit):
        main(["worker", "127.0.0.1:1", "--gpus", "all"])
    error = capsys.readouterr().err
    assert "--gpus all: no NVIDIA GPU can be found: the NVML bindings (pynvml)" in error
    assert "pip install 'shoal[gpu]'" in error


# -- LocalCluster and Client -------------------------------------------------------------------


def test_client_gpus_starts_a_local_worker_per_device(
    node: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", gpu_env()["PYTHONPATH"])
    with Client(gpus="all", threads_per_worker=1, device_memory_limit="4GiB") as client:
        info = workers(client)
        assert sorted(info) == ["local-gpu0", "local-gpu1"]
        assert all(w["resources"] == {"GPU": 1.0} for w in info.values())
        assert info["local-gpu1"]["gpus"][0]["memory_limit"] == 4 * GiB
        assert client.submit(visible, 0, workers=["local-gpu1"]).result(WAIT_S) == "GPU-bb"
    with Client(gpus=[1], threads_per_worker=1) as client:
        assert list(workers(client)) == ["local-gpu1"]
        assert client.submit(visible, 0).result(WAIT_S) == "GPU-bb"


def test_local_gpu_keywords_are_checked_before_anything_starts(node: Path) -> None:
    with pytest.raises(ValueError, match="gpus needs processes=True"):
        local.LocalCluster(gpus="all", processes=False)
    with pytest.raises(ValueError, match="n_workers=3 but gpus='all' names 2 devices"):
        local.LocalCluster(gpus="all", n_workers=3)
    with pytest.raises(ValueError, match="gpus: not a GPU: 'x'"):
        Client(gpus="x")
    with pytest.raises(ValueError, match="device_memory_limit: not a size"):
        Client(gpus="all", device_memory_limit="lots")
    with pytest.raises(ValueError, match="device_memory_limit needs gpus"):
        Client(device_memory_limit=0.5)
    with pytest.raises(NoDevice, match=r"LocalCluster\(gpus=\[7\]\): there is no GPU 7"):
        local.LocalCluster(gpus=[7])
