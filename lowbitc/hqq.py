"""Half-quadratic optimisation of scales and zero points (HQQ, Badri & Shaji 2023): no data.

`quantize(..., method="hqq")` starts from the round-to-nearest search's (scale, zero) per
group and alternates, HQQ's way, between (1) the codes of the current (scale, zero), (2) an
error term W_e = shrink_p(W - W_hat) that absorbs the few large errors (the proximal step of
an l_p norm, p < 1), and (3) the least-squares (scale, zero) of the codes against W - W_e.
Each group keeps the iterate with the least squared error (never worse than the start).

With `weights` (one per weight, e.g. the mean x^2 of each weight's input column from
calibration data: the diagonal of the layer's Hessian), both the least-squares fit and the
kept iterate's error are weighted, so the fit follows the layer's output error rather than
the weights' (the sensitivity weighting of SqueezeLLM and AWQ, applied to HQQ's fit). A
weight of 0 leaves a weight out of its group's fit (an outlier kept in float).
"""

from __future__ import annotations

import numpy as np

from lowbitc.dtypes import Format

ITERS = 40  # HQQ's default is 20; the iterate kept only improves with more
P = 0.7  # the l_p norm of the error term
BETA, KAPPA = 1e1, 1.01  # HQQ's defaults: penalty and its growth per iteration


def shrink(x: np.ndarray, beta: float, p: float = P) -> np.ndarray:
    """The proximal operator of |x|^p / beta (HQQ's generalised soft threshold)."""
    a = np.abs(x)
    with np.errstate(divide="ignore"):
        t = np.where(a > 0, a ** (p - 1) / beta, 0)
    return np.sign(x) * np.maximum(a - t, 0)


def _codes(fmt: Format, wg, s, z):
    y = wg / s[:, None]
    if z is not None:
        y = y + z[:, None]
    return fmt.decode(fmt.encode(y)).astype(np.float64)


def _error(wg, v, s, z, d) -> np.ndarray:
    r = (v - z[:, None]) * s[:, None] if z is not None else v * s[:, None]
    return (d * np.square(wg - r)).sum(axis=1)


def refine(fmt: Format, round_scale, wg: np.ndarray, s: np.ndarray, z: np.ndarray | None,
           iters: int = ITERS, weights: np.ndarray | None = None
           ) -> tuple[np.ndarray, np.ndarray | None]:
    """HQQ iterations on groups wg[M, g] from scales s[M] (zeros z[M] or None: symmetric);
    `round_scale` rounds scales to the stored scale format; `weights` [M, g] >= 0 weigh each
    weight's squared error (a group whose weights are all 0 is fitted unweighted)."""
    wg64 = wg.astype(np.float64)
    d = np.ones_like(wg64) if weights is None else np.asarray(weights, np.float64)
    d = np.where((d.sum(axis=1) > 0)[:, None], d, 1.0)
    s = s.astype(np.float32)
    z = None if z is None else z.astype(np.float32)
    v = _codes(fmt, wg, s, z)
    best_e = _error(wg64, v, s, z, d)
    beta = BETA
    for _ in range(iters):
        r = (v - z[:, None]) * s[:, None] if z is not None else v * s[:, None]
        target = wg64 - shrink(wg64 - r, beta)
        s2, z2 = _fit(v, target, s, z, d)
        s2 = round_scale(s2)
        v2 = _codes(fmt, wg, s2, z2)
        e2 = _error(wg64, v2, s2, z2, d)
        better = e2 < best_e
        s = np.where(better, s2, s)
        if z is not None:
            z = np.where(better, z2, z)
        v = np.where(better[:, None], v2, v)
        best_e = np.where(better, e2, best_e)
        beta *= KAPPA
    return s, z


def _fit(v, target, s, z, d):
    """Weighted least-squares (scale, zero) of target ~ scale * (v - zero) (scale only when z
    is None), weights d."""
    if z is None:
        vv = np.einsum("ij,ij->i", d * v, v)
        vt = np.einsum("ij,ij->i", d * v, target)
        ok = (vv > 0) & (vt > 0)
        return np.where(ok, vt / np.where(ok, vv, 1), s).astype(np.float32), None
    total = d.sum(axis=1)
    vm, tm = (d * v).sum(axis=1) / total, (d * target).sum(axis=1) / total
    var = (d * v * v).sum(axis=1) / total - vm * vm
    cov = (d * v * target).sum(axis=1) / total - vm * tm
    ok = (var > 1e-12) & (cov > 0)
    s2 = np.where(ok, cov / np.where(ok, var, 1), s).astype(np.float32)
    return s2, (vm - tm / s2).astype(np.float32)
