"""Register fragments of `mma.sync.aligned.m16n8k16` with f16 inputs and f32 accumulators,
written as Kronecker products of thread-value pieces.

Source of the maps: PTX ISA, section 9.7.14.5.8 "Matrix Fragments for mma.m16n8k16 with
floating point type" (groupID = laneid >> 2, threadID_in_group = laneid % 4):
  A (16x16, a0..a7): row = groupID + 8 * ((i >> 1) & 1), col = 2 * tig + (i & 1) + 8 * (i >> 2)
  B (16x8 = KxN, b0..b3): row = 2 * tig + (i & 1) + 8 * (i >> 1), col = groupID
  C/D (16x8, c0..c3): row = groupID + 8 * (i >> 1), col = 2 * tig + (i & 1)
CUTLASS encodes the same maps as SM80_16x16_Row, SM80_8x16_Row and SM80_16x8_Row.
"""

from __future__ import annotations

from lowbitc.layout.tv import TVLayout, local, spatial


def mma_m16n8k16_a() -> TVLayout:
    """A operand (M16 x K16, f16): 32 lanes x 8 values."""
    return local(1, 2) * local(2, 1) * spatial(8, 4) * local(1, 2)


def mma_m16n8k16_b() -> TVLayout:
    """B operand (K16 x N8, f16): 32 lanes x 4 values; lanes run down K within a column."""
    return local(2, 1) * spatial(1, 8) * spatial(4, 1) * local(2, 1)


def mma_m16n8k16_c() -> TVLayout:
    """C/D accumulator (M16 x N8, f32): 32 lanes x 4 values."""
    return local(2, 1) * spatial(8, 4) * local(1, 2)


MMA_FRAGMENTS = {
    "mma_m16n8k16_a": mma_m16n8k16_a,
    "mma_m16n8k16_b": mma_m16n8k16_b,
    "mma_m16n8k16_c": mma_m16n8k16_c,
}
