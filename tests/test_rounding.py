"""Rounding modes of the host encoder against an exact rational model; Philox known answers;
stochastic rounding unbiased and reproducible."""

from __future__ import annotations

import numpy as np
import pytest
from test_compiler_encode import probe_values
from test_dtypes import ALL, Model, model_code, model_neighbours, probe

import lowbitc
from lowbitc.rounding import ROUNDINGS, philox4x32, random_bits, uniform

DETERMINISTIC = [m for m in ROUNDINGS if m != "stochastic"]

# Random123's kat_vectors for philox4x32_10: (counter, key, output)
PHILOX_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


def model_round(model: Model, x: float, mode: str) -> int:
    """The code of finite `x` in `mode`, from the exact values of the format's codes."""
    if mode == "nearest_even":
        return model.encode(x)
    q, lo, hi = model_neighbours(model.fin, x)
    neg = np.signbit(x) and x != 0
    if lo == hi or mode == "down":
        v = lo
    elif mode == "up":
        v = hi
    elif mode == "toward_zero":
        v = (hi if hi <= 0 else lo) if neg else (lo if lo >= 0 else hi)
    else:  # nearest_away
        dl, dh = q - lo, hi - q
        v = lo if dl < dh else hi if dh < dl else (lo if abs(lo) > abs(hi) else hi)
    return model_code(model.codes, v, x)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("mode", DETERMINISTIC)
def test_every_mode_matches_rational_model(name, mode):
    """Every value, midpoint and the floats around them, both signs, saturating ends (and
    every point the kernels are checked on, test_rounding_formats.py)."""
    fmt = lowbitc.dtype(name)
    model = Model(fmt)
    kernel_points = probe_values(fmt)
    for ft in (np.float64, np.float32):
        x = probe(fmt, ft)
        x = np.concatenate([x, -x])
        if ft is np.float32:
            x = np.concatenate([x, kernel_points[np.isfinite(kernel_points)]])
        got = fmt.encode(x, rounding=mode)
        want = np.array([model_round(model, float(v), mode) for v in x])
        bad = np.flatnonzero(got != want)
        assert bad.size == 0, (name, mode, ft, x[bad[:5]], got[bad[:5]], want[bad[:5]])


@pytest.mark.parametrize("name", ["bf16", "f16"])
@pytest.mark.parametrize("mode", DETERMINISTIC)
def test_16_bit_formats_match_model_on_a_sample(name, mode):
    fmt = lowbitc.dtype(name)
    model = Model(fmt)
    x = np.random.default_rng(5).choice(probe(fmt, np.float32), 3000, replace=False)
    x = np.concatenate([x, -x, [np.float32(3e38), np.float32(-3e38)]]).astype(np.float32)
    got = fmt.encode(x, rounding=mode)
    want = np.array([model_round(model, float(v), mode) for v in x])
    assert np.array_equal(got, want), (x[got != want][:5], got[got != want][:5])


def test_special_values_in_every_mode():
    for name in ("f8e4m3", "f8e4m3fn", "f8e5m2fnuz", "f4e2m1fn", "bf16", "u4"):
        fmt = lowbitc.dtype(name)
        x = np.array([np.inf, -np.inf, np.nan, -0.0, 0.0] if fmt.has_nan else
                     [np.inf, -np.inf, -0.0, 0.0], np.float32)
        want = fmt.encode(x)
        for mode in ROUNDINGS:
            got = fmt.encode(x, rounding=mode, seed=3)
            assert np.array_equal(got, want), (name, mode, got, want)


def test_f32_target_from_f64():
    fmt = lowbitc.dtype("f32")
    x = np.array([1 + 2.0**-30, -(1 + 2.0**-30), 1 + 2.0**-24, 1e300, -1e300])
    v = lambda m: fmt.decode(fmt.encode(x, rounding=m)).astype(np.float64)  # noqa: E731
    assert v("down")[0] == 1 and v("up")[0] == np.nextafter(np.float32(1), np.float32(2))
    assert v("toward_zero")[1] == -1 and v("down")[1] < -1
    assert v("nearest_away")[2] > 1 and v("nearest_even")[2] == 1
    assert (np.abs(v("up")[3:]) == fmt.max).all()


def test_bad_rounding_and_seed():
    f = lowbitc.dtype("u4")
    with pytest.raises(ValueError, match="rounding: expected one of .*got 'nearest'"):
        f.encode([1.0], rounding="nearest")
    with pytest.raises(ValueError, match=r"seed: expected an int in \[0, 2\*\*64\), got -1"):
        f.encode([1.0], rounding="stochastic", seed=-1)


# ---------------------------------------------------------------- Philox and stochastic


@pytest.mark.parametrize("ctr,key,out", PHILOX_KAT)
def test_philox_known_answers(ctr, key, out):
    got = philox4x32(np.array(ctr, np.uint32), key)
    assert tuple(int(v) for v in got) == out


def test_random_bits_are_word0_of_counter_index():
    idx = np.array([0, 1, 2**32 + 5])
    seed = 0x299F31D0_A4093822
    for i, r in zip(idx, random_bits(seed, idx)):
        ctr = np.array([i & 0xFFFFFFFF, i >> 32, 0, 0], np.uint32)
        assert r == philox4x32(ctr, (0xA4093822, 0x299F31D0))[0]
    u = uniform(7, np.arange(1 << 16))
    assert u.dtype == np.float32 and 0 <= u.min() and u.max() < 1
    assert abs(float(u.mean()) - 0.5) < 0.01


def binade_points(name: str, every: bool = False) -> np.ndarray:
    """A value inside every binade [2^e, 2^(e+1)) of a format (for bf16 every 24th binade and
    both ends unless `every`), one between 0 and the smallest value, and negatives of two."""
    fmt = lowbitc.dtype(name)
    t = fmt.values().astype(np.float64)
    v = np.unique(t[np.isfinite(t) & (t >= 0)])
    lo = v[:-1][np.unique(np.floor(np.log2(np.maximum(v[:-1], 1e-300))), return_index=True)[1]]
    if name == "bf16" and not every:  # (all of them: test_rounding_kernels, on the kernel)
        lo = np.concatenate([lo[:3], lo[3:-3:24], lo[-3:]])
    nxt = v[np.searchsorted(v, lo, side="right")]
    x = lo + np.random.default_rng(11).uniform(0.1, 0.9, lo.size) * (nxt - lo)
    neg = -x[[len(x) // 3, 2 * len(x) // 3]] if fmt.is_signed else []
    return np.concatenate([x, neg]).astype(np.float32)


@pytest.mark.parametrize("name", ["f4e2m1fn", "f6e3m2fn", "u4", "bf16"])
def test_stochastic_rounding_is_unbiased(name):
    """The mean of 10^6 roundings of x is within 3 standard errors of x, in every binade."""
    fmt = lowbitc.dtype(name)
    pts = binade_points(name)
    n = 10**6
    for i, x in enumerate(pts):
        codes = fmt.encode(np.full(n, x, np.float32), rounding="stochastic", seed=100 + i)
        r = fmt.decode(codes).astype(np.float64)
        mean, se = r.mean(), r.std() / np.sqrt(n)
        assert len(np.unique(r)) == 2, (name, x)
        assert abs(mean - float(x)) <= 3 * se, (name, x, mean, se)


def test_stochastic_is_reproducible_and_indexed():
    fmt = lowbitc.dtype("f8e4m3fn")
    x = np.random.default_rng(2).standard_normal(5000).astype(np.float32)
    a = fmt.encode(x, rounding="stochastic", seed=42)
    assert np.array_equal(a, fmt.encode(x, rounding="stochastic", seed=42))
    assert not np.array_equal(a, fmt.encode(x, rounding="stochastic", seed=43))
    b = fmt.encode(x.reshape(50, 100), rounding="stochastic", seed=42)
    assert np.array_equal(a, b.reshape(-1))  # the flat index, whatever the shape
    lo, hi = fmt.encode(x, rounding="down"), fmt.encode(x, rounding="up")
    assert ((a == lo) | (a == hi)).all()
