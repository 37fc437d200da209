"""A stand-in for pynvml (nvidia-ml-py): the devices a JSON file describes.

FAKE_NVML_STATE names the file; it is read on every call, so that a test (or a
task in a worker process) can change what NVML reports while processes run:

    {"devices": [{"uuid": "GPU-0a", "name": "Fake GPU", "total": 8589934592,
                  "used": 1073741824, "utilization": 30,
                  "processes": [[pid, bytes], ...],
                  "mig": [{"uuid": "MIG-...", "total": ..., "used": ...}, null, ...]}],
     "no_driver": false}

A device with "mig" is in MIG mode; a null slot is empty. Every device query is
recorded in `QUERIED` (uuid, call) for the test process to inspect.
"""

from __future__ import annotations

import json
import os
from types import SimpleNamespace
from typing import Any

STATE_ENV = "FAKE_NVML_STATE"
NVML_DEVICE_MIG_ENABLE = 1
QUERIED: list[tuple[str, str]] = []


class NVMLError(Exception):
    pass


def _state() -> dict[str, Any]:
    with open(os.environ[STATE_ENV]) as f:
        return json.load(f)


def _record(handle: tuple[int, ...]) -> dict[str, Any]:
    device = _state()["devices"][handle[0]]
    if len(handle) == 2:
        device = device["mig"][handle[1]]
    return device


def nvmlInit() -> None:
    if _state().get("no_driver"):
        raise NVMLError("Driver Not Loaded")


def nvmlDeviceGetCount() -> int:
    return len(_state()["devices"])


def nvmlDeviceGetHandleByIndex(index: int) -> tuple[int]:
    return (index,)


def nvmlDeviceGetUUID(handle: tuple[int, ...]) -> bytes:
    return _record(handle)["uuid"].encode()  # older bindings answer bytes


def nvmlDeviceGetName(handle: tuple[int, ...]) -> str:
    return _record(handle).get("name", "Fake GPU")


def nvmlDeviceGetMemoryInfo(handle: tuple[int, ...]) -> SimpleNamespace:
    device = _record(handle)
    QUERIED.append((device["uuid"], "memory"))
    used = device.get("used", 0)
    return SimpleNamespace(total=device["total"], used=used, free=device["total"] - used)


def nvmlDeviceGetUtilizationRates(handle: tuple[int, ...]) -> SimpleNamespace:
    if len(handle) == 2:
        raise NVMLError("Not Supported")  # as on a MIG instance
    device = _record(handle)
    QUERIED.append((device["uuid"], "utilization"))
    return SimpleNamespace(gpu=device.get("utilization", 0), memory=0)


def nvmlDeviceGetMigMode(handle: tuple[int, ...]) -> tuple[int, int]:
    device = _record(handle)
    if "mig" not in device:
        raise NVMLError("Not Supported")
    return (NVML_DEVICE_MIG_ENABLE, NVML_DEVICE_MIG_ENABLE)


def nvmlDeviceGetMaxMigDeviceCount(handle: tuple[int, ...]) -> int:
    return len(_record(handle)["mig"])


def nvmlDeviceGetMigDeviceHandleByIndex(handle: tuple[int, ...], slot: int) -> tuple[int, int]:
    if _record(handle)["mig"][slot] is None:
        raise NVMLError("Not Found")
    return (handle[0], slot)


def nvmlDeviceGetComputeRunningProcesses(handle: tuple[int, ...]) -> list[SimpleNamespace]:
    device = _record(handle)
    QUERIED.append((device["uuid"], "processes"))
    listed = device.get("processes", [])
    return [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in listed]
