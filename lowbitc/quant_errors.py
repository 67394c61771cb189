"""Reconstruction errors of candidate scales and zero points, the inner loop of quantize's
search: numba kernels for uniform (integer) formats, value tables for floats and code books."""

from __future__ import annotations

import functools

import numpy as np

from lowbitc.dtypes import Format


def _errors(fmt: Format, wg: np.ndarray, scales: np.ndarray, zeros: np.ndarray) -> np.ndarray:
    """Squared error [C, M] of each candidate (scales[c, m], zeros[c, m]) on group wg[m].

    Only for ranking candidates: ties and float32 rounding may differ from `encode`.
    """
    t = fmt.values()
    levels = np.unique(t[np.isfinite(t)]).astype(np.float64)  # sorted, -0 merged
    if fmt.kind not in ("uint", "int", "bipolar"):
        return _table_errors(fmt, wg, scales, zeros)
    step = 2.0 if fmt.kind == "bipolar" else 1.0
    err = np.empty(scales.shape, np.float64)
    top = round((levels[-1] - levels[0]) / step)
    _uniform_kernel()(wg, scales.astype(np.float32), zeros.astype(np.float32), levels[0], top,
                      step, err)
    return err


prange = range  # numba.prange once _compiled has compiled a search kernel
_COMPILED: dict = {}


def _compiled(fn):
    """`fn` compiled by numba on first use: importing numba costs ~0.4 s, which processes
    that only run kernels (not quantize) should not pay."""
    global prange
    kernel = _COMPILED.get(fn)
    if kernel is None:
        import numba  # noqa: PLC0415 - deliberate: lazy for start-up time, not for a cycle

        prange = numba.prange
        kernel = _COMPILED[fn] = numba.njit(parallel=True, fastmath=True, cache=True)(fn)
    return kernel


def _uniform_kernel():
    return _compiled(_uniform_errors)


def _uniform_errors(w, scales, zeros, lo, top, step, err):  # pragma: no cover (compiled)
    """Levels lo + step*i, i = 0..top: error in units of steps, scaled back at the end."""
    for i in prange(w.shape[0]):
        for c in range(scales.shape[0]):
            s = scales[c, i]
            a = np.float32(1.0 / (s * step))
            b = np.float32((zeros[c, i] - lo) / step)
            e = np.float32(0.0)
            for j in range(w.shape[1]):
                u = w[i, j] * a + b
                q = min(max(np.floor(u + np.float32(0.5)), np.float32(0.0)), np.float32(top))
                e += (u - q) * (u - q)
            err[c, i] = e * (s * step) ** 2


def _affine_sums(w, scales, zeros, top, out):  # pragma: no cover (compiled)
    """Per group i, the codes of (scales[i], zeros[i]) on levels 0..top: out[i] = (squared
    error, sum of codes, of codes squared, of codes * weights, of weights)."""
    for i in prange(w.shape[0]):
        s = scales[i]
        a = np.float32(1.0 / s)
        b = np.float32(zeros[i])
        e = np.float32(0.0)
        sq, sqq, sqw, sw = 0.0, 0.0, 0.0, 0.0
        for j in range(w.shape[1]):
            u = w[i, j] * a + b
            q = min(max(np.floor(u + np.float32(0.5)), np.float32(0.0)), np.float32(top))
            e += (u - q) * (u - q)
            sq += q
            sqq += q * q
            sqw += q * w[i, j]
            sw += w[i, j]
        out[i, 0] = e * np.float64(s) ** 2
        out[i, 1], out[i, 2], out[i, 3], out[i, 4] = sq, sqq, sqw, sw


def _table_errors(fmt: Format, wg, scales, zeros, block: int = 1 << 17) -> np.ndarray:
    """As `_errors`, for non-uniform levels, a cache-sized block at a time. The nearest level
    comes from a table indexed by the top 16 bits of the float32 (exact except within 2^-8
    relative of a midpoint, which only nudges the ranking)."""
    lut = _value_lut(fmt)
    err = np.empty(scales.shape, np.float64)
    chunk = max(1, block // max(wg.shape[1], 1))
    idx = np.empty((min(chunk, wg.shape[0]), wg.shape[1]), np.intp)
    for a in range(0, wg.shape[0], chunk):
        w = wg[a: a + chunk]
        for c in range(scales.shape[0]):
            s = scales[c, a: a + chunk]
            y = w * (1 / s)[:, None]
            if zeros[c, a] != 0 or zeros[c, a: a + chunk].any():
                y += zeros[c, a: a + chunk, None]
            i = idx[: len(w)]
            np.right_shift(y.view(np.uint32), 16, out=i, casting="unsafe")
            y -= np.take(lut, i)
            err[c, a: a + chunk] = np.einsum("ij,ij->i", y, y) * s.astype(np.float64) ** 2
    return err


@functools.cache
def _value_lut(fmt: Format) -> np.ndarray:
    """float32 value nearest to each float32 bucket (inputs sharing their top 16 bits)."""
    top = (np.arange(1 << 16, dtype=np.uint32) << np.uint32(16)) | np.uint32(0x8000)
    x = top.view(np.float32)
    x = np.where(np.isfinite(x), x, 0).astype(np.float32)
    return fmt.decode(fmt.encode(x)).astype(np.float32)
