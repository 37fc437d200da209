"""What a container allows this process: CPU quota and memory limit, read from cgroups.

A worker in a Kubernetes pod sees the node's cores and memory through
os.cpu_count() and psutil, not its container's limits; its defaults
(threads, memory limit) come from here instead. cgroup v2 first (cpu.max,
memory.max in this process's cgroup and each one above it), then v1
(cpu.cfs_quota_us / cpu.cfs_period_us, memory.limit_in_bytes). Pure reading
of files under a root that tests replace with a fake tree; never raises for a
missing or odd file: that limit is then unknown.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TypeVar

N = TypeVar("N", int, float)

# v1 writes "no limit" as a huge number (the largest page-aligned 64-bit value).
_V1_UNLIMITED = 1 << 60


@dataclasses.dataclass(frozen=True)
class ContainerLimits:
    """Limits found; None where there is none (or none could be read)."""

    cpus: float | None = None  # cores of CPU time per second (quota / period)
    memory: int | None = None  # bytes

    def threads(self, available: int) -> int:
        """Threads to run with `available` cores usable: the quota rounded up, at least 1."""
        if self.cpus is None:
            return max(1, available)
        return max(1, min(available, -int(-self.cpus // 1)))


def read_limits(
    root: str | Path = "/sys/fs/cgroup", proc: str | Path = "/proc/self/cgroup"
) -> ContainerLimits:
    """The CPU and memory limits of this process's cgroups under `root`, as listed
    in `proc` (the format of /proc/self/cgroup)."""
    root, groups = Path(root), _groups(Path(proc))
    if (root / "cgroup.controllers").exists():  # the unified (v2) hierarchy
        dirs = _chain(root, groups.get("", "/"))
        return ContainerLimits(_min(_v2_cpu(d) for d in dirs), _min(_v2_memory(d) for d in dirs))
    cpu_dirs = _chain(_v1_mount(root, "cpu"), groups.get("cpu", "/"))
    memory_dirs = _chain(root / "memory", groups.get("memory", "/"))
    return ContainerLimits(
        _min(_v1_cpu(d) for d in cpu_dirs), _min(_v1_memory(d) for d in memory_dirs)
    )


def _groups(proc: Path) -> dict[str, str]:
    """Controller -> cgroup path, from lines like '0::/a/b' and '4:memory:/a/b'."""
    try:
        text = proc.read_text()
    except OSError:
        return {}
    groups: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            for controller in parts[1].split(","):
                groups.setdefault(controller, parts[2])
    return groups


def _chain(base: Path, path: str) -> list[Path]:
    """`base/path` and each directory above it up to `base`, those that exist. In a
    container the cgroup named may be the host's path, absent here: then `base`."""
    dirs = []
    here = base / path.strip("/")
    while True:
        if here.is_dir():
            dirs.append(here)
        if here == base or base not in here.parents:
            break
        here = here.parent
    return dirs or [base]


def _v1_mount(root: Path, controller: str) -> Path:
    """The v1 mount of a controller: its own folder, or one it shares with another."""
    found = [root / n for n in (controller, "cpu,cpuacct", "cpuacct,cpu") if (root / n).is_dir()]
    with_files = [d for d in found if (d / "cpu.cfs_period_us").exists()]
    return (with_files or found or [root / controller])[0]


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _v2_cpu(d: Path) -> float | None:
    text = _read(d / "cpu.max")  # "max 100000" or "250000 100000"
    if not text:
        return None
    parts = text.split()
    if parts[0] == "max":
        return None
    try:
        quota, period = int(parts[0]), int(parts[1]) if len(parts) > 1 else 100_000
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _v2_memory(d: Path) -> int | None:
    text = _read(d / "memory.max")
    if not text or text == "max":
        return None
    return _positive_int(text)


def _v1_cpu(d: Path) -> float | None:
    quota = _read(d / "cpu.cfs_quota_us")
    period = _read(d / "cpu.cfs_period_us")
    if quota is None or period is None:
        return None
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def _v1_memory(d: Path) -> int | None:
    value = _positive_int(_read(d / "memory.limit_in_bytes") or "")
    return value if value is not None and value < _V1_UNLIMITED else None


def _positive_int(text: str) -> int | None:
    try:
        value = int(text)
    except ValueError:
        return None
    return value if value > 0 else None


def _min(values: Iterable[N | None]) -> N | None:
    found = [v for v in values if v is not None]
    return min(found) if found else None


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), whatever the quota."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
