"""One warp's 16 x 64 x 64 u4 GEMM built from every tensor-core primitive: activations global ->
shared by cp.async into a Swizzle(3,4,3) tile, A fragments by ldmatrix.x4, B fragments straight
from the mma packing (lowbitc.repack_mma, one 128-bit load per lane per k16 step) decoded to
f16x2 with the magic-number LOP3 + HFMA2, mma.m16n8k16 into f32. It shows the pieces fit:
the simulator suite and the native GPU suite run the test below, tests/test_cuda_tensorcore.py
assembles the kernel. Bank conflicts of its shared accesses: tests/test_layout_banks.py."""

import numpy as np
from numba import cuda

from lowbitc.backends.numba_cuda.intrinsics import hfma2, ld_u32x4, lop3
from lowbitc.backends.numba_cuda.tensorcore import (
    cp_async16,
    cp_async_commit,
    cp_async_wait,
    ldmatrix_x4,
    mma_f16,
)
from lowbitc.layout import Swizzle
from lowbitc.repack_mma import MmaPacking

SIG = "void(uint16[::1], uint32[::1], float32[:, ::1])"
M, N, K = 16, 64, 64
A_HALVES = M * K  # the shared A tile
MAGIC, ONE, MINUS_1024 = 0x64006400, 0x3C003C00, 0xE400E400  # f16x2 1024, 1, -1024


def a_offset(row, chunk):
    """Byte offset of 16-byte chunk `chunk` of row `row` of the 16 x 128-byte A tile, with
    Swizzle(3,4,3): row bits 7-9 xor-ed into chunk bits 4-6 (spelled out for numba)."""
    off = row * 128 + chunk * 16
    return off ^ ((off & 0x380) >> 3)


a_offset_device = cuda.jit(device=True)(a_offset)


def _pair(word, shift):
    """Codes at nibbles shift/4 and shift/4 + 4 of an interleaved u4 word as an f16x2 pair."""
    return hfma2(lop3(word >> shift, 0x000F000F, MAGIC, 0xEA), ONE, MINUS_1024)


pair = cuda.jit(device=True)(_pair)


def k_gemm_u4(a, wq, c):
    sh = cuda.shared.array(A_HALVES, np.uint16)
    t = cuda.threadIdx.x
    for i in range(4):  # 128 chunks of 16 bytes, 4 per lane, one commit group
        q = t + 32 * i
        cp_async16(sh, a_offset_device(q // 8, q % 8) // 2, a, (q // 8) * K + (q % 8) * 8)
    cp_async_commit()
    cp_async_wait(0)
    cuda.syncthreads()
    acc = cuda.local.array(32, np.float32)
    for i in range(32):
        acc[i] = 0
    for kf in range(4):  # k16 steps; load kf of the u4 plane holds this step's 8 fragments
        r = ldmatrix_x4(sh, a_offset_device(t % 16, 2 * kf + t // 16) // 2)
        w = ld_u32x4(wq, (kf * 32 + t) * 4)
        for nf in range(8):  # fragment nf: word nf // 2, nibbles 0,4 / 1,5 or 2,6 / 3,7
            shift = 8 * (nf % 2)
            d = mma_f16(r[0], r[1], r[2], r[3], pair(w[nf // 2], shift),
                        pair(w[nf // 2], shift + 4), acc[4 * nf], acc[4 * nf + 1],
                        acc[4 * nf + 2], acc[4 * nf + 3])
            for i in range(4):
                acc[4 * nf + i] = d[i]
    g, tig = t // 4, t % 4
    for nf in range(8):
        for i in range(4):
            c[g + 8 * (i // 2), 8 * nf + 2 * tig + i % 2] = acc[4 * nf + i]


def test_u4_warp_gemm_from_every_primitive():
    rng = np.random.default_rng(5)
    a = rng.standard_normal((M, K)).astype(np.float16)
    codes = rng.integers(0, 16, (N, K)).astype(np.uint8)
    words = MmaPacking(4).from_codes(codes).reshape(-1)
    c = np.zeros((M, N), np.float32)
    cuda.jit(k_gemm_u4)[1, 32](a.view(np.uint16).reshape(-1), words, c)
    want = a.astype(np.float64) @ codes.T.astype(np.float64)
    np.testing.assert_allclose(c, want, rtol=2**-20, atol=1e-5)


def test_swizzle_spelled_out_matches_the_layout_swizzle():
    sw = Swizzle(3, 4, 3)
    assert all(a_offset(r, q) == sw(r * 128 + q * 16) for r in range(16) for q in range(8))
