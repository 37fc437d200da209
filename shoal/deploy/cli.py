"""The `shoal` command: scheduler, worker and demo. Only the CLI configures logging."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING, Any

from shoal.deploy import gpus, retire
from shoal.deploy.arguments import DEFAULT_HTTP_PORT, build_parser, check_args
from shoal.deploy.lifeline import watch_parent
from shoal.deploy.logs import configure_logging
from shoal.deploy.memory_flags import memory_limits
from shoal.deploy.nanny import (
    FATAL_EXIT,
    INTERNAL_ERROR_EXIT,
    NANNY_ENV,
    RESTART_EXIT,
)
from shoal.errors import ShoalError
from shoal.protocol.address import parse_address
from shoal.protocol.permissions import Role
from shoal.protocol.tls import TLSConfig
from shoal.protocol.tokens import Keyring, TokenFileError, new_token_line
from shoal.worker.spillfile import check_compression

if TYPE_CHECKING:
    from shoal.worker.http import WorkerWeb

log = logging.getLogger("shoal.cli")


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
