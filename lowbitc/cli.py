"""The `lowbitc` command line: one sub-command per module in `lowbitc.commands`.

Each command module defines `NAME`, `add_arguments(parser)` and `run(args) -> int`; its one-line
help lives in COMMANDS below, so `lowbitc --help` imports no command module and a command
imports only its own (`bench` alone pulls in torch). A `LowbitcError` (or a user's
ValueError/TypeError) is printed without a traceback and exits 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from lowbitc.errors import LowbitcError

# module name under lowbitc.commands -> one-line help, in the order `lowbitc --help` lists them
COMMANDS = {
    "demo": "compile and run the shipped GEMV/GEMM/dequant kernels for a spread of formats",
    "formats": "list every number format: bits, kind, range, smallest subnormal, NaN/inf policy",
    "compile": "compile a .lbk file and print a summary per kernel "
               "(or its ir/lowered/llvm/asm text)",
    "emit": "print a kernel's IR, lowered IR, LLVM IR, assembly, PTX or code statistics",
    "layout": "show a CuTe layout or thread-value layout as a grid "
              "(e.g. 'spatial(8,4)*local(1,2)')",
    "bench": "benchmark the CPU GEMV/GEMM/dequant kernels against numpy, torch and memory copy",
    "tune": "search a kernel's tune choices for the fastest on a shape and remember the winner",
    "cache": "show or clear the persistent compile cache (~/.cache/lowbitc, LOWBITC_CACHE_DIR)",
    "inspect": "list a GGUF / safetensors checkpoint's tensors: name, shape, format, group, "
               "bytes, bits",
}


def chosen_command(argv: list[str]) -> str | None:
    """The command named on the command line (its first word not an option), if any."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser, with the arguments of the command `argv` names (every command's when
    `argv` is None: tests and docs use that; `main` loads only the one it runs)."""
    parser = argparse.ArgumentParser(
        prog="lowbitc", description="lowbitc: a compiler for 1-8-bit kernels (CPU and CUDA)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = set(COMMANDS) if argv is None else {chosen_command(argv)}
    for name, help_ in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if name in wanted:
            mod = importlib.import_module(f"lowbitc.commands.{name}")
            mod.add_arguments(p)
            p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
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
