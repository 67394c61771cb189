"""The outliers' second pass on CUDA: y[M, N] += x[M, K] @ S.T for S a CSR matrix by rows
(lowbitc.outliers.Sparse), one thread per output element, run after the dense kernel on the
same output. Values arrive as float32 (converted once per weight on the host)."""

from __future__ import annotations

import numpy as np
from numba import cuda, float32

THREADS = (8, 32)  # (rows of x, rows of the weight) per block


def csr_matmul_add(x, indptr, indices, values, y):  # pragma: no cover (device code)
    m, n = cuda.grid(2)
    if m < y.shape[0] and n < y.shape[1]:
        acc = float32(0.0)
        for j in range(indptr[n], indptr[n + 1]):
            acc += values[j] * x[m, indices[j]]
        y[m, n] += acc


SIGNATURE = "void(float32[:, ::1], int32[::1], int32[::1], float32[::1], float32[:, ::1])"
_KERNEL = []


def matmul_add(sparse, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """y += x @ sparse.T on the CUDA device (or Numba's simulator)."""
    if not _KERNEL:
        _KERNEL.append(cuda.jit(SIGNATURE)(csr_matmul_add))
    m, n = y.shape
    grid = (-(-m // THREADS[0]), -(-n // THREADS[1]))
    _KERNEL[0][grid, THREADS](np.ascontiguousarray(x, np.float32), sparse.indptr,
                              sparse.indices, sparse.values.astype(np.float32), y)
    return y
