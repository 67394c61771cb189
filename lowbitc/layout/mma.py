"""Register fragments of the tensor-core instructions, written as Kronecker products of
thread-value pieces, and the lane -> row maps of ldmatrix.

groupID = laneid >> 2 and threadID_in_group (tig) = laneid % 4 throughout. Sources (PTX ISA
8.x, chapter 9.7.14.5 "Matrix Fragments for mma.m16n8k*"):

9.7.14.5.8 "mma.m16n8k16 with floating point type" (.f16/.bf16 A/B, .f32 C/D):
  A (16x16, a0..a7): row = groupID + 8 * ((i >> 1) & 1), col = 2 * tig + (i & 1) + 8 * (i >> 2)
  B (16x8 = KxN, b0..b3): row = 2 * tig + (i & 1) + 8 * (i >> 1), col = groupID
  C/D (16x8, c0..c3): row = groupID + 8 * (i >> 1), col = 2 * tig + (i & 1)
CUTLASS encodes the same maps as SM80_16x16_Row, SM80_8x16_Row and SM80_16x8_Row.

9.7.14.5.10 "mma.m16n8k32" (.s8/.u8 A/B, .s32 C/D; 4 elements per .b32, element 0 lowest):
  A (16x32, a0..a15): row = groupID + 8 * ((i >> 2) & 1), col = 4 * tig + (i & 3) + 16 * (i >> 3)
  B (32x8 = KxN, b0..b7): row = 4 * tig + (i & 3) + 16 * (i >> 2), col = groupID
  C/D (16x8, c0..c3): as for m16n8k16.

9.7.14.5.15 "ldmatrix" (.m8n8, .b16): for .x1/.x2/.x4, lanes 0-7 / 0-15 / 0-31 supply the
addresses of the 8 rows (16 bytes each) of matrices 0 / 0-1 / 0-3, lane l giving row l % 8 of
matrix l // 8 (addresses of lanes beyond are ignored). Each lane receives one .b32 per matrix:
row groupID, elements 2 * tig and 2 * tig + 1 (with .trans: elements [2 * tig][groupID] and
[2 * tig + 1][groupID], i.e. the fragment of the transposed matrix).
"""

from __future__ import annotations

from lowbitc.errors import UserArgumentError
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


def mma_m16n8k32_a() -> TVLayout:
    """A operand of the s8 mma (M16 x K32): 32 lanes x 16 values (four per register)."""
    return local(1, 2) * local(2, 1) * spatial(8, 4) * local(1, 4)


def mma_m16n8k32_b() -> TVLayout:
    """B operand of the s8 mma (K32 x N8): 32 lanes x 8 values (four per register)."""
    return local(2, 1) * spatial(1, 8) * spatial(4, 1) * local(4, 1)


def mma_m16n8k32_c() -> TVLayout:
    """C/D accumulator of the s8 mma (M16 x N8, s32): the m16n8k16 C/D fragment."""
    return mma_m16n8k16_c()


def ldmatrix_dst() -> TVLayout:
    """What one 8x8 b16 matrix of ldmatrix leaves in the 32 lanes' registers (2 values/lane)."""
    return spatial(8, 4) * local(1, 2)


def ldmatrix_dst_trans() -> TVLayout:
    """The same for ldmatrix .trans: lane l holds elements [2*(l%4) + v][l // 4], v = 0, 1."""
    return spatial(1, 8) * spatial(4, 1) * local(2, 1)


def ldmatrix_src_row(lane: int, num: int) -> tuple[int, int] | None:
    """(matrix, row) whose 16-byte row address `lane` supplies to ldmatrix .x{num}, or None
    when that lane's address is ignored."""
    if num not in (1, 2, 4):
        raise UserArgumentError(f"ldmatrix_src_row: num must be 1, 2 or 4, got {num!r}")
    if not 0 <= lane < 32:
        raise UserArgumentError(f"ldmatrix_src_row: lane must be in 0..31, got {lane!r}")
    return (lane // 8, lane % 8) if lane < 8 * num else None


MMA_FRAGMENTS = {
    "mma_m16n8k16_a": mma_m16n8k16_a,
    "mma_m16n8k16_b": mma_m16n8k16_b,
    "mma_m16n8k16_c": mma_m16n8k16_c,
    "mma_m16n8k32_a": mma_m16n8k32_a,
    "mma_m16n8k32_b": mma_m16n8k32_b,
    "mma_m16n8k32_c": mma_m16n8k32_c,
    "ldmatrix_dst": ldmatrix_dst,
    "ldmatrix_dst_trans": ldmatrix_dst_trans,
}
