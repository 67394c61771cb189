"""GPTQ's error feedback (Frantar et al., 2022) over any column quantizer, in numpy.

`feedback` quantizes a weight [N, K] column by column with `column(k, values)`, a function
that rounds column k's current values to the grid the caller fixed up front (a group's
weighted-HQQ scale and zero, a row's fitted code book), and pushes each column's rounding
error onto the columns not yet quantized, weighted by the inverse Hessian H^-1 of the
layer's inputs (H = mean x^T x over calibration data), in blocks of `block` columns. With
`act_order`, columns go in decreasing order of diag(H) (GPTQ's act-order); the grids are
fixed before the loop (GPTQ's static groups), so the order changes nothing but the feedback.
Weights where `mask` is True are outliers kept in float (lowbitc.outliers): they take their
value as the feedback left it and carry no error forward.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from lowbitc.errors import UserArgumentError

# the damping (times the mean of diag H) added before H is inverted: GPTQ's 0.01 suits many
# calibration tokens; with few (MiniLM's 8 sentences, ~100 tokens for K = 384..1536) H is
# far from full rank and the feedback fits those tokens. 1.0 was picked on MiniLM with 8
# sentences by the evaluation sentences' cosine (docs/quantization.md): pass `damp` chosen on
# held-out calibration text (examples/minilm_quantize.py --choose-damp does)
DAMP = 1.0
Column = Callable[[int, np.ndarray], tuple[np.ndarray, np.ndarray]]


def check_hessian(hessian, k: int) -> np.ndarray:
    """`hessian` as float64 [K, K] (a torch tensor or an array), or UserArgumentError."""
    if hasattr(hessian, "detach"):
        hessian = hessian.detach().to("cpu").double().numpy()
    h = np.asarray(hessian, np.float64)
    if h.shape != (k, k) or not np.isfinite(h).all():
        raise UserArgumentError(f"hessian: expected a finite [{k}, {k}] matrix (mean x^T x of "
                                f"the layer's inputs), got shape {h.shape}")
    return h


def damped(h: np.ndarray, damp: float) -> np.ndarray:
    """H as GPTQ inverts it: dead inputs (diag 0) get 1 on the diagonal, then damp *
    mean(diag) is added to it (a float64 copy)."""
    h = np.array(h, np.float64)
    diag = np.diag(h).copy()
    diag[diag == 0] = 1.0
    h[np.diag_indices_from(h)] = diag + damp * np.mean(diag)
    return h


def inverse_factor(h: np.ndarray, damp: float, order: np.ndarray) -> np.ndarray:
    """Upper Cholesky factor of the damped H^-1 in `order` (float64), as GPTQ's updates use."""
    h = damped(h[np.ix_(order, order)], damp)
    return np.linalg.cholesky(np.linalg.inv(h)).T


def feedback(w: np.ndarray, hessian: np.ndarray, column: Column, damp: float = DAMP,
             block: int = 128, act_order: bool = True, mask: np.ndarray | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """(codes uint8 [N, K], kept float32 [N, K]): the codes `column` gave each column of `w`
    after the feedback, and at `mask` the float values kept (0 elsewhere)."""
    n, k = w.shape
    if isinstance(damp, bool) or not isinstance(damp, float | int) or not 0 <= damp < np.inf:
        raise UserArgumentError(f"damp: expected a finite number >= 0, got {damp!r}")
    diag = np.diag(hessian)
    order = np.argsort(-diag, kind="stable") if act_order else np.arange(k)
    u = inverse_factor(hessian, damp, order)
    work = np.asarray(w, np.float64)[:, order].copy()
    work[:, diag[order] == 0] = 0.0  # inputs that are always 0: any value serves
    held = None if mask is None else mask[:, order]
    codes = np.zeros((n, k), np.uint8)
    kept = np.zeros((n, k), np.float32)
    for b0 in range(0, k, block):
        b1 = min(b0 + block, k)
        err = np.zeros((n, b1 - b0))
        for i in range(b0, b1):
            x = work[:, i]
            c, q = column(int(order[i]), x)
            codes[:, order[i]] = c
            if held is not None and held[:, i].any():
                kept[held[:, i], order[i]] = x[held[:, i]]
                q = np.where(held[:, i], x, q)
            e = (x - q) / u[i, i]
            work[:, i:b1] -= np.outer(e, u[i, i:b1])
            err[:, i - b0] = e
        work[:, b1:] -= err @ u[b0:b1, b1:]
    return codes, kept


def affine_column(fmt, scales: np.ndarray, zeros: np.ndarray | None, group_size: int) -> Column:
    """Rounding to the fixed grid of a QTensor: column k uses group k // group_size's scale
    (and zero point)."""
    def column(k: int, x: np.ndarray):
        s = scales[:, k // group_size].astype(np.float64)
        z = None if zeros is None else zeros[:, k // group_size].astype(np.float64)
        y = x / s if z is None else x / s + z
        c = fmt.encode(y.astype(np.float32))
        v = fmt.decode(c).astype(np.float64)
        return c, (v * s if z is None else (v - z) * s)
    return column


def table_column(tables: np.ndarray) -> Column:
    """Rounding to each row's code book (ascending tables [N, 2**bits]): the nearest entry."""
    mids = (tables[:, 1:] + tables[:, :-1]) / 2

    def column(k: int, x: np.ndarray):
        c = (x[:, None] > mids).sum(axis=1).astype(np.uint8)
        return c, tables[np.arange(len(x)), c].astype(np.float64)
    return column
