"""Layouts with CuTe semantics, swizzles, and thread-value register-tile layouts.

Pure: depends on nothing in lowbitc but `lowbitc.errors`.
"""

from lowbitc.layout.algebra import (
    blocked_product,
    complement,
    composition,
    flat_divide,
    flat_product,
    left_inverse,
    logical_divide,
    logical_product,
    raked_product,
    right_inverse,
    tiled_divide,
    tiled_product,
    zipped_divide,
    zipped_product,
)
from lowbitc.layout.layout import (
    Layout,
    coalesce,
    cosize,
    depth,
    filter_layout,
    flatten,
    make_layout,
    rank,
    size,
)
from lowbitc.layout.mma import (
    MMA_FRAGMENTS,
    ldmatrix_dst,
    ldmatrix_dst_trans,
    ldmatrix_src_row,
    mma_m16n8k16_a,
    mma_m16n8k16_b,
    mma_m16n8k16_c,
    mma_m16n8k32_a,
    mma_m16n8k32_b,
    mma_m16n8k32_c,
)
from lowbitc.layout.picture import ascii_picture, save_png
from lowbitc.layout.swizzle import ComposedLayout, Swizzle
from lowbitc.layout.tv import TVLayout, divide, kron, local, replicated, spatial
from lowbitc.layout.tv_cute import from_cute

__all__ = [
    "Layout", "make_layout", "size", "cosize", "rank", "depth", "flatten", "coalesce",
    "filter_layout", "composition", "complement", "left_inverse", "right_inverse",
    "logical_divide", "zipped_divide", "tiled_divide", "flat_divide", "logical_product",
    "zipped_product", "tiled_product", "flat_product", "blocked_product", "raked_product",
    "Swizzle", "ComposedLayout", "TVLayout", "spatial", "local", "replicated", "kron", "divide",
    "from_cute", "mma_m16n8k16_a", "mma_m16n8k16_b", "mma_m16n8k16_c", "MMA_FRAGMENTS",
    "mma_m16n8k32_a", "mma_m16n8k32_b", "mma_m16n8k32_c", "ldmatrix_dst", "ldmatrix_dst_trans",
    "ldmatrix_src_row",
    "ascii_picture", "save_png",
]
