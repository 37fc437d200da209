"""Workers a LocalCluster starts import what the starting process imports, whether
they are forked or, when the process runs other threads, started anew."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from shoal.deploy.worker_env import import_path

ROOT = Path(__file__).resolve().parent.parent


def test_the_import_path_keeps_the_users_folders_in_order_and_leaves_the_interpreters(
    tmp_path: Path,
) -> None:
    prefix = str(tmp_path / "venv")
    path = [
        str(tmp_path / "project"),
        f"{prefix}/lib/python3.11",
        "",
        str(tmp_path / "libs"),
        f"{prefix}/lib/python3.11/site-packages",
        str(tmp_path / "project"),  # a repeat
        str(tmp_path / "venv-other"),  # shares the prefix's text, not its folder
    ]
    first = os.pathsep.join([str(tmp_path / "fakes"), ""])
    assert import_path(path, [prefix, ""], first).split(os.pathsep) == [
        str(tmp_path / "fakes"),  # the environment's PYTHONPATH comes first
        str(tmp_path / "project"),
        os.getcwd(),
        str(tmp_path / "libs"),
        str(tmp_path / "venv-other"),
    ]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("threads", [False, True], ids=["forked", "started-anew"])
def test_a_task_from_a_module_beside_the_script_runs(tmp_path: Path, threads: bool) -> None:
    """The user's script imports a module of its own folder and submits its
    function. With another thread running (a notebook kernel has several), the
    cluster cannot fork its workers and starts them as new processes."""
    (tmp_path / "helper.py").write_text("def double(x):\n    return 2 * x\n")
    script = tmp_path / "main.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import threading
            if {threads}:
                threading.Thread(target=threading.Event().wait, args=(60,), daemon=True).start()
            from helper import double
            import shoal
            with shoal.Client(n_workers=1) as client:
                print(client.submit(double, 21).result())
            """
        )
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(ROOT)  # shoal itself, as an installed package would be
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["42"]
