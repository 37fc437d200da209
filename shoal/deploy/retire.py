"""Graceful retirement from the outside: `shoal retire`, and a worker's SIGTERM.

`shoal retire ADDRESS --worker NAME ...` asks the scheduler to retire workers
(RetireWorkers) and waits for its answer. A `shoal worker` that gets SIGTERM
retires (Worker.retire): the decisions are the scheduler core's
(shoal.scheduler.retirement). SIGINT, or a second signal other than SIGTERM,
ends a retirement at once.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import TYPE_CHECKING, Any

from shoal.errors import AccessDenied, CommClosedError
from shoal.protocol.comm import connect
from shoal.protocol.messages import RegisterClient, RequestRefused, RetireWorkers, WorkersRetired

if TYPE_CHECKING:
    from shoal.protocol.tls import TLSConfig
    from shoal.worker.server import Worker

# How long a worker may take to retire by default; the chart's pod grace period
# is set above it.
RETIRE_TIMEOUT_S = 60.0
# How much longer a nanny gives its retiring worker before it kills it.
NANNY_MARGIN_S = 5.0


def add_parser(commands: Any, address: Any, text: Any, seconds: Any) -> argparse.ArgumentParser:
    """The `shoal retire` subcommand (the argparse types come from the CLI)."""
    retire = commands.add_parser(
        "retire",
        help="retire workers gracefully: their tasks finish or move, their values move",
    )
    retire.set_defaults(parser=retire)
    retire.add_argument("address", type=address, help="the scheduler, e.g. tcp://10.0.0.5:7786")
    retire.add_argument(
        "--worker",
        dest="workers",
        action="append",
        required=True,
        type=text,
        metavar="NAME",
        help="a worker's name or data address (repeat for several)",
    )
    retire.add_argument(
        "--timeout",
        type=seconds,
        default=RETIRE_TIMEOUT_S,
        metavar="SECONDS",
        help="let each worker go after this long regardless; wait a little longer for "
        f"the answer (default {RETIRE_TIMEOUT_S:g})",
    )
    return retire


async def retire_workers(
    address: str,
    workers: list[str],
    *,
    timeout: float,
    token: str | None = None,
    tls: TLSConfig | None = None,
) -> WorkersRetired:
    """Ask the scheduler at `address` to retire `workers`; its answer once they left.

    Raises:
        TimeoutError: no answer within `timeout` plus a margin.
        CommClosedError: the scheduler closed the connection.
        HandshakeError: a wrong or missing token.
        AccessDenied: the token's role may not retire workers (admin may).
    """
    comm = await connect(address, role="client", name="shoal retire", token=token, tls=tls)
    try:
        comm.send(RegisterClient(name="shoal retire"))
        comm.send(RetireWorkers(workers=tuple(workers), timeout=timeout, request_id=1))
        async with asyncio.timeout(timeout + NANNY_MARGIN_S + 5.0):
            while True:
                for msg in await comm.read():
                    # Others (ClientRegistered, WorkersChanged) say nothing it needs.
                    if type(msg) is WorkersRetired and msg.request_id == 1:
                        return msg
                    if type(msg) is RequestRefused:
                        raise AccessDenied(msg.reason)
    finally:
        await comm.close("done")


def run(args: argparse.Namespace, tls: TLSConfig | None) -> int:
    """`shoal retire`: 0 when every worker named left, 1 when some were unknown."""
    try:
        answer = asyncio.run(
            retire_workers(
                str(args.address), args.workers, timeout=args.timeout, token=args.token, tls=tls
            )
        )
    except CommClosedError as exc:
        print(f"shoal retire: the scheduler closed the connection: {exc}", file=sys.stderr)
        return 1
    except AccessDenied as exc:
        print(f"shoal retire: the scheduler refused: {exc}", file=sys.stderr)
        return 1
    for name in answer.retired:
        print(f"retired {name}")
    for name in answer.unknown:
        print(f"shoal retire: no worker {name!r}", file=sys.stderr)
    return 1 if answer.unknown else 0


async def retire_on_signal(worker: Worker, signals: Any, timeout: float) -> None:
    """A worker got SIGTERM: retire it, unless a SIGINT or its parent's end comes
    first (then it leaves at once). Returns once it has closed."""
    signals.rearm(ignoring="SIGTERM")
    reason = f"stopped by SIGTERM (pid {os.getpid()})"
    retiring = asyncio.ensure_future(worker.retire(timeout, reason))
    if await signals.race(retiring):
        await worker.close(f"stopped by {signals.name} while retiring")
