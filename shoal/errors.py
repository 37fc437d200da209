"""Every exception class shoal raises, in one place.

ShoalError and its children are what a user may meet and handle: bad bytes
or a misbehaving peer (ProtocolError), user data that cannot cross the wire
(SerializationError), a connection that is gone (CommClosedError), and what
became of tasks. InternalError and its children are shoal's own bugs: they
are deliberately not ShoalErrors, so that `except ShoalError` never hides one.
"""


class ShoalError(Exception):
    """Base class of all shoal errors."""


def type_name(cls: type) -> str:
    """`module.QualName`: how an error's type travels in task-erred and key-erred."""
    return f"{cls.__module__}.{cls.__qualname__}"


def shoal_error_named(typename: str) -> type[ShoalError] | None:
    """The ShoalError class of this module that `type_name` gave `typename`, or None."""
    module, _, name = typename.rpartition(".")
    cls = globals().get(name) if module == __name__ else None
    return cls if isinstance(cls, type) and issubclass(cls, ShoalError) else None


def rebuilt_exception(cls: type[BaseException], args: tuple, state: dict) -> BaseException:
    """An exception of `cls` with these `args` and attributes, made without calling
    its __init__: how a task's exception whose class takes other constructor
    arguments travels back to its client."""
    exc = BaseException.__new__(cls, *args)
    exc.args = args
    exc.__dict__.update(state)
    return exc


class ProtocolError(ShoalError):
    """Bytes or messages from a peer broke the wire protocol.

    The connection they came on is closed; the process keeps serving others.
    """


class LimitExceeded(ProtocolError):
    """A count or length on the wire is over a configured limit."""


class HandshakeError(ProtocolError):
    """The opening exchange failed: wrong or missing token, incompatible version."""


class MessageTooLarge(ShoalError):
    """A message we were asked to send is over the limits the peer advertised."""


class SerializationError(ShoalError):
    """A user object could not be pickled or unpickled.

    The message names the object's type and what it belonged to.
    """


class CommClosedError(ShoalError):
    """The connection is closed; the message says why when it is known."""


# -- our own bugs ----------------------------------------------------------------


class InternalError(Exception):
    """A bug in shoal itself, never the user's doing and never to be handled.

    A core that raises is half-changed: the process that holds it logs the
    error once, with the recent transitions of the keys involved, and stops
    for its supervisor to restart it. Not a ShoalError on purpose.
    """


class InvalidTransition(InternalError):
    """A state core was asked for a transition its table does not allow: our bug."""

    def __init__(self, key: object, start: str, finish: str, stimulus: str, history: list) -> None:
        super().__init__(
            f"task {key!r}: no transition {start} -> {finish} (stimulus {stimulus}); "
            f"recent history: {history}"
        )
        self.key, self.start, self.finish = key, start, finish


# -- tasks, graphs and clusters ------------------------------------------------


class GraphError(ShoalError, ValueError):
    """A task graph was refused before anything ran: a cycle, a missing
    dependency, or a bad key. The message names the keys involved."""


class TaskFailed(ShoalError):
    """A task raised an exception that could not be rebuilt here.

    Attributes hold the remote exception's type name, message and traceback.
    """

    def __init__(self, typename: str, message: str, traceback: str = "") -> None:
        super().__init__(f"{typename}: {message}")
        self.typename, self.message, self.traceback = typename, message, traceback


class RemoteTraceback(ShoalError):
    """Set as `__cause__` of a re-raised task exception; its text is the
    traceback printed where the task ran."""

    def __init__(self, traceback: str) -> None:
        super().__init__(traceback)
        self.traceback = traceback

    def __str__(self) -> str:
        return "\n\nRemote traceback (on the worker):\n\n" + self.traceback


class FutureCancelled(ShoalError):
    """The future was cancelled; it will never have a result."""


class DataLost(ShoalError):
    """A value that cannot be recomputed (it was scattered, not computed) was
    lost with every worker that held it."""


class KilledWorker(ShoalError):
    """A task was processing on too many workers that died (the scheduler's
    allowed failures, 3 by default): running there, or assigned and waiting
    for a thread. The message names each worker and how it died; the task
    itself is the likely cause (memory, a crash in C code)."""


class NoValidWorker(ShoalError):
    """A ready task waited the scheduler's `no_workers_timeout` for a worker with
    the resources or the name it asked for, and none joined. The message names
    the task and what it asked for."""


class TaskTimeout(ShoalError, TimeoutError):
    """A task ran past its `timeout`. Its result, should it still come, is
    discarded; a worker whose thread stays stuck is restarted by its nanny."""


class SchedulerLost(CommClosedError):
    """The client lost its scheduler: futures still pending then will never
    finish, and fail with this error."""


class FetchError(ShoalError):
    """A worker could not get the value of a key from any worker holding it."""


class ValueTooLarge(FetchError):
    """A value is held, but over the limits that the process fetching it accepts
    from a peer in one batch: it cannot be moved there. The holder keeps it."""


class AccessDenied(ShoalError, PermissionError):
    """The scheduler or a worker refused a request for the role of the token it
    came with; the message names the role needed and the token's role."""


class RegistrationError(ShoalError):
    """The scheduler refused a worker or client (a name already in use, say)."""


class NestingTooDeep(ShoalError, ValueError):
    """Arguments (or a structure of futures) nest lists, tuples, sets and dicts
    deeper than shoal walks (MAX_NESTING in shoal.protocol.taskspec, 100)."""


class UploadError(ShoalError):
    """An uploaded file did not import on a worker; the message names the worker
    and the error. The file stays uploaded."""


class NoDevice(ShoalError):
    """No GPU matches what was asked for (`--gpus`, `LocalCluster(gpus=...)`): NVML
    could not be loaded, finds no device, or none of the ones named. The message
    says what was looked for and what was found."""
