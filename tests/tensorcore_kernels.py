"""Kernels that exercise backends/numba_cuda/tensorcore.py, one instruction each: compiled to
PTX by tests/test_cuda_tensorcore.py and run in the simulator by
tests/cudasim/test_sim_tensorcore.py (launch them with one block of 32 threads)."""

import numpy as np
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

MMA_SIG = "void(uint32[:, ::1], uint32[:, ::1], float32[:, ::1], float32[:, ::1])"
MMA_S8_SIG = "void(uint32[:, ::1], uint32[:, ::1], int32[:, ::1], int32[:, ::1])"
LDSM_SIG = "void(uint16[::1], uint32[::1], uint32[:, ::1])"
CP_SIG = "void(uint32[::1], uint32[::1], uint32[::1])"
SMEM_HALVES = 1024  # the ldmatrix kernels' shared tile: 2 KiB


def k_mma_f16(a, b, c, d):
    t = cuda.threadIdx.x
    r = mma_f16(a[t, 0], a[t, 1], a[t, 2], a[t, 3], b[t, 0], b[t, 1],
                c[t, 0], c[t, 1], c[t, 2], c[t, 3])
    d[t, 0], d[t, 1], d[t, 2], d[t, 3] = r[0], r[1], r[2], r[3]


def k_mma_bf16(a, b, c, d):
    t = cuda.threadIdx.x
    r = mma_bf16(a[t, 0], a[t, 1], a[t, 2], a[t, 3], b[t, 0], b[t, 1],
                 c[t, 0], c[t, 1], c[t, 2], c[t, 3])
    d[t, 0], d[t, 1], d[t, 2], d[t, 3] = r[0], r[1], r[2], r[3]


def k_mma_s8(a, b, c, d):
    t = cuda.threadIdx.x
    r = mma_s8(a[t, 0], a[t, 1], a[t, 2], a[t, 3], b[t, 0], b[t, 1],
               c[t, 0], c[t, 1], c[t, 2], c[t, 3])
    d[t, 0], d[t, 1], d[t, 2], d[t, 3] = r[0], r[1], r[2], r[3]


def k_ldsm_x4(src, rows, out):
    sh = cuda.shared.array(SMEM_HALVES, np.uint16)
    t = cuda.threadIdx.x
    for i in range(t, SMEM_HALVES, 32):  # stage the global halves in shared memory
        sh[i] = src[i]
    cuda.syncthreads()
    r = ldmatrix_x4(sh, rows[t])
    out[t, 0], out[t, 1], out[t, 2], out[t, 3] = r[0], r[1], r[2], r[3]


def k_ldsm_x4_trans(src, rows, out):
    sh = cuda.shared.array(SMEM_HALVES, np.uint16)
    t = cuda.threadIdx.x
    for i in range(t, SMEM_HALVES, 32):  # stage the global halves in shared memory
        sh[i] = src[i]
    cuda.syncthreads()
    r = ldmatrix_x4_trans(sh, rows[t])
    out[t, 0], out[t, 1], out[t, 2], out[t, 3] = r[0], r[1], r[2], r[3]


def k_ldsm_x2(src, rows, out):
    sh = cuda.shared.array(SMEM_HALVES, np.uint16)
    t = cuda.threadIdx.x
    for i in range(t, SMEM_HALVES, 32):  # stage the global halves in shared memory
        sh[i] = src[i]
    cuda.syncthreads()
    r = ldmatrix_x2(sh, rows[t])
    out[t, 0], out[t, 1] = r[0], r[1]


def k_ldsm_x2_trans(src, rows, out):
    sh = cuda.shared.array(SMEM_HALVES, np.uint16)
    t = cuda.threadIdx.x
    for i in range(t, SMEM_HALVES, 32):  # stage the global halves in shared memory
        sh[i] = src[i]
    cuda.syncthreads()
    r = ldmatrix_x2_trans(sh, rows[t])
    out[t, 0], out[t, 1] = r[0], r[1]


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
