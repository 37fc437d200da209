"""Running one benchmark round in a child process of its own.

The child prints its figures as JSON on the last line of stdout. It runs in a
session of its own, so that on a timeout (or Ctrl-C) the whole process group
goes, the worker processes of its cluster included, not only the child.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from subprocess import PIPE
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def run_child(module: str, args: list[str], timeout: float) -> Any:
    """`python -m module *args`; its last stdout line, parsed as JSON.

    Raises:
        RuntimeError: the child failed (its stderr's end is in the message).
        subprocess.TimeoutExpired: it ran past `timeout` and was killed.
    """
    cmd = [sys.executable, "-m", module, *args]
    # This checkout's shoal and benchmarks in the child and every process it starts
    # (worker processes run with `python -P`, which leaves the working directory out).
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path}
    with subprocess.Popen(
        cmd, stdout=PIPE, stderr=PIPE, text=True, start_new_session=True, env=env
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
    if proc.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(args)} failed:\n{err[-3000:]}")
    return json.loads(out.strip().splitlines()[-1])
