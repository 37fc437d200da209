"""GPU nodes on a real NVIDIA GPU: cupy arrays through the registry, NVML, and a
local GPU cluster moving device arrays. Marked `gpu`; skipped, with the reason,
where there is no cupy, no device or no nvidia-ml-py.

Task functions live at module level: the workers import this module by name.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest

from shoal import Client
from shoal.errors import NoDevice
from shoal.protocol.serialize import deserialize, device_nbytes, serialize
from shoal.worker.gpu import DeviceMonitor, Nvml, pin_env
from tests.test_integration import ROOT


def _missing() -> str:
    try:
        import cupy
    except ImportError as exc:
        return f"cupy is not installed ({exc})"
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "cupy finds no CUDA device"
    except cupy.cuda.runtime.CUDARuntimeError as exc:
        return f"cupy finds no CUDA device ({exc})"
    try:
        Nvml.load().devices()
    except NoDevice as exc:
        return str(exc)
    return ""


MISSING = _missing()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(bool(MISSING), reason=f"needs an NVIDIA GPU: {MISSING}"),
    pytest.mark.timeout(180),
]
WAIT_S = 120.0


def make(n: int, seed: int) -> Any:
    import cupy

    return cupy.random.default_rng(seed).random((n, n), dtype=cupy.float32)


def matmul(a: Any, b: Any) -> Any:
    return a @ b


def where(x: Any) -> tuple[str, str, int]:
    return type(x).__module__, os.environ["CUDA_VISIBLE_DEVICES"], int(x.device.id)


def test_a_cupy_array_crosses_through_pinned_memory_and_back_to_the_device() -> None:
    import cupy

    arr = cupy.arange(1_000_000, dtype=cupy.float64).reshape(1000, 1000)[:, ::2]
    assert device_nbytes(arr) == arr.nbytes
    payload = serialize(arr)
    assert len(payload.frames) == 2 and payload.typename == "cupy.ndarray"
    back: Any = deserialize(payload)
    assert isinstance(back, cupy.ndarray)
    assert bool((back == arr).all())
    host: Any = deserialize(payload, host=True)
    assert type(host) is np.ndarray and np.array_equal(host, arr.get())


def test_nvml_sees_the_devices_and_reads_only_the_pinned_one() -> None:
    nvml = Nvml.load()
    devices = nvml.devices()
    assert devices and all(d.memory_total > 0 for d in devices)
    monitor = DeviceMonitor.pinned(nvml, 0, pin_env(devices[-1]))
    (figures,) = monitor.sample()
    assert figures["memory_total"] == devices[-1].memory_total


def test_a_local_gpu_cluster_computes_and_moves_cupy_arrays(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import cupy

    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    with Client(gpus="all", threads_per_worker=1) as client:
        names = sorted(client.scheduler_info()["workers"])
        first, last = names[0], names[-1]
        a = client.submit(make, 512, 1, workers=[first])
        b = client.submit(make, 512, 2, workers=[last])  # on another device, if there is one
        c = client.submit(matmul, a, b, workers=[first])
        got = c.result(WAIT_S)
        assert isinstance(got, cupy.ndarray)
        expected = a.result(WAIT_S) @ b.result(WAIT_S)
        assert bool(cupy.allclose(got, expected, rtol=1e-4))
        module, visible, device = client.submit(where, b, workers=[first]).result(WAIT_S)
        assert module.startswith("cupy") and device == 0
        info = client.scheduler_info()["workers"][first]["gpus"][0]
        assert visible == info["uuid"] and info["memory_limit"] > 0
        assert type(c.result(WAIT_S, host=True)) is np.ndarray
