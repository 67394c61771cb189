"""Format codes going out in the CUDA renderer: `from_codes` (i32 codes as a format tile, held
as u8 like every format value) and `store_codes` (codes into a packed tensor).

Each thread writes its codes into the canonical LSB-first uint32 stream with two atomics per
word it touches (`and` clears the code's bits, `or` sets them), so threads and blocks that
write different codes of one word never lose each other's bits.
"""

from __future__ import annotations

import numpy as np

from lowbitc.backends.numba_cuda.elements import ELEMENT, fail, shape_of
from lowbitc.backends.numba_cuda.statements import (
    STATEMENTS,
    each_element,
    store_mask,
    store_operands,
)
from lowbitc.ir.core import Op


def _from_codes(ctx, op: Op, idx) -> str:
    return ctx.src.tmp(f"U8({ctx.operand(op, 0, idx)})")


def _put(ctx, name: str, rows: list[str], col: str, code: str, bits: int) -> None:
    src = ctx.src
    bit = src.tmp(f"{col} * {bits}")
    wi = src.tmp(f"{bit} >> 5")
    off = src.tmp(f"U32({bit} & 31)")
    c = src.tmp(f"U32(U32({code}) & U32({(1 << bits) - 1}))")
    at = f"({', '.join([*rows, wi])},)"
    src.line(f"cuda.atomic.and_({name}, {at}, U32(~(U32({(1 << bits) - 1}) << {off})))")
    src.line(f"cuda.atomic.or_({name}, {at}, U32({c} << {off}))")
    if 32 % bits:  # the code straddles into the next word
        with src.block(f"if {off} > U32({32 - bits}):"):
            nxt = f"({', '.join([*rows, f'{wi} + 1'])},)"
            back = f"(U32(32) - {off})"
            src.line(f"cuda.atomic.and_({name}, {nxt}, U32(~(U32({(1 << bits) - 1}) >> {back})))")
            src.line(f"cuda.atomic.or_({name}, {nxt}, U32({c} >> {back}))")


def _store_codes(ctx, op: Op) -> None:
    a = op.attrs
    t, starts, value, shape = store_operands(ctx, op)
    if getattr(t, "interleaved", False) or getattr(a, "packing", ""):
        raise fail(op, "stores into a re-packed (interleaved) tensor are not supported")

    def body(idx, e):
        where, conds = ctx.window(starts, a.sizes, idx, t.dims)
        conds = store_mask(ctx, op, idx, shape) + conds
        with ctx.src.block(f"if {' and '.join(conds) or 'True'}:"), ctx.scope():
            x = ctx.elem(value, ctx.bcast(tuple(idx), shape, shape_of(value.type)))
            _put(ctx, t.name, where[:-1], where[-1], x, a.bits)

    each_element(ctx, shape, body)


_float32_lut = ELEMENT["lut"]  # elements': constant tables are float32 arrays


def _exact_lut(ctx, op: Op, idx) -> str:
    """A table lookup whose values float32 holds exactly (an encode of f64 values, or of a
    code book whose midpoints need f64, would compare against rounded thresholds)."""
    if any(v == v and float(np.float32(v)) != v for v in op.attrs.values):
        raise fail(op, "the table needs f64 values, but GPU tables are float32 (quantize f32 "
                   "values, or use a code book whose midpoints are float32 numbers)")
    return _float32_lut(ctx, op, idx)


ELEMENT["lut"] = _exact_lut
ELEMENT["from_codes"] = _from_codes
STATEMENTS["store_codes"] = _store_codes
