"""Bit-packing: a load of a packed format's codes becomes `load_codes`, which reads whole
uint32 words of the canonical LSB-first stream and extracts each code with shifts and masks
(codes that straddle two words take bits from both). Backends vectorise that extraction.
Every `codes` of one load in scope reads the same `load_codes` (one load decoded as several
formats of its width, as matmul_mix.lbk does, stays one read of the words)."""

from __future__ import annotations

from functools import partial

from lowbitc.ir.builder import Builder
from lowbitc.ir.core import Op
from lowbitc.ir.opdefs import CodesAttrs
from lowbitc.ir.types import TileType
from lowbitc.passes.base import Defs, register, rewrite
from lowbitc.signature import format_bits


def _rule(op: Op, b: Builder, defs: Defs, seen: dict):
    if op.opcode != "codes" or not isinstance(op.results[0].type, TileType):
        return None
    src = defs.of(op.operands[0])
    if src is None or src.opcode != "load":
        return None
    t = src.operands[0].type
    attrs = CodesAttrs(format_bits(t.dtype), op.attrs.dtype, src.attrs.sizes, src.attrs.masked)
    key = (op.operands[0].id, attrs)
    prev = seen.get(key)
    if prev is None or b.defining_op(prev) is None:  # none yet, or out of scope here
        prev = seen[key] = b.emit("load_codes", *src.operands, attrs=attrs)
    return (prev,)


@register("bitpack")
def bitpack(k):
    """Loads of packed codes become word loads plus shift/mask extraction (load_codes)."""
    return rewrite(k, partial(_rule, seen={}))
