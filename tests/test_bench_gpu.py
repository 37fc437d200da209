"""`make bench-gpu` on a machine without a GPU: one clear line, exit 1, nothing started."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_integration import ROOT


@pytest.mark.timeout(60)
def test_the_gpu_benchmark_says_what_it_needs_where_there_is_no_gpu(tmp_path: Path) -> None:
    (tmp_path / "cupy.py").write_text("raise ImportError('no cupy on this machine')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu", "--quick"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=50, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert out.stderr.strip() == (
        "bench-gpu needs an NVIDIA GPU with cupy and nvidia-ml-py: cupy is not installed "
        "(no cupy on this machine); install it with pip install -e '.[gpu]'"
    )
    assert out.stdout == ""
