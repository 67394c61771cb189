"""Dense-and-sparse weights: the few largest weights (or whole input columns) kept in float,
beside a low-bit dense part quantized without them (LLM.int8(), SpQR, SqueezeLLM).

`quantize(w, dtype, group_size, outliers=0.005)` keeps the 0.5% largest-magnitude weights;
`outliers="columns:8"` keeps the 8 input columns with the largest activation-weighted norm
(`column_weights`, e.g. the mean x^2 of each input; |w| alone without calibration data). The
outliers are stored as `Sparse`, a CSR matrix by rows whose value at (n, k) is w[n, k] minus
the dense part's value there (rounded to f16 or f32), so dense + sparse reproduces the kept
weights up to that rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lowbitc.errors import UserArgumentError

MAX_FRACTION = 0.1
VALUE_DTYPES = {"f16": np.float16, "f32": np.float32}


@dataclass(frozen=True, eq=False)
class Sparse:
    """CSR by rows of an [N, K] matrix: row n's entries are indices[indptr[n]:indptr[n+1]]
    (int32, ascending) with `values` (float16 or float32) at the same positions."""

    shape: tuple[int, int]
    indptr: np.ndarray  # int32 [N + 1]
    indices: np.ndarray  # int32 [nnz]
    values: np.ndarray  # float16 | float32 [nnz]

    def __post_init__(self) -> None:
        n, k = self.shape
        if self.indptr.shape != (n + 1,) or self.indptr.dtype != np.int32:
            raise UserArgumentError(f"indptr: expected int32 [{n + 1}], got "
                                    f"{self.indptr.dtype} {self.indptr.shape}")
        nnz = int(self.indptr[-1]) if n + 1 else 0
        if self.indices.shape != (nnz,) or self.indices.dtype != np.int32:
            raise UserArgumentError(f"indices: expected int32 [{nnz}], got "
                                    f"{self.indices.dtype} {self.indices.shape}")
        if self.values.shape != (nnz,) or self.values.dtype not in (np.float16, np.float32):
            raise UserArgumentError(f"values: expected float16 or float32 [{nnz}], got "
                                    f"{self.values.dtype} {self.values.shape}")
        if nnz and (self.indices.min() < 0 or self.indices.max() >= k):
            raise UserArgumentError(f"indices: expected columns in [0, {k}), got "
                                    f"{self.indices.min()}..{self.indices.max()}")

    @property
    def nnz(self) -> int:
        return int(self.values.size)

    @property
    def rows(self) -> np.ndarray:
        """The row of every entry (int64 [nnz])."""
        return np.repeat(np.arange(self.shape[0]), np.diff(self.indptr))

    def to_dense(self) -> np.ndarray:
        out = np.zeros(self.shape, np.float32)
        out[self.rows, self.indices] = self.values.astype(np.float32)
        return out

    def matmul_add(self, x: np.ndarray, y: np.ndarray, backend: str = "llvm") -> np.ndarray:
        """y[M, N] += x[M, K] @ self.T in float32 (the second pass of ops.matmul): on the
        CPU native code on the kernels' thread pool, 16 entries per gather and FMA, f16 values
        widened as they load."""
        if not self.nnz:
            return y
        # deliberate lazy imports: numba-cuda loads only for the CUDA backend, llvmlite only
        # when a weight with outliers is multiplied (start-up time)
        if backend == "cuda":
            from lowbitc.backends.numba_cuda import sparse  # noqa: PLC0415
            return sparse.matmul_add(self, x, y)
        from lowbitc.backends.llvm.sparse import csr_matmul_add  # noqa: PLC0415
        csr_matmul_add(np.ascontiguousarray(x, np.float32), self.indptr, self.indices,
                       self.values, y)
        return y

    def copy(self) -> Sparse:
        return Sparse(self.shape, self.indptr.copy(), self.indices.copy(), self.values.copy())

    @property
    def nbytes(self) -> int:
        return self.indptr.nbytes + self.indices.nbytes + self.values.nbytes


def check_outliers(outliers) -> tuple[str, float]:
    """("fraction", f) or ("columns", c) from `outliers=` (None, a float, or "columns:C")."""
    if outliers is None or (isinstance(outliers, float | int) and not isinstance(outliers, bool)
                            and outliers == 0):
        return ("fraction", 0.0)
    if isinstance(outliers, str):
        head, _, count = outliers.partition(":")
        if head == "columns" and count.isdigit() and int(count) >= 1:
            return ("columns", int(count))
        raise UserArgumentError(f"outliers: expected a fraction in [0, {MAX_FRACTION}] or "
                                f"'columns:C' (C >= 1), got {outliers!r}")
    if isinstance(outliers, bool) or not isinstance(outliers, float | int | np.floating):
        raise UserArgumentError(f"outliers: expected a fraction in [0, {MAX_FRACTION}] or "
                                f"'columns:C', got {outliers!r}")
    if not 0 <= float(outliers) <= MAX_FRACTION:
        raise UserArgumentError(f"outliers: expected a fraction in [0, {MAX_FRACTION}], "
                                f"got {outliers}")
    return ("fraction", float(outliers))


def outlier_mask(w: np.ndarray, outliers, column_weights: np.ndarray | None = None
                 ) -> np.ndarray | None:
    """bool [N, K]: the weights `outliers=` keeps in float (None when it keeps none)."""
    how, amount = check_outliers(outliers)
    n, k = w.shape
    cw = None
    if column_weights is not None:
        cw = np.asarray(column_weights, np.float64).ravel()
        if cw.shape != (k,) or not (cw >= 0).all():
            raise UserArgumentError(f"column_weights: expected [{k}] non-negative values, got "
                                    f"shape {cw.shape}")
    if how == "fraction":
        count = int(round(amount * w.size))
        if count == 0:
            return None
        # the squared output error a weight's rounding can cause: w^2 times its input's
        # mean square when known, else w^2 relative to its row's mean square
        score = np.square(w.astype(np.float64))
        score = score * cw if cw is not None else score / np.maximum(
            score.mean(axis=1, keepdims=True), 1e-30)
        flat = score.ravel()
        keep = np.argpartition(flat, flat.size - count)[flat.size - count:]
        mask = np.zeros(w.size, bool)
        mask[keep] = True
        return mask.reshape(n, k)
    if amount > k:
        raise UserArgumentError(f"outliers: asked for {amount} columns of a weight with K = {k}")
    score = np.square(w.astype(np.float64)).sum(axis=0)
    if cw is not None:
        score = score * cw
    cols = np.argsort(score, kind="stable")[k - amount:]
    mask = np.zeros((n, k), bool)
    mask[:, cols] = True
    return mask


def split(w: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The dense part to quantize: w with the kept weights replaced by 0 (inside every
    group's range for the weights of trained layers, so the range shrinks to the rest)."""
    return np.where(mask, np.float32(0), w)


def residual(w: np.ndarray, dense: np.ndarray, mask: np.ndarray,
             value_dtype: str = "f16") -> Sparse:
    """The sparse part at `mask`: w - dense there, rounded to `value_dtype`, as CSR rows."""
    if value_dtype not in VALUE_DTYPES:
        raise UserArgumentError(f"outlier_dtype: expected one of {sorted(VALUE_DTYPES)}, "
                                f"got {value_dtype!r}")
    rows, cols = np.nonzero(mask)  # row-major order: CSR order
    values = (w[rows, cols] - dense[rows, cols]).astype(VALUE_DTYPES[value_dtype])
    indptr = np.zeros(w.shape[0] + 1, np.int32)
    np.cumsum(np.bincount(rows, minlength=w.shape[0]), out=indptr[1:])
    return Sparse(w.shape, indptr, cols.astype(np.int32), values)
