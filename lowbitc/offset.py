"""OffsetQTensor: a QTensor with a per-group offset and an optional input-column order.

Formats other tools write are not all `(decode(q) - z) * s`: llama.cpp's K-quants, Q4_1 and
Q5_1 store `w = q * s - o` with the offset rounded once after an exact product, and GPTQ's
act-order checkpoints assign input columns to groups out of order. Both are exact here:

    w[n, perm[k]] = base[n, k] - offsets[n, k // group_size]

where `base` is the plain QTensor formula (codes, scales, zeros) evaluated as QTensor does
(one float32 product, exact for the integer formats these sources use) and the offset is one
float32 subtraction. `perm` (int64 [K], None = identity) lists, for each stored column, the
input column it multiplies. ops.matmul/ops.dequantize run `base` through the shipped kernels
and apply the offset and the column order around them (matmul on the CPU: the kernel
subtracts each group's offset times the group's sum of x, `OFF`; elsewhere
`subtract_offsets`, a [M, G] x [G, N] product).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from lowbitc.errors import UserArgumentError
from lowbitc.quant import QTensor


@dataclass(frozen=True, eq=False)
class OffsetQTensor(QTensor):
    """QTensor plus `offsets` (float32 [N, G] or None) and `perm` (int64 [K] or None)."""

    offsets: np.ndarray | None = None
    perm: np.ndarray | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        groups = self.scales.shape
        if self.offsets is not None and (self.offsets.shape != groups
                                         or self.offsets.dtype != np.float32):
            raise UserArgumentError(f"offsets: expected float32 {groups} or None, got "
                                    f"{self.offsets.dtype} {self.offsets.shape}")
        k = self.shape[1]
        if self.perm is not None:
            p = self.perm
            if (p.shape != (k,) or p.dtype != np.int64
                    or not np.array_equal(np.sort(p), np.arange(k))):
                raise UserArgumentError(f"perm: expected a permutation of range({k}) as int64, "
                                        f"got {p.dtype} {p.shape}")

    @functools.cached_property
    def base(self) -> QTensor:
        """The plain QTensor part (same arrays), what the kernels run."""
        return QTensor(self.dtype, self.shape, self.group_size, self.codes, self.scales,
                       self.zeros, self.scale_dtype)

    @functools.cached_property
    def by_group(self) -> np.ndarray:
        """offsets transposed to group-major, C-contiguous float32 [G, N] (what the CPU matmul
        kernel reads beside QTensor.group_major's scales)."""
        return np.ascontiguousarray(self.offsets.T)

    def replica(self) -> OffsetQTensor:
        """QTensor.replica of `base` (its packings and group-major scales, which the kernels
        read, copied) with the offsets (and their group-major copy) copied too."""
        t = self.base.replica()
        twin = OffsetQTensor(t.dtype, t.shape, t.group_size, t.codes, t.scales, t.zeros,
                             t.scale_dtype, offsets=None if self.offsets is None
                             else self.offsets.copy(), perm=self.perm)
        twin.__dict__["base"] = t  # the same arrays as twin's
        if "by_group" in self.__dict__:
            twin.__dict__["by_group"] = self.by_group.copy()
        twin.__dict__["_tile_offsets"] = {
            key: v.copy() for key, v in self.__dict__.get("_tile_offsets", {}).items()}
        return twin

    def tile_scales(self, bn: int) -> np.ndarray:
        """The scales and offsets tile-major for tiles of `bn` rows (lowbitc.a8.tile_major
        with the offsets in the zero points' place: what the CPU GEMV reads as one stream),
        made once per tile width and cached here (replica copies them)."""
        from lowbitc.a8 import cached_tile_major  # (a8 imports the compiler)

        return cached_tile_major(self, "_tile_offsets", bn, self.scales, self.offsets)

    def dequantize(self) -> np.ndarray:
        """float32 [N, K], bit-exact with the formula in the module docstring."""
        return finish_dequantize(self, self.base.dequantize())


def expand(groups: np.ndarray, group_size: int, k: int) -> np.ndarray:
    """[N, G] per-group values repeated over their columns: [N, k]."""
    return np.repeat(groups, group_size, axis=1)[:, :k]


def finish_dequantize(qw: OffsetQTensor, w: np.ndarray) -> np.ndarray:
    """The offsets subtracted from `base`'s dequantized weight (in place) and the columns put
    in input order."""
    k = qw.shape[1]
    if qw.offsets is not None:
        np.subtract(w, expand(qw.offsets, qw.group_size, k), out=w)
    if qw.perm is None:
        return w
    out = np.empty_like(w)
    out[:, qw.perm] = w
    return out


def permute_input(qw: OffsetQTensor, x: np.ndarray) -> np.ndarray:
    """x's columns in the stored order."""
    return x if qw.perm is None else np.ascontiguousarray(x[:, qw.perm])


def group_sums(x: np.ndarray, group_size: int, groups: int) -> np.ndarray:
    """float32 [M, G]: sums of x over each group of columns (the last may be partial)."""
    m, k = x.shape
    pad = groups * group_size - k
    xf = x.astype(np.float32, copy=False)
    if pad:
        xf = np.concatenate([xf, np.zeros((m, pad), np.float32)], axis=1)
    return xf.reshape(m, groups, group_size).sum(axis=2, dtype=np.float32)


SMALL_M = 8  # up to this many rows the offset product skips BLAS (its threads' start-up
# costs tens of milliseconds on a loaded machine for a [1, G] x [G, N] product)


def subtract_offsets(qw: OffsetQTensor, xs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """y -= group_sums(xs) @ offsets.T (xs in the stored column order)."""
    if qw.offsets is not None:
        sums = group_sums(xs, qw.group_size, qw.num_groups)
        if xs.shape[0] <= SMALL_M:
            y -= np.einsum("mg,ng->mn", sums, qw.offsets)
        else:
            y -= sums @ qw.offsets.T
    return y
