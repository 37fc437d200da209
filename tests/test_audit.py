"""The audit log: its lines for a scripted session, the rate limit on failed
authentications, reopening after rotation, and the line format."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from shoal.errors import AccessDenied, HandshakeError
from shoal.protocol.comm import connect
from shoal.protocol.permissions import ADMIN, READ, SUBMIT, WORKER
from shoal.protocol.refusals import RefusalLog
from shoal.protocol.tokens import Keyring, parse_tokens
from shoal.scheduler.audit import AuditLog, audit_line

pytestmark = pytest.mark.timeout(90)

SECRETS = {
    ADMIN: "admin-secret-0123456789",
    SUBMIT: "submit-secret-0123456789",
    WORKER: "worker-secret-0123456789",
    READ: "read-secret-0123456789",
}
TOKEN_FILE = "\n".join(f"{role} {role}-token {secret}" for role, secret in SECRETS.items())
MARKER = "PAYLOAD-MARKER-7f3c"


def inc(x: object) -> object:
    return x


def events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


async def until(check, what: str, timeout: float = 20.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        found = check()
        if found:
            return found
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def named(path: Path, event: str) -> list[dict]:
    return [e for e in events(path) if e["event"] == event]


async def test_a_scripted_session(tmp_path: Path, no_leaks) -> None:
    from shoal.client.client import Client
    from shoal.scheduler.server import Scheduler
    from shoal.worker.server import Worker

    log = tmp_path / "audit.jsonl"
    ring = Keyring(parse_tokens(TOKEN_FILE))
    async with Scheduler(keyring=ring, audit_log=str(log)) as scheduler:
        worker = await Worker(
            scheduler.address, token=SECRETS[WORKER], name="w1", resources={"GPU": 2}
        ).start()
        with pytest.raises(HandshakeError):
            await connect(scheduler.address, token="a-wrong-token-entirely")
        async with Client(
            scheduler.address, token=SECRETS[SUBMIT], name="etl", asynchronous=True
        ) as c:
            futures = [c.submit(inc, MARKER, key=f"load-{i}") for i in range(3)]
            gpu = c.submit(inc, 1, key=("train-ab12cd34ef", 0), resources={"GPU": 1})
            assert await asyncio.wait_for(c.gather([*futures, gpu]), 30) == [MARKER] * 3 + [1]
            await c.cancel(futures[:2])
        async with Client(scheduler.address, token=SECRETS[READ], asynchronous=True) as c:
            with pytest.raises(AccessDenied):
                await asyncio.wait_for(c.submit(inc, 1).result(), 30)
        peer = next(iter(scheduler.state.workers))
        scheduler.comms[peer].abort("cut for the test")  # the worker "dies"
        await until(lambda: named(log, "worker-died"), "worker-died")
        await worker.close()
    lines = events(log)
    text = log.read_text()
    for secret in SECRETS.values():
        assert secret not in text
    assert MARKER not in text  # never a payload
    kinds = [e["event"] for e in lines]
    expected = [
        "connection-accepted",  # the worker
        "worker-joined",
        "connection-refused",  # the wrong token
        "connection-accepted",  # the submit client
        "client-registered",
        "graph-submitted",  # one or more: the client batches what it sends in one tick
        "cancel",
        "client-left",
        "connection-accepted",  # the read client
        "client-registered",
        "request-refused",
        "client-left",
        "worker-died",
    ]
    it = iter(kinds)
    assert all(kind in it for kind in expected), kinds  # in this order
    by = {kind: [e for e in lines if e["event"] == kind] for kind in set(kinds)}
    worker_conn = by["connection-accepted"][0]
    assert worker_conn["kind"] == "worker" and worker_conn["role"] == "worker"
    assert worker_conn["token"] == "worker-token" and worker_conn["peer"].startswith("tcp://")
    joined = by["worker-joined"][0]
    assert joined["name"] == "w1" and joined["resources"] == {"GPU": 2.0}
    assert joined["token"] == "worker-token" and joined["conn"] == worker_conn["conn"]
    assert "wrong cluster token" in by["connection-refused"][0]["reason"]
    registered = by["client-registered"][0]
    assert registered["name"] == "etl" and registered["token"] == "submit-token"
    graphs = by["graph-submitted"]
    assert sum(g["tasks"] for g in graphs) == 4
    for g in graphs:
        assert g["client"] == registered["client"] and g["token"] == "submit-token"
    assert {p for g in graphs for p in g["prefixes"]} == {"load", "train"}
    assert any(g["resources"] == {"GPU": 1.0} for g in graphs)
    cancel = by["cancel"][0]
    assert cancel["keys"] == 2 and cancel["prefixes"] == ["load"] and cancel["force"] is False
    refused = by["request-refused"][0]
    assert refused["op"] == "submit-graph" and refused["role"] == "read"
    assert "needs the submit or admin role" in refused["reason"]
    died = by["worker-died"][0]
    assert died["name"] == "w1" and "connection was lost" in died["cause"]
    for e in lines:
        assert e["time"].endswith("Z") and len(e["time"]) == 24


async def test_failed_authentications_are_rate_limited(tmp_path: Path, no_leaks) -> None:
    """Thirty wrong tokens from one address: five lines in full, then one count, due
    when the window ends even though nobody is refused then."""
    from shoal.scheduler.server import Scheduler

    log = tmp_path / "audit.jsonl"
    async with Scheduler(token="the-real-token", audit_log=str(log)) as scheduler:
        assert scheduler._listener is not None
        scheduler._listener.refusals.log = RefusalLog(burst=5, window_s=0.5)
        for _ in range(30):
            with pytest.raises(HandshakeError):
                await connect(scheduler.address, token="a-guess-of-the-token")
        [summary] = await until(lambda: named(log, "connections-refused"), "the count")
        full = named(log, "connection-refused")
        assert len(full) == 5
        assert summary["count"] == 25 and summary["host"] == "tcp://127.0.0.1"
        assert "wrong cluster token" in summary["last_reason"]
        assert not scheduler.state.clients  # nothing reached the core


async def test_reload_reopens_the_log(tmp_path: Path, no_leaks) -> None:
    from shoal.scheduler.server import Scheduler

    log, rotated = tmp_path / "audit.jsonl", tmp_path / "audit.jsonl.1"
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKEN_FILE)
    tokens.chmod(0o600)
    async with Scheduler(keyring=Keyring.from_file(str(tokens)), audit_log=str(log)) as s:
        comm = await connect(s.address, token=SECRETS[READ])
        await until(lambda: named(log, "connection-accepted"), "the first line")
        log.rename(rotated)
        tokens.write_text(TOKEN_FILE + "\nread extra-reader 0123456789abcdefXYZ\n")
        s.reload()
        [reloaded] = await until(lambda: named(log, "tokens-reloaded"), "a line in the new file")
        assert reloaded["added"] == ["extra-reader"] and reloaded["tokens"] == 5
        assert "0123456789abcdefXYZ" not in log.read_text()
        await comm.close()
    assert [e["event"] for e in events(rotated)] == ["connection-accepted"]


def test_lines_are_one_json_object_each(tmp_path: Path) -> None:
    line = audit_line("x", {"name": "evil\nname\x1b[31m", "n": 3}, 0.0)
    assert line.endswith("\n") and line.count("\n") == 1 and "\x1b" not in line
    assert json.loads(line) == {
        "time": "1970-01-01T00:00:00.000Z",
        "event": "x",
        "name": "evil\nname\x1b[31m",
        "n": 3,
    }
    path = tmp_path / "a.jsonl"
    audit = AuditLog(str(path))
    audit.write("one", {}, 1.0)
    assert path.read_text().count("\n") == 1  # flushed at once
    audit.close()
    (tmp_path / "gone").mkdir()
    broken = AuditLog(str(tmp_path / "gone" / "a.jsonl"))
    (tmp_path / "gone" / "a.jsonl").unlink()
    (tmp_path / "gone").rmdir()
    broken.reopen()  # logged, not raised
    broken.write("lost", {}, 2.0)
    assert broken.failed == 1
    broken.close()
