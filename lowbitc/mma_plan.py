"""When the shipped matmul runs on tensor cores (`kernels/matmul_mma.lbk`), and its tiles.

On backend="cuda", f16 and bf16 activations take the mma kernel when every code value of the
weight format is a finite f16 (|v| <= 65504, nonzero values >= 2^-24: codes enter the dot as
f16, or as bf16 for bf16 activations, rounded to nearest even where they have more than 8
significant bits: nf4, code books);
group scales and zero points are applied in f32 to each group's partial sums. Other formats
(f8e8m0fnu, code books with values beyond f16) and f32 activations keep `matmul.lbk`.
"""

from __future__ import annotations

import numpy as np

from lowbitc.split_k import TARGET, default_split_k

F16_MAX = 65504.0
F16_TINY = 2.0**-24
# threads per block: 4 warps for BM > 16 (in the simulator too: the tiling decides the weight's
# packing), one warp at BM 16
MMA_THREADS, WARP_THREADS = 128, 32


def mma_format(wtype) -> bool:
    """Every code value of `wtype` is a finite f16 (so the dot of f16 tiles is exact in it)."""
    v = np.asarray(wtype.values(), np.float64)
    if not np.all(np.isfinite(v)):
        v = v[np.isfinite(v)]  # NaN codes (fn formats) are never produced by quantize
    nz = np.abs(v[v != 0])
    return bool(np.all(np.abs(v) <= F16_MAX) and np.all(nz >= F16_TINY))


MMA_ACTIVATIONS = ("f16", "bf16")  # activation dtypes with an mma kind (m16n8k16 .f16/.bf16)


def mma_params(M: int, wtype, group: int, zero_point: bool, act: str = "f16", N: int = 0,
               K: int = 0, arch: str = TARGET) -> dict:
    """Tiles of matmul_mma: 16 x 8 x 16 multiples; BK the largest of 128/64/32/16 dividing the
    group (the rest of a K tile past the group would be masked away); BM 16 (M <= 16), 32, 64.
    Every warp owns 16 or 32 rows of one 64-column tile, so the weight takes the mma packing
    (`mma_packed.fits`: a warp's B values per K step are one packing tile) and each decoded B
    register feeds TM = warp rows / 16 mma: at BM 16 one warp of 16 x 64; at BM 32 four warps
    side by side (BN 256, warp tiles 32 x 64); at BM 64 two by two (BN 128, 32 x 64), whose
    warp tiles hold the same 64 accumulator registers per thread as BM 32's.
    SK (split-K) by `split_k.default_split_k` when N and K are given (small M, large K, few
    output tiles for `arch`'s SM count), else 1."""
    bk = next(b for b in (128, 64, 32, 16) if group % b == 0 or b == 16)
    bm = 16 if M <= 16 else 32 if M <= 32 else 64
    threads = MMA_THREADS if bm > 16 else WARP_THREADS
    bn = {16: 64, 32: 256, 64: 128}[bm]
    params = {"W": wtype, "A": act, "ZP": bool(zero_point), "BM": bm, "BN": bn, "BK": bk,
              "TH": threads}
    params["SK"] = default_split_k(M, N, K, group, bm, bn, bk, arch)
    return params
