"""lowbitc.chop: rounding to a format in float32 through the compiled kernel; Pychop's `chop`
as a cross-check for the modes it shares; subnormal flushing, saturation, shapes, errors."""

from __future__ import annotations

import numpy as np
import pytest
from test_compiler_encode import probe_values

import lowbitc
from lowbitc.emulate import ROW, chop

# lowbitc mode -> Pychop rmode
PYCHOP_MODES = {"nearest_even": 1, "up": 2, "down": 3, "toward_zero": 4, "nearest_away": 8}
IEEE = {"f8e4m3": (4, 3), "f8e5m2": (5, 2), "f8e3m4": (3, 4), "bf16": (8, 7), "f16": (5, 10)}
# (every mode on one 8-bit format; two on the others, to keep the kernel compiles few)
CROSS = {"f8e4m3": list(PYCHOP_MODES), "f8e5m2": ["nearest_even", "down"],
         "f8e3m4": ["up", "nearest_away"], "bf16": list(PYCHOP_MODES), "f16": ["toward_zero"]}


def _same(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a == b) | (np.isnan(a) & np.isnan(b))


@pytest.mark.parametrize("name", list(IEEE))
@pytest.mark.parametrize("subnormals", [True, False])
def test_matches_pychop(name, subnormals):
    """Every mode Pychop shares, on every code's neighbourhood within the finite range.
    Pychop clamps |x| < 1e-38 before taking its exponent (so 1e-45 rounds "up" to 0 there),
    and its rmode 8 rounds negative ties toward +inf and the float32 just below a positive tie
    up (lowbitc: away from zero, and down, as the exact model in test_rounding says): those
    inputs are left out."""
    pychop = pytest.importorskip("pychop")
    f = lowbitc.dtype(name)
    x = probe_values(f) if f.bits <= 8 else np.random.default_rng(0).choice(
        probe_values(f), 4000, replace=False)
    x = x[np.isfinite(x) & (np.abs(x) <= f.max) & ((np.abs(x) >= 1e-38) | (x == 0))]
    e, m = IEEE[name]
    for mode in CROSS[name]:
        rmode = PYCHOP_MODES[mode]
        xs = x
        if mode == "nearest_away":
            v = np.unique(f.values()[np.isfinite(f.values())].astype(np.float64))
            mids = (v[:-1] + v[1:]) / 2
            below_tie = np.isin(np.nextafter(x, np.float32(np.inf)).astype(np.float64), mids)
            xs = x[(x >= 0) & ~below_tie]
        want = np.asarray(pychop.Chop(e, m, rmode=rmode, subnormal=subnormals,
                                      chunk_size=1 << 30)(xs.astype(np.float64)))
        want = want.astype(np.float32)
        got = chop(xs, name, rounding=mode, subnormals=subnormals, saturate=False)
        bad = np.flatnonzero(~_same(got, want))
        assert bad.size == 0, (mode, xs[bad[:4]], got[bad[:4]], want[bad[:4]])


def test_negative_ties_round_away_from_zero():
    assert chop(np.float32([-232.0, 232.0]), "f8e4m3", rounding="nearest_away").tolist() == \
        [-240.0, 240.0]


@pytest.mark.parametrize("mode", ["nearest_even", "up", "toward_zero", "stochastic"])
def test_saturation_and_overflow(mode):
    f = lowbitc.dtype("f8e4m3fn")  # max 448, gap above max 32
    x = np.float32([448.0, 460.0, 464.0, 500.0, 1e30, np.inf, -460.0, -464.0, -1e30, -np.inf,
                    np.nan])
    sat = chop(x, f, rounding=mode, seed=1)
    assert np.array_equal(sat[:-1], np.clip(f.decode(f.encode(x[:-1], rounding=mode, seed=1)),
                                            -448, 448))
    assert (np.abs(sat[:-1]) == 448).all() and np.isnan(sat[-1])
    inf = chop(x, f, rounding=mode, saturate=False, seed=1)
    pos = {"nearest_even": 464, "nearest_away": 464, "up": 449, "stochastic": 480}.get(mode)
    neg = {"nearest_even": 464, "nearest_away": 464, "down": 449, "stochastic": 480}.get(mode)
    for xi, yi in zip(x[:-1], inf[:-1]):
        bound = pos if xi > 0 else neg
        over = bound is not None and abs(xi) >= bound or np.isinf(xi)
        assert yi == (np.copysign(np.inf, xi) if over else np.copysign(448, xi)), (mode, xi, yi)


def test_subnormals_flush_to_signed_zero():
    f = lowbitc.dtype("f6e3m2fn")  # min normal 0.25, subnormals 0.0625 .. 0.1875
    x = np.float32([0.2, -0.2, 0.0625, 0.25, -0.3, 0.24])
    got = chop(x, f, subnormals=False, rounding="up")
    assert got.tolist() == [0.0, -0.0, 0.0, 0.25, -0.25, 0.0]
    assert np.signbit(got[1]) and not np.signbit(got[0])
    assert chop(x, f, rounding="up").tolist() == [0.25, -0.1875, 0.0625, 0.25, -0.25, 0.25]
    assert np.array_equal(chop(np.float32([-3.5, 3.5]), "i3", subnormals=False), [-4, 3])


def test_shapes_dtypes_and_flat_index():
    rng = np.random.default_rng(5)
    f = lowbitc.dtype("f4e2m1fn")
    for shape in [(3, 5, 7), (2 * ROW,), (7,), (0, 3)]:
        x = rng.standard_normal(shape) * 4
        got = chop(x, f, rounding="stochastic", seed=3)
        assert got.shape == x.shape and got.dtype == np.float32
        want = f.decode(f.encode(x.astype(np.float32), rounding="stochastic", seed=3))
        assert np.array_equal(got, want.reshape(shape))
    assert chop(2.6, "u4").tolist() == 3.0 and chop([1.5], "u4").tolist() == [2.0]


def test_bad_arguments():
    with pytest.raises(ValueError, match="rounding: expected one of"):
        chop([1.0], "u4", rounding="even")
    with pytest.raises(ValueError, match="saturate: expected True or False, got 1"):
        chop([1.0], "u4", saturate=1)
    with pytest.raises(ValueError, match="unknown format 'q4'"):
        chop([1.0], "q4")
    with pytest.raises(ValueError, match="seed: expected an int"):
        chop([1.0], "u4", rounding="stochastic", seed=1.5)


def test_lowbitc_chop_is_the_function_after_any_import():
    import lowbitc.torch  # noqa: F401  (imports lowbitc.emulate)

    assert callable(lowbitc.chop) and lowbitc.chop([2.6], "u4").tolist() == [3.0]
