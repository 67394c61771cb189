"""Every code of every format decodes right; RNE encode is exact (ml_dtypes / rational model)."""

from __future__ import annotations

import bisect
import dataclasses
import json
from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lowbitc
from lowbitc.cli import main
from lowbitc.dtypes import NF4, TABLE_MIN_SIZE, FloatFormat

ML = {  # our name -> ml_dtypes type
    "f8e4m3fn": "float8_e4m3fn", "f8e4m3": "float8_e4m3", "f8e5m2": "float8_e5m2",
    "f8e4m3fnuz": "float8_e4m3fnuz", "f8e5m2fnuz": "float8_e5m2fnuz", "f8e3m4": "float8_e3m4",
    "f8e8m0fnu": "float8_e8m0fnu", "f4e2m1fn": "float4_e2m1fn", "f6e2m3fn": "float6_e2m3fn",
    "f6e3m2fn": "float6_e3m2fn", "i4": "int4", "u4": "uint4", "i2": "int2", "u2": "uint2",
}  # fmt: skip
ML = {k: getattr(ml_dtypes, v) for k, v in ML.items() if hasattr(ml_dtypes, v)}
ALL = lowbitc.dtypes()


# ---------------------------------------------------------------- exact rational model
def model_values(fmt) -> list:
    """Fraction (or 'nan'/'inf'/'-inf') per code, straight from the format's definition."""
    out = []
    for c in range(fmt.num_codes):
        if fmt.kind == "uint":
            out.append(Fraction(c))
        elif fmt.kind == "int":
            out.append(Fraction(c - (c >> (fmt.bits - 1) << fmt.bits)))
        elif fmt.kind == "bipolar":
            out.append(Fraction(2 * c - (2**fmt.bits - 1)))
        elif fmt.kind == "codebook":
            out.append(Fraction(fmt.table[c]) if c < len(fmt.table) else "nan")
        else:
            out.append(_model_float(fmt, c))
    return out


def _model_float(fmt, c: int):
    x, m, bias = fmt.exp_bits, fmt.man_bits, fmt.bias
    if fmt.special == "e8m0":
        return "nan" if c == 255 else Fraction(2) ** (c - bias)
    s, e, f = c >> (x + m), (c >> m) & (2**x - 1), c & (2**m - 1)
    if fmt.special == "fnuz" and c == 2 ** (x + m):
        return "nan"
    if fmt.special == "fn" and e == 2**x - 1 and f == 2**m - 1:
        return "nan"
    if fmt.special == "ieee" and e == 2**x - 1:
        return "nan" if f else ("-inf" if s else "inf")
    mag = Fraction(f, 2**m) * Fraction(2) ** (1 - bias) if e == 0 else (
        (1 + Fraction(f, 2**m)) * Fraction(2) ** (e - bias))
    return -mag if s else mag


class Model:
    """The exact RNE encoder of one format, in rational arithmetic."""

    def __init__(self, fmt):
        self.fmt, self.vals = fmt, model_values(fmt)
        self.fin = sorted({v for v in self.vals if isinstance(v, Fraction)})
        self.codes = {}
        for c, v in enumerate(self.vals):
            if isinstance(v, Fraction):
                self.codes.setdefault(v, []).append(c)

    def encode(self, x: float) -> int:
        return model_encode(self.fmt, self.vals, self.fin, self.codes, x)


def model_neighbours(fin: list, x: float) -> tuple:
    """(q, lo, hi): x as a Fraction clamped to the finite values `fin`, and its neighbours
    there (lo == hi == q when q is a value)."""
    q = min(max(Fraction(x), fin[0]), fin[-1])
    i = bisect.bisect_left(fin, q)
    return (q, q, q) if fin[i] == q else (q, fin[i - 1], fin[i])


def model_code(code_of: dict, v: Fraction, x: float) -> int:
    """The code of value v (+0 or -0 by the sign of x where both exist)."""
    codes = code_of[v]
    if v == 0 and len(codes) > 1:  # +0 and -0: the sign of x decides
        return codes[1] if np.signbit(x) else codes[0]
    return codes[0]


def model_encode(fmt, vals: list, fin: list, code_of: dict, x: float) -> int:
    """RNE code of the finite float `x`, from the model's values (see Model)."""
    q, lo, hi = model_neighbours(fin, x)
    if lo == hi or q - lo != hi - q:
        v = lo if q - lo <= hi - q else hi
    else:
        v = _tie(fmt, vals, lo, hi)
    return model_code(code_of, v, x)


def _tie(fmt, vals, lo, hi):
    if fmt.kind in ("uint", "int"):
        return lo if lo % 2 == 0 else hi
    if fmt.kind in ("bipolar", "codebook"):
        return lo if vals.index(lo) % 2 == 0 else hi
    small = min(abs(lo), abs(hi))  # even significand at the quantum of the smaller magnitude
    emin = -fmt.bias if fmt.special == "e8m0" else 1 - fmt.bias
    e = emin if small == 0 else max(emin, _floor_log2(small))
    quantum = Fraction(2) ** (e - fmt.man_bits)
    return lo if (lo / quantum) % 2 == 0 else hi


def _floor_log2(q: Fraction) -> int:
    e = q.numerator.bit_length() - q.denominator.bit_length()
    return e if Fraction(2) ** e <= q else e - 1


def probe_points(fmt) -> np.ndarray:
    """Every finite value, every midpoint and the float32/float64 neighbours of each."""
    t = fmt.values().astype(np.float64)
    v = np.unique(t[np.isfinite(t)])
    mid = (v[:-1] + v[1:]) / 2
    pts = [v, mid, np.nextafter(mid, np.inf), np.nextafter(mid, -np.inf), [0.0, -0.0]]
    m32 = mid.astype(np.float32)
    pts += [np.nextafter(m32, np.float32(np.inf)), np.nextafter(m32, np.float32(-np.inf))]
    pts += [v * 1.5, v * 3 + 1, [1e30, -1e30, 1e-30, -1e-30, 1e-45, -1e-45]]
    return np.concatenate([np.asarray(p, np.float64) for p in pts])


def probe(fmt, ft: type) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = probe_points(fmt).astype(ft)
    return x[np.isfinite(x)]


# ---------------------------------------------------------------- decode
@pytest.mark.parametrize("name", ALL)
def test_decode_every_code_matches_model(name):
    fmt = lowbitc.dtype(name)
    got = fmt.values()
    assert got.dtype == np.float32 and got.shape == (fmt.num_codes,)
    assert np.array_equal(fmt.decode(np.arange(fmt.num_codes)), got, equal_nan=True)
    for c, want in enumerate(model_values(fmt)):
        if want == "nan":
            assert np.isnan(got[c]), (name, c)
        elif isinstance(want, str):
            assert got[c] == float(want), (name, c)
        else:
            assert Fraction(float(got[c])) == want, (name, c, got[c], want)
            assert np.signbit(got[c]) == (fmt.kind == "float" and fmt.signed and c >> (
                fmt.bits - 1) == 1 and fmt.special != "fnuz" or want < 0), (name, c)


@pytest.mark.parametrize("name", sorted(ML))
def test_decode_matches_ml_dtypes(name):
    fmt, t = lowbitc.dtype(name), ML[name]
    codes = np.arange(fmt.num_codes, dtype=np.uint8)
    ref = codes.view(t).astype(np.float32)
    got = fmt.decode(codes)
    assert np.array_equal(np.isnan(ref), np.isnan(got))
    ok = ~np.isnan(ref)
    assert np.array_equal(ref[ok].view(np.uint32), got[ok].view(np.uint32))  # -0 included
    if fmt.kind == "float":
        fi = ml_dtypes.finfo(t)
        assert (fmt.max, fmt.min_normal) == (float(fi.max), float(fi.smallest_normal))
        assert fmt.min_subnormal == float(fi.smallest_subnormal)
        assert fmt.min == (float(fi.min) if fmt.signed else float(fi.smallest_normal))
        assert fmt.has_inf == bool(np.isinf(ref).any())
        assert fmt.has_nan == bool(np.isnan(ref).any())
    else:
        assert np.array_equal(fmt.int_value(codes), ref.astype(np.int32))


@pytest.mark.parametrize("name", ALL + ["f16", "bf16"])
def test_properties_agree_with_the_table(name):
    fmt = lowbitc.dtype(name)
    t = fmt.values().astype(np.float64)
    fin = t[np.isfinite(t)]
    assert fmt.max == fin.max() and fmt.min == fin.min()
    assert fmt.min_subnormal == np.abs(fin[fin != 0]).min()
    assert fmt.has_inf == bool(np.isinf(t).any())
    assert fmt.has_nan == bool(np.isnan(t).any())
    assert fmt.is_signed == (fin.min() < 0)
    assert str(fmt) == fmt.name and hash(fmt) == hash(lowbitc.dtype(name))
    assert fmt.kind in ("uint", "int", "bipolar", "float", "codebook")
    with pytest.raises(dataclasses.FrozenInstanceError):
        fmt.name = "x"


def test_named_constants():
    assert lowbitc.dtype("nf4").values().tolist() == [float(np.float32(v)) for v in NF4]
    assert lowbitc.dtype("b1").values().tolist() == [-1.0, 1.0]
    assert lowbitc.dtype("i3").int_value(np.arange(8)).tolist() == [0, 1, 2, 3, -4, -3, -2, -1]
    f = lowbitc.dtype("f8e4m3fnuz")
    assert (f.bias, f.special, lowbitc.dtype("f8e5m2fnuz").bias) == (8, "fnuz", 16)
    assert lowbitc.dtype("f4e2m1").values().tolist()[:8] == [0, 0.5, 1, 1.5, 2, 3, 4, 6]
    assert lowbitc.dtype("f8e8m0fnu").min == 2.0**-127 and not lowbitc.dtype("u3").is_signed
    assert len([n for n in ALL if n[0] == "f" and n[1] < "8" and not n.endswith("fn")]) == 21


# ---------------------------------------------------------------- encode
def _encode_both_paths(fmt, x: np.ndarray) -> np.ndarray:
    small = fmt.encode(x)
    reps = TABLE_MIN_SIZE // max(x.size, 1) + 1
    big = fmt.encode(np.tile(x, reps))[: x.size]  # large arrays take the bucket-table path
    assert np.array_equal(small, big)
    return small


@pytest.mark.parametrize("name", ALL)
def test_encode_matches_rational_model(name):
    fmt = lowbitc.dtype(name)
    model = Model(fmt)
    for ft in (np.float64, np.float32):
        x = probe(fmt, ft)
        got = _encode_both_paths(fmt, x)
        want = [model.encode(float(v)) for v in x]
        bad = np.flatnonzero(got != np.array(want))
        assert bad.size == 0, (name, ft, x[bad[:5]], got[bad[:5]], np.array(want)[bad[:5]])


@pytest.mark.parametrize("name", [n for n in sorted(ML) if n[0] == "f"])
def test_encode_matches_ml_dtypes(name):
    fmt, t = lowbitc.dtype(name), ML[name]
    ft = np.float32  # ml_dtypes rounds float64 through float32 (double rounding)
    x = probe(fmt, ft)
    keep = np.abs(x) <= fmt.max  # ml_dtypes overflows to inf/NaN; lowbitc saturates
    if fmt.special == "e8m0":  # ml_dtypes: <= 0 is NaN, float32 subnormal inputs misround
        keep &= x >= np.float32(2.0**-126)
    x = np.concatenate([x[keep], np.array([np.nan, -np.nan] * fmt.has_nan, ft)])
    got = _encode_both_paths(fmt, x)
    ref = x.astype(t).view(np.uint8)
    bad = np.flatnonzero(got != ref)
    assert bad.size == 0, (name, ft, x[bad[:5]], got[bad[:5]], ref[bad[:5]])


@pytest.mark.parametrize("name", ALL + ["f16", "bf16"])
def test_encode_decode_round_trip_every_code(name):
    fmt = lowbitc.dtype(name)
    t = fmt.values()
    codes = np.flatnonzero(~np.isnan(t))
    assert np.array_equal(fmt.encode(t[codes]), codes)


@pytest.mark.parametrize("name", ["f8e4m3fn", "f4e2m1", "f8e5m2", "f8e8m0fnu", "u3", "b2", "nf4"])
def test_saturation_and_infinities(name):
    fmt = lowbitc.dtype(name)
    x = np.array([fmt.max * 4, fmt.max * 1.25, np.inf, -np.inf, fmt.min * 1.25 - 1, -1e300])
    got = fmt.decode(fmt.encode(x))
    top = np.inf if fmt.has_inf else fmt.max
    low = -np.inf if fmt.has_inf else fmt.min
    assert got.tolist() == [fmt.max, fmt.max, top, low, fmt.min, fmt.min]


def test_signed_zero_and_nan_codes():
    f = lowbitc.dtype("f8e4m3fn")
    assert f.encode(np.array([0.0, -0.0, -1e-9, 1e-9])).tolist() == [0, 0x80, 0x80, 0]
    assert lowbitc.dtype("f8e4m3fnuz").encode(np.array([-0.0, -1e-9])).tolist() == [0, 0]
    assert lowbitc.dtype("i4").encode(np.array([-0.0])).tolist() == [0]
    nan = np.array([np.nan, -np.nan])
    assert f.encode(nan).tolist() == [0x7F, 0xFF]
    assert lowbitc.dtype("f8e5m2fnuz").encode(nan).tolist() == [0x80, 0x80]
    assert lowbitc.dtype("f8e8m0fnu").encode(nan).tolist() == [0xFF, 0xFF]


def test_machine_formats():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(50_000) * np.exp(rng.uniform(-20, 20, 50_000))).astype(np.float32)
    f16, bf16, f32 = (lowbitc.dtype(n) for n in ("f16", "bf16", "f32"))
    assert (f16.bits, bf16.bits, f32.bits, f16.special, f32.kind) == (16, 16, 32, "ieee", "float")
    generic = FloatFormat("x16", 16, 5, 10, 15, True, "ieee")  # same format, exact path
    mids = ((f16.values()[:-1].astype(np.float64) + f16.values()[1:]) / 2).astype(np.float32)
    for pts in (x, mids[np.isfinite(mids)]):
        assert np.array_equal(f16.encode(pts), generic.encode(pts))
    generic_bf16 = FloatFormat("xb16", 16, 8, 7, 127, True, "ieee")
    bmid = ((bf16.values()[:-1].astype(np.float64) + bf16.values()[1:]) / 2).astype(np.float32)
    special = np.array([3.4e38, -3.4e38, np.inf, -np.inf, np.nan, -np.nan, 1e-40, -0.0], np.float32)
    for pts in (x, bmid[np.isfinite(bmid)], special, np.nextafter(bmid, np.float32(0))):
        assert np.array_equal(bf16.encode(pts), generic_bf16.encode(pts))
        assert np.array_equal(bf16.encode(pts), generic_bf16.encode(pts.astype(np.float64)))
    inrange = x[np.abs(x) <= bf16.max]
    assert np.array_equal(bf16.encode(inrange), inrange.astype(ml_dtypes.bfloat16).view(np.uint16))
    assert np.array_equal(bf16.decode(bf16.encode(x[:5])), x[:5].astype(ml_dtypes.bfloat16))
    c = np.arange(1 << 16, dtype=np.uint16)
    assert np.array_equal(f16.decode(c), c.view(np.float16).astype(np.float32), equal_nan=True)
    d = rng.standard_normal(1000) * 1e10
    assert np.array_equal(f32.decode(f32.encode(d)), d.astype(np.float32))
    assert f32.decode(f32.encode(np.array([1e300, np.inf]))).tolist() == [f32.max, np.inf]


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(ALL),
    st.lists(st.floats(allow_nan=False, allow_infinity=False, width=32), min_size=1),
)
def test_encode_is_nearest(name, xs):
    fmt = lowbitc.dtype(name)
    x = np.array(xs, np.float32)
    got = fmt.decode(fmt.encode(x)).astype(np.float64)
    t = fmt.values().astype(np.float64)
    fin = t[np.isfinite(t)]
    clipped = np.clip(x.astype(np.float64), fin.min(), fin.max())
    best = np.abs(clipped[:, None] - fin[None, :]).min(axis=1)
    assert np.array_equal(np.abs(clipped - got), best)


# ---------------------------------------------------------------- code books and bad input
def test_codebook():
    cb = lowbitc.codebook([-1.0, -0.25, 0.5, 2.0, 3.0])
    assert (cb.kind, cb.bits, cb.num_codes, cb.has_nan) == ("codebook", 3, 8, False)
    assert np.isnan(cb.values()[5:]).all() and cb.values()[:5].tolist() == [-1, -0.25, 0.5, 2, 3]
    assert cb.encode(np.array([-0.625, 1.25, 2.5, 9.0, -9.0])).tolist() == [0, 2, 4, 4, 0]
    with pytest.raises(ValueError, match="codes"):
        cb.decode(np.array([5]))
    assert lowbitc.codebook([0, 1], name="bin").name == "bin"
    for bad in ([1.0], [1.0, 1.0], [2.0, 1.0], [0.0, np.inf], [0.0, 0.1], list(range(257)),
                [0.0, -0.0], [-0.0, -0.0, 1.0]):
        with pytest.raises(ValueError, match="values"):
            lowbitc.codebook(bad)


def test_codebook_signed_zeros():
    """-0.0 before 0.0 (bitsandbytes' FP4): two codes, each decoding to its own sign bit, and
    encoding keeps the sign of a zero (a tiny value rounds to the zero of its sign)."""
    cb = lowbitc.codebook([-1.0, -0.0, 0.0, 1.0])
    assert cb.decode(np.arange(4, dtype=np.uint8)).view(np.uint32).tolist() == \
        np.array([-1.0, -0.0, 0.0, 1.0], np.float32).view(np.uint32).tolist()
    x = np.array([-0.0, 0.0, -1e-30, 1e-30, -0.75, 0.75, -0.25, 0.25], np.float32)
    assert cb.encode(x).tolist() == [1, 2, 1, 2, 0, 3, 1, 2]


@pytest.mark.parametrize("name", ["u0", "u9", "i16", "f8e2m5", "f7e0m6", "f4e1m1", "fp4", ""])
def test_unknown_names(name):
    with pytest.raises(ValueError, match="dtype"):
        lowbitc.dtype(name)


def test_bad_codes_and_inputs():
    f = lowbitc.dtype("u3")
    with pytest.raises(ValueError, match=r"codes: expected values in 0\.\.7.*max 8"):
        f.decode(np.array([1, 8]))
    with pytest.raises(ValueError, match="codes"):
        f.decode(np.array([-1]))
    with pytest.raises(TypeError, match="codes"):
        f.decode(np.array([1.0]))
    with pytest.raises(TypeError, match="x"):
        f.encode(np.array(["a"]))
    for name in ("u3", "f4e2m1", "nf4", "b2"):
        with pytest.raises(ValueError, match=r"x: .* NaN .*index \(1,\)"):
            lowbitc.dtype(name).encode(np.array([1.0, np.nan]))
    with pytest.raises(TypeError, match="dtype"):
        lowbitc.dtype(4)


# ---------------------------------------------------------------- `lowbitc formats`
def test_formats_command(capsys):
    assert main(["formats"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["name", "bits", "kind", "min"]
    rows = {ln.split()[0]: ln.split() for ln in lines[1:]}
    assert set(rows) == set(ALL)
    assert rows["f8e4m3fn"][1:7] == ["8", "float", "-448", "448", "0.015625", "0.001953125"]
    assert rows["u3"][1:5] == ["3", "uint", "0", "7"] and rows["b2"][3:5] == ["-3", "3"]
    assert "NaN = 0x80" in " ".join(rows["f8e5m2fnuz"]) and "IEEE" in rows["f8e5m2"][7]
    assert rows["nf4"][2] == "codebook"
    assert main(["formats", "--json", "--all"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {r["name"]: r["max"] for r in data}["f16"] == 65504.0


@pytest.mark.parametrize("name", ["f8e4m3fn", "u4", "b3", "nf4", "f16", "f32"])
def test_shapes_are_kept(name):
    fmt = lowbitc.dtype(name)
    assert fmt.encode(1.25).shape == () and fmt.decode(np.array(1)).shape == ()
    x = np.linspace(-2, 2, 24, dtype=np.float32).reshape(2, 3, 4)
    assert fmt.encode(x).shape == (2, 3, 4)
    assert np.array_equal(fmt.encode(x[:, ::2].T), fmt.encode(x)[:, ::2].T)  # strided input
    big = np.tile(x, (TABLE_MIN_SIZE // 24 + 1, 1, 1))
    assert np.array_equal(fmt.encode(big)[:2], fmt.encode(x))
    assert fmt.decode(fmt.encode(x)).shape == (2, 3, 4)
