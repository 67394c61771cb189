"""`lowbitc layout show EXPR [--png FILE]`: draw a layout or a thread-value layout."""

from __future__ import annotations

import argparse

from lowbitc.errors import UserArgumentError
from lowbitc.layout.expr import evaluate
from lowbitc.layout.picture import ascii_picture, save_png

NAME = "layout"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = sub.add_parser("show", help="print the grid of indices or thread/value owners",
                          description="EXPR uses Layout(shape, stride), Swizzle(b,m,s), "
                          "spatial(...), local(...), replicated(n), the algebra functions "
                          "(composition, logical_divide, blocked_product, ...), "
                          "mma_m16n8k16_a/b/c, tuples, ints and '*' / '/'.")
    show.add_argument("expr", metavar="EXPR", help="layout expression, e.g. 'Layout((4,8),(8,1))'")
    show.add_argument("--png", metavar="FILE", default=None,
                      help="also draw the grid to FILE (PNG, one colour per thread)")


def run(args: argparse.Namespace) -> int:
    obj = evaluate(args.expr)
    if obj is None or isinstance(obj, (int, tuple)):
        raise UserArgumentError(f"layout show: {args.expr!r} is not a layout (got {obj!r})")
    print(ascii_picture(obj))
    if args.png:
        save_png(obj, args.png)
        print(f"wrote {args.png}")
    return 0
