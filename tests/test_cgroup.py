"""Container limits read from cgroup files (shoal/deploy/cgroup.py), on fake trees
of cgroup v2 and v1, and the worker's defaults that follow from them."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.deploy import arguments, cgroup
from shoal.deploy.cgroup import ContainerLimits, read_limits

pytestmark = pytest.mark.timeout(30)


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")


def proc_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "proc-self-cgroup"
    path.write_text(text)
    return path


def test_v2_quota_and_memory_in_the_process_cgroup(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    write(root, {"cgroup.controllers": "cpu memory", "cpu.max": "max 100000",
                 "memory.max": "max", "pod/c1/cpu.max": "250000 100000",
                 "pod/c1/memory.max": str(3 * 2**30)})  # fmt: skip
    limits = read_limits(root, proc_file(tmp_path, "0::/pod/c1\n"))
    assert limits == ContainerLimits(cpus=2.5, memory=3 * 2**30)
    assert limits.threads(16) == 3 and limits.threads(2) == 2


def test_v2_the_lowest_limit_above_counts(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    write(root, {"cgroup.controllers": "", "pod/cpu.max": "50000 100000",
                 "pod/memory.max": "1000000000", "pod/c1/cpu.max": "max 100000",
                 "pod/c1/memory.max": "2000000000"})  # fmt: skip
    limits = read_limits(root, proc_file(tmp_path, "0::/pod/c1\n"))
    assert limits == ContainerLimits(cpus=0.5, memory=1_000_000_000)
    assert limits.threads(8) == 1


def test_v2_inside_a_container_namespace_reads_the_root(tmp_path: Path) -> None:
    # The path named is the host's; the container sees its own cgroup at the root.
    root = tmp_path / "cg"
    write(root, {"cgroup.controllers": "cpu", "cpu.max": "400000 100000",
                 "memory.max": "536870912"})  # fmt: skip
    limits = read_limits(root, proc_file(tmp_path, "0::/kubepods/burstable/pod1/abc\n"))
    assert limits == ContainerLimits(cpus=4.0, memory=512 * 2**20)


def test_v2_without_limits(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    write(root, {"cgroup.controllers": "", "cpu.max": "max 100000", "memory.max": "max"})
    assert read_limits(root, proc_file(tmp_path, "0::/\n")) == ContainerLimits()


def test_v1_quota_and_memory(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    write(root, {"cpu,cpuacct/cpu.cfs_quota_us": "150000",
                 "cpu,cpuacct/cpu.cfs_period_us": "100000",
                 "memory/memory.limit_in_bytes": str(2 * 2**30)})  # fmt: skip
    (root / "cpu").mkdir()  # a link in real trees; the combined one is read when it has files
    text = "4:memory:/\n3:cpu,cpuacct:/\n"
    assert read_limits(root, proc_file(tmp_path, text)) == ContainerLimits(1.5, 2 * 2**30)


def test_v1_unlimited_and_unreadable_are_no_limit(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    write(root, {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000",
                 "memory/memory.limit_in_bytes": "9223372036854771712"})  # fmt: skip
    assert read_limits(root, proc_file(tmp_path, "1:cpu:/\n")) == ContainerLimits()
    write(root, {"cpu/cpu.cfs_quota_us": "garbage", "memory/memory.limit_in_bytes": ""})
    assert read_limits(root, tmp_path / "absent") == ContainerLimits()
    assert read_limits(tmp_path / "nothing-here", tmp_path / "absent") == ContainerLimits()


def test_v1_quota_in_the_process_cgroup(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    write(root, {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000",
                 "cpu/docker/x/cpu.cfs_quota_us": "200000",
                 "cpu/docker/x/cpu.cfs_period_us": "100000",
                 "memory/docker/x/memory.limit_in_bytes": "1073741824"})  # fmt: skip
    limits = read_limits(root, proc_file(tmp_path, "5:cpu:/docker/x\n4:memory:/docker/x\n"))
    assert limits == ContainerLimits(cpus=2.0, memory=2**30)


def test_worker_defaults_follow_the_container(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cgroup, "read_limits", lambda: ContainerLimits(1.5, 2 * 2**30))
    monkeypatch.setattr(cgroup, "usable_cores", lambda: 64)
    args = arguments.build_parser().parse_args(["worker", "tcp://127.0.0.1:7786"])
    arguments.check_args(args)
    assert args.nthreads == 2
    assert args.memory_limit == int(2 * 2**30 * arguments.CONTAINER_SHARE)
    # What is set wins.
    args = arguments.build_parser().parse_args(
        ["worker", "tcp://127.0.0.1:7786", "--nthreads", "7", "--memory-limit", "0"]
    )
    arguments.check_args(args)
    assert (args.nthreads, args.memory_limit) == (7, 0)


def test_worker_defaults_without_a_container(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cgroup, "read_limits", lambda: ContainerLimits())
    monkeypatch.setattr(cgroup, "usable_cores", lambda: 3)
    args = arguments.build_parser().parse_args(["worker", "tcp://127.0.0.1:7786"])
    arguments.check_args(args)
    assert (args.nthreads, args.memory_limit) == (3, 0)
