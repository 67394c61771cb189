"""Vectorization: the vector width a backend emits for each elementwise tile op, recorded on
the op as `{vec=W}` (1 = scalar code).

W is the widest power of two that (a) fits the target's vector register (`bits`, a pass
option: 512 for AVX-512, 256 for AVX2) for the op's widest element type and (b) divides the
contiguous extent of the innermost mode of the result's layout along its last dim: the run
of elements along a row that the layout holds as one unit (one thread's registers, or
threads side by side). A vector therefore never straddles two modes; a tile without a layout
is one mode per row. So `local(1, 4) * local(16, 4)` gives 4-lane vectors where
`local(16, 16)` gives 16. f16 ops stay scalar (their vector conversions become library calls
on hosts without F16C); bf16 is computed in f32, so it counts 32 bits.
"""

from __future__ import annotations

import math
from dataclasses import replace

from lowbitc.errors import LoweringError
from lowbitc.ir.core import Kernel, Op
from lowbitc.ir.layouts import parse_layout
from lowbitc.ir.opdefs import ELEMENTWISE
from lowbitc.ir.types import TileType, bit_width, is_machine
from lowbitc.passes.base import register, rewrite

VECTOR_OPS = ELEMENTWISE | {"cast", "bitcast", "where", "philox"}
SCALAR_DTYPES = frozenset({"f16"})
_COMPUTE_BITS = {"bool": 8, "bf16": 32}  # bytes in memory; bf16 arithmetic runs in f32


def innermost_extent(t: TileType) -> int:
    """Elements along the last dim that the tile's layout keeps together (its innermost
    mode there); the whole row without a layout."""
    if not t.shape:
        return 1
    if not t.layout:  # row-major: a column tile ([N, 1]) is one contiguous run
        return t.shape[-1] if t.shape[-1] > 1 else math.prod(t.shape)
    tv = parse_layout(t.layout)
    modes = tv.dim_modes[-1]
    return tv.mode_shape[modes[-1]] if modes else 1


def vector_width(op: Op, bits: int) -> int:
    """The width (>= 1) of the vectors `op` is emitted with on a `bits`-bit vector target."""
    res = op.results[0].type
    dtypes = {v.type.dtype for v in op.operands + op.results}
    if op.opcode == "philox":  # 32-bit lanes; the i64 seed and index are only split in two
        dtypes = {"u32"}
    if any(not is_machine(d) or d in SCALAR_DTYPES for d in dtypes):
        return 1
    widest = max(_COMPUTE_BITS.get(d, bit_width(d)) for d in dtypes)
    lanes = max(1, bits // widest)
    extent = innermost_extent(res)
    w = 1
    while w * 2 <= lanes and extent % (w * 2) == 0:
        w *= 2
    return w


@register("vectorize", options={"bits": 512})
def vectorize(k: Kernel, bits: int = 512) -> Kernel:
    """Elementwise tile ops get the vector width the backend emits (`vec`), from the target's
    vector bits and the contiguous extent of the innermost mode of their layout."""
    if bits < 8 or bits & (bits - 1):
        raise LoweringError(f"vectorize: option bits must be a power of two >= 8, got {bits}")

    def rule(op: Op, b, defs):
        if op.opcode not in VECTOR_OPS or not isinstance(op.results[0].type, TileType):
            return None
        attrs = replace(op.attrs, vec=vector_width(op, bits))
        if attrs == op.attrs:
            return None
        types = [r.type for r in op.results]  # keeps their layouts
        return b.op(op.opcode, op.operands, attrs, result_types=types).results

    return rewrite(k, rule)
