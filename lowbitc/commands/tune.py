"""`lowbitc tune KERNEL --wtype T --shape M,N,K [--budget B] [--group G]`.

KERNEL is a shipped op (`matmul`, `dequantize`) or a .lbk file. Shows a progress bar while it
searches the kernel's `tune` choices, then a results table and the winner, which is stored in
the compile cache for the shape's bucket (where `lowbitc.ops` finds it).
"""

from __future__ import annotations

import argparse
import sys

from lowbitc.autotune import OPS, tune
from lowbitc.commands.compile import add_define_argument, parse_defines
from lowbitc.errors import UserArgumentError
from lowbitc.tuning.trials import format_seconds

NAME = "tune"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kernel", metavar="KERNEL",
                        help=f"a shipped op ({', '.join(OPS)}) or a .lbk file")
    parser.add_argument("--wtype", default=None,
                        help="weight format (ops: default u4; a .lbk file: sets W)")
    parser.add_argument("--shape", required=True,
                        help="M,N,K (matmul), N,K (dequantize) or NAME=SIZE,... (a .lbk file)")
    parser.add_argument("--budget", type=int, default=None,
                        help="most trials (default: all points up to 64, else halving)")
    parser.add_argument("--group", type=int, default=128, help="quantization group size")
    parser.add_argument("--zero-point", action="store_true", help="ops: weights with zeros")
    parser.add_argument("--backend", default="llvm", help="backend (default llvm)")
    parser.add_argument("--executor", choices=("process", "thread", "inline"),
                        default="process", help="where candidates compile and run")
    parser.add_argument("--strategy", choices=("auto", "exhaustive", "random", "halving"),
                        default="auto")
    parser.add_argument("--force", action="store_true", help="search even if a winner is stored")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_define_argument(parser)


def parse_shape(text: str, op: str | None) -> dict[str, int] | tuple[int, ...]:
    """`1,4096,4096` (an op's dims in order) or `N=4096,K=4096`."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        if parts and all("=" in p for p in parts):
            return {n.strip(): int(v) for n, _, v in (p.partition("=") for p in parts)}
        if op is not None:
            return tuple(int(p) for p in parts)
    except ValueError:
        pass
    want = ",".join(OPS[op]) if op else "NAME=SIZE,..."
    raise UserArgumentError(f"--shape: expected {want}, got {text!r}")


def run(args: argparse.Namespace) -> int:
    op = args.kernel if args.kernel in OPS else None
    shape = parse_shape(args.shape, op)
    params = parse_defines(args.defines)
    scalars = {"group": args.group}
    if op is None and args.wtype is not None:
        params.setdefault("W", args.wtype)
    result = tune(args.kernel, shape, args.budget, args.backend, args.executor,
                  progress=not args.no_progress, wtype=args.wtype or "u4", group=args.group,
                  zero_point=args.zero_point, params=None if op else params,
                  scalars=None if op else scalars, strategy=args.strategy, force=args.force)
    print(result.table())
    best = ", ".join(f"{k}={v}" for k, v in result.best.items())
    source = " (stored earlier)" if result.from_cache else ""
    print(f"winner: {best} at {format_seconds(result.seconds)}{source}")
    if result.pruned:
        pruned = "; ".join(f"{text}: {n}" for text, n in result.pruned.items())
        print(f"pruned before compiling: {pruned}", file=sys.stderr)
    return 0
