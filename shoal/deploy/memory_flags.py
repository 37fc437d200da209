"""The memory options of `shoal worker`: thresholds, the spill folder, compression.

Parsed by shoal.deploy.cli (values checked by shoal.deploy.options), turned into
the worker's MemoryLimits (shoal.worker.memory).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from shoal.deploy import options
from shoal.worker import memory


def add_memory_arguments(
    parser: argparse.ArgumentParser,
    checked: Callable[[Callable[[str], Any]], Callable[[str], Any]],
    text: Callable[[str], Callable[[str], str]],
) -> None:
    """The memory group of `shoal worker`; `checked` and `text` are the CLI's
    converters (one-line errors, exit 2)."""
    group = parser.add_argument_group(
        "memory", "thresholds as fractions of --memory-limit; 'off' turns one off"
    )
    fraction = checked(options.fraction)
    for name, default, what in (
        ("target", memory.TARGET, "managed memory above this spills to disk"),
        ("spill", memory.SPILL, "process memory above this spills down to target"),
        ("pause", memory.PAUSE, "process memory above this pauses the worker"),
        ("terminate", memory.TERMINATE, "process memory above this restarts it (nanny)"),
    ):
        group.add_argument(
            f"--memory-{name}-fraction",
            type=fraction,
            default=default,
            metavar="F",
            help=f"{what} (default {default})",
        )
    group.add_argument(
        "--local-directory",
        type=checked(text("the local directory")),
        default=None,
        metavar="DIR",
        help="where spilled values go (default: a temporary folder)",
    )
    group.add_argument(
        "--spill-compression",
        choices=("none", "lz4", "zstd"),
        default="none",
        help="compress spilled values (lz4 needs the lz4 package, zstd zstandard)",
    )


def memory_limits(args: argparse.Namespace) -> memory.MemoryLimits:
    """The thresholds `shoal worker` was given, with its memory limit in bytes."""
    return memory.MemoryLimits(
        args.memory_limit,
        target=args.memory_target_fraction,
        spill=args.memory_spill_fraction,
        pause=args.memory_pause_fraction,
        terminate=args.memory_terminate_fraction,
    )
