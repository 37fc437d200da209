"""Shared fixtures: a throwaway PKI for TLS, and a leak check for integration tests."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from tests.certs import PKI, make_pki

# How long teardown waits for closing connections and handlers to finish.
LEAK_GRACE_S = 2.0


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    """A CA with a server certificate (127.0.0.1, localhost) and a client certificate."""
    return make_pki(tmp_path_factory.mktemp("pki"), "ca")


@pytest.fixture(scope="session")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    """A second, unrelated CA and identities: nobody trusting `pki` trusts these."""
    return make_pki(tmp_path_factory.mktemp("other-pki"), "other")


@pytest.fixture(params=["tcp", "inproc"])
def bind(request: pytest.FixtureRequest) -> str:
    """Where to listen: an ephemeral loopback port, or a fresh in-process name."""
    return "tcp://127.0.0.1:0" if request.param == "tcp" else "inproc://"


def _open_fds() -> set[str]:
    """Open file descriptors of this process, each as `fd -> target`."""
    fds = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds.add(f"{fd} -> {os.readlink(f'/proc/self/fd/{fd}')}")
        except FileNotFoundError:  # the descriptor listdir itself used
            pass
    return fds


@pytest.fixture
async def no_leaks():
    """Fail the test if it leaves tasks running or sockets open once it is done.

    Listeners and comms close asynchronously, so teardown polls for a short
    grace period before failing.
    """
    before = _open_fds()
    yield
    me = asyncio.current_task()
    deadline = time.monotonic() + LEAK_GRACE_S
    while True:
        tasks = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
        fds = sorted(_open_fds() - before)
        if not tasks and not fds:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"leaked after the test: tasks={tasks} fds={fds}")
        await asyncio.sleep(0.01)
