"""The `shoal` command: scheduler, worker and demo. Only the CLI configures logging."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
from typing import Any

from shoal import __version__
from shoal.deploy.lifeline import watch_parent
from shoal.deploy.nanny import (
    FATAL_EXIT,
    MAX_RESTARTS,
    NANNY_ENV,
    RESTART_EXIT,
    RESTART_WINDOW_S,
)
from shoal.deploy.options import parse_bytes, parse_resources
from shoal.errors import ShoalError
from shoal.protocol.handshake import PROTOCOL_VERSION
from shoal.protocol.tls import TLSConfig

DEFAULT_PORT = 7786
log = logging.getLogger("shoal.cli")


def _add_security(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("security")
    group.add_argument(
        "--token",
        default=os.environ.get("SHOAL_TOKEN"),
        help="cluster token (default: $SHOAL_TOKEN); required beyond loopback",
    )
    group.add_argument("--tls-ca", metavar="PEM", help="CA bundle peers must chain to")
    group.add_argument("--tls-cert", metavar="PEM", help="this side's certificate")
    group.add_argument("--tls-key", metavar="PEM", help="this side's private key")


def _size(text: str) -> int:
    try:
        return parse_bytes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _resources(text: str) -> dict[str, float]:
    try:
        return parse_resources(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {text}")
    return value


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


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
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    sched = commands.add_parser("scheduler", help="run a scheduler")
    sched.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    sched.add_argument("--port", type=int, default=DEFAULT_PORT, help="0 picks a free port")
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
    _add_security(sched)

    worker = commands.add_parser("worker", help="run a worker that joins a scheduler")
    worker.add_argument("address", help="the scheduler, e.g. tcp://10.0.0.5:7786")
    worker.add_argument("--nthreads", type=int, default=os.cpu_count() or 1)
    worker.add_argument("--name", default=None, help="unique worker name")
    worker.add_argument("--memory-limit", type=_size, default=0, help="e.g. 8GB; 0 means no limit")
    worker.add_argument(
        "--resources", type=_resources, default={}, help='what it offers, e.g. "GPU=1,MEM=8e9"'
    )
    worker.add_argument(
        "--listen", default=None, help="data address for peers (default: chosen from ADDRESS)"
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
    _add_security(worker)

    demo = commands.add_parser("demo", help="run a real graph on an embedded local cluster")
    demo.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    demo.add_argument("--leaves", type=int, default=1024, help="leaves of the reduction")
    return parser


def _tls(args: argparse.Namespace) -> TLSConfig | None:
    if not (args.tls_ca or args.tls_cert):
        return None
    if not args.tls_ca:
        raise SystemExit("shoal: error: --tls-cert needs --tls-ca")
    return TLSConfig(ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key)


class _Signals:
    """SIGINT and SIGTERM, caught for the whole life of the command; and, for a
    process started with a lifeline (by a nanny, by LocalCluster), the end of the
    process that started it."""

    def __init__(self) -> None:
        self.name = ""  # what stopped it: "SIGTERM", or "its parent's end"
        self._event = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._caught, sig.name)
        watch_parent(lambda: self._caught("its parent's end"))

    def _caught(self, name: str) -> None:
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
        tls=tls,
        allow_insecure=args.allow_insecure,
        heartbeat_timeout=args.heartbeat_timeout,
        allowed_failures=args.allowed_failures,
        freeze_gc=True,  # this process is the scheduler's alone
    )
    try:
        await scheduler.start()
    except PermissionError as exc:
        print(f"shoal scheduler: {exc}", file=sys.stderr)
        return 1
    gc.freeze()  # import-time objects never die: keep them out of collections
    print(f"shoal scheduler listening at {scheduler.address}", flush=True)
    signals = _Signals()
    await signals.race(scheduler.finished())
    log.info("scheduler stopping (%s)", signals.name or "closed")
    await scheduler.close()
    return 0


async def _run_worker(args: argparse.Namespace) -> int:
    """A worker in this process; it joins its scheduler again whenever it loses it."""
    from shoal.worker.server import Worker

    nanny_id = os.environ.pop(NANNY_ENV, "")
    signals = _Signals()
    first = True
    while True:
        worker = Worker(
            args.address,
            name=args.name,
            nthreads=args.nthreads,
            memory_limit=args.memory_limit,
            resources=args.resources,
            token=args.token,
            tls=_tls(args),
            listen=args.listen,
            connect_retry=args.connect_timeout,
            nanny=bool(nanny_id),
            nanny_id=nanny_id,
            timeout_grace=args.timeout_grace,
        )
        starting = asyncio.ensure_future(worker.start())
        if await signals.race(starting):
            return 0  # stopped while still trying to reach the scheduler
        if starting.exception() is not None:
            print(f"shoal worker: {starting.exception()}", file=sys.stderr)
            # Refused at first: a setting is wrong. Refused when joining again: the
            # scheduler may still hold the old registration; the nanny retries.
            return FATAL_EXIT if first else 1
        if first:
            gc.freeze()
            first = False
        print(
            f"shoal worker {worker.name} joined {args.address}, serving data at {worker.address}",
            flush=True,
        )
        finished = asyncio.ensure_future(worker.finished())
        signalled = await signals.race(finished)
        await worker.close(f"stopped by {signals.name}" if signalled else "scheduler gone")
        if signalled:
            return 0
        if finished.exception() is not None:
            return 1  # an internal error, logged already
        if worker.restart_requested:
            return RESTART_EXIT
        log.warning(
            "worker %s lost its scheduler; joining it again (trying for %g s)",
            worker.name,
            args.connect_timeout,
        )


async def _run_nanny(args: argparse.Namespace, argv: list[str]) -> int:
    """Supervise a worker process (see shoal.deploy.nanny) until signalled."""
    from shoal.deploy.nanny import Nanny

    nanny = Nanny(
        args.address,
        _worker_options(argv, args.address),
        name=args.name,
        memory_limit=args.memory_limit,
        token=args.token,
        tls=_tls(args),
        log_level=args.log_level,
        max_restarts=args.max_restarts,
        restart_window=args.restart_window,
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, nanny.stop)
    if watch_parent(nanny.stop):  # started by LocalCluster: end with it
        log.debug("nanny of %s ends with the process that started it", nanny.name)
    return await nanny.run()


def _worker_options(argv: list[str], address: str) -> list[str]:
    """The `shoal worker` options in `argv`, for the worker process: without the
    address, --name (the nanny fixes it), the token (it travels in the
    environment) and the global options before `worker`."""
    rest = argv[argv.index("worker") + 1 :]
    out: list[str] = []
    skip = False
    for i, arg in enumerate(rest):
        if skip:
            skip = False
            continue
        if arg == address and address not in rest[:i]:
            continue
        name = arg.split("=", 1)[0]
        if name in ("--name", "--token"):
            skip = "=" not in arg
            continue
        out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `shoal` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    level = "warning" if args.command == "demo" else args.log_level
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.command == "demo":
        from shoal.deploy.demo import main as demo_main

        return demo_main(args.workers, args.leaves)
    try:
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
