"""The `shoal` command: scheduler, worker and demo. Only the CLI configures logging."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys

from shoal import __version__
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


async def _until_signalled(finished: asyncio.Future[None]) -> str:
    """Wait for SIGINT/SIGTERM or for `finished`; the signal's name, or "" if none."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    got: list[str] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda s=sig: (got.append(s.name), stop.set()))
    waiter = asyncio.ensure_future(stop.wait())
    await asyncio.wait([waiter, finished], return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    return got[0] if got else ""


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
        freeze_gc=True,  # this process is the scheduler's alone
    )
    try:
        await scheduler.start()
    except PermissionError as exc:
        print(f"shoal scheduler: {exc}", file=sys.stderr)
        return 1
    gc.freeze()  # import-time objects never die: keep them out of collections
    print(f"shoal scheduler listening at {scheduler.address}", flush=True)
    finished = asyncio.ensure_future(scheduler.finished())
    why = await _until_signalled(finished)
    log.info("scheduler stopping (%s)", why or "closed")
    await scheduler.close()
    return 0


async def _run_worker(args: argparse.Namespace) -> int:
    from shoal.worker.server import Worker

    worker = Worker(
        args.address,
        name=args.name,
        nthreads=args.nthreads,
        memory_limit=args.memory_limit,
        resources=args.resources,
        token=args.token,
        tls=_tls(args),
        listen=args.listen,
    )
    await worker.start()
    gc.freeze()
    print(
        f"shoal worker {worker.name} joined {args.address}, serving data at {worker.address}",
        flush=True,
    )
    finished = asyncio.ensure_future(worker.finished())
    why = await _until_signalled(finished)
    await worker.close(f"received {why}" if why else "scheduler gone")
    return 0 if why else 1  # stopped on request, or lost its scheduler


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
    runner = _run_scheduler if args.command == "scheduler" else _run_worker
    try:
        return asyncio.run(runner(args))
    except (OSError, TimeoutError, ShoalError) as exc:
        print(f"shoal {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
