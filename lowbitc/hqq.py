"""Half-quadratic optimisation of scales and zero points (HQQ, Badri & Shaji 2023): no data.

`quantize(..., method="hqq")` starts from the round-to-nearest search's (scale, zero) per
group and alternates, HQQ's way, between (1) the codes of the current (scale, zero), (2) an
error term W_e = shrink_p(W - W_hat) that absorbs the few large errors (the proximal step of
an l_p norm, p < 1), and (3) the least-squares (scale, zero) of the codes against W - W_e.
Each group keeps the iterate with the least squared error (never worse than the start).
"""

from __future__ import annotations

import numpy as np

from lowbitc.dtypes import Format

ITERS = 20
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


def _error(wg, v, s, z) -> np.ndarray:
    r = (v - z[:, None]) * s[:, None] if z is not None else v * s[:, None]
    return np.square(wg - r).sum(axis=1)


def refine(fmt: Format, round_scale, wg: np.ndarray, s: np.ndarray, z: np.ndarray | None,
           iters: int = ITERS) -> tuple[np.ndarray, np.ndarray | None]:
    """HQQ iterations on groups wg[M, g] from scales s[M] (zeros z[M] or None: symmetric);
    `round_scale` rounds scales to the stored scale format."""
    wg64 = wg.astype(np.float64)
    s = s.astype(np.float32)
    z = None if z is None else z.astype(np.float32)
    v = _codes(fmt, wg, s, z)
    best_e = _error(wg64, v, s, z)
    beta = BETA
    for _ in range(iters):
        r = (v - z[:, None]) * s[:, None] if z is not None else v * s[:, None]
        target = wg64 - shrink(wg64 - r, beta)
        s2, z2 = _fit(v, target, s, z)
        s2 = round_scale(s2)
        v2 = _codes(fmt, wg, s2, z2)
        e2 = _error(wg64, v2, s2, z2)
        better = e2 < best_e
        s = np.where(better, s2, s)
        if z is not None:
            z = np.where(better, z2, z)
        v = np.where(better[:, None], v2, v)
        best_e = np.where(better, e2, best_e)
        beta *= KAPPA
    return s, z


def _fit(v, target, s, z):
    """Least-squares (scale, zero) of target ~ scale * (v - zero) (scale only when z is None)."""
    if z is None:
        vv = np.einsum("ij,ij->i", v, v)
        vt = np.einsum("ij,ij->i", v, target)
        ok = (vv > 0) & (vt > 0)
        return np.where(ok, vt / np.where(ok, vv, 1), s).astype(np.float32), None
    vm, tm = v.mean(axis=1), target.mean(axis=1)
    var = np.square(v).mean(axis=1) - vm * vm
    cov = (v * target).mean(axis=1) - vm * tm
    ok = (var > 1e-12) & (cov > 0)
    s2 = np.where(ok, cov / np.where(ok, var, 1), s).astype(np.float32)
    return s2, (vm - tm / s2).astype(np.float32)
