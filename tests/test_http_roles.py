"""Token roles on the HTTP routes of the scheduler and the workers: the table of every
role against every route, real requests with each role's token, refusals audited and
counted, TLS with tokens, and --require-tls on HTTP."""

from __future__ import annotations

import asyncio
import json
import ssl
from pathlib import Path
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPResponse

from shoal.protocol.permissions import ADMIN, HTTP_ROUTES, OPEN, READ, SUBMIT, WORKER, Role
from shoal.protocol.refusals import RefusalLog
from shoal.protocol.tls import TLSConfig
from shoal.protocol.tokens import Keyring, parse_tokens
from shoal.protocol.web import Guard, Refused, WebServer
from shoal.scheduler.http import scheduler_web
from shoal.scheduler.server import Scheduler
from shoal.worker.http import WorkerWeb
from tests.certs import PKI

pytestmark = pytest.mark.timeout(60)

SECRETS = {
    ADMIN: "admin-secret-0123456789",
    SUBMIT: "submit-secret-0123456789",
    WORKER: "worker-secret-0123456789",
    READ: "read-secret-0123456789",
}
TOKEN_FILE = "\n".join(f"{role} {role}-token {secret}" for role, secret in SECRETS.items())
READ_ROUTES = [route for route, roles in HTTP_ROUTES.items() if roles != OPEN]


def keyring() -> Keyring:
    return Keyring(parse_tokens(TOKEN_FILE))


async def fetch(url: str, token: str | None = None, **options: Any) -> HTTPResponse:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return await AsyncHTTPClient().fetch(
        url, raise_error=False, request_timeout=10, headers=headers, **options
    )


def test_every_route_served_has_a_row() -> None:
    """A route added to the scheduler's or a worker's server must get a row."""
    made = Scheduler()  # not started: only its routes are read
    scheduler = scheduler_web(
        made, host="127.0.0.1", port=0, keyring=None, tls=None, allow_insecure=False
    )
    worker = WorkerWeb(host="127.0.0.1", port=0, token=None, tls=None)
    served = set(scheduler.routes) | set(worker.server.routes)
    assert served <= set(HTTP_ROUTES), sorted(served - set(HTTP_ROUTES))
    assert set(HTTP_ROUTES) <= served  # and no row is left over


CASES = [
    (route, role, remote)
    for route in sorted(HTTP_ROUTES)
    for role in [*Role, None]
    for remote in ("127.0.0.1", "10.1.2.3")
]


@pytest.mark.parametrize(("route", "role", "remote"), CASES)
def test_each_role_against_each_route(route: str, role: Role | None, remote: str) -> None:
    """Allowed with the token's role; refused 403 naming the role needed, or 401
    without a token beyond loopback (loopback without a token reads as `read`)."""
    guard = Guard(keyring())
    secret = SECRETS[role].encode() if role is not None else None
    decided = guard.check(route, "GET", remote, secret)
    roles = HTTP_ROUTES[route]
    if roles == OPEN:
        assert not isinstance(decided, Refused)
        return
    if role is None:
        if remote == "127.0.0.1":
            assert decided == (READ, "")
        else:
            assert isinstance(decided, Refused) and decided.status == 401
            assert "needs a token" in decided.text
        return
    if role in roles:
        assert decided == (role, f"{role}-token")
        return
    assert isinstance(decided, Refused) and decided.status == 403
    assert decided.text == (
        f"GET {route} needs the submit, read or admin role; this request's token "
        f"'{role}-token' has the {role} role"
    )


def test_a_wrong_token_and_an_unlisted_route() -> None:
    guard = Guard(keyring())
    wrong = guard.check("/metrics", "GET", "127.0.0.1", b"not-a-token")
    assert isinstance(wrong, Refused) and wrong.status == 401 and "wrong token" in wrong.text
    unlisted = guard.check("/api/v1/new-thing", "POST", "10.1.2.3", SECRETS[SUBMIT].encode())
    assert isinstance(unlisted, Refused) and "needs the admin role" in unlisted.text
    assert guard.check("/api/v1/new-thing", "POST", "1.2.3.4", SECRETS[ADMIN].encode()) == (
        ADMIN,
        "admin-token",
    )


async def test_real_requests_with_each_role(tmp_path: Path, no_leaks) -> None:
    log = tmp_path / "audit.jsonl"
    async with Scheduler(keyring=keyring(), http_port=0, audit_log=str(log)) as scheduler:
        http = scheduler.http_address
        for route in ("/metrics", "/api/v1/info", "/", "/api/v1/dashboard"):
            for role in (ADMIN, SUBMIT, READ):
                answer = await fetch(f"{http}{route}", SECRETS[role])
                assert answer.code == 200, (route, role, answer.body)
            refused = await fetch(f"{http}{route}", SECRETS[WORKER])
            assert refused.code == 403
            assert b"needs the submit, read or admin role" in refused.body
            assert b"'worker-token' has the worker role" in refused.body
            assert (await fetch(f"{http}{route}")).code == 200  # loopback: read
        assert (await fetch(f"{http}/health", "garbage")).code == 200
        assert (await fetch(f"{http}/metrics", "garbage")).code == 401
        # The dashboard's cookie carries a read token just as well.
        cookie = {"Cookie": f"shoal-token={SECRETS[READ]}"}
        page = await AsyncHTTPClient().fetch(
            f"{http}/api/v1/info", headers=cookie, raise_error=False
        )
        assert page.code == 200
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    refused = [e for e in lines if e["event"] == "http-refused"]
    assert len(refused) == 5  # four 403s, one wrong token: under the burst of five
    assert refused[0]["path"] == "/metrics" and "worker role" in refused[0]["reason"]
    assert refused[-1]["reason"].endswith("GET /metrics: wrong token")
    for secret in SECRETS.values():
        assert secret not in log.read_text()


async def test_http_refusals_are_rate_limited(tmp_path: Path, no_leaks) -> None:
    log = tmp_path / "audit.jsonl"
    async with Scheduler(keyring=keyring(), http_port=0, audit_log=str(log)) as scheduler:
        assert scheduler._web is not None
        scheduler._web.refusals.log = RefusalLog(burst=2, window_s=0.5)
        for _ in range(12):
            assert (await fetch(f"{scheduler.http_address}/metrics", "guess")).code == 401
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while "http-refusals" not in (log.read_text() if log.exists() else ""):
            assert loop.time() < deadline, "no count of the refusals left out"
            await asyncio.sleep(0.02)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert len([e for e in lines if e["event"] == "http-refused"]) == 2
    [count] = [e for e in lines if e["event"] == "http-refusals"]
    assert count["count"] == 10 and count["host"] == "http://127.0.0.1"


async def test_https_with_tokens_and_require_tls(pki: PKI, no_leaks) -> None:
    tls = TLSConfig(ca=pki.ca, cert=pki.server.cert, key=pki.server.key)
    async with Scheduler(
        "tls://127.0.0.1:0", keyring=keyring(), tls=tls, require_tls=True, http_port=0
    ) as scheduler:
        http = scheduler.http_address
        assert http.startswith("https://")
        context = ssl.create_default_context(cafile=pki.ca)
        answer = await fetch(f"{http}/api/v1/info", SECRETS[READ], ssl_options=context)
        assert answer.code == 200 and json.loads(answer.body)["address"].startswith("tls://")
        refused = await fetch(f"{http}/metrics", SECRETS[WORKER], ssl_options=context)
        assert refused.code == 403
    plain = WebServer([], host="127.0.0.1", port=0, token="t", require_tls=True)
    with pytest.raises(PermissionError, match="requires TLS"):
        await plain.start()
    with pytest.raises(PermissionError, match="requires TLS"):
        await Scheduler("tcp://127.0.0.1:0", token="t", require_tls=True, http_port=0).start()


async def test_a_workers_metrics_take_the_token_files_roles(no_leaks) -> None:
    web = await WorkerWeb(host="127.0.0.1", port=0, token=None, tls=None, keyring=keyring()).start()
    try:
        assert (await fetch(f"{web.address}/metrics", SECRETS[READ])).code == 200
        assert (await fetch(f"{web.address}/metrics", SECRETS[WORKER])).code == 403
        assert (await fetch(f"{web.address}/health")).code == 200
    finally:
        await web.close()
