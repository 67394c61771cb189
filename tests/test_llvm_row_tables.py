"""Row tables in the LLVM backend's fused dot (backends/llvm/row_tables.py): a decode that is
a function of the code and of values constant along K (one per row) -- a per-group choice of
format, a per-row offset -- is made once per row and looked up with one permute per 16
codes, tabulated at compile time over a u8/i8/bool row source or evaluated per row otherwise.
Each form against the reference interpreter and against numpy."""

import numpy as np
import pytest

import lowbitc
from lowbitc.backends.llvm import decode, row_tables
from lowbitc.compiler import compile
from lowbitc.interp import run
from lowbitc.kernels import get_kernel
from lowbitc.packing import pack

# E picks per row among two decodes of the same codes (the index t tabulates the table); OFF
# also subtracts a float per row (no small-integer source: that step is evaluated per row)
ROW_GEMV = """
kernel row_gemv[W: dtype = u4, V: dtype = nf4, S: dtype = u8, K: int = 128, R: int = 2,
                OFF: bool = false](x: f32[R, K], w: W[N, K], t: S[N], r: f32[N], y: f32[R, N])
  grid (cdiv(N, 16))
{
  n = block.x * 16
  c = load(w[n :+ 16, :])
  tb = reshape(cast(load(t[n :+ 16]), i32), [16, 1])
  e = where(tb == 1, cast(view(c, V), f32), cast(c, f32))
  e = where(tb == 2, cast(c, f32) * 0.5, e)
  if OFF { e = e - reshape(load(r[n :+ 16]), [16, 1]) }
  store(y[:, n :+ 16], dot(load(x[:, :]), transpose(e)))
}
"""


def _decode(fmt: str, codes: np.ndarray) -> np.ndarray:
    return lowbitc.dtype(fmt).decode(codes).astype(np.float32)


def _close(y, x, v: str, codes, t, r, off: bool) -> float:
    """Assert y = x @ E.T of ROW_GEMV's E (numpy, float64) within a few ulps of the sum of
    magnitudes (f32 sums in another order); that tolerance."""
    ti = t.astype(np.int64)[:, None]
    e = np.where(ti == 1, _decode(v, codes), codes.astype(np.float32))
    e = np.where(ti == 2, codes.astype(np.float32) * np.float32(0.5), e)
    if off:
        e = e - r[:, None]
    tol = 4e-6 * float((np.abs(x) @ np.abs(e).T).max())
    np.testing.assert_allclose(y, x.astype(np.float64) @ e.T.astype(np.float64), rtol=0,
                               atol=tol)
    return tol


@pytest.mark.parametrize("w,v,s,off", [
    ("u4", "nf4", "u8", False),  # tabulated over the u8 index: one register per row
    ("u4", "f4e2m1fn", "i8", True),  # a float per row: evaluated per row
    ("u4", "f4e2m1fn", "i8", False),  # -1 reads as 0 (the byte 255 clamped to 0's table)
    ("u5", "f5e2m2", "u8", False),  # 32 entries: two registers per row
    ("u5", "i5", "u8", True),
    ("u3", "i3", "u8", False),  # 8 entries repeated to 16
])
@pytest.mark.parametrize("rows", [1, 2])
@pytest.mark.parametrize("avx2", [False, True])
def test_row_tables_match_the_interpreter_and_numpy(w, v, s, off, rows, avx2, monkeypatch):
    """(avx2: as on a host with AVX2 and no AVX-512: each row's tables looked up 8 entries a
    vpermd, decode.avx2_permute)"""
    if avx2:
        monkeypatch.setenv("LOWBITC_NO_CACHE", "1")  # the IR differs
        monkeypatch.setattr(decode, "permutes", lambda: False)
        monkeypatch.setattr(decode, "cpu_features", lambda: {"avx2": True})
    rng = np.random.default_rng(0)
    n, k = 48, 128
    bits = lowbitc.dtype(w).bits
    codes = rng.integers(0, 2 ** bits, (n, k)).astype(np.uint8)
    words = pack(codes, bits)
    t = rng.integers(0, 4, n).astype(np.uint8)  # 3 means neither: the plain cast
    if s == "i8":
        t = (t.astype(np.int8) - 1).astype(np.int8)  # -1 .. 2
    r = rng.standard_normal(n).astype(np.float32)
    x = rng.standard_normal((rows, k)).astype(np.float32)
    kern = compile(ROW_GEMV, W=w, V=v, S=s, OFF=off, R=rows)
    shared = rows >= 2 and not off and bits <= 4  # the rows packing's table over (index, code)
    if avx2:
        text, said = kern.text("llvm"), kern.explain()
        assert "avx512" not in text and "@llvm.x86.avx2.permd" in text
        assert "0 fallbacks" in said
        assert ("a table per row (AVX2" in said) == (not shared)
        assert ("over (row index, code): AVX2" in said) == shared
    if decode.permutes():
        text = kern.explain()
        assert ("a table per row" in text) == (not shared)
        assert ("over (row index, code)" in text) == shared
        # a float per row cannot be tabulated at compile time: evaluated per row instead, on
        # the tabulated rest when that is one register (up to 16 entries)
        assert ("@rowtab" in kern.text("llvm")) == (not shared and (not off or bits <= 4))
    y = np.zeros((rows, n), np.float32)
    kern(x, words, t, r, y)
    want = np.zeros((rows, n), np.float32)
    run(kern.ir, x, words, t, r, want)
    np.testing.assert_allclose(y, want, rtol=0, atol=_close(y, x, v, codes, t, r, off))


def test_the_mixture_kernel_takes_row_tables():
    k = get_kernel("matmul_mix", "llvm", W0="u4", W1="nf4", W2="f4e2m1fn",
                                   W3="i4", T=4, ZP=True, BM=1, BN=128, BK=64)
    text = k.explain()
    assert "0 fallbacks" in text
    assert "a table per row (" + ("one permute per 16 codes" if decode.permutes() else "AVX2") \
        in text


def test_index_values_fold_to_the_first_distinct_tables():
    """row_index.indexed: index values from D on all read one table r0 < D; D * 2^bits <= 64."""
    from lowbitc.passes.row_index import indexed

    rng = np.random.default_rng(1)
    five = rng.standard_normal((5, 16)).astype(np.float32)
    rows = np.concatenate([five[:4], np.repeat(five[:1], 252, axis=0)])  # 4.. read index 0
    d, r0, table = indexed(rows, 4)
    assert (d, r0) == (4, 0) and np.array_equal(table, five[:4].reshape(-1))
    rows[4:] = five[2]  # 4.. read index 2
    assert indexed(rows, 4)[:2] == (4, 2)
    rows[4] = five[4]  # a fifth table: 80 entries
    assert indexed(rows, 4) is None
    d, r0, table = indexed(np.resize(rows[:, :8], (256, 8)), 3)  # 8 entries a table: 40
    assert d == 5 and table.size == 40
    assert indexed(np.stack([five[0], five[0]]), 4)[:2] == (1, 0)  # a bool, one table
    assert indexed(five[:2], 4)[0] == 2


@pytest.mark.parametrize("w,v,s,off", [
    ("u4", "nf4", "u8", False),  # tabulated over the u8 index
    ("u4", "f4e2m1fn", "i8", True),  # a float per row: evaluated per row
    ("u5", "i5", "u8", True),  # 32 entries: two registers per row
])
def test_the_gemm_panel_looks_up_row_tables(w, v, s, off, monkeypatch):
    """16 rows of `a` take the GEMM panel (microkernel.py): its decode looks E up in each row's
    table (row_tables.of_panel), with the same results bit for bit as E evaluated per code
    (row_tables.PANEL off)."""
    monkeypatch.setenv("LOWBITC_NO_CACHE", "1")  # (PANEL is not part of the cache key)
    rng = np.random.default_rng(1)
    n, k, rows = 48, 128, 16
    bits = lowbitc.dtype(w).bits
    codes = rng.integers(0, 2 ** bits, (n, k)).astype(np.uint8)
    t = rng.integers(0, 4, n).astype(np.uint8)
    if s == "i8":
        t = (t.astype(np.int8) - 1).astype(np.int8)
    r = rng.standard_normal(n).astype(np.float32)
    x = rng.standard_normal((rows, k)).astype(np.float32)
    args = [x, pack(codes, bits), t, r]
    got = {}
    for on in (True, False):
        monkeypatch.setattr(row_tables, "PANEL", on)
        kern = compile(ROW_GEMV, W=w, V=v, S=s, OFF=off, R=rows)
        said = kern.explain()
        assert "panel microkernel" in said and "0 fallbacks" in said
        assert ("the decode a table per row" in said) == (on and decode.permutes())
        got[on] = np.zeros((rows, n), np.float32)
        kern(*args, got[on])
    np.testing.assert_array_equal(got[True], got[False])
    _close(got[True], x, v, codes, t, r, off)
