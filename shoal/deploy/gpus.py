"""`shoal worker --gpus`: one worker process per GPU, under one supervisor.

The devices are looked up once, through NVML, before any process starts (an
error names what was looked for and what was found). Then the supervisor runs
one nanny per device, each starting its worker with CUDA_VISIBLE_DEVICES
pinned to that device's UUID, `--gpus UUID` and the device's memory limit in
bytes. A worker with a device offers GPU=1 (unless --resources says
otherwise), is named after it (`host-gpu3`, `host-gpu3-mig1`), and describes
it in its heartbeats. By default each worker runs one thread, and a memory
limit read from the container is shared among the workers. When one nanny
gives up on its worker, the supervisor stops the others (they retire) and
exits with its code, for the orchestrator to see.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

from shoal.deploy import options
from shoal.errors import NoDevice
from shoal.worker.gpu import (
    VISIBLE_ENV,
    Device,
    DeviceMonitor,
    Nvml,
    pin_env,
    select,
    worker_name,
)

log = logging.getLogger(__name__)

# The `shoal worker` options the supervisor sets anew for each device's worker.
PER_DEVICE_OPTIONS = ("--gpus", "--device-memory-limit", "--memory-limit")


def asked(spec: str | tuple[str, ...], flag: str = "--gpus") -> str:
    """How errors name the request: '--gpus all', '--gpus 0,2'."""
    return f"{flag} {spec if isinstance(spec, str) else ','.join(spec)}"


def find(spec: str | tuple[str, ...], what: str) -> tuple[Nvml, list[Device]]:
    """NVML and the devices `spec` names on this node.

    Raises:
        NoDevice: none, naming `what` was asked and what NVML found.
    """
    nvml = Nvml.load(what)
    return nvml, select(spec, nvml.devices(), os.environ.get(VISIBLE_ENV), what)


def limits_for(value: str | float | None, devices: list[Device]) -> list[int]:
    """Each device's memory limit in bytes (`value` as --device-memory-limit takes it).

    Raises:
        ValueError: not a limit.
    """
    text = options.DEFAULT_DEVICE_MEMORY_FRACTION if value is None else value
    return [options.device_memory_limit(text, device.memory_total) for device in devices]


def check_worker_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Resolve `shoal worker --gpus`: sets args.nvml, args.devices and
    args.device_limits (empty without --gpus). Exits 2 with one line on a problem."""
    args.nvml, args.devices, args.device_limits = None, [], []
    if args.gpus is None:
        if args.device_memory_limit is not None:
            parser.error("--device-memory-limit needs --gpus")
        return
    try:
        args.nvml, args.devices = find(args.gpus, asked(args.gpus))
        args.device_limits = limits_for(args.device_memory_limit, args.devices)
    except NoDevice as exc:
        parser.error(str(exc))
    except ValueError as exc:
        parser.error(f"argument --device-memory-limit: {exc}")
    if args.no_nanny and len(args.devices) > 1:
        named = ", ".join(d.label for d in args.devices)
        parser.error(
            f"--no-nanny runs one worker, and {asked(args.gpus)} names {len(args.devices)} "
            f"devices ({named}): name one, or let the supervisor start one worker each"
        )


def worker_setup(args: argparse.Namespace) -> DeviceMonitor | None:
    """For the one worker of this process: pin the process to its device (before
    anything starts CUDA), name the worker after it, offer GPU=1; its monitor."""
    if not args.devices:
        return None
    device = args.devices[0]
    os.environ.update(pin_env(device))
    args.name = worker_name(args.name or socket.gethostname(), device)
    args.resources = {**args.resources, "GPU": 1.0}  # one device, whatever --resources said
    return DeviceMonitor.pinned(args.nvml, args.device_limits[0])


def device_worker_args(
    options_: list[str], device: Device, limit: int, memory_limit: int | None = None
) -> list[str]:
    """The `shoal worker` options of the worker of `device` (with its host memory
    limit in bytes, when given)."""
    out = [*options_, "--gpus", device.uuid, "--device-memory-limit", str(limit)]
    return out if memory_limit is None else [*out, "--memory-limit", str(memory_limit)]


def device_nannies(
    args: argparse.Namespace, worker_options: list[str], make_nanny: Callable[..., Any]
) -> list[Any]:
    """One nanny per device: `make_nanny(name, worker_args, env, device)` makes each."""
    base = args.name or socket.gethostname()
    nannies = []
    for device, limit in zip(args.devices, args.device_limits, strict=True):
        nanny = make_nanny(
            worker_name(base, device),
            device_worker_args(worker_options, device, limit, args.memory_limit),
            pin_env(device),
            DeviceMonitor(args.nvml, device, limit),
        )
        log.info("worker %s runs on %s", nanny.name, device)
        nannies.append(nanny)
    return nannies


async def run_all(nannies: list[Any]) -> int:
    """Run the nannies until all stop; the supervisor's exit code. When one gives
    up on its worker (a non-zero code), the others are stopped and that code returned."""
    runs = {asyncio.ensure_future(nanny.run()): nanny for nanny in nannies}
    code, pending = 0, set(runs)
    while pending:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        failed = [run for run in done if run.result() != 0]
        if failed and not code:
            code = failed[0].result()
            if pending:
                log.error("the nanny of %s gave up; stopping the others", runs[failed[0]].name)
            for run in pending:
                runs[run].stop()
    return code
