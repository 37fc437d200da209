"""The `shoal` command: scheduler, worker and demo. Only the CLI configures logging."""

from __future__ import annotations

import argparse
import asyncio
import gc
import ipaddress
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shoal import __version__
from shoal.deploy import cgroup, gpus, options, retire
from shoal.deploy.lifeline import watch_parent
from shoal.deploy.logs import configure_logging
from shoal.deploy.memory_flags import add_memory_arguments, memory_limits
from shoal.deploy.nanny import (
    FATAL_EXIT,
    INTERNAL_ERROR_EXIT,
    MAX_RESTARTS,
    NANNY_ENV,
    RESTART_EXIT,
    RESTART_WINDOW_S,
)
from shoal.errors import ShoalError
from shoal.protocol.address import Address, parse_address
from shoal.protocol.handshake import PROTOCOL_VERSION
from shoal.protocol.permissions import Role
from shoal.protocol.tls import TLSConfig
from shoal.protocol.tokens import Keyring, TokenFileError, new_token_line
from shoal.scheduler.stalls import NO_WORKER_WARNING_S
from shoal.worker.gpu import parse_gpus
from shoal.worker.spillfile import check_compression

if TYPE_CHECKING:
    from shoal.worker.http import WorkerWeb

DEFAULT_PORT = 7786
DEFAULT_HTTP_PORT = 8787  # the scheduler's HTTP endpoints and dashboard
# The part of a container's memory limit a worker takes by default: the rest is
# for its nanny, so that the nanny restarts it before the kernel kills the pod.
CONTAINER_SHARE = 0.95
log = logging.getLogger("shoal.cli")


def _add_security(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("security")
    group.add_argument(
        "--token",
        type=_checked(_text("the token")),
        default=None,
        help="cluster token, which has the admin role (default: $SHOAL_TOKEN); a token "
        "is required beyond loopback",
    )
    group.add_argument(
        "--token-file",
        type=_checked(_pem_file),
        metavar="PATH",
        help="tokens with roles, one 'role name secret' per line (roles: admin, submit, "
        "worker, read), read again on SIGHUP; a worker connects with --token or the "
        "file's first worker (else admin) token",
    )
    group.add_argument(
        "--require-tls",
        action="store_true",
        help="refuse plain tcp:// on every port (needs --tls-ca, --tls-cert, --tls-key)",
    )
    pem = _checked(_pem_file)
    group.add_argument("--tls-ca", type=pem, metavar="PEM", help="CA bundle peers must chain to")
    group.add_argument("--tls-cert", type=pem, metavar="PEM", help="this side's certificate")
    group.add_argument("--tls-key", type=pem, metavar="PEM", help="this side's private key")


def _add_http(parser: argparse.ArgumentParser, default: int, what: str) -> None:
    group = parser.add_argument_group("HTTP")
    more = (
        f"; default {default}, or any free port when {default} is taken or --port is 0"
        if default
        else "; default 0"
    )
    group.add_argument(
        "--http-port",
        type=_checked(options.port),
        default=None,
        help=f"port of {what} on the same interface (0: any free port{more})",
    )
    group.add_argument("--no-http", action="store_true", help="serve no HTTP endpoints")


def _pem_file(text: str) -> str:
    if not os.path.isfile(text):
        raise ValueError(f"no such file: {text!r}")
    return text


def _checked(check: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type from a check of shoal.deploy.options (ValueError -> exit 2)."""

    def convert(text: str) -> Any:
        try:
            return check(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = check.__name__  # argparse names the type in some messages
    return convert


def _text(what: str) -> Callable[[str], str]:
    """A non-empty string without control characters (names and tokens reach logs)."""

    def check(text: str) -> str:
        if not text or not text.isprintable():
            raise ValueError(f"{what} must be non-empty printable text, not {text!r}")
        return text

    check.__name__ = what
    return check


def _audit_path(text: str) -> str:
    """A file the audit log can be appended to (its folder exists)."""
    folder = os.path.dirname(os.path.abspath(text))
    if not text or os.path.isdir(text) or not os.path.isdir(folder):
        raise ValueError(f"cannot write an audit log at {text!r} (is its folder there?)")
    return text


def _host(text: str) -> str:
    """An interface to listen on: a host name or an IP address, without a port."""
    if not text or "://" in text or any(c.isspace() for c in text) or not text.isprintable():
        raise ValueError(f"not a host name or IP address: {text!r}")
    if ":" in text:
        try:
            ipaddress.IPv6Address(text.strip("[]"))
        except ValueError:
            raise ValueError(f"not a host: {text!r} (give the port with --port)") from None
        return text.strip("[]")
    return text


def _connect_address(text: str) -> Address:
    """An address to reach; without a port, the scheduler's default port."""
    address = parse_address(text, DEFAULT_PORT)
    if address.scheme == "inproc":
        raise ValueError(f"{text!r}: an inproc address exists only inside one process")
    if address.port == 0:
        raise ValueError(f"{text!r}: port 0 cannot be reached (the default is {DEFAULT_PORT})")
    return address


def _listen_address(text: str) -> str:
    """A data address for a worker to listen at (port 0 or none: any free port)."""
    address = parse_address(text, 0)
    if address.scheme == "inproc":
        raise ValueError(f"{text!r}: an inproc address exists only inside one process")
    return text


_positive = _checked(options.seconds)
_at_least_one = _checked(lambda text: options.count(text, 1))
_at_least_one.__name__ = "count"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shoal", description="shoal: a distributed task-computing service for Python."
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"shoal {__version__} (wire protocol {PROTOCOL_VERSION})",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    parser.add_argument(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="json: one JSON object a line, for log collectors (default text)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    sched = commands.add_parser("scheduler", help="run a scheduler")
    sched.set_defaults(parser=sched)
    sched.add_argument(
        "--host", type=_checked(_host), default="127.0.0.1", help="interface to listen on"
    )
    sched.add_argument(
        "--port",
        type=_checked(options.port),
        default=DEFAULT_PORT,
        help=f"0 picks a free port (default {DEFAULT_PORT})",
    )
    sched.add_argument(
        "--allow-insecure",
        action="store_true",
        help="listen beyond loopback without a token (anyone reaching the port runs code)",
    )
    sched.add_argument(
        "--heartbeat-timeout",
        type=_positive,
        default=30.0,
        metavar="SECONDS",
        help="remove a worker silent this long (default 30)",
    )
    sched.add_argument(
        "--allowed-failures",
        type=_at_least_one,
        default=3,
        metavar="N",
        help="fail a task with KilledWorker once N workers died running it (default 3)",
    )
    sched.add_argument(
        "--no-worker-warning",
        type=_checked(options.seconds),
        default=NO_WORKER_WARNING_S,
        metavar="SECONDS",
        help="tell a client when its task has waited this long for a worker with the "
        f"resources or name it asks for, and no worker has them (default {NO_WORKER_WARNING_S:g})",
    )
    sched.add_argument(
        "--no-workers-timeout",
        type=_checked(options.seconds),
        default=None,
        metavar="SECONDS",
        help="fail such a task with NoValidWorker after this long (default: it waits)",
    )
    sched.add_argument(
        "--audit-log",
        type=_checked(_audit_path),
        metavar="PATH",
        help="append who did what, as JSON lines (reopened on SIGHUP)",
    )
    _add_http(sched, DEFAULT_HTTP_PORT, "the dashboard, /metrics, /health, /ready, /api/v1")
    _add_security(sched)

    worker = commands.add_parser("worker", help="run a worker that joins a scheduler")
    worker.set_defaults(parser=worker)
    worker.add_argument(
        "address",
        type=_checked(_connect_address),
        help=f"the scheduler, e.g. tcp://10.0.0.5:7786 (default port {DEFAULT_PORT})",
    )
    worker.add_argument(
        "--nthreads",
        type=_at_least_one,
        default=None,
        help="threads running tasks (default: one per core it may use; in a container, "
        "its CPU limit rounded up)",
    )
    worker.add_argument(
        "--name", type=_checked(_text("the name")), default=None, help="unique worker name"
    )
    worker.add_argument(
        "--memory-limit",
        default=None,
        help="e.g. 8GB or 512MiB; 0.5: half this machine's memory; auto: its share of "
        f"the machine by threads; 0: no limit (at least {options.MIN_MEMORY_LIMIT // 2**20} "
        "MiB; default: in a container with a memory limit, 95%% of it, else none)",
    )
    worker.add_argument(
        "--resources",
        type=_checked(options.parse_resources),
        default={},
        help='what it offers, e.g. "GPU=1,MEM=8e9"',
    )
    worker.add_argument(
        "--gpus",
        type=_checked(parse_gpus),
        default=None,
        metavar="all|0,2|UUID,...",
        help="one worker per GPU, each pinned to its device with GPU=1: all, indices as "
        "nvidia-smi shows them (GPU:SLOT for a MIG instance), or GPU-/MIG- UUIDs",
    )
    worker.add_argument(
        "--device-memory-limit",
        default=None,
        help="with --gpus: restart a worker whose device use passes this: a fraction of the "
        f"device (default {options.DEFAULT_DEVICE_MEMORY_FRACTION}), a size such as 64GiB, "
        "or 0: no limit",
    )
    worker.add_argument(
        "--listen",
        type=_checked(_listen_address),
        default=None,
        help="data address for peers (default: chosen from ADDRESS)",
    )
    worker.add_argument(
        "--no-nanny",
        action="store_true",
        help="run the worker in this process, with no supervisor to restart it",
    )
    worker.add_argument(
        "--connect-timeout",
        type=_positive,
        default=60.0,
        metavar="SECONDS",
        help="keep trying to reach the scheduler this long, at start and after losing it "
        "(default 60)",
    )
    worker.add_argument(
        "--timeout-grace",
        type=_positive,
        default=5.0,
        metavar="SECONDS",
        help="restart the worker when a task runs this long past its timeout (default 5)",
    )
    worker.add_argument(
        "--max-restarts",
        type=_at_least_one,
        default=MAX_RESTARTS,
        metavar="N",
        help=f"the nanny gives up when its worker dies more than N times within "
        f"--restart-window (default {MAX_RESTARTS})",
    )
    worker.add_argument(
        "--restart-window",
        type=_positive,
        default=RESTART_WINDOW_S,
        metavar="SECONDS",
        help=f"see --max-restarts (default {RESTART_WINDOW_S:g})",
    )
    worker.add_argument(
        "--retire-timeout",
        type=_positive,
        default=retire.RETIRE_TIMEOUT_S,
        metavar="SECONDS",
        help="on SIGTERM the worker retires: its tasks finish or move and its values move "
        f"to other workers; it leaves after this long regardless (default "
        f"{retire.RETIRE_TIMEOUT_S:g}; SIGINT leaves at once)",
    )
    _add_http(worker, 0, "/metrics, /health, /ready")
    add_memory_arguments(worker, _checked, _text)
    _add_security(worker)

    retiring = retire.add_parser(
        commands, _checked(_connect_address), _checked(_text("the worker")), _positive
    )
    _add_security(retiring)

    stat = commands.add_parser("status", help="print a scheduler's workers and task counts")
    stat.set_defaults(parser=stat)
    stat.add_argument(
        "address",
        type=_checked(_connect_address),
        help=f"the scheduler, e.g. tcp://10.0.0.5:7786 (default port {DEFAULT_PORT})",
    )
    stat.add_argument("--json", action="store_true", help="the scheduler's info as JSON")
    stat.add_argument(
        "--timeout",
        type=_positive,
        default=10.0,
        metavar="SECONDS",
        help="give up when the scheduler does not answer within this (default 10)",
    )
    _add_security(stat)

    token = commands.add_parser("token", help="make tokens for a token file")
    token.set_defaults(parser=token)
    token_commands = token.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    new = token_commands.add_parser("new", help="print a fresh 'role name secret' line")
    new.add_argument("--role", required=True, choices=[r.value for r in Role])
    new.add_argument("--name", required=True, type=_checked(_text("the name")))

    demo = commands.add_parser("demo", help="run a real graph on an embedded local cluster")
    demo.add_argument(
        "--workers", type=_at_least_one, default=2, help="worker processes (default 2)"
    )
    demo.add_argument("--leaves", type=_at_least_one, default=1024, help="leaves of the reduction")
    return parser


def check_args(args: argparse.Namespace) -> None:
    """The checks that span flags, after parsing: each failure exits 2 with one line,
    before any process starts. Sets `args.memory_limit` to bytes."""
    parser: argparse.ArgumentParser | None = getattr(args, "parser", None)
    if parser is None:
        return
    if args.command == "token":
        return
    if args.tls_key and not args.tls_cert:
        parser.error("--tls-key needs --tls-cert")
    if args.tls_cert and not args.tls_ca:
        parser.error("--tls-cert needs --tls-ca")
    if args.require_tls and not (args.tls_ca and args.tls_cert and args.tls_key):
        parser.error("--require-tls needs --tls-ca, --tls-cert and --tls-key")
    if args.require_tls and args.command == "worker" and args.address.scheme != "tls":
        parser.error(f"--require-tls: the scheduler's address {args.address} is not tls://")
    _check_tokens(args, parser)
    if args.command == "worker":
        gpus.check_worker_args(args, parser)  # sets args.devices, found through NVML
        limits = cgroup.read_limits()
        if args.nthreads is None:
            # A GPU worker feeds one device: one thread, as dask-cuda's workers have.
            args.nthreads = 1 if args.devices else limits.threads(cgroup.usable_cores())
        if args.memory_limit is None:
            # The container's memory, shared by the workers of its devices, if several.
            share = CONTAINER_SHARE / max(1, len(args.devices))
            args.memory_limit = str(int(limits.memory * share)) if limits.memory else "0"
        try:
            args.memory_limit = options.memory_limit(args.memory_limit, args.nthreads)
        except ValueError as exc:
            parser.error(f"argument --memory-limit: {exc}")
        try:
            check_compression(args.spill_compression)
        except ValueError as exc:
            parser.error(f"argument --spill-compression: {exc}")


def _check_tokens(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Sets `args.keyring` from --token-file (None without one) and `args.token`:
    the one given, else $SHOAL_TOKEN, else (a worker) the file's worker token."""
    args.keyring = None
    if args.token_file is not None:
        if args.token is not None and args.command == "scheduler":
            parser.error("give --token or --token-file, not both")
        try:
            args.keyring = Keyring.from_file(args.token_file)
        except TokenFileError as exc:
            parser.error(f"argument --token-file: {exc}")
    if args.token is None and args.keyring is None:
        args.token = os.environ.get("SHOAL_TOKEN") or None
    if args.command != "scheduler" and args.keyring is not None and args.token is None:
        args.token = os.environ.get("SHOAL_TOKEN") or None
        roles = _CONNECTS_AS.get(args.command, (Role.ADMIN,))
        own = args.keyring.first(*roles)
        if args.token is None and own is None:
            words = " or ".join(r.value for r in roles)
            parser.error(f"argument --token-file: no {words} token to connect with")
        if args.token is None:
            args.token = own.secret.decode()


# The roles of the token file's token a command connects with, first found first.
_CONNECTS_AS = {
    "worker": (Role.WORKER, Role.ADMIN),
    "retire": (Role.ADMIN,),
    "status": (Role.READ, Role.SUBMIT, Role.ADMIN),
}


def _tls(args: argparse.Namespace) -> TLSConfig | None:
    if not (args.tls_ca or args.tls_cert):
        return None
    return TLSConfig(ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key)


class _Signals:
    """SIGINT and SIGTERM, caught for the whole life of the command; and, for a
    process started with a lifeline (by a nanny, by LocalCluster), the end of the
    process that started it."""

    def __init__(self) -> None:
        self.name = ""  # what stopped it: "SIGTERM", or "its parent's end"
        self._event = asyncio.Event()
        self._ignoring = ""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._caught, sig.name)
        watch_parent(lambda: self._caught("its parent's end"))

    def rearm(self, ignoring: str) -> None:
        """Wait for a further signal from now on, passing over `ignoring` ones."""
        self._ignoring = ignoring
        self._event = asyncio.Event()

    def _caught(self, name: str) -> None:
        if name == self._ignoring:
            return
        self.name = "" if self._ignoring else self.name
        if not self.name and not name.startswith("SIG"):
            log.warning("the process that started this one is gone; stopping")
        self.name = self.name or name
        self._event.set()

    async def race(self, awaitable: Any) -> bool:
        """Await `awaitable` unless a signal comes first (then cancel it): True if
        signalled. The awaitable's own outcome is left in it."""
        work = asyncio.ensure_future(awaitable)
        stop = asyncio.ensure_future(self._event.wait())
        await asyncio.wait([work, stop], return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if work.done():
            return False
        work.cancel()
        await asyncio.gather(work, return_exceptions=True)
        return True


async def _run_scheduler(args: argparse.Namespace) -> int:
    from shoal.scheduler.server import Scheduler

    tls = _tls(args)
    scheme = "tls" if tls else "tcp"
    host = f"[{args.host}]" if ":" in args.host else args.host
    scheduler = Scheduler(
        f"{scheme}://{host}:{args.port}",
        token=args.token,
        keyring=args.keyring,
        tls=tls,
        allow_insecure=args.allow_insecure,
        require_tls=args.require_tls,
        audit_log=args.audit_log,
        heartbeat_timeout=args.heartbeat_timeout,
        allowed_failures=args.allowed_failures,
        no_worker_warning=args.no_worker_warning,
        no_workers_timeout=args.no_workers_timeout,
        freeze_gc=True,  # this process is the scheduler's alone
        http_port=None if args.no_http else _scheduler_http_port(args),
        http_fallback=args.http_port is None,  # the default port gives way when taken
    )
    try:
        await scheduler.start()
    except PermissionError as exc:
        print(f"shoal scheduler: {exc}", file=sys.stderr)
        return 1
    gc.freeze()  # import-time objects never die: keep them out of collections
    print(f"shoal scheduler listening at {scheduler.address}", flush=True)
    if scheduler.http_address:
        print(f"shoal scheduler dashboard and metrics at {scheduler.http_address}", flush=True)
    signals = _Signals()
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, scheduler.reload)
    await signals.race(scheduler.finished())
    if scheduler.failure is not None:  # logged already; its supervisor restarts it
        await scheduler.close()
        return INTERNAL_ERROR_EXIT
    log.info("scheduler stopping (%s)", signals.name or "closed")
    await scheduler.close()
    return 0


def _scheduler_http_port(args: argparse.Namespace) -> int:
    if args.http_port is not None:
        return int(args.http_port)
    return 0 if args.port == 0 else DEFAULT_HTTP_PORT


async def _run_worker(args: argparse.Namespace) -> int:
    """A worker in this process; it joins its scheduler again whenever it loses it."""
    from shoal.worker import task_warnings
    from shoal.worker.http import WorkerWeb

    task_warnings.install()  # a task's warnings go to its client (README "Warnings")
    nanny_id = os.environ.pop(NANNY_ENV, "")
    args.gpu = gpus.worker_setup(args)  # pinned to its device, named after it, GPU=1
    signals = _Signals()
    if args.keyring is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, _reload, args.keyring)
    web = None
    if not args.no_http:
        web = WorkerWeb(
            host=_worker_http_host(args),
            port=args.http_port or 0,
            token=args.token,
            keyring=args.keyring,
            tls=_tls(args),
            require_tls=args.require_tls,
        )
        try:
            await web.start()
        except PermissionError as exc:
            print(f"shoal worker: {exc}", file=sys.stderr)
            return FATAL_EXIT
    try:
        return await _serve_worker(args, nanny_id, signals, web)
    finally:
        if web is not None:
            await web.close()


def _worker_http_host(args: argparse.Namespace) -> str:
    """The worker's HTTP interface: its data address's, or loopback for a
    scheduler on loopback, else every interface."""
    if args.listen is not None:
        host = parse_address(args.listen).host
        return host if host else "0.0.0.0"
    return "127.0.0.1" if args.address.is_loopback else "0.0.0.0"


async def _serve_worker(
    args: argparse.Namespace, nanny_id: str, signals: _Signals, web: WorkerWeb | None
) -> int:
    from shoal.worker.server import Worker

    first = True
    while True:
        worker = Worker(
            str(args.address),
            name=args.name,
            nthreads=args.nthreads,
            memory_limit=args.memory_limit,
            resources=args.resources,
            token=args.token,
            keyring=args.keyring,
            tls=_tls(args),
            listen=args.listen,
            connect_retry=args.connect_timeout,
            nanny=bool(nanny_id),
            nanny_id=nanny_id,
            timeout_grace=args.timeout_grace,
            gpu=args.gpu,
            http_address=web.address if web is not None else "",
            memory=memory_limits(args),
            local_directory=args.local_directory,
            spill_compression=check_compression(args.spill_compression),
        )
        if web is not None:
            web.worker = worker
        starting = asyncio.ensure_future(worker.start())
        if await signals.race(starting):
            return 0  # stopped while still trying to reach the scheduler
        if starting.exception() is not None:
            print(f"shoal worker: {starting.exception()}", file=sys.stderr)
            # Refused at first: a setting is wrong. Refused when joining again: the
            # scheduler may still hold the old registration; the nanny retries.
            return FATAL_EXIT if first else 1
        first_join = first
        if first:
            gc.freeze()
            first = False
        print(
            f"shoal worker {worker.name} joined {args.address}, serving data at {worker.address}",
            flush=True,
        )
        if first_join and web is not None:
            print(f"shoal worker {worker.name} metrics at {web.address}", flush=True)
        first_join = False
        finished = asyncio.ensure_future(worker.finished())
        signalled = await signals.race(finished)
        if signalled and signals.name == "SIGTERM":
            await retire.retire_on_signal(worker, signals, args.retire_timeout)
        await worker.close(f"stopped by {signals.name}" if signalled else "scheduler gone")
        if signalled or worker.retired:  # retired at `shoal retire`'s request: done
            return 0
        if finished.exception() is not None:
            return INTERNAL_ERROR_EXIT  # logged already; its nanny restarts it
        if worker.restart_requested:
            return RESTART_EXIT
        log.warning(
            "worker %s lost its scheduler; joining it again (trying for %g s)",
            worker.name,
            args.connect_timeout,
        )


def _reload(keyring: Keyring) -> None:
    """SIGHUP on a worker: its data port takes the token file's tokens anew."""
    try:
        added, removed, changed = keyring.reload()
    except TokenFileError as exc:
        log.error("token file not reloaded, the tokens stay as they were: %s", exc)
        return
    log.info(
        "token file reloaded: %d added, %d removed, %d changed",
        *map(len, (added, removed, changed)),
    )


async def _run_nanny(args: argparse.Namespace, argv: list[str]) -> int:
    """Supervise a worker process (see shoal.deploy.nanny), or with --gpus one per
    device (see shoal.deploy.gpus), until signalled."""
    from shoal.deploy.nanny import Nanny

    def make(name: str | None, worker_args: list[str], env: Any = None, device: Any = None) -> Any:
        return Nanny(
            str(args.address),
            worker_args,
            name=name,
            memory_limit=args.memory_limit,
            terminate=args.memory_terminate_fraction,
            nthreads=args.nthreads,
            token=args.token,
            tls=_tls(args),
            log_level=args.log_level,
            log_format=args.log_format,
            max_restarts=args.max_restarts,
            restart_window=args.restart_window,
            stop_timeout=args.retire_timeout + retire.NANNY_MARGIN_S,
            env=env,
            device=device,
        )

    if args.devices:
        nannies = gpus.device_nannies(args, _worker_options(argv, per_device=True), make)
    else:
        nannies = [make(args.name, _worker_options(argv))]

    def stop(sig: int = signal.SIGTERM) -> None:
        for nanny in nannies:
            nanny.stop(sig)

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):  # SIGTERM: its workers retire
        loop.add_signal_handler(sig, stop, sig)
    # SIGHUP: passed on to the workers, which read their token file again.
    loop.add_signal_handler(signal.SIGHUP, lambda: [nanny.hangup() for nanny in nannies])
    if watch_parent(lambda: stop(signal.SIGINT)):  # started by LocalCluster: end with it
        log.debug("nannies of %s end with the process that started them", args.name)
    return await gpus.run_all(nannies)


def _worker_options(argv: list[str], per_device: bool = False) -> list[str]:
    """The `shoal worker` options in `argv`, for the worker process: without the
    address (the one argument that is neither an option nor an option's value),
    --name (the nanny fixes it), the token (it travels in the environment), the
    global options before `worker`, and with `per_device` the options set anew for
    each GPU's worker."""
    rest = argv[argv.index("worker") + 1 :]
    dropped = ("--name", "--token", *(gpus.PER_DEVICE_OPTIONS if per_device else ()))
    out: list[str] = []
    value_of = ""  # the option whose value comes next
    for arg in rest:
        if value_of:
            if value_of not in dropped:
                out.append(arg)
            value_of = ""
            continue
        if not arg.startswith("-"):
            continue  # the scheduler's address: the nanny passes it on itself
        name = arg.split("=", 1)[0]
        if "=" not in arg and name not in _WORKER_FLAGS:
            value_of = name
        if name not in dropped:
            out.append(arg)
    return out


# `shoal worker` options that take no value.
_WORKER_FLAGS = ("--no-nanny", "--no-http", "--require-tls", "-h", "--help")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `shoal` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    check_args(args)
    level = "warning" if args.command in ("demo", "status") else args.log_level
    configure_logging(level, args.log_format)
    if args.command == "token":
        try:
            print(new_token_line(Role(args.role), args.name))
        except TokenFileError as exc:
            print(f"shoal token: {exc}", file=sys.stderr)
            return 2
        return 0
    if args.command == "demo":
        from shoal.deploy.demo import main as demo_main

        return demo_main(args.workers, args.leaves)
    if args.command == "retire":
        try:
            return retire.run(args, _tls(args))
        except (OSError, TimeoutError, ShoalError) as exc:
            print(f"shoal retire: {exc}", file=sys.stderr)
            return 1
    try:
        if args.command == "status":
            from shoal.deploy.status import status

            text = status(
                str(args.address),
                token=args.token,
                tls=_tls(args),
                timeout=args.timeout,
                as_json=args.json,
            )
            print(text, flush=True)
            return 0
        if args.command == "scheduler":
            return asyncio.run(_run_scheduler(args))
        if args.no_nanny:
            return asyncio.run(_run_worker(args))
        return asyncio.run(_run_nanny(args, list(sys.argv[1:] if argv is None else argv)))
    except (OSError, TimeoutError, ShoalError) as exc:
        print(f"shoal {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
