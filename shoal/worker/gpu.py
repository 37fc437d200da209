"""GPU devices: found through NVML, one pinned to each worker process, its memory watched.

NVML (the `pynvml` module of nvidia-ml-py, in the `gpu` extra) reads what the
driver knows without starting CUDA. Devices are numbered as NVML and
nvidia-smi number them (PCI bus order); a MIG instance is `GPU:SLOT` or its
`MIG-` UUID. A worker process is pinned to its device by UUID through
CUDA_VISIBLE_DEVICES, and asks NVML about that device alone, so that no
device is counted by two workers. Nothing here imports CUDA or cupy.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from shoal.errors import NoDevice

log = logging.getLogger(__name__)

VISIBLE_ENV = "CUDA_VISIBLE_DEVICES"
_MIG_ENABLED = 1  # NVML_DEVICE_MIG_ENABLE
INSTALL_HINT = "install nvidia-ml-py (pip install 'shoal[gpu]') on a node with the NVIDIA driver"


@dataclasses.dataclass(frozen=True, slots=True)
class Device:
    """One device a worker can be pinned to: a whole GPU, or one MIG instance of one.

    `index` is NVML's: "3" for GPU 3, "3:1" for the MIG instance in slot 1 of GPU 3,
    whose `parent` is the UUID of GPU 3 ("" for a whole GPU).
    """

    index: str
    uuid: str
    name: str
    memory_total: int
    parent: str = ""

    @property
    def label(self) -> str:
        """How messages name it: 'GPU 3', 'GPU 3 MIG 1'."""
        gpu, _, slot = self.index.partition(":")
        return f"GPU {gpu} MIG {slot}" if slot else f"GPU {gpu}"

    @property
    def suffix(self) -> str:
        """What its worker's name ends with: 'gpu3', 'gpu3-mig1'."""
        return self.label.lower().replace("gpu ", "gpu").replace(" mig ", "-mig")

    def describe(self) -> dict[str, str]:
        """What a worker registers about its device."""
        return {"index": self.index, "uuid": self.uuid, "name": self.name}

    def __str__(self) -> str:
        return f"{self.label} ({self.name}, {self.uuid})"


def pin_env(device: Device) -> dict[str, str]:
    """The environment that pins a process to `device`, before it starts CUDA.

    By UUID: CUDA's own numbering differs from NVML's unless CUDA_DEVICE_ORDER
    says otherwise, and a MIG instance has no number in CUDA at all.
    """
    return {VISIBLE_ENV: device.uuid, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


def worker_name(base: str, device: Device) -> str:
    """The name of the worker of `device`: `base` with the device's suffix, once."""
    return base if base.endswith(f"-{device.suffix}") else f"{base}-{device.suffix}"


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Nvml:
    """The few NVML calls shoal makes, over a module with pynvml's interface."""

    def __init__(self, module: Any) -> None:
        self._nvml = module
        self.error: type[Exception] = module.NVMLError
        self._handles: dict[str, Any] = {}  # by UUID, as devices() found them

    @classmethod
    def load(cls, asked: str = "--gpus") -> Nvml:
        """Import the bindings and start NVML.

        Raises:
            NoDevice: the module is not installed or NVML does not start (no
                driver); the message starts with `asked`, what was looked for.
        """
        try:
            module = importlib.import_module("pynvml")
        except ImportError as exc:
            raise NoDevice(
                f"{asked}: no NVIDIA GPU can be found: the NVML bindings (pynvml) are not "
                f"installed ({exc}); {INSTALL_HINT}"
            ) from None
        try:
            module.nvmlInit()
        except module.NVMLError as exc:
            raise NoDevice(
                f"{asked}: no NVIDIA GPU can be found: NVML did not start ({exc}); is the "
                "NVIDIA driver (libnvidia-ml.so.1) installed on this node?"
            ) from None
        return cls(module)

    def devices(self) -> list[Device]:
        """Every device on this node, in NVML's order: a GPU in MIG mode as its instances."""
        nvml, found = self._nvml, []
        for i in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            if not self._mig_enabled(handle):
                found.append(self._device(str(i), handle))
                continue
            parent = _text(nvml.nvmlDeviceGetUUID(handle))
            for slot in range(nvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
                try:
                    instance = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
                except self.error:
                    continue  # an empty slot
                found.append(self._device(f"{i}:{slot}", instance, parent))
        return found

    def _mig_enabled(self, handle: Any) -> bool:
        try:
            return int(self._nvml.nvmlDeviceGetMigMode(handle)[0]) == _MIG_ENABLED
        except self.error:  # a GPU that cannot be split
            return False

    def _device(self, index: str, handle: Any, parent: str = "") -> Device:
        nvml = self._nvml
        uuid = _text(nvml.nvmlDeviceGetUUID(handle))
        self._handles[uuid] = handle
        total = int(nvml.nvmlDeviceGetMemoryInfo(handle).total)
        return Device(index, uuid, _text(nvml.nvmlDeviceGetName(handle)), total, parent)

    def _handle(self, uuid: str) -> Any:
        if uuid not in self._handles:
            self.devices()
        return self._handles[uuid]

    def memory(self, uuid: str) -> tuple[int, int]:
        """(bytes used, bytes in all) of the device, by every process on it."""
        info = self._nvml.nvmlDeviceGetMemoryInfo(self._handle(uuid))
        return int(info.used), int(info.total)

    def utilization(self, uuid: str) -> float | None:
        """Percent of time a kernel ran lately; None where NVML cannot say (MIG)."""
        try:
            return float(self._nvml.nvmlDeviceGetUtilizationRates(self._handle(uuid)).gpu)
        except self.error:
            return None

    def processes(self, uuid: str) -> list[tuple[int, int]]:
        """(pid, bytes) of each process using the device, as NVML sees pids."""
        listed = self._nvml.nvmlDeviceGetComputeRunningProcesses(self._handle(uuid))
        return [(int(p.pid), int(p.usedGpuMemory or 0)) for p in listed]


def parse_gpus(value: object) -> str | tuple[str, ...]:
    """'all', '0,2', 'GPU-8f3e...', 'MIG-4b1c...', '3:1', or a list of those -> 'all'
    or the tokens, checked for form only (devices are looked up at start).

    Raises:
        ValueError: empty, or a token that is neither an index nor a UUID.
    """
    if isinstance(value, str):
        text = value.strip()
        if text.lower() == "all":
            return "all"
        tokens = [t.strip() for t in text.split(",")]
    elif isinstance(value, Sequence) and not isinstance(value, bytes):
        tokens = [str(t).strip() if isinstance(t, int | str) and not isinstance(t, bool) else ""
                  for t in value]  # fmt: skip
    else:
        raise ValueError(f"gpus must be 'all', indices or UUIDs, not {value!r}")
    if not tokens or not all(tokens):
        raise ValueError(f"not a list of GPUs: {value!r} (try all, 0,2 or a GPU-/MIG- UUID)")
    for token in tokens:
        index, colon, slot = token.partition(":")
        if index.isdigit() and (not colon or slot.isdigit()):
            continue
        if token.startswith(("GPU-", "MIG-")) and token.isprintable() and " " not in token:
            continue
        raise ValueError(
            f"not a GPU: {token!r} (give an index as nvidia-smi shows it, GPU:SLOT for a "
            "MIG instance, a GPU- or MIG- UUID, or all)"
        )
    if len(set(tokens)) != len(tokens):
        raise ValueError(f"a GPU is named twice in {value!r}")
    return tuple(tokens)


def _matches(device: Device, token: str) -> bool:
    """Whether `token` (an index or a UUID) names `device` or the GPU it is part of."""
    return token in (device.uuid, device.index, device.parent) or device.index.startswith(
        f"{token}:"
    )


def select(
    spec: str | tuple[str, ...],
    devices: Sequence[Device],
    visible: str | None = None,
    asked: str = "--gpus",
) -> list[Device]:
    """The devices `spec` (from parse_gpus) names among `devices`. 'all' means those
    CUDA_VISIBLE_DEVICES (`visible`) leaves visible, when it is set; an index or
    UUID of a GPU in MIG mode means each of its instances.

    Raises:
        NoDevice: nothing found, or a token that names no device; the message
            starts with `asked` and lists what NVML found.
    """
    found = "; ".join(str(d) for d in devices) or "none"
    if not devices:
        raise NoDevice(f"{asked}: NVML finds no GPU on this node")
    if spec == "all":
        chosen = list(devices) if visible is None else _visible(devices, visible)
        if not chosen:
            raise NoDevice(
                f"{asked}: {VISIBLE_ENV}={visible!r} leaves none of the GPUs NVML finds: {found}"
            )
        return chosen
    chosen = []
    for token in spec:
        named = [d for d in devices if _matches(d, token)]
        if not named:
            raise NoDevice(f"{asked}: there is no GPU {token} on this node; NVML finds: {found}")
        chosen.extend(d for d in named if d not in chosen)
    return chosen


def _visible(devices: Sequence[Device], visible: str) -> list[Device]:
    """The devices a CUDA_VISIBLE_DEVICES value shows: as CUDA reads it, up to the
    first entry that names none."""
    shown: list[Device] = []
    for entry in (e.strip() for e in visible.split(",")):
        named = [d for d in devices if entry and _matches(d, entry)]
        if not named:
            break
        shown.extend(d for d in named if d not in shown)
    return shown


def amount(nbytes: float) -> str:
    """75.2 GiB, 64 GiB, 512 MiB: device memory as its messages give it."""
    if nbytes < 2**30:
        return f"{nbytes / 2**20:.0f} MiB"
    return f"{nbytes / 2**30:.1f}".removesuffix(".0") + " GiB"


class DeviceMonitor:
    """The one device a worker process is pinned to: what its heartbeats say of
    it, and what its nanny checks against `memory_limit` (bytes; 0: none)."""

    def __init__(self, nvml: Nvml, device: Device, memory_limit: int = 0) -> None:
        self.nvml, self.device, self.memory_limit = nvml, device, memory_limit
        self._failing = False  # NVML failed on the last reading (logged once)

    @classmethod
    def pinned(
        cls, nvml: Nvml, memory_limit: int = 0, environ: Mapping[str, str] = os.environ
    ) -> DeviceMonitor:
        """The monitor of the device CUDA_VISIBLE_DEVICES pins this process to (its
        first entry: the device CUDA calls 0).

        Raises:
            NoDevice: the variable is unset or names no device NVML finds.
        """
        visible = environ.get(VISIBLE_ENV)
        devices = nvml.devices()
        shown = _visible(devices, visible) if visible else []
        if not shown:
            found = "; ".join(str(d) for d in devices) or "none"
            raise NoDevice(
                f"{VISIBLE_ENV}={visible!r} pins this process to no device NVML finds: {found}"
            )
        return cls(nvml, shown[0], memory_limit)

    def registration(self) -> dict[str, Any]:
        """The RegisterWorker fields about the device."""
        return {"devices": (self.device.describe(),), "device_memory_limit": self.memory_limit}

    def sample(self) -> tuple[dict[str, float], ...]:
        """The heartbeat's figures: memory used and in all, utilisation (where known).
        Empty while NVML fails (a device that fell off the bus): a heartbeat never fails."""
        try:
            used, total = self.nvml.memory(self.device.uuid)
            utilization = self.nvml.utilization(self.device.uuid)
        except self.nvml.error as exc:
            self._note_failure(exc)
            return ()
        self._failing = False
        figures = {"memory_used": float(used), "memory_total": float(total)}
        if utilization is not None:
            figures["utilization"] = utilization
        return (figures,)

    def used_by(self, pid: int, exists: Callable[[int], bool] | None = None) -> int:
        """Device bytes process `pid` uses: its own figure when NVML lists it; the
        whole device's use when NVML's pids are not this namespace's (a container)
        or it lists none; 0 when it lists only other processes we can see."""
        if exists is None:
            import psutil

            exists = psutil.pid_exists
        try:
            listed = self.nvml.processes(self.device.uuid)
            for listed_pid, nbytes in listed:
                if listed_pid == pid:
                    return nbytes
            if any(exists(listed_pid) for listed_pid, _ in listed):
                return 0
            return self.nvml.memory(self.device.uuid)[0]
        except self.nvml.error as exc:
            self._note_failure(exc)
            return 0

    def limit_cause(self, used: int) -> str:
        """The cause of death its nanny reports when `used` crossed the limit."""
        return (
            f"device memory limit exceeded: it used {amount(used)} of its "
            f"{amount(self.memory_limit)} limit on {self.device.label}, and its nanny killed it"
        )

    def _note_failure(self, exc: Exception) -> None:
        if not self._failing:
            log.warning("NVML cannot read %s: %s", self.device, exc)
        self._failing = True
