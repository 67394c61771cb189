"""backends/numba_cuda/tensorcore.py's simulator twins inside simulated kernels (one block of
whole warps): mma.sync f16/bf16/s8, ldmatrix x4/x2 (+.trans) and cp.async (+zfill, groups),
each checked against the fragment layouts of lowbitc/layout/mma.py and numpy.

Run only in a process with NUMBA_ENABLE_CUDASIM=1 (tests/test_cuda_tensorcore.py starts one).
"""

import os

import ml_dtypes
import numpy as np
import pytest
import tensorcore_kernels as K
from numba import cuda

from lowbitc.errors import BackendError
from lowbitc.layout import mma

pytestmark = pytest.mark.cudasim
assert os.environ.get("NUMBA_ENABLE_CUDASIM") == "1", "run through tests/test_cuda_tensorcore.py"
RNG = np.random.default_rng(13)


@pytest.mark.parametrize("kind", ["f16", "bf16"])
def test_mma_m16n8k16_float(kind):
    dtype = np.float16 if kind == "f16" else ml_dtypes.bfloat16
    kernel = cuda.jit(K.k_mma_f16 if kind == "f16" else K.k_mma_bf16)
    tiles = []
    for _ in range(2):  # two warps, each with its own matrices
        a = RNG.standard_normal((16, 16)).astype(dtype)
        b = RNG.standard_normal((16, 8)).astype(dtype)
        c = RNG.standard_normal((16, 8)).astype(np.float32)
        tiles.append((a, b, c))
    regs = [np.concatenate([K.to_registers(t[i], f()) for t in tiles])
            for i, f in ((0, mma.mma_m16n8k16_a), (1, mma.mma_m16n8k16_b))]
    c_lanes = np.concatenate([K.to_lanes(t[2], mma.mma_m16n8k16_c()) for t in tiles])
    d = np.zeros((64, 4), np.float32)
    kernel[1, 64](regs[0], regs[1], c_lanes, d)
    for w, (a, b, c) in enumerate(tiles):
        got = K.from_lanes(d[32 * w : 32 * w + 32], mma.mma_m16n8k16_c())
        want = a.astype(np.float64) @ b.astype(np.float64) + c
        np.testing.assert_allclose(got, want, rtol=2**-22, atol=1e-6)  # one f32 rounding


def test_mma_m16n8k32_s8_wraps_like_int32():
    a = RNG.integers(-128, 128, (16, 32)).astype(np.int8)
    b = RNG.integers(-128, 128, (32, 8)).astype(np.int8)
    c = RNG.integers(-(2**31), 2**31, (16, 8)).astype(np.int32)
    c[0, 0] = 2**31 - 1  # overflow wraps (no .satfinite)
    d = np.zeros((32, 4), np.int32)
    cuda.jit(K.k_mma_s8)[1, 32](K.to_registers(a, mma.mma_m16n8k32_a()),
                                K.to_registers(b, mma.mma_m16n8k32_b()),
                                K.to_lanes(c, mma.mma_m16n8k32_c()), d)
    want = (a.astype(np.int64) @ b.astype(np.int64) + c) & 0xFFFFFFFF
    got = K.from_lanes(d, mma.mma_m16n8k32_c()).astype(np.int64) & 0xFFFFFFFF
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name,num,trans", [("k_ldsm_x4", 4, False), ("k_ldsm_x4_trans", 4, True),
                                            ("k_ldsm_x2", 2, False), ("k_ldsm_x2_trans", 2, True)])
def test_ldmatrix_against_isa_maps(name, num, trans):
    src = RNG.integers(0, 2**16, K.SMEM_HALVES).astype(np.uint16)
    starts = RNG.permutation(K.SMEM_HALVES // 8)[:32] * 8  # 32 distinct 16-byte rows
    rows = starts.astype(np.uint32)
    out = np.zeros((32, num), np.uint32)
    cuda.jit(getattr(K, name))[1, 32](src, rows, out)
    dst = mma.ldmatrix_dst_trans() if trans else mma.ldmatrix_dst()
    for m in range(num):
        matrix = np.zeros((8, 8), np.uint16)
        for lane in range(32):
            owner = mma.ldmatrix_src_row(lane, num)
            if owner is not None and owner[0] == m:
                matrix[owner[1]] = src[rows[lane] : rows[lane] + 8]
        want = K.to_registers(matrix, dst)[:, 0]
        np.testing.assert_array_equal(out[:, m], want)


def test_ldmatrix_x4_loads_the_mma_a_fragment():
    """Lane l pointing at row l % 16, columns 8 * (l // 16).. of a row-major 16x16 tile gives
    exactly the m16n8k16 A registers (the usual ldmatrix -> mma pairing)."""
    a = RNG.standard_normal((16, 64)).astype(np.float16)  # a 16x16 tile inside 64-wide rows
    src = np.zeros(K.SMEM_HALVES, np.uint16)
    src[:1024] = a.view(np.uint16).reshape(-1)
    lane = np.arange(32)
    rows = ((lane % 16) * 64 + 8 * (lane // 16) + 16).astype(np.uint32)  # tile at column 16
    out = np.zeros((32, 4), np.uint32)
    cuda.jit(K.k_ldsm_x4)[1, 32](src, rows, out)
    np.testing.assert_array_equal(out, K.to_registers(a[:, 16:32], mma.mma_m16n8k16_a()))


def test_cp_async_copies_and_zero_fills():
    src = RNG.integers(0, 2**32, 256, dtype=np.uint64).astype(np.uint32)
    nbytes = RNG.integers(0, 17, 32).astype(np.uint32)
    nbytes[:3] = (0, 16, 5)
    out = np.zeros(256, np.uint32)
    cuda.jit(K.k_cp_async)[1, 32](src, nbytes, out)
    np.testing.assert_array_equal(out[:128], src[:128])
    want = src[128:].view(np.uint8).reshape(32, 16).copy()
    for t in range(32):
        want[t, nbytes[t]:] = 0
    np.testing.assert_array_equal(out[128:].view(np.uint8).reshape(32, 16), want)


def test_collective_twin_needs_whole_warps():
    regs = np.zeros((16, 4), np.uint32)
    with pytest.raises(BackendError, match="whole warps"):
        cuda.jit(K.k_mma_f16)[1, 16](regs, regs[:, :2].copy(), np.zeros((16, 4), np.float32),
                                     np.zeros((16, 4), np.float32))
