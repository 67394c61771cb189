"""`lowbitc formats`: every number format with its width, range and NaN/inf policy."""

from __future__ import annotations

import argparse
import json

from lowbitc.dtypes import Format, dtype, dtypes

NAME = "formats"
COLUMNS = ("name", "bits", "kind", "min", "max", "min_normal", "min_subnormal", "policy")
MACHINE_NAMES = ("f16", "bf16", "f32")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--all", action="store_true", help="also list f16, bf16 and f32")
    parser.add_argument("--json", action="store_true", help="print a JSON list of rows")


def policy(fmt: Format) -> str:
    """How the format treats NaN, infinities, signed zero and overflow, in a few words."""
    if fmt.kind != "float":
        return "no inf/NaN (NaN input rejected); saturates"
    return {
        "finite": "every code finite, no inf/NaN (NaN input rejected); saturates",
        "fn": "NaN = S.1111.111, no inf; saturates",
        "fnuz": "NaN = 0x80 (no -0), no inf; saturates",
        "ieee": "IEEE: exponent all ones = inf/NaN; finite overflow saturates",
        "e8m0": "unsigned powers of two, no zero; NaN = 0xFF; saturates",
    }[fmt.special]


def row(fmt: Format) -> dict:
    return {
        "name": fmt.name,
        "bits": fmt.bits,
        "kind": fmt.kind,
        "min": fmt.min,
        "max": fmt.max,
        "min_normal": fmt.min_normal,
        "min_subnormal": fmt.min_subnormal,
        "policy": policy(fmt),
    }


def _cell(v) -> str:
    return f"{v:.7g}" if isinstance(v, float) else str(v)


def run(args: argparse.Namespace) -> int:
    names = dtypes() + (list(MACHINE_NAMES) if args.all else [])
    rows = [row(dtype(n)) for n in names]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    cells = [[_cell(r[c]) for c in COLUMNS] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(COLUMNS)]
    print("  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True)).rstrip())
    for x in cells:
        print("  ".join(v.ljust(w) for v, w in zip(x, widths, strict=True)).rstrip())
    return 0
