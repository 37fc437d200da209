"""Token roles and the permission table: which roles may send each message.

Every message of the catalogue (shoal.protocol.messages) has a row, and a test
fails when one has none. A row lists the roles whose connections a listener
(the scheduler, or a worker's data port) accepts the message from; an empty
row marks a message only listeners send (an answer, an order), which no
listener accepts from anyone. Pure: the scheduler's core and the worker's
data port consult it; neither decides permissions anywhere else.
"""

from __future__ import annotations

import enum

from shoal.protocol import messages as m
from shoal.protocol.schema import Message


class Role(enum.StrEnum):
    """What a token lets its holder do (the role of a `role name secret` line)."""

    ADMIN = "admin"  # everything, including retiring workers and changing the cluster
    SUBMIT = "submit"  # a client: submit, gather, cancel its own work (runs code on workers)
    WORKER = "worker"  # join as a worker or a nanny; fetch from other workers
    READ = "read"  # status, metrics, dashboard: no code runs


ADMIN, SUBMIT, WORKER, READ = Role.ADMIN, Role.SUBMIT, Role.WORKER, Role.READ

Roles = frozenset[Role]
EVERYONE: Roles = frozenset(Role)
# Sent only by a listener (answers, orders, reports): no listener accepts it.
NOBODY: Roles = frozenset()
_ADMINS: Roles = frozenset({ADMIN})
_WORKERS: Roles = frozenset({ADMIN, WORKER})
_CLIENTS: Roles = frozenset({ADMIN, SUBMIT})
_READERS: Roles = frozenset({ADMIN, SUBMIT, READ})
# A client letting go of its own futures: harmless for any client, and a read-only
# client holds futures too (those of a refused graph), which it releases as it drops them.
_OWN_FUTURES: Roles = _READERS
# Values on a worker's data port: its peers fetch them, and so do clients (gather).
_FETCHERS: Roles = frozenset({ADMIN, SUBMIT, WORKER})

PERMISSIONS: dict[type[Message], Roles] = {
    # The handshake and the connection itself: handled below any role.
    m.Hello: EVERYONE,
    m.Authenticate: EVERYONE,
    m.Welcome: EVERYONE,
    m.HandshakeFailed: EVERYONE,
    m.Ping: EVERYONE,
    m.Pong: EVERYONE,
    m.Close: EVERYONE,
    # A worker's data port.
    m.GetData: _FETCHERS,
    m.DataSent: NOBODY,
    m.PutData: _CLIENTS,
    m.DataStored: NOBODY,
    m.RunFunction: _CLIENTS,  # client.run: code on the worker, as a task's is
    m.FunctionRan: NOBODY,
    m.StoreFile: _CLIENTS,  # upload_file; the scheduler's copy comes on the worker's own link
    m.FileStored: NOBODY,
    # Workers and nannies to the scheduler.
    m.RegisterWorker: _WORKERS,
    m.WorkerRegistered: NOBODY,
    m.RegistrationRefused: NOBODY,
    m.ComputeTask: NOBODY,
    m.TaskFinished: _WORKERS,
    m.TaskErred: _WORKERS,
    m.TasksStarted: _WORKERS,
    m.FreeKeys: NOBODY,
    m.AcquireKeys: NOBODY,
    m.KeysAcquired: _WORKERS,
    m.DataMissing: _WORKERS,
    m.DataFetched: _WORKERS,
    m.WorkerLeaving: _WORKERS,
    m.RetireWorker: _WORKERS,  # a worker asks to retire itself (SIGTERM)
    m.WorkerPaused: _WORKERS,  # memory pressure: it takes no new task
    m.WorkerResumed: _WORKERS,
    m.WorkerRetired: NOBODY,
    m.Heartbeat: _WORKERS,
    m.RegisterNanny: _WORKERS,
    m.WorkerDied: _WORKERS,
    m.TaskSeceded: _WORKERS,
    # Clients to the scheduler.
    m.RegisterClient: _READERS,
    m.ClientRegistered: NOBODY,
    m.SubmitGraph: _CLIENTS,
    m.AddData: _CLIENTS,
    m.Replicate: _CLIENTS,
    m.Replicated: NOBODY,
    m.GraphRejected: NOBODY,
    m.KeyInMemory: NOBODY,
    m.KeyErred: NOBODY,
    m.TaskWarned: NOBODY,
    m.KeysCancelled: NOBODY,
    m.ReleaseFutures: _OWN_FUTURES,
    m.CancelKeys: _OWN_FUTURES,  # its own keys only; with `force`, admin only (roles.py)
    m.WhoHas: _CLIENTS,
    m.WhoHasAnswer: NOBODY,
    m.GetSchedulerInfo: _READERS,
    m.SchedulerInfo: NOBODY,
    m.TasksStalled: NOBODY,
    m.RetireWorkers: _ADMINS,  # retiring others changes the cluster
    m.WorkersRetired: NOBODY,
    m.WorkersChanged: NOBODY,
    m.WorkersPaused: NOBODY,
    m.UploadFile: _CLIENTS,  # a file every worker imports: code, as a graph is
    m.RestartWorkers: _ADMINS,  # forgets every client's keys: changes the cluster
    m.WorkersRestarting: NOBODY,
    m.RestartWorker: NOBODY,
    m.PublishDataset: _CLIENTS,
    m.UnpublishDataset: _CLIENTS,
    m.GetDataset: _CLIENTS,
    m.ListDatasets: _READERS,  # names only
    m.DatasetAnswer: NOBODY,
    m.FireAndForget: _CLIENTS,
    m.RequestRefused: NOBODY,
}


# The messages a worker's data port takes; the scheduler takes none of them, and
# the data port nothing else.
DATA_PORT = frozenset({m.GetData, m.PutData, m.RunFunction, m.StoreFile})
# A message without a row (a test fails on one) is the admin role's alone.
UNLISTED: Roles = frozenset({ADMIN})


def needed(cls: type[Message]) -> Roles:
    """The roles that may send a message of type `cls`."""
    return PERMISSIONS.get(cls, UNLISTED)


def allowed(role: Role, cls: type[Message]) -> bool:
    """Whether a connection of `role` may send a message of type `cls`."""
    return role in PERMISSIONS.get(cls, UNLISTED)


def role_words(roles: Roles) -> str:
    """'the submit or admin role' for the roles of a row, most specific first."""
    names = [r.value for r in (SUBMIT, WORKER, READ, ADMIN) if r in roles]
    if not names:
        return "no role"
    if len(names) == 1:
        return f"the {names[0]} role"
    return f"the {', '.join(names[:-1])} or {names[-1]} role"


def refusal(
    what: str, needed: Roles, role: Role, token_name: str, asker: str = "connection"
) -> str:
    """The reason a request is refused: what was asked, the roles it needs, the
    role and token name of the connection (or HTTP request) that asked."""
    token = f"token {token_name!r}" if token_name else "its token"
    return f"{what} needs {role_words(needed)}; this {asker}'s {token} has the {role} role"


def refused(role: Role, token_name: str, msg: Message) -> str | None:
    """Why a worker's data port refuses `msg` from a connection of `role`, or None
    when it takes it (or it is no data-port message: the port closes on those)."""
    roles = needed(type(msg))
    if type(msg) not in DATA_PORT or role in roles:
        return None
    return refusal(msg.op, roles, role, token_name)


# -- HTTP ----------------------------------------------------------------------------
#
# The routes of the scheduler's and the workers' HTTP servers, by their pattern: the
# roles whose token may read each; OPEN: anyone who reaches the port (the route tells
# only whether the process is up). Every route a server serves has a row (a test
# checks); a route without one is the admin role's alone. A request without a token
# from loopback has the read role (shoal.protocol.web).
OPEN: Roles = EVERYONE
HTTP_ROUTES: dict[str, Roles] = {
    "/health": OPEN,
    "/ready": OPEN,
    "/metrics": _READERS,
    "/api/v1/info": _READERS,
    "/api/v1/workers": _READERS,
    "/api/v1/tasks": _READERS,
    "/api/v1/stream": _READERS,
    "/api/v1/story": _READERS,
    "/api/v1/events": _READERS,
    "/api/v1/desired-workers": _READERS,
    "/api/v1/dashboard": _READERS,
    "/": _READERS,
    "/dashboard/([a-z.]+)": _READERS,
}
OPEN_ROUTES = frozenset(route for route, roles in HTTP_ROUTES.items() if roles is OPEN)


def route_roles(route: str) -> Roles:
    """The roles that may read the HTTP route of pattern `route`."""
    return HTTP_ROUTES.get(route, UNLISTED)
