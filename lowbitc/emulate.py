"""`lowbitc.chop(x, F, rounding=...)`: round values to a format and carry them on in float32
(emulated low-precision arithmetic; the module is not called `chop`, which would shadow the
function on the package once imported).

Pychop's `chop` semantics for the modes it shares (nearest_even = rmode 1, up = 2, down = 3,
toward_zero = 4, stochastic = 5, nearest_away = 8): `subnormals=False` flushes inputs below
the smallest normal to (signed) zero; `saturate=False` turns results beyond the finite range
into +-inf as IEEE overflow does (Pychop's behaviour), `saturate=True` clamps them to +-max
(lowbitc's encode). NaN stays NaN. The work runs in the compiled `chop` kernel
(lowbitc/kernels/chop.lbk); f16, bf16 and f32 targets, which are machine types rather than
codes, round on the host through `dtype(F).encode`.
"""

from __future__ import annotations

import numpy as np

from lowbitc.dtypes import Format, dtype
from lowbitc.errors import UserArgumentError
from lowbitc.ops import get_kernel
from lowbitc.rounding import ROUNDINGS, check_rounding, check_seed

ROW = 4096  # flat inputs run as rows of this many values (the flat index is unchanged)
_NO_SCALES = np.ones((1, 1), np.float32)


def chop(x, fmt: str | Format, rounding: str = "nearest_even", subnormals: bool = True,
         saturate: bool = True, seed: int | None = None, backend: str = "llvm") -> np.ndarray:
    """float32 values of `x` rounded to format `fmt` in `rounding` mode (same shape).

    Inputs are read as float32 first. Stochastic rounding draws from `seed` and each
    element's flat (C-order) index, so the result does not depend on tiling or threads."""
    f = dtype(fmt)
    mode = check_rounding(rounding)
    for name, flag in (("subnormals", subnormals), ("saturate", saturate)):
        if not isinstance(flag, bool):
            raise UserArgumentError(f"{name}: expected True or False, got {flag!r}")
    s = check_seed(seed) if mode == "stochastic" else 0
    a = np.asarray(x, dtype=np.float32)
    shape, flat = a.shape, np.ascontiguousarray(a).reshape(-1)
    if f.bits > 8:
        return _chop_on_host(flat, f, mode, subnormals, saturate, s).reshape(shape)
    if flat.size == 0:
        return flat.reshape(shape)
    two_d = flat.reshape(-1, ROW) if flat.size % ROW == 0 else flat.reshape(1, -1)
    y = np.empty_like(two_d)
    run_chop(two_d, f, mode, subnormals, saturate, s, y, backend=backend)
    return y.reshape(shape)


def run_chop(x: np.ndarray, f: Format, mode: str, subnormals: bool, saturate: bool, seed: int,
             y: np.ndarray, scales: np.ndarray | None = None, group: int = 0,
             backend: str = "llvm") -> None:
    """The `chop` kernel on float32 x[M, K] into y (with per-group `scales` [M, G] when given,
    y = chop(x / s) * s)."""
    M, K = x.shape
    ftz = not subnormals and flush_below(f) > 0
    params = {"F": f, "MODE": ROUNDINGS.index(mode), "FTZ": ftz, "SAT": saturate,
              "SC": scales is not None}
    if M < 4:  # one row: tiles along it only
        params.update(BM=1, BK=1024)
    k = get_kernel("chop", backend, **params)
    pos, neg = overflow_bounds(f, mode)
    sc = _NO_SCALES if scales is None else scales
    g = group if scales is not None else K
    k(x, sc, y, g, _signed64(seed), np.float32(flush_below(f)), pos, neg, np.float32(np.inf))


def flush_below(f: Format) -> float:
    """The smallest normal magnitude of a float format with subnormals (else 0: no flush)."""
    if getattr(f, "kind", "") != "float" or f.man_bits == 0:
        return 0.0
    return f.min_normal


def overflow_bounds(f: Format, mode: str) -> tuple[np.float32, np.float32]:
    """Without saturation: x >= pos rounds to +inf, x <= neg to -inf (IEEE overflow: nearest
    modes from max + half the gap above max, `up` above max only for positive values, ...)."""
    vals = f.values()
    vals = np.unique(vals[np.isfinite(vals)]).astype(np.float64)

    def bound(top: float, below: float, away: bool) -> float:
        """Magnitude from which rounding away from zero on this side overflows."""
        gap = top if getattr(f, "man_bits", 1) == 0 else top - below  # the gap above top
        if mode in ("nearest_even", "nearest_away"):
            return top + gap / 2
        if mode == "stochastic":
            return top + gap
        return float(np.nextafter(np.float32(top), np.float32(np.inf))) if away else np.inf

    pos = bound(vals[-1], vals[-2], mode == "up")
    neg = bound(-vals[0], -vals[1], mode == "down") if vals[0] < 0 else np.inf
    with np.errstate(over="ignore"):  # past f32's range (bf16): no finite input overflows
        return np.float32(pos), np.float32(-neg)


def _signed64(seed: int) -> int:
    return seed - (1 << 64) if seed >= 1 << 63 else seed


def _chop_on_host(a: np.ndarray, f: Format, mode: str, subnormals: bool, saturate: bool,
                  seed: int) -> np.ndarray:
    t = a
    tiny = flush_below(f)
    if not subnormals and tiny:
        t = np.where(np.abs(a) < tiny, a * 0, a)
    v = f.decode(f.encode(t, rounding=mode, seed=seed)).astype(np.float32)
    if not saturate:
        pos, neg = overflow_bounds(f, mode)
        v = np.where(t >= pos, np.inf, np.where(t <= neg, -np.inf, v)).astype(np.float32)
    return np.where(np.isnan(t), t, v)
