"""The `shoal` command's arguments: the parser of every subcommand, the types
that check each flag's value, and the checks across flags (check_args). A bad
value is one line naming the flag and exit code 2, before anything starts."""

from __future__ import annotations

import argparse
import ipaddress
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shoal import __version__
from shoal.deploy import cgroup, gpus, options, retire
from shoal.deploy.memory_flags import add_memory_arguments
from shoal.deploy.nanny import (
    MAX_RESTARTS,
    RESTART_WINDOW_S,
)
from shoal.protocol.address import Address, parse_address
from shoal.protocol.handshake import PROTOCOL_VERSION
from shoal.protocol.permissions import Role
from shoal.protocol.tokens import Keyring, TokenFileError
from shoal.scheduler.stalls import NO_WORKER_WARNING_S
from shoal.worker.gpu import parse_gpus
from shoal.worker.spillfile import check_compression

if TYPE_CHECKING:
    pass

DEFAULT_PORT = 7786
DEFAULT_HTTP_PORT = 8787  # the scheduler's HTTP endpoints and dashboard
# The part of a container's memory limit a worker takes by default: the rest is
# for its nanny, so that the nanny restarts it before the kernel kills the pod.
CONTAINER_SHARE = 0.95


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


def _add_scheduler_address(parser: argparse.ArgumentParser) -> None:
    """The positional address of the scheduler a command connects to."""
    parser.add_argument(
        "address",
        type=_checked(_connect_address),
        help=f"the scheduler, e.g. tcp://10.0.0.5:7786 (default port {DEFAULT_PORT})",
    )


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
    _add_scheduler_address(worker)
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
    _add_scheduler_address(stat)
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
