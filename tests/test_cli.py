"""The `shoal` command, run as a real process."""

from __future__ import annotations

import subprocess
import sys

import pytest

from shoal import __version__


def shoal(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shoal.deploy.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_version() -> None:
    out = shoal("--version")
    assert out.returncode == 0
    assert out.stdout.strip() == f"shoal {__version__} (wire protocol 1)"


def test_help_and_no_command() -> None:
    assert "demo" in shoal("--help").stdout
    bare = shoal()
    assert bare.returncode == 2 and "usage: shoal" in bare.stderr


@pytest.mark.parametrize("args", [["--bogus"], ["demo", "--array-mb", "many"], ["nonsense"]])
def test_bad_flags_exit_2_with_a_message(args: list[str]) -> None:
    out = shoal(*args)
    assert out.returncode == 2
    assert "error:" in out.stderr


@pytest.mark.timeout(60)
def test_demo_runs_and_checks_its_result() -> None:
    out = shoal("demo", "--array-mb", "8")
    assert out.returncode == 0, out.stderr
    assert "cluster token required" in out.stdout
    assert "8 MB array computed, sent and received" in out.stdout
    assert "(checked)" in out.stdout
    assert out.stderr == ""
