"""The message catalogue: every message shoal sends, declared once.

Requests are named in the imperative, reports in the past tense. A field
added later must have a default, so an older peer's messages still decode.
The handshake messages (the first group) are frozen: every protocol version
must be able to read them, so that a mismatch can be reported clearly.
docs/protocol.md describes each one.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from shoal.protocol.schema import Key, Message, Signed, TypeName, message
from shoal.protocol.serialize import Serialized

ROLES = ("scheduler", "worker", "client", "nanny")

# A result whose payload is at most this many bytes travels with TaskFinished,
# is kept by the scheduler, and reaches clients and dependent tasks with it.
INLINE_VALUE_BYTES = 1024

# A warning a task raised: (category, message, filename, lineno, module). The
# category is its class's importable name ("builtins.UserWarning"); the message
# is its text, cut at WARNING_TEXT_CHARS; the module is what filters match it
# against (its dotted name, from the worker's sys.path, else the file name
# without ".py", as warnings.warn_explicit derives it). A
# task's report carries at most WARNINGS_PER_TASK of them, each distinct.
Warned = tuple[str, str, str, int, str]
WARNINGS_PER_TASK = 20
WARNING_TEXT_CHARS = 2_000

# -- handshake (frozen across protocol versions) ------------------------------


@message("hello")
class Hello(Message):
    """First message each way: who I am, what I speak, my nonce and my limits."""

    protocol: int
    version: str
    role: str
    nonce: bytes
    auth: bool
    max_frames: int
    max_header_bytes: int
    max_batch_bytes: int
    name: str = ""


@message("authenticate")
class Authenticate(Message):
    """The connecting side's proof that it holds the cluster token."""

    proof: bytes


@message("welcome")
class Welcome(Message):
    """The listening side accepts; with a token, it proves it holds it too."""

    proof: bytes = b""


@message("handshake-failed")
class HandshakeFailed(Message):
    """Either side refuses the handshake; the connection closes after it."""

    reason: str


# -- connection ---------------------------------------------------------------


@message("ping")
class Ping(Message):
    """Ask the peer to answer with a Pong carrying the same id."""

    id: int


@message("pong")
class Pong(Message):
    """Answer to a Ping."""

    id: int


@message("close")
class Close(Message):
    """The sender closes the connection on purpose; `reason` says why."""

    reason: str = ""


# -- data ----------------------------------------------------------------------


@message("get-data")
class GetData(Message):
    """Ask the peer for the values of these keys."""

    keys: tuple[Key, ...]
    request_id: int = 0


@message("data-sent")
class DataSent(Message):
    """Values for keys, as payloads; `missing` lists the keys the sender lacks.

    An answer that does not fit within the requester's limits comes in parts: each
    but the last says `more`. `too_large` maps each key the sender holds but cannot
    send within those limits, even alone, to the size of its payload in bytes.
    """

    data: dict[Key, Serialized]
    request_id: int = 0
    missing: tuple[Key, ...] = ()
    too_large: dict[Key, int] = dataclasses.field(default_factory=dict)
    more: bool = False


@message("put-data")
class PutData(Message):
    """A client hands a worker values to hold (scatter); answered by DataStored."""

    data: dict[Key, Serialized]
    request_id: int = 0


@message("data-stored")
class DataStored(Message):
    """The worker holds the values of `keys`; `refused` are keys it is busy making."""

    keys: tuple[Key, ...]
    request_id: int = 0
    refused: tuple[Key, ...] = ()


# -- scheduler <-> worker ------------------------------------------------------
#
# A worker connects to the scheduler, sends RegisterWorker, and is answered
# with WorkerRegistered or RegistrationRefused. From then on the scheduler
# sends ComputeTask and FreeKeys; the worker answers each ComputeTask with
# exactly one TaskFinished or TaskErred, unless the key was freed first.


@message("register-worker")
class RegisterWorker(Message):
    """A worker joins: its name, where it serves data, and what it offers."""

    name: str
    address: str
    nthreads: int
    memory_limit: int = 0
    resources: dict[str, float] = dataclasses.field(default_factory=dict)
    pid: int = 0
    host: str = ""
    # True when a nanny supervises it: the nanny reports how it died.
    nanny: bool = False
    # The id its nanny registered under (RegisterNanny), tying the two together;
    # empty without a nanny.
    nanny_id: str = ""
    # The GPU it is pinned to, if any: index (NVML's, "3" or "3:1" for a MIG
    # instance), uuid and name of each; and the device bytes its nanny lets it use.
    devices: tuple[dict[str, str], ...] = ()
    device_memory_limit: int = 0
    # Where it serves /health, /ready and /metrics (http(s)://host:port); empty: it does not.
    http_address: str = ""


@message("worker-registered")
class WorkerRegistered(Message):
    """The scheduler accepted the worker under `name`."""

    name: str


@message("registration-refused")
class RegistrationRefused(Message):
    """The scheduler refuses the worker (a name already taken, say)."""

    reason: str


@message("compute-task")
class ComputeTask(Message):
    """Run one task.

    `func` and `args` are the client's payloads, routed unopened. `deps` lists
    the keys whose values the task needs: a value small enough to travel with
    the task is in `values`; otherwise `who_has` names the workers holding it,
    unless this worker holds it already, and `nbytes` its size.
    """

    key: Key
    func: Serialized
    args: Serialized
    deps: tuple[Key, ...] = ()
    values: dict[Key, Serialized] = dataclasses.field(default_factory=dict)
    who_has: dict[Key, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    priority: tuple[Signed, ...] = ()
    nbytes: dict[Key, int] = dataclasses.field(default_factory=dict)
    # Seconds the task may run once started; 0: no limit.
    timeout: float = 0.0


@message("task-finished")
class TaskFinished(Message):
    """A task's result is in the worker's memory.

    `value` carries the serialized result when it is at most
    INLINE_VALUE_BYTES; `duration` is the run time in seconds; `warned` the
    warnings the task raised, for the scheduler to pass on (TaskWarned).
    """

    key: Key
    nbytes: int
    typename: TypeName
    duration: float
    value: Serialized | None = None
    warned: tuple[Warned, ...] = ()


@message("task-erred")
class TaskErred(Message):
    """A task raised. `exception` is the pickled exception when it pickles;
    `warned` the warnings it raised before, as in TaskFinished."""

    key: Key
    typename: str
    message: str
    traceback: str
    duration: float = 0.0
    exception: Serialized | None = None
    warned: tuple[Warned, ...] = ()


@message("tasks-started")
class TasksStarted(Message):
    """A worker thread started these tasks, and they had not finished when this was
    written. A worker's death counts only against the tasks it had started."""

    keys: tuple[Key, ...]


@message("free-keys")
class FreeKeys(Message):
    """Drop these keys: their values, and their tasks if not finished."""

    keys: tuple[Key, ...]


@message("acquire-keys")
class AcquireKeys(Message):
    """Fetch these values from the workers named and hold them (replication).

    Answered by KeysAcquired, or DataMissing for a key no holder gave.
    """

    who_has: dict[Key, tuple[str, ...]]
    nbytes: dict[Key, int] = dataclasses.field(default_factory=dict)


@message("keys-acquired")
class KeysAcquired(Message):
    """The worker now holds these keys, as AcquireKeys asked."""

    keys: tuple[Key, ...]


@message("data-missing")
class DataMissing(Message):
    """No worker in `tried` gave the value of `key`: each had vanished, refused
    or did not hold it. `tasks` are the tasks here that needed it; the worker
    dropped them, and the scheduler places them again."""

    key: Key
    tried: tuple[str, ...]
    tasks: tuple[Key, ...] = ()


@message("data-fetched")
class DataFetched(Message):
    """One fetch from a peer moved `nbytes` in `duration` seconds (for bandwidth)."""

    nbytes: int
    duration: float


@message("worker-leaving")
class WorkerLeaving(Message):
    """The worker is shutting down on purpose; the scheduler moves its work."""

    reason: str = ""


@message("retire-worker")
class RetireWorker(Message):
    """The sending worker asks to retire (it got SIGTERM, say): it takes no more
    tasks, finishes or hands back those it has, and its values that no other
    worker holds are copied elsewhere; then the scheduler sends WorkerRetired.
    `timeout`: seconds after which the scheduler lets it go regardless (0: none)."""

    reason: str = ""
    timeout: float = 0.0


@message("worker-retired")
class WorkerRetired(Message):
    """To a retiring worker: its tasks are done or handed back and its values are
    safe elsewhere (or have no other place); it leaves now with WorkerLeaving."""

    reason: str = ""


@message("heartbeat")
class Heartbeat(Message):
    """Sent by a worker every heartbeat interval: it is alive, and how loaded.

    `cpu` is the process's CPU use in percent of one core since the last
    heartbeat, `memory` its resident bytes, `executing` how many tasks run now.
    `devices` has, for each device of its registration, `memory_used` and
    `memory_total` (bytes, by every process on it) and `utilization` (percent;
    absent where NVML cannot say, as for a MIG instance).
    """

    cpu: float = 0.0
    memory: int = 0
    executing: int = 0
    # Bytes of the values the worker holds in memory (managed), on disk (spilled),
    # and in memory because they could not be written to disk (unspillable).
    managed: int = 0
    spilled: int = 0
    unspillable: int = 0
    devices: tuple[dict[str, float], ...] = ()


@message("worker-paused")
class WorkerPaused(Message):
    """The worker's resident memory (`memory` bytes) crossed its pause threshold
    (a fraction of `limit`): it starts no more tasks. `running` are the tasks its
    threads run now; the scheduler takes back the others it gave it and sends it
    no more until WorkerResumed."""

    memory: int
    limit: int
    running: tuple[Key, ...] = ()


@message("worker-resumed")
class WorkerResumed(Message):
    """The worker's memory is back under its pause threshold: it runs tasks again."""

    memory: int = 0


# -- nanny -> scheduler --------------------------------------------------------
#
# A nanny keeps one connection to the scheduler open for as long as it
# supervises its worker: RegisterNanny first, then Heartbeat every second, and
# WorkerDied whenever its worker dies. The scheduler answers nothing; it may
# send RestartWorker (client.restart()).


@message("register-nanny")
class RegisterNanny(Message):
    """A nanny introduces itself: it supervises the worker whose RegisterWorker
    carries `nanny_id`, named `name`, and may report only that worker's deaths."""

    nanny_id: str
    name: str = ""


@message("worker-died")
class WorkerDied(Message):
    """The worker process `name` (data address `address`) died, or was killed by
    its nanny, for `cause` (a sentence: exit code or signal, memory figures). Only
    the nanny that worker registered with may say so."""

    name: str
    address: str
    cause: str


# -- scheduler <-> client ------------------------------------------------------


@message("register-client")
class RegisterClient(Message):
    """A client introduces itself; the answer is ClientRegistered."""

    name: str = ""


@message("client-registered")
class ClientRegistered(Message):
    """The scheduler's welcome to a client, with the current worker count."""

    client_id: str
    workers: int
    # Where the scheduler serves HTTP and its dashboard (http(s)://host:port); empty: nowhere.
    http_address: str = ""


@message("submit-graph")
class SubmitGraph(Message):
    """New tasks, in columns: entry i of each column describes `keys[i]`.

    `funcs` holds each distinct function once and `func[i]` indexes it.
    `deps[i]` are the keys task i reads, each in this message or already known
    to the scheduler. `priority`, when not empty, has one entry per task;
    `resources`, `restrict` (worker names or addresses) and `retries` are
    sparse, keyed by task index. `wanted` are the keys the client now holds
    futures for; each counts once per message.
    """

    keys: tuple[Key, ...]
    funcs: tuple[Serialized, ...]
    func: tuple[int, ...]
    args: tuple[Serialized, ...]
    deps: tuple[tuple[Key, ...], ...]
    wanted: tuple[Key, ...]
    priority: tuple[Signed, ...] = ()
    resources: dict[int, dict[str, float]] = dataclasses.field(default_factory=dict)
    restrict: dict[int, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    retries: dict[int, int] = dataclasses.field(default_factory=dict)
    timeout: dict[int, float] = dataclasses.field(default_factory=dict)


@message("add-data")
class AddData(Message):
    """The client put these values on workers itself (scatter): `who_has` names
    the workers' data addresses. The client now holds futures for the keys."""

    who_has: dict[Key, tuple[str, ...]]
    nbytes: dict[Key, int]
    typenames: dict[Key, str] = dataclasses.field(default_factory=dict)


@message("replicate")
class Replicate(Message):
    """Keep `n` copies of each key (0: one on every worker); answered by Replicated."""

    keys: tuple[Key, ...]
    n: int = 0
    request_id: int = 0


@message("replicated")
class Replicated(Message):
    """The copies a Replicate asked for are made; `copies` counts each key's holders."""

    copies: dict[Key, int]
    request_id: int = 0


@message("graph-rejected")
class GraphRejected(Message):
    """A SubmitGraph was refused as a whole before any of it ran."""

    keys: tuple[Key, ...]
    reason: str


@message("key-in-memory")
class KeyInMemory(Message):
    """A key the client holds a future for is computed.

    `value` carries small results; larger ones are fetched from `who_has`
    (worker data addresses).
    """

    key: Key
    nbytes: int
    typename: str
    who_has: tuple[str, ...] = ()
    value: Serialized | None = None


@message("key-erred")
class KeyErred(Message):
    """A key the client holds a future for failed (or a task it needed did)."""

    key: Key
    typename: str
    message: str
    traceback: str
    exception: Serialized | None = None
    blame: Key | None = None


@message("task-warned")
class TaskWarned(Message):
    """Task `key` raised these warnings while it ran, for the client to raise again
    (with its own filters). Sent to the clients that want `key`, or else to those
    that want a task depending on it, found within SCAN_FOR_WANTED dependents;
    always before the report of any key depending on it."""

    key: Key
    warned: tuple[Warned, ...]


@message("keys-cancelled")
class KeysCancelled(Message):
    """These futures of the client will never complete."""

    keys: tuple[Key, ...]
    reason: str = ""


@message("release-futures")
class ReleaseFutures(Message):
    """The client holds no more futures for these keys."""

    keys: tuple[Key, ...]


@message("cancel-keys")
class CancelKeys(Message):
    """Stop computing these keys (and what waits on them) for this client; with
    `force`, for every client that wants them (the admin role only)."""

    keys: tuple[Key, ...]
    force: bool = False


@message("who-has")
class WhoHas(Message):
    """Ask where the values of these keys are held."""

    keys: tuple[Key, ...]
    request_id: int = 0


@message("who-has-answer")
class WhoHasAnswer(Message):
    """Data addresses of the workers holding each key (empty: none)."""

    who_has: dict[Key, tuple[str, ...]]
    request_id: int = 0


@message("get-scheduler-info")
class GetSchedulerInfo(Message):
    """Ask for a description of the cluster."""

    request_id: int = 0


@message("scheduler-info")
class SchedulerInfo(Message):
    """The cluster as plain data: see Client.scheduler_info()."""

    info: dict[str, Any]
    request_id: int = 0


@message("tasks-stalled")
class TasksStalled(Message):
    """Ready tasks that no current worker can run have waited `waited` seconds.

    They ask for `resources` or are restricted to `restrict` (worker names or
    addresses), which none of the `workers` connected offers. `keys` names
    the first of them (at most 20) and `count` counts them all. Sent once per
    stall to each client that wants them or a task depending on them; they
    keep waiting (or fail with NoValidWorker past the scheduler's
    no_workers_timeout).
    """

    keys: tuple[Key, ...]
    count: int
    waited: float
    workers: int
    resources: dict[str, float] = dataclasses.field(default_factory=dict)
    restrict: tuple[str, ...] = ()


@message("workers-paused")
class WorkersPaused(Message):
    """Every one of the `workers` connected is paused for memory, and `waiting`
    tasks wanted by this client wait for one to resume. Sent once each time all
    become paused; work goes on by itself once a worker's memory falls (spilling
    goes on while paused), or when a worker joins."""

    workers: int
    waiting: int
    memory: int = 0  # bytes resident on those workers together
    limit: int = 0  # their memory limits together


@message("retire-workers")
class RetireWorkers(Message):
    """Retire these workers (names or data addresses) gracefully, as RetireWorker
    does for one; answered by WorkersRetired once each has left. `timeout`:
    seconds after which a worker is let go regardless (0: none)."""

    workers: tuple[str, ...]
    timeout: float = 0.0
    request_id: int = 0


@message("workers-retired")
class WorkersRetired(Message):
    """The answer to RetireWorkers: the names of the workers that left, and the
    names or addresses asked for that matched no worker."""

    retired: tuple[str, ...]
    unknown: tuple[str, ...] = ()
    request_id: int = 0


@message("workers-changed")
class WorkersChanged(Message):
    """Sent to every client when a worker joins or leaves."""

    workers: int


# -- tasks that submit tasks, and cluster-wide helpers (docs/protocol.md, section 7.7)


@message("task-seceded")
class TaskSeceded(Message):
    """A running task's thread gave its slot back, waiting on tasks it submitted."""

    key: Key


@message("run-function")
class RunFunction(Message):
    """To a worker's data port: call the pickled `(func, args, kwargs)` outside tasks."""

    call: Serialized
    request_id: int = 0


@message("function-ran")
class FunctionRan(Message):
    """The outcome of a RunFunction: `result`, or the error's fields as in TaskErred."""

    request_id: int = 0
    result: Serialized | None = None
    typename: str = ""
    message: str = ""
    traceback: str = ""
    exception: Serialized | None = None


@message("upload-file")
class UploadFile(Message):
    """To the scheduler: a file for each worker that joins from now on (FileStored)."""

    filename: str
    data: bytes
    request_id: int = 0


@message("store-file")
class StoreFile(Message):
    """To a worker: write this file where tasks import from; import it if a .py."""

    filename: str
    data: bytes
    request_id: int = 0


@message("file-stored")
class FileStored(Message):
    """A file is kept; `error` says why it did not import, when it did not."""

    request_id: int = 0
    error: str = ""


@message("restart-workers")
class RestartWorkers(Message):
    """Forget every key and restart each worker under its nanny (WorkersRestarting)."""

    request_id: int = 0


@message("workers-restarting")
class WorkersRestarting(Message):
    """`restarting` workers of the `workers` there were are being restarted."""

    restarting: int
    workers: int
    request_id: int = 0


@message("restart-worker")
class RestartWorker(Message):
    """To a nanny: kill the worker and start it afresh (not counted as a death)."""

    reason: str = ""


@message("publish-dataset")
class PublishDataset(Message):
    """Keep `keys` under `name` for any client, with the client's opaque `payload`."""

    name: str
    keys: tuple[Key, ...]
    payload: Serialized
    override: bool = False
    request_id: int = 0


@message("unpublish-dataset")
class UnpublishDataset(Message):
    """Drop the dataset `name`, letting go of its keys."""

    name: str
    request_id: int = 0


@message("get-dataset")
class GetDataset(Message):
    """Ask for the dataset `name`: the asking client comes to hold its keys."""

    name: str
    request_id: int = 0


@message("list-datasets")
class ListDatasets(Message):
    """Ask for the names of the published datasets."""

    request_id: int = 0


@message("dataset-answer")
class DatasetAnswer(Message):
    """The `names` of all datasets, or one's `payload` and `keys`, or an `error`."""

    request_id: int = 0
    names: tuple[str, ...] = ()
    payload: Serialized | None = None
    keys: tuple[Key, ...] = ()
    error: str = ""


@message("fire-and-forget")
class FireAndForget(Message):
    """Keep computing these keys after the client lets go, until each is done."""

    keys: tuple[Key, ...]


@message("request-refused")
class RequestRefused(Message):
    """The scheduler refused a message for its sender's role (see
    shoal.protocol.permissions); the connection stays open.

    `request` is the refused message's op, `reason` names the role it needs
    and the role the connection has. `request_id` is the refused request's, if it had
    one; `keys` are the keys whose futures fail with it (a refused graph).
    """

    request: str
    reason: str
    request_id: int = 0
    keys: tuple[Key, ...] = ()
