"""The `lowbitc` command line: one sub-command per module in `lowbitc.commands`.

Each command module defines `NAME`, `HELP`, `add_arguments(parser)` and `run(args) -> int`.
A `LowbitcError` (or a user's ValueError/TypeError) is printed without a traceback and exits 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from lowbitc.errors import LowbitcError

# module names under lowbitc.commands, in the order `lowbitc --help` lists them
COMMANDS = ("demo", "formats", "compile", "emit", "layout", "bench", "tune", "cache")


def _load_commands() -> list:
    mods = []
    for name in COMMANDS:
        try:
            mods.append(importlib.import_module(f"lowbitc.commands.{name}"))
        except ModuleNotFoundError as e:
            if e.name != f"lowbitc.commands.{name}":
                raise
    return mods


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lowbitc", description="lowbitc: a compiler for 1-8-bit kernels (CPU and CUDA)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in _load_commands():
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 1
    try:
        return int(args._run(args) or 0)
    except BrokenPipeError:  # `lowbitc formats | head`: the reader left; stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (LowbitcError, ValueError, TypeError, FileNotFoundError) as e:
        print(f"lowbitc {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
