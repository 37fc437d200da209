"""The `shoal` command, run as a real process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from shoal import __version__
from shoal.deploy.arguments import DEFAULT_PORT, build_parser
from shoal.deploy.cli import _worker_options
from shoal.deploy.options import memory_limit
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


# Each bad value, with the words its one-line error must contain. The worker rows
# carry a unique --name so that a worker process started by mistake would be seen.
BAD_VALUES = [
    (["worker", "127.0.0.1:1", "--nthreads", "0"], "--nthreads: must be at least 1"),
    (["worker", "127.0.0.1:1", "--nthreads", "-2"], "--nthreads: must be at least 1"),
    (["worker", "127.0.0.1:1", "--memory-limit", "10KB"], "below the 128 MiB"),
    (["worker", "127.0.0.1:1", "--memory-limit", "2"], "below the 128 MiB"),
    (["worker", "127.0.0.1:1", "--memory-limit", "-1"], "not a size"),
    (["worker", "127.0.0.1:1", "--memory-limit", "nan"], "not a size"),
    (["worker", "127.0.0.1:1", "--resources", "GPU=1,GPU=2"], "'GPU' is given twice"),
    (["worker", "127.0.0.1:1", "--resources", "GPU=nan"], "not a resource: 'GPU=nan'"),
    (["worker", "127.0.0.1:1", "--resources", "GPU=inf"], "not a resource: 'GPU=inf'"),
    (["worker", "127.0.0.1:1", "--resources", "=1"], "not a resource"),
    (["worker", "127.0.0.1:0"], "port 0 cannot be reached"),
    (["worker", "127.0.0.1:70000"], "out of range"),
    (["worker", "ftp://127.0.0.1:1"], "unknown address scheme"),
    (["worker", "inproc://x"], "exists only inside one process"),
    (["worker", "127.0.0.1:1", "--listen", "127.0.0.1:x"], "--listen: port in"),
    (["worker", "127.0.0.1:1", "--connect-timeout", "inf"], "finite number of seconds"),
    (["worker", "127.0.0.1:1", "--timeout-grace", "nan"], "finite number of seconds"),
    (["worker", "127.0.0.1:1", "--name", ""], "--name: the name must be non-empty"),
    (["worker", "127.0.0.1:1", "--token", ""], "--token: the token must be non-empty"),
    (["worker", "127.0.0.1:1", "--tls-ca", "/no/such/ca.pem"], "no such file"),
    (["scheduler", "--port", "70000"], "--port: port must be from 0 to 65535"),
    (["scheduler", "--port", "-1"], "--port: port must be from 0 to 65535"),
    (["scheduler", "--host", "0.0.0.0:7786"], "--host: not a host"),
    (["scheduler", "--host", "tcp://0.0.0.0"], "--host: not a host name"),
    (["scheduler", "--heartbeat-timeout", "inf"], "finite number of seconds"),
    (["scheduler", "--no-workers-timeout", "0"], "finite number of seconds above 0"),
    (["scheduler", "--no-worker-warning", "nan"], "finite number of seconds"),
    (["scheduler", "--tls-cert", __file__], "--tls-cert needs --tls-ca"),
    (["scheduler", "--tls-key", __file__], "--tls-key needs --tls-cert"),
    (["demo", "--workers", "0"], "--workers: must be at least 1"),
    (["demo", "--leaves", "-3"], "--leaves: must be at least 1"),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("args", "words"), BAD_VALUES, ids=lambda v: " ".join(v) if isinstance(v, list) else ""
)
def test_each_bad_value_is_one_line_and_exit_2_before_any_process(
    args: list[str], words: str
) -> None:
    marker = f"bad-value-{os.getpid()}-{abs(hash(tuple(args)))}"
    if args[0] == "worker" and "--name" not in args:
        args = [*args, "--name", marker]
    out = shoal(*args)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr
    error = [line for line in out.stderr.splitlines() if "error:" in line]
    assert len(error) == 1 and words in error[0], out.stderr
    assert out.stdout == ""
    assert not [
        p.pid for p in psutil.process_iter(["cmdline"]) if marker in (p.info["cmdline"] or [])
    ]


def test_a_worker_address_without_a_port_gets_the_schedulers_default_port() -> None:
    args = build_parser().parse_args(["worker", "10.0.0.5", "--nthreads", "2"])
    assert str(args.address) == f"tcp://10.0.0.5:{DEFAULT_PORT}"
    assert str(build_parser().parse_args(["worker", "tls://h"]).address) == "tls://h:7786"


@pytest.mark.parametrize(
    ("text", "nthreads", "expected"),
    [
        ("0", 1, 0),
        ("none", 1, 0),
        ("4GB", 1, 4 * 10**9),
        ("512MiB", 1, 512 * 2**20),
        ("0.5", 1, 8 * 2**30),  # a fraction of the machine's memory (16 GiB here)
        ("1", 1, 16 * 2**30),
        ("auto", os.cpu_count() or 1, 16 * 2**30),  # every core: all of it
    ],
)
def test_memory_limits_as_dask_users_write_them(text: str, nthreads: int, expected: int) -> None:
    assert memory_limit(text, nthreads, total=16 * 2**30) == expected


def test_the_nanny_passes_on_every_worker_option_but_the_address_name_and_token() -> None:
    argv = "--log-level info worker --nthreads 2 10.0.0.5 --name w --no-nanny --token=t".split()
    argv += ["--memory-limit=1GB", "--resources", "GPU=1", "--listen", "10.0.0.9"]
    assert _worker_options(argv) == [
        "--nthreads", "2", "--no-nanny", "--memory-limit=1GB", "--resources", "GPU=1",
        "--listen", "10.0.0.9",
    ]  # fmt: skip


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
