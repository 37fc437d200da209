"""Lifelines: a child process ends with the process that started it.

A parent makes a pipe and keeps its write end; the child gets the read end
(its number in SHOAL_PARENT_FD) and watches it. Nothing is ever written, so
the read end becomes readable only at end of file: when every copy of the
write end is closed, which the kernel does when the parent dies, however it
dies (SIGKILL included). No timeout, no polling, and it works wherever pipes
do. The nanny gives one to its worker, and LocalCluster to its workers.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable

log = logging.getLogger(__name__)

PARENT_FD_ENV = "SHOAL_PARENT_FD"


class Lifeline:
    """The parent's side: a pipe whose read end its children watch."""

    def __init__(self) -> None:
        # Both ends are non-inheritable: a spawned child gets the read end only
        # through pass_fds, and never the write end, which would keep it alive.
        self.read_fd, self.write_fd = os.pipe()

    def child_env(self) -> dict[str, str]:
        """The environment entry that tells a child which descriptor to watch."""
        return {PARENT_FD_ENV: str(self.read_fd)}

    def in_forked_child(self) -> None:
        """In a child made by fork(): drop the copy of the write end, so that the
        parent's death is seen, and mark the read end to watch."""
        os.close(self.write_fd)
        os.environ[PARENT_FD_ENV] = str(self.read_fd)

    def close(self) -> None:
        """The parent lets its children go (they see end of file)."""
        for fd in (self.read_fd, self.write_fd):
            try:
                os.close(fd)
            except OSError:
                log.debug("lifeline descriptor %d was closed already", fd)
        self.read_fd = self.write_fd = -1


def watch_parent(on_gone: Callable[[], None]) -> bool:
    """Call `on_gone` on the running loop once the process that started this one
    is gone, if it gave this process a lifeline; True if it did.

    The variable is removed, so that processes this one starts (user code
    included) do not watch a descriptor that is not theirs.
    """
    text = os.environ.pop(PARENT_FD_ENV, "")
    if not text:
        return False
    try:
        fd = int(text)
        os.set_blocking(fd, False)
    except (ValueError, OSError) as exc:
        log.warning("ignoring %s=%r: %s", PARENT_FD_ENV, text, exc)
        return False
    loop = asyncio.get_running_loop()

    def readable() -> None:
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        except OSError as exc:
            log.debug("lifeline read failed (%s): the parent is gone", exc)
            data = b""
        if data:
            return  # nothing is ever written; a stray byte means nothing
        loop.remove_reader(fd)
        os.close(fd)
        on_gone()

    loop.add_reader(fd, readable)
    return True
