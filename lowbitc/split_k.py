"""The default split-K of the tensor-core matmul (`matmul_mma`'s `SK`), before any `tune`.

For small M and large K the output has few tiles: a GEMV with N = 4096 and 64-column tiles
is 64 blocks, fewer than an A100's 108 SMs, so most of the GPU idles while each block walks
all of K. Marlin (its `parallel` slices) and Tilus split K there instead. The rule (data below,
stated in docs/cuda.md "Split-K"):

- only for M <= SMALL_M (one row of M tiles; past it the partial sums' workspace, SK * M * N
  f32 written and read again, grows with M while the weights do not);
- blocks = cdiv(M, BM) * cdiv(N, BN); with at least 2 x the target GPU's SMs (two waves)
  SK stays 1;
- else SK is the first of 2, 4 that brings blocks * SK to one wave (>= the SM count), as long
  as every split keeps at least MIN_TILES K tiles (the cp.async pipeline reaches its steady
  state and the workspace write stays small against the weights read) and a whole group (the
  kernel splits K by groups); the largest that keeps them otherwise.

`lowbitc.tune` still searches SK (1, 2, 4) and its winner overrides this default.
"""

from __future__ import annotations

from lowbitc.errors import UserArgumentError

# SMs of the GPU each architecture stands for here (published counts): A100 (SXM/PCIe) 108,
# A40 / RTX A6000 84, L40S 142, H100 SXM 132
SMS = {"sm_80": 108, "sm_86": 84, "sm_89": 142, "sm_90": 132}
TARGET = "sm_80"  # the CUDA backend's default arch (toolchain, emit)
SMALL_M = 64
MIN_TILES = 8
CHOICES = (2, 4)  # matmul_mma's tune choices of SK above 1


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def default_split_k(M: int, N: int, K: int, group: int, bm: int, bn: int, bk: int,
                    arch: str = TARGET) -> int:
    """matmul_mma's SK for this shape and tiling on `arch`'s GPU (module doc); 1 when N or K
    is unknown (0)."""
    if arch not in SMS:
        raise UserArgumentError(f"arch: expected one of {', '.join(SMS)} (split-K's SM table), "
                                f"got {arch!r}")
    if M > SMALL_M or N <= 0 or K <= 0:
        return 1
    sms = SMS[arch]
    blocks = cdiv(M, bm) * cdiv(N, bn)
    if blocks >= 2 * sms:
        return 1
    groups = cdiv(K, group)
    sk = 1
    for s in CHOICES:
        if groups < s or groups // s * cdiv(group, bk) < MIN_TILES:
            break
        sk = s
        if blocks * s >= sms:
            break
    return sk
