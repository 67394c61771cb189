"""The textual IR: one op per line, canonical ids, sorted attributes, explicit types.

`lowbitc.ir.parser.parse` reads this text back: `parse(print_kernel(k)) == k`.
"""

from __future__ import annotations

import json
import math

from lowbitc.errors import SourceLoc
from lowbitc.ir.core import Kernel, Op, Region, Value
from lowbitc.ir.opdefs import attr_items


def format_attr(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, tuple):
        return "[" + ", ".join(format_attr(x) for x in v) + "]"
    raise TypeError(f"attribute value {v!r} has no textual form")


def format_loc(loc: SourceLoc | None) -> str:
    return f" loc({json.dumps(loc.file)}:{loc.line}:{loc.col})" if loc else ""


def _typed(v: Value) -> str:
    return f"{v}: {v.type}"


def _op_lines(op: Op, indent: str) -> list[str]:
    head = indent
    if op.results:
        head += ", ".join(str(r) for r in op.results) + " = "
    head += op.opcode
    if op.operands:
        head += " " + ", ".join(str(v) for v in op.operands)
    items = attr_items(op.attrs)
    if items:
        head += " {" + ", ".join(f"{k}={format_attr(v)}" for k, v in items) + "}"
    if op.results:
        head += " : " + ", ".join(str(r.type) for r in op.results)
    head += format_loc(op.loc)
    lines = [head]
    for r in op.regions:
        lines[-1] += " region(" + ", ".join(_typed(a) for a in r.args) + ") {"
        lines += _region_lines(r, indent + "  ")
        lines.append(indent + "}")
    return lines


def _region_lines(r: Region, indent: str) -> list[str]:
    out: list[str] = []
    for op in r.ops:
        out += _op_lines(op, indent)
    return out


def print_kernel(k: Kernel) -> str:
    params = ", ".join(_typed(p) for p in k.params)
    dims = ", ".join(_typed(d) for d in k.dims)
    meta = ", ".join(f"{a}={json.dumps(b)}" for a, b in k.meta)
    head = f"kernel @{k.name}({params}) dims({dims}) threads={k.threads} meta({meta})"
    lines = [head + format_loc(k.loc) + " {", "grid:"]
    lines += _region_lines(k.grid, "  ")
    lines.append("body:")
    lines += _region_lines(k.body, "  ")
    lines.append("}")
    return "\n".join(lines) + "\n"
