"""Token roles: the permission table of every message, checked in the scheduler's core
for every role, tokens and token files, the handshake that establishes the role, the
workers' data ports, and the client's view of a refusal."""

from __future__ import annotations

import asyncio
import typing
from typing import Any, get_args, get_origin

import pytest

from shoal.errors import AccessDenied, HandshakeError, RegistrationError
from shoal.protocol import messages as m
from shoal.protocol.comm import connect, listen
from shoal.protocol.permissions import (
    ADMIN,
    DATA_PORT,
    NOBODY,
    PERMISSIONS,
    READ,
    SUBMIT,
    WORKER,
    Role,
    refusal,
)
from shoal.protocol.schema import REGISTRY, Message, _KeyMarker
from shoal.protocol.serialize import Serialized
from shoal.protocol.tokens import (
    Keyring,
    Token,
    TokenFileError,
    new_token_line,
    parse_tokens,
)
from shoal.scheduler.model import Audit, Disconnect, Send
from shoal.scheduler.roles import Grant, key_summary
from shoal.scheduler.state import SchedulerState

pytestmark = pytest.mark.timeout(60)

SECRETS = {
    ADMIN: "admin-secret-0123456789",
    SUBMIT: "submit-secret-0123456789",
    WORKER: "worker-secret-0123456789",
    READ: "read-secret-0123456789",
}
TOKEN_FILE = "\n".join(f"{role} {role}-token {secret}" for role, secret in SECRETS.items())


def keyring() -> Keyring:
    return Keyring(parse_tokens(TOKEN_FILE))


# -- the table ----------------------------------------------------------------------------


def test_every_message_has_a_row() -> None:
    """A message added to the catalogue must get a row here: which roles may send it."""
    missing = sorted(cls.op for cls in REGISTRY.values() if cls not in PERMISSIONS)
    assert not missing, f"messages without a row in shoal.protocol.permissions: {missing}"
    assert set(PERMISSIONS) == set(REGISTRY.values())


def test_admin_may_send_everything_some_role_may_send() -> None:
    for cls, roles in PERMISSIONS.items():
        assert not roles or ADMIN in roles, cls.op


def sample(cls: type[Message]) -> Message:
    """A well-formed instance of `cls`: the plainest value of each required field."""
    hints = typing.get_type_hints(cls, include_extras=True)
    values: dict[str, Any] = {}
    for name in cls._required:
        values[name] = _plain(hints[name])
    return cls(**values)


def _plain(tp: Any) -> Any:
    origin, args = get_origin(tp), get_args(tp)
    if origin is typing.Annotated:
        return "k" if _KeyMarker in args[1:] else _plain(args[0])
    if tp is Serialized:
        return Serialized("bytes", [b"x"])
    if origin is tuple:
        return ()
    if origin is dict:
        return {}
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return None
    return {str: "x", int: 1, float: 0.0, bool: False, bytes: b"", Any: None}[tp]


# Who sends each message to the scheduler, by the role in its hello.
NANNY_MESSAGES = {m.RegisterNanny, m.WorkerDied}
WORKER_MESSAGES = {
    cls for cls, roles in PERMISSIONS.items() if roles == frozenset({ADMIN, WORKER})
} - NANNY_MESSAGES
REGISTRATIONS = {m.RegisterWorker: "worker", m.RegisterClient: "client", m.RegisterNanny: "nanny"}


def kind_of(cls: type[Message]) -> str:
    if cls in NANNY_MESSAGES:
        return "nanny"
    return "worker" if cls in WORKER_MESSAGES else "client"


def registered_peer(state: SchedulerState, kind: str, role: Role) -> str:
    """A peer of `kind` registered (as admin), then given the token role `role`."""
    peer = f"{kind}-1"
    state.connected(peer, kind, Grant(ADMIN, "setup"))
    register: Message = {
        "worker": m.RegisterWorker(name="w", address="tcp://127.0.0.1:1", nthreads=1),
        "client": m.RegisterClient(name="c"),
        "nanny": m.RegisterNanny(nanny_id="n1", name="w"),
    }[kind]
    state.handle(peer, register, 1.0)
    state.grants[peer] = Grant(role, f"{role}-token")
    return peer


def refusals(out: list) -> list[Message]:
    return [
        c.msg
        for c in out
        if type(c) is Send and type(c.msg) in (m.RequestRefused, m.RegistrationRefused)
    ]


CASES = [
    (role, cls)
    for role in Role
    for cls in sorted(REGISTRY.values(), key=lambda c: c.op)
    if cls not in REGISTRATIONS
]


@pytest.mark.parametrize(("role", "cls"), CASES, ids=[f"{r}-{c.op}" for r, c in CASES])
def test_each_role_against_each_message(role: Role, cls: type[Message]) -> None:
    """Allowed: the core acts as it would for admin. Refused: one answer naming the
    role needed and the connection's role, an audit event, and nothing else."""
    state = SchedulerState(audit=True)
    peer = registered_peer(state, kind_of(cls), role)
    msg = sample(cls)
    out = state.handle(peer, msg, 2.0)
    roles = PERMISSIONS[cls]
    if not roles or cls in DATA_PORT or role in roles:
        assert refusals(out) == [], (role, cls.op)
        return
    reason = refusal(cls.op, roles, role, f"{role}-token")
    assert reason.startswith(f"{cls.op} needs the ") and f"has the {role} role" in reason
    answer = m.RequestRefused(
        request=cls.op,
        reason=reason,
        request_id=getattr(msg, "request_id", 0),
        keys=getattr(msg, "wanted", ()) if cls is m.SubmitGraph else (),
    )
    assert out == [
        Send(peer, answer),
        Audit(
            "request-refused",
            {"conn": peer, "op": cls.op, "role": role.value, "token": f"{role}-token",
             "reason": reason},
        ),
    ]  # fmt: skip


@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize("cls", list(REGISTRATIONS))
def test_each_role_registering(role: Role, cls: type[Message]) -> None:
    state = SchedulerState()
    peer = "p-1"
    kind = REGISTRATIONS[cls]
    state.connected(peer, kind, Grant(role, "t"))
    out = state.handle(peer, sample(cls), 1.0)
    registered = peer in state.workers or peer in state.clients or peer in state.nannies
    if role in PERMISSIONS[cls]:
        assert registered and refusals(out) == [], out
        return
    assert not registered
    reason = refusal(cls.op, PERMISSIONS[cls], role, "t")
    if cls is m.RegisterWorker:
        assert out == [Send(peer, m.RegistrationRefused(reason=reason))]
    else:
        assert out == [Send(peer, m.RequestRefused(request=cls.op, reason=reason))]


def test_roles_allowed_where_a_person_would_expect() -> None:
    assert PERMISSIONS[m.SubmitGraph] == {ADMIN, SUBMIT}
    assert PERMISSIONS[m.GetSchedulerInfo] == {ADMIN, SUBMIT, READ}
    assert PERMISSIONS[m.RegisterWorker] == {ADMIN, WORKER}
    assert PERMISSIONS[m.GetData] == {ADMIN, SUBMIT, WORKER}
    assert PERMISSIONS[m.ComputeTask] == NOBODY
    text = refusal("submit-graph", PERMISSIONS[m.SubmitGraph], READ, "dash")
    assert text == "submit-graph needs the submit or admin role; this connection's token " \
        "'dash' has the read role"  # fmt: skip


def test_a_refused_graph_fails_its_futures_and_creates_no_task() -> None:
    state = SchedulerState(audit=True)
    peer = registered_peer(state, "client", READ)
    graph = m.SubmitGraph(
        keys=("a",), funcs=(Serialized("f", [b""]),), func=(0,),
        args=(Serialized("a", [b""]),), deps=((),), wanted=("a",),
    )  # fmt: skip
    out = state.handle(peer, graph, 2.0)
    assert not state.tasks
    [answer] = refusals(out)
    assert isinstance(answer, m.RequestRefused) and answer.keys == ("a",)


# -- own keys -----------------------------------------------------------------------------


def _two_clients(role: Role) -> tuple[SchedulerState, str, str]:
    state = SchedulerState(audit=True)
    owner = registered_peer(state, "client", SUBMIT)
    other = "client-2"
    state.connected(other, "client", Grant(role, "other"))
    state.handle(other, m.RegisterClient(name="other"), 1.0)
    graph = m.SubmitGraph(
        keys=("x-1",), funcs=(Serialized("f", [b""]),), func=(0,),
        args=(Serialized("a", [b""]),), deps=((),), wanted=("x-1",),
    )  # fmt: skip
    state.handle(owner, graph, 2.0)
    return state, owner, other


@pytest.mark.parametrize("role", [SUBMIT, READ])
def test_a_client_cancels_only_its_own_keys(role: Role) -> None:
    state, owner, other = _two_clients(role)
    out = state.handle(other, m.CancelKeys(keys=("x-1",)), 3.0)
    assert state.tasks["x-1"].wanted_by  # the owner still wants it
    assert not [c for c in out if type(c) is Send and c.peer == owner]
    out = state.handle(other, m.ReleaseFutures(keys=("x-1",)), 3.0)
    assert state.tasks["x-1"].wanted_by
    out = state.handle(other, m.CancelKeys(keys=("x-1",), force=True), 4.0)
    [answer] = refusals(out)
    assert "needs the admin role" in answer.reason and f"has the {role} role" in answer.reason
    assert state.tasks["x-1"].wanted_by


def test_an_admin_cancels_other_clients_keys_with_force() -> None:
    state, owner, admin = _two_clients(ADMIN)
    out = state.handle(admin, m.CancelKeys(keys=("x-1",), force=True), 3.0)
    assert "x-1" not in state.tasks or not state.tasks["x-1"].wanted_by
    told = [c.msg for c in out if type(c) is Send and c.peer == owner]
    assert [type(msg) for msg in told] == [m.KeysCancelled]
    assert told[0].keys == ("x-1",) and "client-2" in told[0].reason
    events = [c for c in out if type(c) is Audit]
    assert [e.event for e in events] == ["cancel", "keys-released-for-others"]
    assert events[1].fields["owner"] == "client-1" and events[1].fields["prefixes"] == ["x"]


def test_key_summaries() -> None:
    assert key_summary(["inc-3f2a9c1e77", ("load_csv-12", 4), "evil\nline-1"], 3) == {
        "keys": 3,
        "prefixes": ["inc", "load_csv", "evil\\nline"],
    }
    summary = key_summary((f"k{i % 30}-1" for i in range(100)), 100)
    assert summary["keys"] == 100 and len(summary["prefixes"]) == 20


# -- tokens and token files ---------------------------------------------------------------


def test_token_file_lines() -> None:
    tokens = parse_tokens("# ops\n\nadmin root 0123456789abcdef\nread dash  fedcba9876543210\n")
    assert tokens == [
        Token(ADMIN, "root", b"0123456789abcdef"),
        Token(READ, "dash", b"fedcba9876543210"),
    ]
    assert "0123456789abcdef" not in repr(tokens)  # secrets stay out of logs


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("admin root", "expected 'role name secret'"),
        ("boss root 0123456789abcdef", "unknown role 'boss'"),
        ("admin root short", "at least 16"),
        ("admin a 0123456789abcdef\nread a fedcba9876543210", "given twice"),
        ("admin a 0123456789abcdef\nread b 0123456789abcdef", "secret of an earlier line"),
        ("# nothing", "holds no token"),
    ],
)
def test_token_file_errors_name_the_line(text: str, words: str) -> None:
    with pytest.raises(TokenFileError, match=words) as caught:
        parse_tokens(text, "'tokens.txt'")
    assert "tokens.txt" in str(caught.value)


def test_new_token_lines_read_back() -> None:
    line = new_token_line(SUBMIT, "nightly-etl")
    [token] = parse_tokens(line)
    assert token.role is SUBMIT and token.name == "nightly-etl" and len(token.secret) >= 40
    assert new_token_line(SUBMIT, "nightly-etl") != line
    with pytest.raises(TokenFileError, match="without spaces"):
        new_token_line(READ, "two words")


def test_reload_reports_what_changed(tmp_path) -> None:
    path = tmp_path / "tokens"
    path.write_text("admin a 0123456789abcdef\nread b 0123456789abcdeX\n")
    path.chmod(0o600)
    ring = Keyring.from_file(str(path))
    old_b = ring.first(READ)
    assert old_b is not None
    path.write_text(
        "admin a 0123456789abcdef\nsubmit b 0123456789abcdeX\nworker c 0123456789abcdeY\n"
    )
    assert ring.reload() == (["c"], [], ["b"])
    assert not ring.holds(old_b) and ring.first(WORKER) is not None
    path.write_text("garbage")
    with pytest.raises(TokenFileError):
        ring.reload()
    assert len(ring) == 3  # a bad file leaves the tokens as they were


# -- the handshake establishes the role ---------------------------------------------------


async def test_the_handshake_gives_each_connection_its_tokens_role(no_leaks) -> None:
    got: dict[str, tuple[Role, str]] = {}

    async def handler(comm) -> None:
        got[comm.peer_name] = (comm.access, comm.token_name)

    async with await listen("tcp://127.0.0.1:0", handler, keyring=keyring()) as listener:
        for role, secret in SECRETS.items():
            comm = await connect(listener.address, name=str(role), token=secret)
            await comm.close()
        with pytest.raises(HandshakeError, match="wrong cluster token"):
            await connect(listener.address, name="x", token="not-a-token-at-all")
        deadline = asyncio.get_running_loop().time() + 10
        while len(got) < 4 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
    assert got == {str(r): (r, f"{r}-token") for r in Role}


async def test_a_single_token_means_admin(no_leaks) -> None:
    got = []

    async def handler(comm) -> None:
        got.append((comm.access, comm.token_name))

    async with await listen("tcp://127.0.0.1:0", handler, token="just-one") as listener:
        comm = await connect(listener.address, token="just-one")
        await comm.close()
        deadline = asyncio.get_running_loop().time() + 10
        while not got and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
    assert got == [(ADMIN, "cluster")]


def test_require_tls_refuses_a_plain_listener() -> None:
    async def main() -> None:
        with pytest.raises(PermissionError, match="requires TLS"):
            await listen("tcp://127.0.0.1:0", _nothing, token="t", require_tls=True)

    asyncio.run(main())


async def _nothing(comm) -> None:
    pass


def test_the_core_refuses_a_plain_worker_when_tls_is_required() -> None:
    state = SchedulerState(require_tls=True)
    state.connected("w", "worker")
    out = state.handle("w", m.RegisterWorker(name="w", address="tcp://10.0.0.1:1", nthreads=1), 1.0)
    [answer] = refusals(out)
    assert "requires TLS" in answer.reason and "w" not in state.workers
    out = state.handle("w", m.RegisterWorker(name="w", address="tls://10.0.0.1:1", nthreads=1), 2.0)
    assert "w" in state.workers


# -- real processes: the scheduler, a worker's data port, the client ----------------------


async def test_roles_end_to_end(no_leaks) -> None:
    """Each role through the public API: read sees status and cannot submit; submit
    computes and gathers from the worker's data port; a read client cannot fetch
    from that port; a worker token cannot act as a client; admin does everything."""
    from shoal.client.client import Client
    from shoal.scheduler.server import Scheduler
    from shoal.worker.server import Worker

    ring = keyring()
    async with Scheduler(keyring=ring) as scheduler:
        async with Worker(
            scheduler.address, token=SECRETS[WORKER], keyring=ring, nthreads=1
        ) as worker:
            async with Client(scheduler.address, token=SECRETS[SUBMIT], asynchronous=True) as c:
                future = c.submit(sum, [1, 2, 3])
                assert await asyncio.wait_for(future.result(), 30) == 6
                # Gathered from the worker's data port: a large value is not inline.
                big = c.submit(bytes, 4096)
                assert len(await asyncio.wait_for(big.result(), 30)) == 4096
            async with Client(scheduler.address, token=SECRETS[READ], asynchronous=True) as c:
                info = await c.scheduler_info()
                assert worker.name in info["workers"]
                refused = c.submit(sum, [1, 2])
                with pytest.raises(AccessDenied, match="needs the submit or admin role"):
                    await asyncio.wait_for(refused.result(), 30)
                with pytest.raises(AccessDenied, match="read role"):
                    await c.who_has([refused])
            # A read token on the data port itself: refused, with the reason.
            comm = await connect(worker.address, token=SECRETS[READ])
            comm.send(m.GetData(keys=("k",), request_id=1))
            with pytest.raises(Exception, match="get-data needs the submit, worker or admin"):
                async with asyncio.timeout(10):
                    while True:
                        await comm.read()
            comm.abort()
            with pytest.raises(AccessDenied, match="register-client needs"):
                async with Client(scheduler.address, token=SECRETS[WORKER], asynchronous=True):
                    pass
        with pytest.raises(RegistrationError, match="register-worker needs the worker or admin"):
            async with Worker(scheduler.address, token=SECRETS[SUBMIT], nthreads=1):
                pass


async def test_revoked_tokens_lose_their_connections(tmp_path, no_leaks) -> None:
    from shoal.client.client import Client
    from shoal.scheduler.server import Scheduler

    path = tmp_path / "tokens"
    path.write_text(TOKEN_FILE)
    path.chmod(0o600)
    async with Scheduler(keyring=Keyring.from_file(str(path))) as scheduler:
        async with Client(scheduler.address, token=SECRETS[READ], asynchronous=True) as c:
            await c.scheduler_info()
            path.write_text("\n".join(TOKEN_FILE.splitlines()[:3]))  # no read token
            scheduler.reload()
            deadline = asyncio.get_running_loop().time() + 10
            while scheduler.state.clients and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.01)
            assert not scheduler.state.clients
        with pytest.raises(HandshakeError, match="wrong cluster token"):
            await connect(scheduler.address, token=SECRETS[READ])


def test_refusal_answers_keep_the_connection() -> None:
    state = SchedulerState()
    peer = registered_peer(state, "client", READ)
    out = state.handle(peer, m.CancelKeys(keys=("a",)), 2.0)
    assert not [c for c in out if type(c) is Disconnect]
    assert peer in state.clients


def test_only_admin_retires_workers_and_it_is_audited() -> None:
    state = SchedulerState(audit=True)
    state.connected("w", "worker", Grant(WORKER, "pool"))
    state.handle("w", m.RegisterWorker(name="w1", address="tcp://127.0.0.1:1", nthreads=1), 1.0)
    submit = registered_peer(state, "client", SUBMIT)
    out = state.handle(submit, m.RetireWorkers(workers=("w1",), request_id=4), 2.0)
    [answer] = refusals(out)
    assert answer.request_id == 4 and "retire-workers needs the admin role" in answer.reason
    assert not state.retiring
    state.grants[submit] = Grant(ADMIN, "ops")
    out = state.handle(submit, m.RetireWorkers(workers=("w1",), request_id=5), 3.0)
    [event] = [c for c in out if type(c) is Audit and c.event == "retire"]
    assert event.fields["workers"] == ["w1"] and event.fields["token"] == "ops"
    assert state.retiring


async def test_cluster_helpers_by_role(no_leaks) -> None:
    """client.run runs code on workers (submit may, through their data ports);
    restart changes the cluster (admin only); datasets are a submit client's."""
    import os

    from shoal.client.client import Client
    from shoal.scheduler.server import Scheduler
    from shoal.worker.server import Worker

    ring = keyring()
    async with Scheduler(keyring=ring) as scheduler:
        async with Worker(scheduler.address, token=SECRETS[WORKER], keyring=ring, nthreads=1):
            async with Client(scheduler.address, token=SECRETS[SUBMIT], asynchronous=True) as c:
                ran = await asyncio.wait_for(c.run(os.getpid), 30)
                assert list(ran.values()) == [os.getpid()]
                with pytest.raises(AccessDenied, match="restart-workers needs the admin role"):
                    await asyncio.wait_for(c.restart(), 30)
            async with Client(scheduler.address, token=SECRETS[READ], asynchronous=True) as c:
                assert await asyncio.wait_for(c.list_datasets(), 30) == []
                with pytest.raises(Exception, match="run-function needs the submit or admin"):
                    await asyncio.wait_for(c.run(os.getpid), 30)


async def test_tasks_submit_tasks_with_the_files_submit_token() -> None:
    """get_client inside a task connects with a submit token of the worker's file:
    its own worker token may not submit."""
    from shoal.client.client import Client
    from shoal.deploy import nested
    from shoal.scheduler.server import Scheduler
    from shoal.worker.server import Worker

    ring = keyring()
    try:
        async with Scheduler(keyring=ring) as scheduler:
            async with Worker(scheduler.address, token=SECRETS[WORKER], keyring=ring, nthreads=2):
                async with Client(scheduler.address, token=SECRETS[SUBMIT], asynchronous=True) as c:
                    assert await asyncio.wait_for(c.submit(_fan_out, 3).result(), 60) == 6
                    nested_clients = list(nested._clients.values())
                    assert [n.token for n in nested_clients] == [SECRETS[SUBMIT].encode()]
                # The tasks' client, shared by the worker's tasks, closes with us.
                await asyncio.to_thread(nested._close_clients)
    finally:
        await asyncio.to_thread(nested._close_clients)


def _fan_out(n: int) -> int:
    from shoal import get_client

    client = get_client()
    return sum(client.gather(client.map(lambda x: x + 1, range(n))))
