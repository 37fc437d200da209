"""Processes live exactly as long as they should, with real processes on loopback:
a worker whose nanny is killed exits; local workers end with the script that
started them, however it ends; a folder named `shoal` in the working directory
does not shadow the package; a worker that cannot start is restarted a bounded
number of times, then its nanny gives up naming the cause.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from shoal import Client
from tests.test_failures import cluster, worker_pid
from tests.test_integration import ROOT, TOKEN, WAIT_S, poll, subprocess_env

pytestmark = pytest.mark.timeout(120)

# A process that should end does so within this many seconds.
GONE_S = 10.0


def gone(pid: int) -> bool:
    """The process has ended (an unreaped zombie counts as ended)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_worker_whose_nanny_is_killed_exits() -> None:
    with cluster() as c:
        c.start_scheduler()
        nanny = c.start_worker("orphan")
        with Client(c.address, token=TOKEN, timeout=WAIT_S) as client:
            client.wait_for_workers(1, timeout=WAIT_S)
            pid = worker_pid(client, "orphan")
            assert pid and pid != nanny.popen.pid
            nanny.popen.send_signal(signal.SIGKILL)
            poll(lambda: gone(pid), "the orphaned worker to exit", timeout=GONE_S)
            # It left on purpose: the scheduler no longer lists it.
            poll(lambda: "orphan" not in client.scheduler_info()["workers"], "its removal")


SCRIPT = """
import os, signal, sys
from shoal import Client

client = Client(n_workers=2, threads_per_worker=1, nanny={nanny})
client.wait_for_workers(2, timeout=60)
pids = [w["pid"] for w in client.scheduler_info()["workers"].values()]
print(" ".join(map(str, pids)), flush=True)
if {killed}:
    os.kill(os.getpid(), signal.SIGKILL)
sys.exit(0)  # no close()
"""


@pytest.mark.parametrize(
    ("how", "nanny"), [("exits", False), ("is killed", False), ("is killed", True)]
)
def test_local_workers_end_with_the_script_that_started_them(
    tmp_path: Path, how: str, nanny: bool
) -> None:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(SCRIPT.format(killed=how == "is killed", nanny=nanny)))
    out = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        cwd=tmp_path,
        timeout=WAIT_S * 2,
        check=False,
    )
    assert out.stdout.strip(), out.stderr
    pids = [int(pid) for pid in out.stdout.split()]
    assert len(pids) == 2, out.stdout
    # Under a nanny, the nanny (the script's child) and the worker (its child) both go.
    begin = time.monotonic()
    poll(lambda: all(gone(pid) for pid in pids), f"workers {pids} to end", timeout=GONE_S)
    assert time.monotonic() - begin < GONE_S


def console_script() -> Path:
    script = Path(sys.executable).parent / "shoal"
    if not script.exists():
        pytest.skip("the shoal console script is not installed beside this interpreter")
    return script


def start_in(cwd: Path, address: str, name: str, *args: str, env: dict | None = None):
    return subprocess.Popen(
        [str(console_script()), "worker", address, "--nthreads", "1", "--name", name, *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=cwd,
        env=env or subprocess_env(TOKEN),
    )


def test_a_shoal_folder_in_the_working_directory_does_not_shadow_the_package(
    tmp_path: Path,
) -> None:
    (tmp_path / "shoal").mkdir()
    (tmp_path / "shoal" / "__init__.py").write_text("raise ImportError('the wrong shoal')\n")
    with cluster() as c:
        c.start_scheduler()
        proc = start_in(tmp_path, c.address, "shadowed")
        try:
            with Client(c.address, token=TOKEN, timeout=WAIT_S) as client:
                client.wait_for_workers(1, timeout=WAIT_S)
                assert client.submit(os.getpid).result(timeout=WAIT_S) != proc.pid
        finally:
            proc.send_signal(signal.SIGTERM)
            output, _ = proc.communicate(timeout=WAIT_S)
        assert proc.returncode == 0, output
        assert "the wrong shoal" not in output


CRASH_AT_START = """
import os, sys
if os.environ.get("SHOAL_NANNY"):  # only in the worker process, not in its nanny
    sys.stderr.write("cannot start: the disk is on fire\\n")
    sys.stderr.flush()
    os._exit(9)
"""


def test_a_worker_crashing_at_start_is_restarted_a_bounded_number_of_times(
    tmp_path: Path,
) -> None:
    (tmp_path / "sitecustomize.py").write_text(CRASH_AT_START)
    env = subprocess_env(TOKEN)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(ROOT)])
    with cluster() as c:
        c.start_scheduler()
        proc = start_in(ROOT, c.address, "doomed", "--max-restarts", "2", env=env)
        try:
            output, _ = proc.communicate(timeout=WAIT_S)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 1, output
    lines = output.splitlines()
    assert lines.count("cannot start: the disk is on fire") == 3, output  # three starts
    assert "worker doomed died 3 times within 60 s; the nanny gives up" in output
    assert "Last cause: exited with code 9" in output
    assert "its last output: cannot start: the disk is on fire" in output
