"""GPU devices without a GPU: discovery through a stand-in NVML, --gpus, pinning,
device figures in heartbeats and scheduler_info, and the device memory limit.

The stand-in (tests/fakes/pynvml.py) answers NVML's calls from a JSON file, so
every piece that does not need a device is tested on any machine.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from shoal.deploy import options
from shoal.errors import NoDevice, ProtocolError
from shoal.protocol import codec, frames
from shoal.protocol import messages as m
from shoal.protocol.limits import DEFAULT_LIMITS
from shoal.protocol.schema import from_wire
from shoal.worker import gpu
from shoal.worker.gpu import Device, DeviceMonitor, Nvml, parse_gpus, pin_env, select, worker_name
from tests.fakes import pynvml as fake_pynvml
from tests.scheduler_harness import Harness

GiB = 2**30


def _gpu(uuid: str, name: str, total: int, used: int, utilization: int) -> dict[str, Any]:
    return {"uuid": uuid, "name": name, "total": total, "used": used, "utilization": utilization}


# Four GPUs; GPU 2 is split into two MIG instances, with slot 1 empty.
FOUR = {
    "devices": [
        {
            "uuid": "GPU-0a",
            "name": "Fake A100",
            "total": 80 * GiB,
            "used": 1 * GiB,
            "utilization": 5,
        },
        {
            "uuid": "GPU-1b",
            "name": "Fake A100",
            "total": 80 * GiB,
            "used": 2 * GiB,
            "utilization": 50,
        },
        {
            "uuid": "GPU-2c",
            "name": "Fake A100",
            "total": 80 * GiB,
            "mig": [
                {"uuid": "MIG-2c-0", "name": "Fake A100 MIG 3g.40gb", "total": 40 * GiB, "used": 3},
                None,
                {"uuid": "MIG-2c-2", "name": "Fake A100 MIG 3g.40gb", "total": 40 * GiB, "used": 4},
            ],
        },
        {
            "uuid": "GPU-3d",
            "name": "Fake H100",
            "total": 96 * GiB,
            "used": 7 * GiB,
            "utilization": 99,
        },
    ]
}


class FakeNode:
    """The stand-in NVML, as this process's pynvml, answering from `state`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, state: dict[str, Any]) -> None:
        self.path.write_text(json.dumps(state))


@pytest.fixture
def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeNode:
    fake = FakeNode(tmp_path / "nvml.json")
    fake.write(FOUR)
    monkeypatch.setenv(fake_pynvml.STATE_ENV, str(fake.path))
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    fake_pynvml.QUERIED.clear()
    return fake


# -- discovery -----------------------------------------------------------------------------


def test_every_device_is_found_and_a_mig_gpu_as_its_instances(node: FakeNode) -> None:
    devices = Nvml.load().devices()
    assert [(d.index, d.uuid, d.label, d.suffix) for d in devices] == [
        ("0", "GPU-0a", "GPU 0", "gpu0"),
        ("1", "GPU-1b", "GPU 1", "gpu1"),
        ("2:0", "MIG-2c-0", "GPU 2 MIG 0", "gpu2-mig0"),
        ("2:2", "MIG-2c-2", "GPU 2 MIG 2", "gpu2-mig2"),
        ("3", "GPU-3d", "GPU 3", "gpu3"),
    ]
    assert devices[4].name == "Fake H100" and devices[4].memory_total == 96 * GiB
    assert str(devices[0]) == "GPU 0 (Fake A100, GPU-0a)"


def test_a_node_without_the_bindings_is_told_what_was_looked_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    found = r"--gpus all: no NVIDIA GPU can be found: the NVML bindings \(pynvml\) are not"
    with pytest.raises(NoDevice, match=found + r".*pip install 'shoal\[gpu\]'"):
        Nvml.load("--gpus all")


def test_a_node_without_the_driver_is_told_so(node: FakeNode) -> None:
    node.write({**FOUR, "no_driver": True})
    said = r"--gpus 1: .*NVML did not start \(Driver Not Loaded\).*libnvidia-ml\.so\.1"
    with pytest.raises(NoDevice, match=said):
        Nvml.load("--gpus 1")


def test_a_node_whose_nvml_finds_nothing_says_so(node: FakeNode) -> None:
    node.write({"devices": []})
    with pytest.raises(NoDevice, match="--gpus all: NVML finds no GPU on this node"):
        select("all", Nvml.load().devices(), None, "--gpus all")


# -- --gpus --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("all", "all"),
        (" ALL ", "all"),
        ("0", ("0",)),
        ("0,2", ("0", "2")),
        ("3:1", ("3:1",)),
        ("GPU-8f3e2b1a-0000-1111", ("GPU-8f3e2b1a-0000-1111",)),
        ("MIG-4b1c,1", ("MIG-4b1c", "1")),
        ("MIG-GPU-8f3e/7/0", ("MIG-GPU-8f3e/7/0",)),  # the older MIG form
        ([0, 2], ("0", "2")),
        (["GPU-0a", 1], ("GPU-0a", "1")),
    ],
)
def test_gpus_are_given_as_dask_and_nvidia_smi_users_write_them(text: Any, expected: Any) -> None:
    assert parse_gpus(text) == expected


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", "not a list of GPUs"),
        ("0,,1", "not a list of GPUs"),
        ("gpu0", "not a GPU: 'gpu0'"),
        ("-1", "not a GPU: '-1'"),
        ("1:x", "not a GPU: '1:x'"),
        ("0,0", "named twice"),
        ([True], "not a list of GPUs"),
        (3, "gpus must be 'all', indices or UUIDs"),
    ],
)
def test_a_malformed_gpus_is_refused_in_words(text: Any, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse_gpus(text)


def test_select_by_index_uuid_and_mig(node: FakeNode) -> None:
    devices = Nvml.load().devices()

    def picked(text: str) -> list[str]:
        return [d.uuid for d in select(parse_gpus(text), devices, None)]

    assert picked("all") == ["GPU-0a", "GPU-1b", "MIG-2c-0", "MIG-2c-2", "GPU-3d"]
    assert picked("3,0") == ["GPU-3d", "GPU-0a"]
    assert picked("GPU-1b") == ["GPU-1b"]
    assert picked("MIG-2c-2") == ["MIG-2c-2"]
    assert picked("2:0") == ["MIG-2c-0"]
    assert picked("2") == ["MIG-2c-0", "MIG-2c-2"]  # a split GPU: each of its instances
    assert picked("GPU-2c") == ["MIG-2c-0", "MIG-2c-2"]
    assert picked("2,2:0") == ["MIG-2c-0", "MIG-2c-2"]  # named twice over: once


def test_a_gpu_that_is_not_there_is_named_with_what_is(node: FakeNode) -> None:
    devices = Nvml.load().devices()
    with pytest.raises(NoDevice) as caught:
        select(parse_gpus("0,7"), devices, None, "--gpus 0,7")
    assert str(caught.value).startswith("--gpus 0,7: there is no GPU 7 on this node; NVML finds: ")
    assert "GPU 3 (Fake H100, GPU-3d)" in str(caught.value)
    with pytest.raises(NoDevice, match="no GPU GPU-ffff"):
        select(parse_gpus("GPU-ffff"), devices, None)


def test_all_means_what_cuda_visible_devices_leaves_visible(node: FakeNode) -> None:
    devices = Nvml.load().devices()
    assert [d.index for d in select("all", devices, "3,GPU-1b")] == ["3", "1"]
    assert [d.index for d in select("all", devices, "1,9,0")] == ["1"]  # CUDA stops at 9
    with pytest.raises(NoDevice, match="CUDA_VISIBLE_DEVICES='' leaves none of the GPUs"):
        select("all", devices, "")
    # Named explicitly, a device is taken whatever the variable says.
    assert [d.index for d in select(("0",), devices, "3")] == ["0"]


# -- pinning ---------------------------------------------------------------------------------


def test_a_worker_is_pinned_by_uuid_and_named_once_after_its_device() -> None:
    mig = Device("2:1", "MIG-2c-1", "Fake", 40 * GiB)
    assert pin_env(mig) == {"CUDA_VISIBLE_DEVICES": "MIG-2c-1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    assert worker_name("node7", mig) == "node7-gpu2-mig1"
    assert worker_name("node7-gpu2-mig1", mig) == "node7-gpu2-mig1"
    assert mig.describe() == {"index": "2:1", "uuid": "MIG-2c-1", "name": "Fake"}


def test_nvml_honours_the_pinning_and_counts_only_the_pinned_device(node: FakeNode) -> None:
    nvml = Nvml.load()
    monitor = DeviceMonitor.pinned(nvml, 64 * GiB, {"CUDA_VISIBLE_DEVICES": "GPU-1b"})
    assert monitor.device.index == "1"
    fake_pynvml.QUERIED.clear()
    assert monitor.sample() == (
        {"memory_used": float(2 * GiB), "memory_total": float(80 * GiB), "utilization": 50.0},
    )
    assert {uuid for uuid, _ in fake_pynvml.QUERIED} == {"GPU-1b"}  # no other device read
    assert monitor.registration() == {
        "devices": ({"index": "1", "uuid": "GPU-1b", "name": "Fake A100"},),
        "device_memory_limit": 64 * GiB,
    }
    # By index too (CUDA_DEVICE_ORDER=PCI_BUS_ID numbers as NVML does), and a MIG
    # instance, whose utilisation NVML does not report.
    assert DeviceMonitor.pinned(nvml, 0, {"CUDA_VISIBLE_DEVICES": "3"}).device.uuid == "GPU-3d"
    mig = DeviceMonitor.pinned(nvml, 0, {"CUDA_VISIBLE_DEVICES": "MIG-2c-2"})
    assert mig.sample() == ({"memory_used": 4.0, "memory_total": float(40 * GiB)},)


def test_a_process_pinned_to_nothing_nvml_knows_is_told(node: FakeNode) -> None:
    nvml = Nvml.load()
    with pytest.raises(NoDevice, match="CUDA_VISIBLE_DEVICES='GPU-gone' pins this process"):
        DeviceMonitor.pinned(nvml, 0, {"CUDA_VISIBLE_DEVICES": "GPU-gone"})
    with pytest.raises(NoDevice, match="CUDA_VISIBLE_DEVICES=None"):
        DeviceMonitor.pinned(nvml, 0, {})


def test_a_failing_device_gives_empty_heartbeat_figures_not_an_error(
    node: FakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    monitor = DeviceMonitor.pinned(Nvml.load(), 0, {"CUDA_VISIBLE_DEVICES": "GPU-0a"})
    node.write({"devices": [{"uuid": "GPU-0a", "total": 1}]})  # still fine
    assert monitor.sample()[0]["memory_total"] == 1.0

    def lost(handle: object) -> None:
        raise fake_pynvml.NVMLError("GPU is lost")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fake_pynvml, "nvmlDeviceGetMemoryInfo", lost)
        assert monitor.sample() == ()
        assert monitor.sample() == ()
    assert caplog.text.count("NVML cannot read GPU 0") == 1
    assert monitor.sample() != ()


# -- the device memory limit ----------------------------------------------------------------


def test_device_memory_limits_as_dask_cuda_users_write_them() -> None:
    total = 80 * GiB
    assert options.device_memory_limit("0.8", total) == int(0.8 * total)
    assert options.device_memory_limit("auto", total) == int(0.8 * total)
    assert options.device_memory_limit(0.5, total) == 40 * GiB
    assert options.device_memory_limit("64GiB", total) == 64 * GiB
    assert options.device_memory_limit("6e10", total) == 60_000_000_000
    assert options.device_memory_limit("0", total) == 0
    assert options.device_memory_limit("none", total) == 0
    with pytest.raises(ValueError, match="not a size"):
        options.device_memory_limit("lots", total)


def test_the_cause_of_death_says_how_much_of_which_device(node: FakeNode) -> None:
    monitor = DeviceMonitor(Nvml.load(), Device("3", "GPU-3d", "Fake H100", 96 * GiB), 64 * GiB)
    assert monitor.limit_cause(int(75.2 * GiB)) == (
        "device memory limit exceeded: it used 75.2 GiB of its 64 GiB limit on GPU 3, "
        "and its nanny killed it"
    )
    assert gpu.amount(512 * 2**20) == "512 MiB"


def test_a_worker_is_measured_by_its_own_figure_where_nvml_lists_it(node: FakeNode) -> None:
    state = json.loads(json.dumps(FOUR))
    state["devices"][0]["processes"] = [[4242, 5 * GiB], [4343, 9 * GiB]]
    node.write(state)
    monitor = DeviceMonitor(Nvml.load(), Nvml.load().devices()[0], 64 * GiB)
    assert monitor.used_by(4242, exists=lambda pid: True) == 5 * GiB
    # Not listed, while processes this namespace can see are: it uses nothing.
    assert monitor.used_by(1, exists=lambda pid: True) == 0
    # NVML's pids are another namespace's (a container): the device's whole use.
    assert monitor.used_by(1, exists=lambda pid: False) == 1 * GiB
    state["devices"][0]["processes"] = []
    node.write(state)
    assert monitor.used_by(1, exists=lambda pid: True) == 1 * GiB


# -- on the wire and at the scheduler -------------------------------------------------------


def _roundtrip(msg: m.Message) -> m.Message:
    decoder = frames.FrameDecoder(DEFAULT_LIMITS)
    for buf in frames.encode_frames(codec.encode_batch([msg])):
        decoder.feed(buf)
    (batch,) = decoder.pop()
    (back,) = codec.decode_batch(batch)
    return back


def test_registration_and_heartbeats_carry_the_device_and_scheduler_info_shows_it() -> None:
    h = Harness()
    register = m.RegisterWorker(
        name="node-gpu3",
        address="tcp://node:1",
        nthreads=1,
        resources={"GPU": 1.0},
        devices=({"index": "3", "uuid": "GPU-3d", "name": "Fake H100"},),
        device_memory_limit=64 * GiB,
    )
    beat = m.Heartbeat(
        devices=(
            {"memory_used": float(7 * GiB), "memory_total": float(96 * GiB), "utilization": 99.0},
        )
    )
    assert _roundtrip(register) == register and _roundtrip(beat) == beat
    h.state.connected("w:gpu3", "worker")
    h.handle("w:gpu3", _roundtrip(register))
    c = h.client()

    def gpus() -> Any:
        (out,) = h.handle(c, m.GetSchedulerInfo(request_id=1))
        return out.msg.info["workers"]["node-gpu3"]["gpus"]

    entry = {"index": "3", "uuid": "GPU-3d", "name": "Fake H100", "memory_limit": 64 * GiB}
    assert gpus() == ({**entry, "memory_used": 0, "memory_total": 0, "utilization": None},)
    h.handle("w:gpu3", _roundtrip(beat))
    assert gpus() == (
        {**entry, "memory_used": 7 * GiB, "memory_total": 96 * GiB, "utilization": 99.0},
    )


@pytest.mark.parametrize(
    "devices",
    [
        ({"memory_used": -1.0},),
        ({"memory_used": float("nan")},),
        ({"memory_used": "1"},),
        ("GPU-0",),
    ],
)
def test_device_figures_from_a_peer_are_checked(devices: Any) -> None:
    with pytest.raises(ProtocolError, match=r"heartbeat\.devices"):
        from_wire({"op": "heartbeat", "devices": devices})
