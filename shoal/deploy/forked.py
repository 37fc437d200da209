"""Worker processes forked from the process that starts a LocalCluster.

A fresh `python -m shoal worker` spends about a quarter of a second of CPU
starting an interpreter and importing shoal; a child forked from a process
that has imported it already joins its scheduler within a few milliseconds.
Forking is safe only while the process runs a single thread, so LocalCluster
forks before it starts its event-loop thread, and only on Linux, where a
child's exit can be awaited through a pidfd; otherwise it starts workers the
usual way.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import threading
import traceback

from shoal.deploy.lifeline import Lifeline


def can_fork() -> bool:
    """Whether workers may be forked from this process now."""
    return (
        sys.platform == "linux"
        and hasattr(os, "pidfd_open")
        and threading.active_count() == 1
        and threading.current_thread() is threading.main_thread()
    )


def fork_worker(
    argv: list[str], token: str, listening: socket.socket, lifeline: Lifeline
) -> ForkedProcess:
    """Fork a child that runs `shoal *argv` (a `worker` command) and exits.

    `listening`, the scheduler's socket, is closed in the child. The token
    reaches the child's command line parser through its environment; the
    child watches `lifeline` and stops when this process ends.
    """
    pid = os.fork()
    if pid:
        return ForkedProcess(pid)
    code = 1
    try:  # the child: never return into the caller's code
        listening.close()
        lifeline.in_forked_child()
        from shoal.worker.holding import inherit_resident

        inherit_resident()  # the parent's pages are not this worker's memory
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        os.environ["SHOAL_TOKEN"] = token
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        from shoal.deploy.cli import main

        code = main(argv)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stderr.flush()
        os._exit(code)


class ForkedProcess:
    """A forked child, with the parts of asyncio.subprocess.Process that
    LocalCluster uses: pid, returncode, send_signal, kill and wait."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._pidfd = os.pidfd_open(pid)
        self._exited: asyncio.Future[None] | None = None

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    async def wait(self) -> int:
        """Its exit code once it has exited (negative: the signal that ended it)."""
        if self.returncode is not None:
            return self.returncode
        loop = asyncio.get_running_loop()
        if self._exited is None:
            self._exited = loop.create_future()
            loop.add_reader(self._pidfd, self._reap)
        await asyncio.shield(self._exited)
        assert self.returncode is not None
        return self.returncode

    def _reap(self) -> None:
        asyncio.get_running_loop().remove_reader(self._pidfd)
        _, status = os.waitpid(self.pid, 0)
        self.returncode = os.waitstatus_to_exitcode(status)
        os.close(self._pidfd)
        assert self._exited is not None
        self._exited.set_result(None)
