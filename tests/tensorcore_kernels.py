"""Kernels that exercise backends/numba_cuda/tensorcore.py, one instruction each: compiled to
PTX by tests/test_cuda_tensorcore.py and run in the simulator by
tests/cudasim/test_sim_tensorcore.py (launch them with one block of 32 threads)."""

import ml_dtypes
import numpy as np
import pytest
from numba import cuda

from lowbitc.backends.numba_cuda.tensorcore import (
    cp_async16,
    cp_async16_zfill,
    cp_async_commit,
    cp_async_wait,
    ldmatrix_x2,
    ldmatrix_x2_trans,
    ldmatrix_x4,
    ldmatrix_x4_trans,
    mma_bf16,
    mma_f16,
    mma_s8,
)
from lowbitc.layout import mma

MMA_SIG = "void(uint32[:, ::1], uint32[:, ::1], float32[:, ::1], float32[:, ::1])"
MMA_S8_SIG = "void(uint32[:, ::1], uint32[:, ::1], int32[:, ::1], int32[:, ::1])"
LDSM_SIG = "void(uint16[::1], uint32[::1], uint32[:, ::1])"
CP_SIG = "void(uint32[::1], uint32[::1], uint32[::1])"
SMEM_HALVES = 1024  # the ldmatrix kernels' shared tile: 2 KiB


def _mma_kernel(mma):
    """A kernel: lane t passes row t of a, b, c to `mma` and stores its result in row t of d."""

    def kernel(a, b, c, d):
        t = cuda.threadIdx.x
        r = mma(a[t, 0], a[t, 1], a[t, 2], a[t, 3], b[t, 0], b[t, 1],
                c[t, 0], c[t, 1], c[t, 2], c[t, 3])
        for i in range(4):
            d[t, i] = r[i]

    return kernel


def _ldsm_kernel(ldmatrix, num):
    """A kernel: stage `src` in shared memory, lane t gives row start rows[t] to `ldmatrix`
    and stores its `num` registers in row t of out."""

    def kernel(src, rows, out):
        sh = cuda.shared.array(SMEM_HALVES, np.uint16)
        t = cuda.threadIdx.x
        for i in range(t, SMEM_HALVES, 32):
            sh[i] = src[i]
        cuda.syncthreads()
        r = ldmatrix(sh, rows[t])
        for i in range(num):
            out[t, i] = r[i]

    return kernel


k_mma_f16, k_mma_bf16, k_mma_s8 = (_mma_kernel(f) for f in (mma_f16, mma_bf16, mma_s8))
k_ldsm_x4 = _ldsm_kernel(ldmatrix_x4, 4)
k_ldsm_x4_trans = _ldsm_kernel(ldmatrix_x4_trans, 4)
k_ldsm_x2 = _ldsm_kernel(ldmatrix_x2, 2)
k_ldsm_x2_trans = _ldsm_kernel(ldmatrix_x2_trans, 2)


def k_cp_async(src, nbytes, out):
    """Lane t copies words 4t..4t+3 of `src` into a shared tile in two committed groups
    (16 bytes whole, then 16 bytes of which only nbytes[t] are read), waits, writes back."""
    sh = cuda.shared.array(256, np.uint32)
    t = cuda.threadIdx.x
    cp_async16(sh, 4 * t, src, 4 * t)
    cp_async_commit()
    cp_async16_zfill(sh, 128 + 4 * t, src, 128 + 4 * t, nbytes[t])
    cp_async_commit()
    cp_async_wait(1)
    cp_async_wait(0)
    cuda.syncthreads()
    for i in range(t, 256, 32):
        out[i] = sh[i]


# -- host side: operands into lane registers by the fragment layouts (lowbitc.layout.mma) ------
def to_lanes(tile: np.ndarray, tv) -> np.ndarray:
    """tile [R, C] -> [32, num_values]: value v of lane l is tile[tv(l, v)]."""
    return np.array([[tile[tv(lane, v)] for v in range(tv.num_values)] for lane in range(32)],
                    dtype=tile.dtype)


def to_registers(tile: np.ndarray, tv) -> np.ndarray:
    """tile -> uint32 [32, regs]: each lane's values packed low-first into 32-bit registers."""
    vals = np.ascontiguousarray(to_lanes(tile, tv))
    return vals.view(np.uint32)


def from_lanes(vals: np.ndarray, tv) -> np.ndarray:
    """[32, num_values] -> the tile it holds (inverse of to_lanes)."""
    tile = np.zeros(tv.shape, vals.dtype)
    for lane in range(32):
        for v in range(tv.num_values):
            tile[tv(lane, v)] = vals[lane, v]
    return tile


# -- tests shared by the simulator suite (tests/cudasim/test_sim_tensorcore.py) and the native
# run (tests/test_gpu_tensorcore.py): those modules import them, so pytest collects them there;
# this module's name keeps pytest from collecting them here.
RNG = np.random.default_rng(13)


@pytest.mark.parametrize("kind", ["f16", "bf16"])
def test_mma_m16n8k16_float(kind):
    dtype = np.float16 if kind == "f16" else ml_dtypes.bfloat16
    kernel = cuda.jit(k_mma_f16 if kind == "f16" else k_mma_bf16)
    tiles = []
    for _ in range(2):  # two warps, each with its own matrices
        a = RNG.standard_normal((16, 16)).astype(dtype)
        b = RNG.standard_normal((16, 8)).astype(dtype)
        c = RNG.standard_normal((16, 8)).astype(np.float32)
        tiles.append((a, b, c))
    regs = [np.concatenate([to_registers(t[i], f()) for t in tiles])
            for i, f in ((0, mma.mma_m16n8k16_a), (1, mma.mma_m16n8k16_b))]
    c_lanes = np.concatenate([to_lanes(t[2], mma.mma_m16n8k16_c()) for t in tiles])
    d = np.zeros((64, 4), np.float32)
    kernel[1, 64](regs[0], regs[1], c_lanes, d)
    for w, (a, b, c) in enumerate(tiles):
        got = from_lanes(d[32 * w : 32 * w + 32], mma.mma_m16n8k16_c())
        want = a.astype(np.float64) @ b.astype(np.float64) + c
        np.testing.assert_allclose(got, want, rtol=2**-22, atol=1e-6)  # one f32 rounding


def test_mma_m16n8k32_s8_wraps_like_int32():
    a = RNG.integers(-128, 128, (16, 32)).astype(np.int8)
    b = RNG.integers(-128, 128, (32, 8)).astype(np.int8)
    c = RNG.integers(-(2**31), 2**31, (16, 8)).astype(np.int32)
    c[0, 0] = 2**31 - 1  # overflow wraps (no .satfinite)
    d = np.zeros((32, 4), np.int32)
    cuda.jit(k_mma_s8)[1, 32](to_registers(a, mma.mma_m16n8k32_a()),
                                to_registers(b, mma.mma_m16n8k32_b()),
                                to_lanes(c, mma.mma_m16n8k32_c()), d)
    want = (a.astype(np.int64) @ b.astype(np.int64) + c) & 0xFFFFFFFF
    got = from_lanes(d, mma.mma_m16n8k32_c()).astype(np.int64) & 0xFFFFFFFF
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name,num,trans", [("k_ldsm_x4", 4, False), ("k_ldsm_x4_trans", 4, True),
                                            ("k_ldsm_x2", 2, False), ("k_ldsm_x2_trans", 2, True)])
def test_ldmatrix_against_isa_maps(name, num, trans):
    src = RNG.integers(0, 2**16, SMEM_HALVES).astype(np.uint16)
    starts = RNG.permutation(SMEM_HALVES // 8)[:32] * 8  # 32 distinct 16-byte rows
    rows = starts.astype(np.uint32)
    out = np.zeros((32, num), np.uint32)
    cuda.jit(globals()[name])[1, 32](src, rows, out)
    dst = mma.ldmatrix_dst_trans() if trans else mma.ldmatrix_dst()
    for m in range(num):
        matrix = np.zeros((8, 8), np.uint16)
        for lane in range(32):
            owner = mma.ldmatrix_src_row(lane, num)
            if owner is not None and owner[0] == m:
                matrix[owner[1]] = src[rows[lane] : rows[lane] + 8]
        want = to_registers(matrix, dst)[:, 0]
        np.testing.assert_array_equal(out[:, m], want)


def test_ldmatrix_x4_loads_the_mma_a_fragment():
    """Lane l pointing at row l % 16, columns 8 * (l // 16).. of a row-major 16x16 tile gives
    exactly the m16n8k16 A registers (the usual ldmatrix -> mma pairing)."""
    a = RNG.standard_normal((16, 64)).astype(np.float16)  # a 16x16 tile inside 64-wide rows
    src = np.zeros(SMEM_HALVES, np.uint16)
    src[:1024] = a.view(np.uint16).reshape(-1)
    lane = np.arange(32)
    rows = ((lane % 16) * 64 + 8 * (lane // 16) + 16).astype(np.uint32)  # tile at column 16
    out = np.zeros((32, 4), np.uint32)
    cuda.jit(k_ldsm_x4)[1, 32](src, rows, out)
    np.testing.assert_array_equal(out, to_registers(a[:, 16:32], mma.mma_m16n8k16_a()))


def test_cp_async_copies_and_zero_fills():
    src = RNG.integers(0, 2**32, 256, dtype=np.uint64).astype(np.uint32)
    nbytes = RNG.integers(0, 17, 32).astype(np.uint32)
    nbytes[:3] = (0, 16, 5)
    out = np.zeros(256, np.uint32)
    cuda.jit(k_cp_async)[1, 32](src, nbytes, out)
    np.testing.assert_array_equal(out[:128], src[:128])
    want = src[128:].view(np.uint8).reshape(32, 16).copy()
    for t in range(32):
        want[t, nbytes[t]:] = 0
    np.testing.assert_array_equal(out[128:].view(np.uint8).reshape(32, 16), want)
