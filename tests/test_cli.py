"""The `shoal` command, run as a real process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shoal import __version__
from shoal.protocol.handshake import PROTOCOL_VERSION


def shoal(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SHOAL_TOKEN"}
    return subprocess.run(
        [sys.executable, "-m", "shoal", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.timeout(30)
def test_version() -> None:
    out = shoal("--version")
    assert out.returncode == 0
    assert out.stdout.strip() == f"shoal {__version__} (wire protocol {PROTOCOL_VERSION})"


@pytest.mark.timeout(30)
def test_console_module_is_the_same_command() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "shoal.deploy.cli", "--version"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0
    assert out.stdout.strip() == f"shoal {__version__} (wire protocol {PROTOCOL_VERSION})"


@pytest.mark.timeout(30)
def test_console_script() -> None:
    script = Path(sys.executable).parent / "shoal"
    if not script.exists():
        pytest.skip("the shoal console script is not installed next to this interpreter")
    out = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0
    assert out.stdout.strip() == f"shoal {__version__} (wire protocol {PROTOCOL_VERSION})"


@pytest.mark.timeout(30)
def test_help_and_no_command() -> None:
    out = shoal("--help")
    assert out.returncode == 0
    for command in ("scheduler", "worker", "demo"):
        assert command in out.stdout
    bare = shoal()
    assert bare.returncode == 2 and "usage: shoal" in bare.stderr


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("command", "flags"),
    [
        (
            "scheduler",
            "--host --port --token --allow-insecure --tls-ca --heartbeat-timeout "
            "--allowed-failures".split(),
        ),
        (
            "worker",
            "--nthreads --name --resources --memory-limit --token --no-nanny "
            "--connect-timeout --timeout-grace".split(),
        ),
        ("demo", ["--workers", "--leaves"]),
    ],
)
def test_subcommand_help(command: str, flags: list[str]) -> None:
    out = shoal(command, "--help")
    assert out.returncode == 0, out.stderr
    assert f"usage: shoal {command}" in out.stdout
    for flag in flags:
        assert flag in out.stdout


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "args",
    [
        ["--bogus"],
        ["nonsense"],
        ["--log-level", "loud", "demo"],
        ["demo", "--array-mb", "8"],  # removed flag
        ["demo", "--workers", "two"],
        ["worker"],
        ["worker", "tcp://127.0.0.1:1", "--nthreads", "many"],
        ["worker", "tcp://127.0.0.1:1", "--resources", "GPU"],
        ["worker", "tcp://127.0.0.1:1", "--memory-limit", "lots"],
        ["scheduler", "--port", "x"],
        ["scheduler", "--heartbeat-timeout", "0"],
        ["scheduler", "--allowed-failures", "0"],
        ["worker", "tcp://127.0.0.1:1", "--timeout-grace", "-1"],
        ["worker", "tcp://127.0.0.1:1", "--connect-timeout", "soon"],
    ],
)
def test_bad_flags_exit_2_with_a_message(args: list[str]) -> None:
    out = shoal(*args)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "error:" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.timeout(30)
@pytest.mark.timeout(30)
def test_a_worker_that_finds_no_scheduler_gives_up_after_its_connect_timeout() -> None:
    out = shoal("worker", "tcp://127.0.0.1:1", "--connect-timeout", "0.5")
    assert out.returncode == 1, (out.stdout, out.stderr)  # the nanny stops too
    assert "no scheduler answered at tcp://127.0.0.1:1 within 0.5 s" in out.stderr


def test_scheduler_beyond_loopback_needs_a_token() -> None:
    out = shoal("scheduler", "--host", "0.0.0.0", "--port", "0", timeout=20)
    assert out.returncode != 0
    assert "token" in out.stderr
    assert "listening" not in out.stdout
    assert "Traceback" not in out.stderr


@pytest.mark.timeout(60)
def test_demo_runs_and_checks_its_result() -> None:
    out = shoal("demo", "--workers", "2", "--leaves", "64")
    assert out.returncode == 0, out.stderr
    assert "2 worker processes" in out.stdout
    assert "over 64 numpy chunks" in out.stdout
    assert "(checked)" in out.stdout
    assert "WRONG" not in out.stdout
