"""The `shoal` command. Only the CLI configures logging handlers."""

from __future__ import annotations

import argparse
import logging
import sys

from shoal import __version__
from shoal.protocol.handshake import PROTOCOL_VERSION


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shoal",
        description="shoal: a distributed task-computing service for Python.",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"shoal {__version__} (wire protocol {PROTOCOL_VERSION})",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser("demo", help="run a short, real demonstration on loopback")
    demo.add_argument(
        "--array-mb", type=int, default=64, help="size of the array to move (default 64)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `shoal` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.command == "demo":
        from shoal.deploy.demo import main as demo_main

        return demo_main(args.array_mb)
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
