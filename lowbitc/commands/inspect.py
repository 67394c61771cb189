"""`lowbitc inspect FILE`: the tensors of a GGUF or safetensors checkpoint, one row each."""

from __future__ import annotations

import argparse
import json

from lowbitc import interop

NAME = "inspect"
HELP = "list a GGUF / safetensors checkpoint's tensors: name, shape, format, group, bytes, bits"
COLUMNS = ("name", "shape", "format", "group", "bytes", "bits")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="a .gguf or .safetensors file")
    parser.add_argument("--format", default=None,
                        help=f"the source format (sniffed when omitted): {sorted(interop.CODECS)}")
    parser.add_argument("--json", action="store_true", help="print a JSON list of rows")


def _cell(row: dict, col: str) -> str:
    v = row[col]
    if col == "shape":
        return "x".join(str(d) for d in v)
    if col == "bits":
        return f"{v:.3g}"
    return "-" if v is None else str(v)


def run(args) -> int:
    rows = interop.inspect(args.file, args.format)
    if args.json:
        print(json.dumps(rows, default=list))
        return 0
    table = [COLUMNS] + [tuple(_cell(r, c) for c in COLUMNS) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    for line in table:
        print("  ".join(c.ljust(w) if i < 3 else c.rjust(w)
                        for i, (c, w) in enumerate(zip(line, widths))).rstrip())
    total = sum(r["bytes"] for r in rows)
    print(f"{len(rows)} tensors, {total} bytes")
    return 0
