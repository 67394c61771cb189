"""Least-squares refit of a quantized weight's grid under the layer's Hessian, codes fixed
(`quantize(..., method="hqq-gptq", refit=R)`).

GPTQ fixes the grid (each group's scale and zero point, or each row's code book) before its
column loop and chooses the codes. With the codes fixed, the dequantized weight is linear in
the grid: row n's w_hat[k] = s[g] * v[k] + b[g] (b = -s * z) for affine groups, or
w_hat[k] = table[code[k]] for a row code book. So the grid minimising the layer's output
error (w - w_hat)^T H (w - w_hat) is one small linear solve per row (2 G or 2^bits
unknowns): the normal equations A^T H A x = A^T H t. Outliers kept in float then take the
values that minimise the same error given the dense part (their own small solve per row).
A row keeps its old grid when the new one is not better (a singular system, a scale <= 0,
the stored scale's rounding). H here is GPTQ's damped Hessian.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from lowbitc import quant
from lowbitc.gptq import damped
from lowbitc.mixture import TableQTensor

CHUNK = 64  # rows per batched solve
RIDGE = 1e-9  # times the mean diagonal: pulls parameters no weight uses toward their old value


def row_errors(w: np.ndarray, w_hat: np.ndarray, hd: np.ndarray) -> np.ndarray:
    """Per row, (w - w_hat)^T H (w - w_hat) (float64 [N])."""
    e = np.asarray(w, np.float64) - w_hat
    return np.einsum("nk,nk->n", e @ hd, e)


def _solve(m: np.ndarray, rhs: np.ndarray, old: np.ndarray) -> np.ndarray:
    """Batched solve of (m + r I) x = rhs + r old, r = RIDGE * mean(diag m) per row."""
    r = RIDGE * np.maximum(np.einsum("nii->n", m) / m.shape[1], 1e-30)[:, None]
    m = m + r[:, :, None] * np.eye(m.shape[1])
    with np.errstate(all="ignore"):
        try:
            return np.linalg.solve(m, (rhs + r * old)[..., None])[..., 0]
        except np.linalg.LinAlgError:
            return np.full_like(old, np.nan)


def _normal_equations(design: list[np.ndarray], hd: np.ndarray, t: np.ndarray, group: int):
    """A^T H A [c, P, P] and A^T H t [c, P] for rows whose design is, per entry of `design`
    ([c, K] each, K a multiple of `group`), the columns x[k] * [k in group a]."""
    c, k = t.shape
    g = k // group
    hb = hd.reshape(g, group, k)
    # p[a, n, l] = sum_{k in a} x[n, k] H[k, l]: one batched matmul per design entry
    ps = [np.matmul(x.reshape(c, g, group).transpose(1, 0, 2), hb) for x in design]
    m = np.concatenate([np.concatenate(
        [np.einsum("anlj,nlj->nal", p.reshape(g, c, g, group), y.reshape(c, g, group))
         for y in design], axis=2) for p in ps], axis=1)
    rhs = np.concatenate([np.einsum("anl,nl->na", p, t) for p in ps], axis=1)
    return m, rhs


def refit_affine(qt: quant.QTensor, w: np.ndarray, hd: np.ndarray, mask: np.ndarray,
                 kept: np.ndarray) -> quant.QTensor:
    """`qt` with each row's scales (and zeros) the least-squares fit of w under `hd`, codes
    fixed; `kept` holds the outliers' float values at `mask` (they are not refitted here)."""
    n, k = qt.shape
    g = qt.group_size
    groups = qt.scales.shape[1]
    pad = groups * g - k
    hp = np.pad(hd, ((0, pad), (0, pad)))
    v = np.where(mask, 0.0, qt.dtype.decode(qt.codes).astype(np.float64))
    one = np.where(mask, 0.0, 1.0)
    t = np.asarray(w, np.float64) - np.where(mask, kept, 0.0)  # the dense part's target
    v, one, t = (np.pad(a, ((0, 0), (0, pad))) for a in (v, one, t))
    scales = qt.scales.astype(np.float64)
    offsets = None if qt.zeros is None else -scales * qt.zeros
    for r0 in range(0, n, CHUNK):
        rows = slice(r0, min(r0 + CHUNK, n))
        design = [v[rows]] if offsets is None else [v[rows], one[rows]]
        m, rhs = _normal_equations(design, hp, t[rows], g)
        old = scales[rows] if offsets is None else np.concatenate(
            [scales[rows], offsets[rows]], axis=1)
        x = _solve(m, rhs, old)
        scales[rows] = x[:, :groups]
        if offsets is not None:
            offsets[rows] = x[:, groups:]
    sfmt = quant.get_dtype(qt.scale_dtype)
    with np.errstate(all="ignore"):
        s = quant._round_scale(np.where(scales > 0, scales, 1.0), sfmt).astype(np.float32)
        z = None if offsets is None else (-offsets / s).astype(np.float32)
    ok = (scales > 0).all(axis=1) & np.isfinite(s).all(axis=1) & (s > 0).all(axis=1)
    if z is not None:
        ok &= np.isfinite(z).all(axis=1)
    new = dataclasses.replace(qt, scales=np.where(ok[:, None], s, qt.scales),
                              zeros=None if z is None else np.where(ok[:, None], z, qt.zeros))
    return _better(qt, new, w, hd, mask, kept)


def refit_tables(qt: TableQTensor, w: np.ndarray, hd: np.ndarray, mask: np.ndarray,
                 kept: np.ndarray) -> TableQTensor:
    """Per-row code books (`mixture.row_tables`' layout: table n for row n) refitted by least
    squares under `hd`, codes fixed, then sorted ascending (codes renumbered to match)."""
    n, k = qt.shape
    size = qt.tables.shape[1]
    t = np.asarray(w, np.float64) - np.where(mask, kept, 0.0)
    tables = qt.tables.astype(np.float64)
    for r0 in range(0, n, CHUNK):
        rows = slice(r0, min(r0 + CHUNK, n))
        onehot = ((qt.codes[rows, :, None] == np.arange(size)) & ~mask[rows, :, None])
        onehot = onehot.astype(np.float64)  # [c, K, T]
        m = np.einsum("nka,nkb->nab", onehot, np.matmul(hd, onehot))
        rhs = np.einsum("nka,nk->na", onehot, t[rows] @ hd)
        tables[rows] = _solve(m, rhs, tables[rows])
    ok = np.isfinite(tables).all(axis=1)
    tables = np.where(ok[:, None], tables, qt.tables).astype(np.float32)
    order = np.argsort(tables, axis=1, kind="stable")
    rank = np.argsort(order, axis=1).astype(np.uint8)  # old code -> its place when sorted
    new = dataclasses.replace(qt, tables=np.take_along_axis(tables, order, axis=1),
                              codes=np.take_along_axis(rank, qt.codes.astype(np.int64), 1))
    return _better(qt, new, w, hd, mask, kept)


def _better(old, new, w, hd, mask, kept):
    """Per row, the one of `old` and `new` (same layout) with the smaller output error."""
    w_hat = [np.where(mask, kept, q.dequantize()) for q in (old, new)]
    win = row_errors(w, w_hat[1], hd) <= row_errors(w, w_hat[0], hd)
    fields = {"codes": new.codes, "scales": new.scales}
    fields.update({"tables": new.tables} if isinstance(new, TableQTensor) else {})
    if new.zeros is not None:
        fields["zeros"] = new.zeros
    pick = {name: np.where(win[:, None], a, getattr(old, name)) for name, a in fields.items()}
    return dataclasses.replace(old, **pick)


def refit_outliers(w: np.ndarray, dense: np.ndarray, hd: np.ndarray, mask: np.ndarray
                   ) -> np.ndarray:
    """The float values at `mask` minimising (w - w_hat)^T H (w - w_hat) per row, w_hat the
    dense part elsewhere: e_F = -H_FF^-1 (H e_D)_F (float32 [N, K], 0 off the mask)."""
    w64 = np.asarray(w, np.float64)
    eh = np.where(mask, 0.0, w64 - dense) @ hd
    kept = np.zeros(w.shape, np.float32)
    for r in np.nonzero(mask.any(axis=1))[0]:
        f = np.nonzero(mask[r])[0]
        kept[r, f] = w64[r, f] + np.linalg.solve(hd[np.ix_(f, f)], eh[r, f])
    return kept


def refit(qt, w: np.ndarray, hessian: np.ndarray, damp: float, mask: np.ndarray | None,
          kept: np.ndarray):
    """(qt with its grid refitted, the outliers' refitted values) under GPTQ's damped H."""
    hd = damped(hessian, damp)
    mask = np.zeros(qt.shape, bool) if mask is None else mask
    fit = refit_tables if isinstance(qt, TableQTensor) else refit_affine
    qt = fit(qt, w, hd, mask, kept)
    if mask.any():
        kept = refit_outliers(w, qt.dequantize(), hd, mask)
    return qt, kept
