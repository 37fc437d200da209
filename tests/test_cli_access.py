"""The access flags of the `shoal` command: --token-file, --audit-log, --require-tls,
SIGHUP and `shoal token new`, run as real processes."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shoal.deploy.cli import _worker_options
from shoal.protocol.comm import connect
from shoal.protocol.tls import TLSConfig
from shoal.protocol.tokens import parse_tokens
from tests.test_cli import shoal

pytestmark = pytest.mark.timeout(60)

GOOD = "admin root 0123456789abcdef0123\nread dash fedcba9876543210fedc\n"


def token_file(tmp_path: Path, text: str = GOOD, name: str = "tokens") -> str:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(0o600)
    return str(path)


def test_token_new_prints_a_line_for_a_token_file() -> None:
    out = shoal("token", "new", "--role", "submit", "--name", "nightly-etl")
    assert out.returncode == 0, out.stderr
    [token] = parse_tokens(out.stdout)
    assert (token.role, token.name) == ("submit", "nightly-etl")
    assert shoal("token", "new", "--role", "root", "--name", "x").returncode == 2
    assert shoal("token", "new", "--role", "read").returncode == 2


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["scheduler", "--token-file", "/no/such/tokens"], "no such file"),
        (["scheduler", "--token-file", "BAD", "--port", "0"], "line 1: unknown role 'boss'"),
        (["scheduler", "--token-file", "GOOD", "--token", "x"], "--token or --token-file"),
        (["scheduler", "--require-tls"], "--require-tls needs --tls-ca"),
        (["scheduler", "--audit-log", "/no/such/dir/audit"], "cannot write an audit log"),
        (["worker", "127.0.0.1:1", "--token-file", "READONLY"], "no worker or admin token"),
        (["retire", "127.0.0.1:1", "--worker", "w", "--token-file", "READONLY"], "no admin token"),
    ],
)
def test_bad_access_flags_exit_2(tmp_path: Path, args: list[str], words: str) -> None:
    files = {
        "GOOD": token_file(tmp_path),
        "BAD": token_file(tmp_path, "boss x 0123456789abcdef0123\n", "bad"),
        "READONLY": token_file(tmp_path, "read dash fedcba9876543210fedc\n", "readonly"),
    }
    out = shoal(*[files.get(a, a) for a in args])
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert words in out.stderr and "Traceback" not in out.stderr


def test_a_worker_must_reach_its_scheduler_over_tls(pki) -> None:
    args = ["--tls-ca", pki.ca, "--tls-cert", pki.client.cert, "--tls-key", pki.client.key]
    out = shoal("worker", "tcp://127.0.0.1:1", "--require-tls", *args)
    assert out.returncode == 2 and "is not tls://" in out.stderr


def test_the_nanny_passes_on_the_access_flags() -> None:
    argv = "worker 10.0.0.5 --require-tls --token-file /t --name w --token t".split()
    assert _worker_options(argv) == ["--require-tls", "--token-file", "/t"]


def test_a_scheduler_with_tokens_tls_and_an_audit_log(tmp_path: Path, pki) -> None:
    """Only TLS, the file's roles, an audit line per connection, and SIGHUP reloading
    the tokens and reopening the log."""
    tokens, log = token_file(tmp_path), tmp_path / "audit.jsonl"
    tls = ["--tls-ca", pki.ca, "--tls-cert", pki.server.cert, "--tls-key", pki.server.key]
    proc = subprocess.Popen(
        [sys.executable, "-m", "shoal", "scheduler", "--port", "0", "--require-tls", *tls,
         "--token-file", tokens, "--audit-log", str(log)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening at tls://" in line, (line, proc.stderr and proc.stderr.read())
        address = line.split()[-1]
        client_tls = TLSConfig(ca=pki.ca)

        async def reach(token: str) -> None:
            comm = await connect(address, token=token, tls=client_tls)
            await comm.close()

        asyncio.run(reach("fedcba9876543210fedc"))
        Path(tokens).write_text(GOOD + "submit etl 0123456789abcdefXXXX\n")
        log.rename(tmp_path / "audit.jsonl.1")
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while not (log.exists() and "tokens-reloaded" in log.read_text()):
            assert time.monotonic() < deadline, "no tokens-reloaded line in the reopened log"
            time.sleep(0.05)
        asyncio.run(reach("0123456789abcdefXXXX"))  # the new token works at once
        first = [json.loads(x) for x in (tmp_path / "audit.jsonl.1").read_text().splitlines()]
        accepted = [e for e in first if e["event"] == "connection-accepted"]
        assert accepted and accepted[0]["role"] == "read" and accepted[0]["token"] == "dash"
        reloaded = json.loads(log.read_text().splitlines()[0])
        assert reloaded["event"] == "tokens-reloaded" and reloaded["added"] == ["etl"]
        assert "XXXX" not in log.read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        if proc.stdout:
            proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()
    assert proc.returncode == 0


async def test_a_worker_and_its_nanny_join_with_a_token_file(tmp_path: Path, no_leaks) -> None:
    """`shoal worker --token-file`: the nanny and the worker connect with the file's
    worker token, and the worker's data port takes the file's submit token."""
    from shoal.client.client import Client
    from shoal.protocol.tokens import Keyring
    from shoal.scheduler.server import Scheduler

    text = GOOD + "worker pool-a 0123456789abcdefWWWW\nsubmit etl 0123456789abcdefSSSS\n"
    tokens = token_file(tmp_path, text)
    async with Scheduler(keyring=Keyring.from_file(tokens)) as scheduler:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "shoal", "worker", scheduler.address, "--nthreads", "1",
            "--token-file", tokens, "--name", "filed", stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            async with asyncio.timeout(40):
                await scheduler.wait_for_workers(1)
                while not scheduler.state.nannies:
                    await asyncio.sleep(0.05)
            grants = {p: g.token for p, g in scheduler.state.grants.items()}
            assert sorted(grants.values()) == ["pool-a", "pool-a"]  # worker and nanny
            async with Client(
                scheduler.address, token="0123456789abcdefSSSS", asynchronous=True
            ) as c:
                big = c.submit(bytes, 4096)  # fetched from the worker's data port
                assert len(await asyncio.wait_for(big.result(), 30)) == 4096
        finally:
            proc.terminate()
            assert proc.stderr is not None
            await asyncio.wait_for(proc.stderr.read(), 30)
            await asyncio.wait_for(proc.wait(), 30)
