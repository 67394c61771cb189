"""Quantizing inside kernels: `cast` to every format (the lower-encode pass + LLVM backend)
against `lowbitc.dtype(F).encode` and the interpreter, bit for bit, on every code's value,
every midpoint and their neighbours; stores of format tiles into packed tensors (partial
words at tile edges, tiles of several programs sharing words, masks); views from format
tiles."""

from __future__ import annotations

import numpy as np
import pytest

import lowbitc
from lowbitc.ir import print_kernel
from lowbitc.passes import run_pipeline
from lowbitc.passes.lower_encode import encode_plan

BOOK = lowbitc.codebook([-1.5, -0.5, 0.0, 0.25, 0.5, 1.0, 2.0, 3.0], name="enc_book")
ODD_BOOK = lowbitc.codebook(np.float32([1e-30, 0.1, 1.0000001, 7.0]), name="enc_odd_book")
# (u8 and i8 are machine types in kernels: casts to them convert, as in C)
FORMATS = [n for n in lowbitc.dtypes() if n not in ("u8", "i8")] + [BOOK.name, ODD_BOOK.name]

QUANT = """
kernel quant[F: dtype = u4, T: dtype = f32, B: int = 32](x: T[N, K], q: F[N, K])
  grid (N, cdiv(K, B))
{
  store(q[block.x, block.y * B :+ B], cast(load(x[block.x, block.y * B :+ B]), F))
}
"""


def _fmt(name):
    return {BOOK.name: BOOK, ODD_BOOK.name: ODD_BOOK}.get(name) or lowbitc.dtype(name)


def probe_values(fmt) -> np.ndarray:
    """Every finite value of the format, both signs, every midpoint between neighbours, the
    f32 numbers either side of each, zeros, huge values, infinities and (if coded) NaN."""
    v = fmt.values().astype(np.float64)
    v = np.unique(v[np.isfinite(v)])
    mids = (v[:-1] + v[1:]) / 2
    base = np.concatenate([v, mids, -v, -mids, [0.0, -0.0, 3e38, -3e38, 1e-42, -1e-42]])
    x = base.astype(np.float32)
    with np.errstate(over="ignore"):
        x = np.concatenate(
            [
                x,
                np.nextafter(x, np.float32(np.inf)),
                np.nextafter(x, np.float32(-np.inf)),
                np.float32([np.inf, -np.inf]),
            ]
        )
    if fmt.has_nan:
        x = np.concatenate([x, np.float32([np.nan, -np.nan])])
    return x.astype(np.float32)


def _run(fmt, x: np.ndarray, B: int = 32, T: str = "f32"):
    k = lowbitc.compile(QUANT, F=fmt, T=T, B=B)
    words = -(-x.shape[1] * fmt.bits // 32)
    native = np.full((x.shape[0], words), 0xDEADBEEF, np.uint32)
    interp = native.copy()
    k(x, native)
    k.interpret(x, interp)
    return native, interp


@pytest.mark.parametrize("name", FORMATS)
def test_every_code_encodes_like_dtype_encode(name):
    fmt = _fmt(name)
    x = probe_values(fmt)
    x = np.pad(x, (0, -len(x) % 96))[None, :].reshape(-1, 96)  # rows of 96: whole words
    native, interp = _run(fmt, x)
    want = lowbitc.pack(fmt.encode(x.astype(np.float64)), fmt.bits)
    assert np.array_equal(interp, want)
    assert np.array_equal(native, want)


@pytest.mark.parametrize("name", ["u3", "i5", "b7", "f6e3m2", "f8e5m2", "nf4", "u1"])
@pytest.mark.parametrize("B", [5, 13, 32])
def test_programs_sharing_words_write_only_their_codes(name, B):
    """Tiles of B codes start mid-word; several programs (threads) update the same words."""
    fmt = _fmt(name)
    rng = np.random.default_rng(B)
    x = (rng.standard_normal((7, 301)) * fmt.max).astype(np.float32)
    native, interp = _run(fmt, x, B=B)
    want = fmt.encode(x.astype(np.float64))
    for got in (native, interp):  # (bits past a row's last code are not the kernel's)
        assert np.array_equal(lowbitc.unpack(got, fmt.bits, x.shape[1]), want)


@pytest.mark.parametrize("T", ["f64", "f16", "i32"])
def test_other_source_types_encode_their_exact_values(T):
    fmt = lowbitc.dtype("f6e2m3")
    x = probe_values(fmt)
    x = x[np.isfinite(x)] if T != "f64" else x
    dt = {"f64": np.float64, "f16": np.float16, "i32": np.int32}[T]
    with np.errstate(all="ignore"):
        x = np.pad(x, (0, -len(x) % 64)).astype(dt).reshape(-1, 64)
    native, interp = _run(fmt, x, T=T)
    want = lowbitc.pack(fmt.encode(x.astype(np.float64)), fmt.bits)
    assert np.array_equal(interp, want) and np.array_equal(native, want)


def test_fake_quant_round_trip_and_masked_packed_store():
    src = """
    kernel fq[F: dtype = i3](x: f32[N], q: F[N], y: f32[N]) grid (cdiv(N, 16)) {
      i = block.x * 16
      c = cast(load(x[i :+ 16]), F)
      store(y[i :+ 16], cast(c, f32))                        # decode(encode(x))
      store(q[i :+ 16], c, mask=arange(16) % 3 != 0)          # every third code kept
    }
    """
    k = lowbitc.compile(src)
    fmt = lowbitc.dtype("i3")
    x = np.random.default_rng(0).uniform(-5, 5, 45).astype(np.float32)
    old = np.random.default_rng(1).integers(0, 8, 45).astype(np.uint8)
    for run in (k, k.interpret):
        q, y = lowbitc.pack(old, 3), np.zeros(45, np.float32)
        run(x, q, y)
        assert np.array_equal(y, fmt.decode(fmt.encode(x)))
        keep = np.arange(45) % 16 % 3 == 0
        assert np.array_equal(lowbitc.unpack(q, 3, 45), np.where(keep, old, fmt.encode(x)))


def test_views_from_format_tiles():
    src = """
    kernel v(x: f32[3, 32], w: u32[3, 4], h: u2[3, 64]) {
      c = cast(load(x[0 :+ 3, :]), u4)
      store(w[0 :+ 3, :], view(c, u32))      # 32 u4 codes are 4 words
      store(h[0 :+ 3, :], view(c, u2))       # each u4 code is two u2 codes, low bits first
    }
    """
    k = lowbitc.compile(src)
    x = np.random.default_rng(2).uniform(0, 15, (3, 32)).astype(np.float32)
    codes = lowbitc.dtype("u4").encode(x)
    for run in (k, k.interpret):
        w, h = np.zeros((3, 4), np.uint32), np.zeros((3, 4), np.uint32)
        run(x, w, h)
        assert np.array_equal(w, lowbitc.pack(codes, 4))
        assert np.array_equal(h, lowbitc.pack(codes, 4))  # the same bit stream


def test_lower_encode_pass_is_a_table_search():
    k = lowbitc.compile(QUANT, F="f4e2m1")
    text = print_kernel(run_pipeline(k.ir, ["lower-formats", "bitpack", "lower-encode", "dce"]))
    assert "store_codes" in text and " cast " not in text  # (from_codes folds away)
    assert text.count(" lut ") == 3 + 1  # 15 values: 4 steps (the first compares with a
    # constant), then the code table
    u4 = lowbitc.compile(QUANT, F="i4").ir
    text = print_kernel(run_pipeline(u4, ["lower-formats", "bitpack", "lower-encode", "dce"]))
    assert text.count(" lut ") == 3  # integer codes follow their values: no code table
    plan = encode_plan(lowbitc.dtype("f4e2m1"), "f32")
    assert plan.neg_zero == 8 and plan.nan == (-1, -1) and len(plan.codes) == 15
