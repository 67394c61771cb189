"""Gathers (`load(t[idx, ...])` with idx a 1-D integer tile) and the GPTQ act-order user kernel
built on them: the rows idx[i] of t, 0 for an index outside the tensor, natively and in the
interpreter; the kernel against GPTQ's published definition, lowbitc.interop's act-order
import (an OffsetQTensor with a column order) and as a torch op under torch.compile."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import lowbitc
from lowbitc import ops, pack
from lowbitc.backends.llvm import column_tables, decode
from lowbitc.errors import DSLTypeError
from lowbitc.interop import gptq
from lowbitc.ir.parser import parse
from lowbitc.ir.printer import print_kernel
from lowbitc.ir.types import numpy_dtype
from lowbitc.offset import OffsetQTensor

USER = Path(__file__).resolve().parents[1] / "examples" / "user"
RNG = np.random.default_rng(1516)

ROWS = """
kernel rows[BK: int = 8, BN: int = 32](gi: I[K], s: T[G, N], y: T[K, N])
  grid (cdiv(K, BK), cdiv(N, BN))
{
  g = load(gi[block.x * BK :+ BK])
  store(y[block.x * BK :+ BK, block.y * BN :+ BN], load(s[g, block.y * BN :+ BN]))
}
"""


def _rows_want(gi, s):
    inside = (gi >= 0) & (gi < s.shape[0])
    return np.where(inside[:, None], s[np.clip(gi, 0, s.shape[0] - 1)], 0).astype(s.dtype)


@pytest.mark.parametrize("idx, t", [("i32", "f16"), ("i64", "f32"), ("u8", "u32"),
                                    ("i8", "f32")])
@pytest.mark.parametrize("shape", [(16, 4, 64), (13, 5, 40)])  # edges: partial tiles along K, N
def test_gather_rows(idx, t, shape):
    k, g, n = shape
    kern = lowbitc.compile(ROWS.replace("I[", f"{idx}[").replace("T[", f"{t}["))
    lo = 0 if idx.startswith("u") else -2
    gi = RNG.integers(lo, g + 2, k).astype(numpy_dtype(idx))  # some outside the tensor
    s = (RNG.random((g, n)) * 100).astype(numpy_dtype(t))
    for run in (kern, kern.interpret):
        y = np.full((k, n), 7, s.dtype)
        run(gi, s, y)
        assert np.array_equal(y, _rows_want(gi.astype(np.int64), s))
    assert "load s: row gather" in kern.explain()


def test_gather_dropped_and_inner_dims():
    src = """
kernel cols(gi: i32[4], s: f32[R, C, D], y: f32[4, 3], v: f32[2, 4])
{
  g = load(gi[0 :+ 4])
  store(y[0 :+ 4, 0 :+ 3], load(s[g, 1, 0 :+ 3]))        # the middle dim indexed: dropped
  store(v[0 :+ 2, 0 :+ 4], load(s[0, 0 :+ 2, g]))        # gathered along the last dim
}
"""
    kern = lowbitc.compile(src)
    gi = np.array([2, 0, 5, 1], np.int32)
    s = RNG.standard_normal((3, 2, 4)).astype(np.float32)
    want_y = np.where((gi < 3)[:, None], s[np.clip(gi, 0, 2), 1, :3], 0)
    want_v = np.where((gi < 4)[None, :], s[0][:, np.clip(gi, 0, 3)], 0)
    for run in (kern, kern.interpret):
        y, v = np.zeros((4, 3), np.float32), np.zeros((2, 4), np.float32)
        run(gi, s, y, v)
        assert np.array_equal(y, want_y) and np.array_equal(v, want_v)
    assert "FALLBACK" in kern.explain()  # gathered along the last dim: element by element


@pytest.mark.parametrize("src, message", [
    ("g = load(gi[0 :+ 4])\n  store(y[g, 0 :+ 4], load(s[0 :+ 4, 0 :+ 4]))",
     "store() cannot take an index tile"),
    ("g = load(gi[0 :+ 4])\n  store(y[0 :+ 4, 0 :+ 4], load(s[g, g]))",
     "at most one subscript may be an index tile"),
    ("g = reshape(load(gi[0 :+ 4]), [2, 2])\n  store(y[0 :+ 4, 0 :+ 4], load(s[g, 0 :+ 4]))",
     "must be a 1-D integer tile"),
    ("g = load(gi[0 :+ 4])\n  store(y[0 :+ 4, 0 :+ 4], load(s[g, 0 :+ 4], mask=g > 0))",
     "takes no mask="),
    ("g = load(gi[0 :+ 4])\n  store(y[0 :+ 4, 0 :+ 8], cast(load(c[g, 0 :+ 8]), f32))",
     "a gather reads a tensor of a machine type"),
])
def test_gather_errors(src, message):
    text = ("kernel bad(gi: i32[4], s: f32[4, 4], c: u4[4, 8], y: f32[4, 8]) {\n  "
            + src + "\n}\n")
    with pytest.raises(DSLTypeError, match=re.escape(message)) as e:
        lowbitc.compile(text)
    assert "<string>:" in str(e.value)  # located


def gptq_act_layer(n, kk, gs, act_order, seed=0, zoff=1):
    """A GPTQ 4-bit layer as its checkpoint stores it, from GPTQ's published definition:
    qweight int32 [K/8, N] (K-packed), qzeros int32 [G, N/8] (N-packed, stored minus 1 in v1),
    scales f16 [G, N], g_idx int32 [K] (act-order: the groups of the Hessian order, permuted)."""
    rng = np.random.default_rng(seed)
    g = kk // gs
    q = rng.integers(0, 16, (kk, n), dtype=np.uint8)
    z = rng.integers(zoff, 16, (g, n), dtype=np.uint8)
    s = rng.uniform(0.001, 0.02, (g, n)).astype(np.float16)
    g_idx = np.arange(kk) // gs
    if act_order:
        g_idx = g_idx[rng.permutation(kk)]
    w = (q.astype(np.float64) - z[g_idx]) * s.astype(np.float64)[g_idx]  # [K, N]
    parts = {"qweight": pack(np.ascontiguousarray(q.T), 4).T.copy().view(np.int32),
             "qzeros": pack(z - zoff, 4).view(np.int32), "scales": s,
             "g_idx": g_idx.astype(np.int32)}
    return parts, w


def _args(parts, x, m, n):
    return [x, parts["qweight"].view(np.uint32), parts["qzeros"].view(np.uint32),
            parts["scales"], parts["g_idx"], np.zeros((m, n), np.float32)]


@pytest.mark.parametrize("act_order", [True, False])
@pytest.mark.parametrize("bm, gc", [(1, 64), (8, 3)])  # GC 3: two passes over K (G = 4)
def test_gptq_act_order_kernel(act_order, bm, gc):
    n, kk, gs, m = 72, 512, 128, bm + 1  # N = 72: a partial BN tile (the generic dot)
    parts, w = gptq_act_layer(n, kk, gs, act_order, seed=bm)
    k = lowbitc.compile(USER / "gptq_act_gemv.lbk", BM=bm, GC=gc)
    x = RNG.standard_normal((m, kk)).astype(np.float32)
    want = x.astype(np.float64) @ w
    scale = np.abs(want).max()
    for run in (k, k.interpret):
        args = _args(parts, x, m, n)
        run(*args)
        assert np.abs(args[-1] - want).max() / scale < 2e-6
    # lowbitc's own import of the same checkpoint: an OffsetQTensor with the column order
    t = gptq.gptq_tensor("l", parts)
    assert isinstance(t.weight, OffsetQTensor) == act_order
    assert np.abs(ops.matmul(x, t.weight) - args[-1]).max() / scale < 2e-6
    for ir in (k.ir, k.lowered):  # gathers print and parse back
        assert print_kernel(parse(print_kernel(ir))) == print_kernel(ir)
    text = k.explain()
    dots = [ln for ln in text.splitlines() if ": dot " in ln]
    assert dots and all("fused column dot" in ln for ln in dots)  # at most 8 rows of x
    for name in ("qzeros", "scales"):  # decoded once per program and pass
        assert f"load {name}: row copies" in text
    # the rows of each K step's groups: read in the dot, one vector per row and 16 outputs
    assert text.count(": load: row gather fused into the dot") == 2
    assert text.endswith("0 fallbacks")


def test_gptq_act_order_groups_outside_read_zero():
    """A g_idx entry outside 0 .. G - 1 is in no pass's rows: it adds nothing."""
    n, kk, gs = 32, 256, 64
    parts, w = gptq_act_layer(n, kk, gs, True, seed=3)
    bad = parts["g_idx"].copy()
    bad[[3, 100]] = [-1, kk // gs]
    parts["g_idx"] = bad
    w[[3, 100]] = 0.0
    k = lowbitc.compile(USER / "gptq_act_gemv.lbk")
    x = RNG.standard_normal((1, kk)).astype(np.float32)
    for run in (k, k.interpret):
        args = _args(parts, x, 1, n)
        run(*args)
        want = x.astype(np.float64) @ w
        assert np.abs(args[-1] - want).max() / np.abs(want).max() < 2e-6


def test_gptq_act_order_torch_compile():
    torch = pytest.importorskip("torch", reason="register_kernel needs PyTorch")
    from lowbitc.torch import register_kernel

    n, kk, gs, m = 64, 256, 64, 3
    parts, w = gptq_act_layer(n, kk, gs, True, seed=5)
    k = lowbitc.compile(USER / "gptq_act_gemv.lbk", BM=4)
    x = RNG.standard_normal((m, kk)).astype(np.float32)
    args = _args(parts, x, m, n)
    k(*args)
    op = register_kernel(k, "lbuser::gptq_act_gemv", outputs=["y"])
    targs = [torch.from_numpy(parts["qweight"]), torch.from_numpy(parts["qzeros"]),
             torch.from_numpy(parts["scales"]), torch.from_numpy(parts["g_idx"])]
    xt = torch.from_numpy(x)
    torch._dynamo.reset()
    f = torch.compile(lambda a, *p: op(a, *p) * 1.0, fullgraph=True)
    got = f(xt, *targs).numpy()
    assert np.array_equal(got, args[-1])  # the same kernel on the same memory: bit-identical
    want = x.astype(np.float64) @ w
    assert np.abs(got - want).max() / np.abs(want).max() < 2e-6


@pytest.mark.parametrize("src_t", ["u32", "i32"])
@pytest.mark.parametrize("fmt, words", [("u2", 2), ("u4", 4), ("i4", 2), ("u8", 8), ("u4", 1),
                                        ("u3", 3)])
def test_view_of_word_tiles(src_t, fmt, words):
    """view(words, F) of a register tile (the gathered zero-point words' decode): 16 codes per
    shuffle, shift and mask where a row is whole 16-code chunks, else code by code."""
    bits = int(fmt[1:])
    cols = words * 32 // bits
    kern = lowbitc.compile(f"""
kernel v(w: {src_t}[3, {words}], y: f32[3, {cols}]) {{
  store(y[0 :+ 3, 0 :+ {cols}], cast(view(load(w[0 :+ 3, 0 :+ {words}]), {fmt}), f32))
}}
""")
    w = RNG.integers(0, 2**32, (3, words), dtype=np.uint32).view(numpy_dtype(src_t))
    codes = lowbitc.unpack(w.view(np.uint32), bits, cols)
    want = lowbitc.dtype(fmt).decode(codes)
    for run in (kern, kern.interpret):
        y = np.zeros((3, cols), np.float32)
        run(w, y)
        assert np.array_equal(y, want)


def test_gathered_leaf_from_a_tensor_in_the_column_dot():
    """Scale rows gathered straight from the f16 tensor (no table) are read in the fused
    column dot too, a row outside the tensor as zeros; a window of them past N's edge (N = 40)
    takes the generic dot."""
    src = (USER / "gptq_act_gemv.lbk").read_text().replace(
        "transpose(load(st[g, 0 :+ BN]))",
        "cast(transpose(load(scales[load(g_idx[k :+ BK]), n0 :+ BN])), f32)")
    n, kk, gs = 40, 256, 64
    parts, w = gptq_act_layer(n, kk, gs, True, seed=7)
    bad = parts["g_idx"].copy()
    bad[5] = 99  # outside: zero scales for that input row
    parts["g_idx"] = bad
    w[5] = 0.0
    k = lowbitc.compile(src, BN=16)
    assert "load scales: row gather fused into the dot" in k.explain()
    x = RNG.standard_normal((2, kk)).astype(np.float32)
    want = x.astype(np.float64) @ w
    for run in (k, k.interpret):
        args = _args(parts, x, 2, n)
        run(*args)
        assert np.abs(args[-1] - want).max() / np.abs(want).max() < 2e-6


@pytest.mark.parametrize("bm, bn, m", [(1, 80, 1), (2, 48, 3), (3, 32, 2), (1, 64, 2)])
def test_gptq_act_order_passes_over_word_rows(bm, bn, m):
    """A pass down the word rows reads up to 4 chunks of 16 outputs (4 // BM of them): BN = 80
    at BM 1 (a pass of 4 and one of 1), 48 at BM 2 (2 and 1), 32 at BM 3 (one each); N = 200
    leaves a partial tile (the generic dot), M a partial row block; g_idx permuted, entries
    outside the groups (zeros): past G inside the tiles, negative, and past the tiles' rows
    (the product table's row of zeros)."""
    n, kk, gs = 200, 256, 64
    parts, w = gptq_act_layer(n, kk, gs, True, seed=bn + m)
    parts["g_idx"] = parts["g_idx"].copy()
    parts["g_idx"][[7, 9, 11]] = [kk // gs, -1, 1000]
    w[[7, 9, 11]] = 0.0
    k = lowbitc.compile(USER / "gptq_act_gemv.lbk", BM=bm, BN=bn)
    text = k.explain()
    assert ("decoded by one table permute" in text) == decode.permutes()
    waits = "Y * V with a table of -(U * V) made before the loop, added once after it" in text
    tabled = bm <= column_tables.MAX_A_ROWS  # more rows of x keep (Y - U) * V
    # one pass down the rows: the -(U * V) term after the loop
    assert waits == (tabled and bm * bn <= 64)
    assert ("one FMA with a table of -(U * V) made before the loop" in text) == (
        tabled and not waits)
    x = RNG.standard_normal((m, kk)).astype(np.float32)
    want = x.astype(np.float64) @ w
    for run in (k, k.interpret):
        args = _args(parts, x, m, n)
        run(*args)
        assert np.abs(args[-1] - want).max() / np.abs(want).max() < 2e-6


@pytest.mark.parametrize("bm, bn, m", [(1, 64, 3), (2, 32, 1), (4, 16, 2), (1, 32, 2)])
def test_gptq_act_order_zero_term_after_the_loop(bm, bn, m):
    """One pass down the word rows reads the dot's BM x BN outputs (BM * BN <= 64): the
    -(U * V) term is added once after the K loop from sums of x per table row, against
    numpy and the interpreter at M 1-3, with two passes over the groups (GC 3: the sums start
    again each pass), g_idx entries outside the groups and a partial N tile; a kernel whose
    accumulator is also read in the loop keeps the term in it (both correct)."""
    n, kk, gs = 72, 512, 128
    parts, w = gptq_act_layer(n, kk, gs, True, seed=bn + m)
    parts["g_idx"] = parts["g_idx"].copy()
    parts["g_idx"][[5, 17, 40]] = [kk // gs, -1, 1000]
    w[[5, 17, 40]] = 0.0
    read = (USER / "gptq_act_gemv.lbk").read_text().replace(
        "      acc = dot(a, transpose(w), acc)\n",
        "      acc = dot(a, transpose(w), acc)\n"
        "      store(y[m0 :+ BM, n0 :+ BN], acc)\n")
    x = RNG.standard_normal((m, kk)).astype(np.float32)
    want = x.astype(np.float64) @ w
    for source, waits in ((USER / "gptq_act_gemv.lbk", True), (read, False)):
        k = lowbitc.compile(source, BM=bm, BN=bn, GC=3)
        assert ("added once after it (sums of a per table row)" in k.explain()) == (
            waits and bm <= column_tables.MAX_A_ROWS)
        for run in (k, k.interpret):
            args = _args(parts, x, m, n)
            run(*args)
            assert np.abs(args[-1] - want).max() / np.abs(want).max() < 2e-6


COLUMN_CODES = """
kernel colw[F: dtype, P: int, BM: int = 2, BN: int = 48, BK: int = 64](
    x: f32[M, K], w: u32[KW, N], y: f32[M, N])
  grid (cdiv(M, BM), cdiv(N, BN))
{
  m0 = block.x * BM
  n0 = block.y * BN
  acc = zeros(f32, [BM, BN])
  for k in range(0, K, BK) {
    a = load(x[m0 :+ BM, k :+ BK])
    q = cast(view(transpose(load(w[k / P :+ BK / P, n0 :+ BN])), F), f32)
    acc = dot(a, transpose(q * 0.5 - 1.0), acc)
  }
  store(y[m0 :+ BM, n0 :+ BN], acc)
}
"""


@pytest.mark.parametrize("fmt", ["u1", "u2", "i4", "u4", "f4e2m1fn"])
def test_column_dot_codes_of_every_width(fmt):
    """Every code of a format packed along K, decoded by one permute of a 16-entry table
    (with AVX-512; a 1- or 2-bit code's table repeated: the permute reads the next codes'
    bits too); against numpy and the interpreter."""
    bits = int(lowbitc.dtype(fmt).bits)
    per = 32 // bits
    n, kk, m = 96, 256, 3
    k = lowbitc.compile(COLUMN_CODES, F=fmt, P=per)
    dots = [ln for ln in k.explain().splitlines() if ": dot " in ln]
    assert dots and "fused column dot" in dots[0]
    assert ("decoded by one table permute" in dots[0]) == decode.permutes()
    q = RNG.integers(0, 1 << bits, (kk, n), dtype=np.uint8)
    q[: 1 << bits, 0] = np.arange(1 << bits)  # every code
    wv = lowbitc.dtype(fmt).decode(q).astype(np.float64) * 0.5 - 1.0
    x = RNG.standard_normal((m, kk)).astype(np.float32)
    want = x.astype(np.float64) @ wv
    words = np.ascontiguousarray(pack(np.ascontiguousarray(q.T), bits).T)
    for run in (k, k.interpret):
        y = np.zeros((m, n), np.float32)
        run(x, words, y)
        assert np.abs(y - want).max() / np.abs(want).max() < 2e-6


def test_gptq_act_order_table_only_for_tiles_the_loop_keeps():
    """The (Y - U) * V product table is made before the K loop only when the loop writes
    neither gathered tile: a loop that stores into the zero-point tile (the same values) reads
    U and V per weight; both are correct."""
    src = (USER / "gptq_act_gemv.lbk").read_text().replace(
        "      acc = dot(a, transpose(w), acc)\n",
        "      acc = dot(a, transpose(w), acc)\n"
        "      store(zt[0 :+ 1, 0 :+ BN], load(zt[0 :+ 1, 0 :+ BN]))\n")
    n, kk, gs, m = 64, 256, 64, 2
    parts, w = gptq_act_layer(n, kk, gs, True, seed=11)
    x = RNG.standard_normal((m, kk)).astype(np.float32)
    want = x.astype(np.float64) @ w
    for source, table in ((src, False), (USER / "gptq_act_gemv.lbk", True)):
        k = lowbitc.compile(source, BM=2)
        assert ("a table of -(U * V)" in k.explain()) == table
        for run in (k, k.interpret):
            args = _args(parts, x, m, n)
            run(*args)
            assert np.abs(args[-1] - want).max() / np.abs(want).max() < 2e-6
