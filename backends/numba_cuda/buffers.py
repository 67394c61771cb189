"""What the CUDA renderer binds IR values to besides scalar locals: shared-memory buffers
and kernel tensor arguments."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Buf:
    """A tile in shared memory: flat array `name`, row-major `shape`, rows `row` elements
    apart (one more than the last dim when that is a multiple of 32, so a column read by a
    warp, as in `dot(a, transpose(w))`, hits 32 different banks)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    row: int = 0
    swizzle: tuple[int, int, int] | None = None  # a shared tile's Swizzle<bits, base, shift>
    base: str = ""  # element offset of the tile in `name` (a name: a pipeline stage), "" for 0

    def strides(self) -> tuple[int, ...]:
        out = [1] * len(self.shape)
        for k in range(len(self.shape) - 2, -1, -1):
            last = k == len(self.shape) - 2
            out[k] = (self.row or self.shape[-1]) if last else out[k + 1] * self.shape[k + 1]
        return tuple(out)

    @property
    def size(self) -> int:
        return self.shape[0] * self.strides()[0] if self.shape else 1


def swizzle_expr(src, offset: str, sw: tuple[int, int, int] | None) -> str:
    """offset ^ ((offset & yyy_mask) >> shift), CuTe's Swizzle<bits, base, shift> (`offset`
    itself without one)."""
    if sw is None:
        return offset
    bits, base, shift = sw
    yyy = ((1 << bits) - 1) << (base + max(0, shift))
    off = src.tmp(offset, "o")
    moved = f"(({off} & {yyy}) >> {shift})" if shift >= 0 else f"(({off} & {yyy}) << {-shift})"
    return f"({off} ^ {moved})"


def swizzle_offset(off: int, sw: tuple[int, int, int] | None) -> int:
    """CuTe's Swizzle<bits, base, shift> of an element offset (as `swizzle_expr` emits)."""
    if sw is None:
        return off
    bits, base, shift = sw
    yyy = ((1 << bits) - 1) << (base + shift)
    return off ^ ((off & yyy) >> shift)


@dataclass(frozen=True)
class TensorRef:
    """A kernel tensor argument: array name, extents (expressions), bits if packed, and
    whether its words are in the backend's interleaved order (`interleave`) or in the mma
    packing (`mma`: the `lowbitc.repack_mma.MmaPacking`, `mma_packed`)."""

    name: str
    dims: tuple[str, ...]
    bits: int
    interleaved: bool = False
    mma: object = None
