"""Integer activations (issue 14): the i8/u8 dot into i32 (verify rule, interpreter, the LLVM
recipes: VNNI and the AVX2 fallback), float -> i8/u8 casts that quantize, and the W*A8
matmul (`ops.matmul(x, qw, act="i8")`) within the bound int8 rounding of the activations
implies, against the interpreter and with its fused byte dot."""

from __future__ import annotations

import copy
import pickle
import re
import threading

import numpy as np
import pytest

import lowbitc
from lowbitc import a8, formats, kernels, ops
from lowbitc.backends.llvm import bytedot, intdot, target
from lowbitc.compiler import compile
from lowbitc.errors import DSLTypeError, UserArgumentError
from lowbitc.repack import RowsPacking

DOT = """
kernel idot[A: dtype = i8, B: dtype = u8, M: int = 3, N: int = 5, K: int = 100](
    x: A[M, K], w: B[N, K], y: i32[M, N]) {
  acc = full(i32, [M, N], 7)
  store(y[0 :+ M, 0 :+ N], dot(load(x[0 :+ M, 0 :+ K]), transpose(load(w[0 :+ N, 0 :+ K])), acc))
}
"""
_NP = {"i8": np.int8, "u8": np.uint8}


def _bytes(rng, dtype: str, shape) -> np.ndarray:
    info = np.iinfo(_NP[dtype])
    return rng.integers(info.min, info.max + 1, shape).astype(_NP[dtype])


HOST = intdot.host_int_dots()


def _recipes(name: str):
    """The host's recipes, or only the AVX2 fallback, or none (the widened scalar loop)."""
    if name == "host":
        return HOST
    return tuple(r for r in intdot.INT_DOTS if r.name == name)


@pytest.mark.parametrize("recipes", ["host", "vpmaddwd-256", "none"])
@pytest.mark.parametrize("types", [("i8", "u8"), ("u8", "i8"), ("i8", "i8"), ("u8", "u8")])
def test_int_dot_is_exact(monkeypatch, recipes, types):
    """Every operand pair and k (whole vectors, a narrower step, a scalar tail) matches the
    interpreter and int64 numpy bit for bit, the extreme bytes included."""
    monkeypatch.setenv("LOWBITC_NO_CACHE", "1")
    monkeypatch.setattr(intdot, "host_int_dots", lambda: _recipes(recipes))
    rng = np.random.default_rng(1)
    a, b = types
    for k in (1, 32, 100, 224):
        kern = compile(DOT, A=a, B=b, K=k)
        x, w = _bytes(rng, a, (3, k)), _bytes(rng, b, (5, k))
        x[0, :] = np.iinfo(_NP[a]).min
        w[0, :] = np.iinfo(_NP[b]).max
        want = x.astype(np.int64) @ w.astype(np.int64).T + 7
        for run in (kern, kern.interpret):
            y = np.zeros((3, 5), np.int32)
            run(x, w, y)
            np.testing.assert_array_equal(y, want, err_msg=f"{run} k={k}")


def test_int_dot_lowers_to_vpdpbusd_on_vnni_hosts():
    if not any(r.name.startswith("vpdpbusd") for r in intdot.host_int_dots()):
        pytest.skip("no VNNI on this host")
    text = compile(DOT, K=128).text("llvm")
    assert "@llvm.x86.avx512.vpdpbusd" in text


def test_dot_ir_and_verify_rules():
    k = compile(DOT)
    assert "dot %7, %11, %4 : tile<i32[3,5]>" in k.text("ir")
    bad_acc = DOT.replace("full(i32, [M, N], 7)", "full(i16, [M, N], 7)")
    with pytest.raises(DSLTypeError, match=r"<string>:5:28: DSLTypeError: dot: a dot of 8-bit "
                                           r"integers \(i8, u8\) accumulates in i32, got i16"):
        compile(bad_acc)
    floats = DOT.replace("load(x[0 :+ M, 0 :+ K])", "cast(load(x[0 :+ M, 0 :+ K]), f32)")
    with pytest.raises(DSLTypeError, match=r"an integer accumulator \(i32\) takes integer "
                                           r"operands, got f32 and u8"):
        compile(floats)


CAST = """
kernel q[T: dtype = i8, S: dtype = f32](x: S[64], y: T[64]) {
  store(y[0 :+ 64], cast(load(x[0 :+ 64]), T))
}
"""


@pytest.mark.parametrize("dst", ["i8", "u8"])
@pytest.mark.parametrize("src", ["f32", "f16"])
def test_float_to_byte_casts_quantize(dst, src):
    """Round to nearest even, saturate, NaN -> 0: the same as every other iN/uN format."""
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, 127.5, -128.5, 300.0, -300.0,
                  np.nan, np.inf, -np.inf, 254.5, 255.5] * 4, np.float32)
    x[16:] = np.random.default_rng(2).uniform(-400, 400, 48)
    x = x.astype({"f32": np.float32, "f16": np.float16}[src])
    lo, hi = np.iinfo(_NP[dst]).min, np.iinfo(_NP[dst]).max
    want = np.clip(np.rint(np.nan_to_num(x.astype(np.float64), nan=0.0, posinf=hi,
                                         neginf=lo)), lo, hi).astype(_NP[dst])
    k = compile(CAST, T=dst, S=src)
    for run in (k, k.interpret):
        y = np.zeros(64, _NP[dst])
        run(x, y)
        np.testing.assert_array_equal(y, want, err_msg=str(run))


# ------------------------------------------------------------------ the W*A8 matmul
INTEGERS = [f"{kind}{b}" for kind in "uib" for b in range(1, 9)]


def test_formats_that_take_int8_activations():
    takes = {f for f in [*INTEGERS, "f4e2m1fn", "nf4", "f8e4m3fn", "f6e2m3fn"]
             if a8.byte_map(lowbitc.dtype(f)) is not None}
    assert takes == {*INTEGERS, "f4e2m1fn"}
    assert a8.byte_map(lowbitc.dtype("i4")) == (1.0, -8.0)
    assert a8.byte_map(lowbitc.dtype("b3")) == (0.5, -3.5)
    assert a8.byte_map(lowbitc.dtype("f4e2m1fn")) == (2.0, -12.0)
    assert [a8.block(g) for g in (32, 48, 64, 128, 256, 96 * 4)] == [32, 48, 64, 128, 128, 128]
    shapes = ((1, 4096), (1, 40), (16, 4096), (16, 384), (3, 80))
    assert [a8.rows_tile(m, n) for m, n in shapes] == [32, 32, 64, 64, 16]
    assert [a8.rows_tile(m, 4096, 8) for m in (1, 16)] == [16, 64]  # bytes in memory order
    assert [a8.rows_tile(m, 4096, 3) for m in (1, 16)] == [16, 64]  # u3: one code stream


def a8_bound(x: np.ndarray, w_hat: np.ndarray, qb: int) -> np.ndarray:
    """|y - x @ w_hat.T| <= sum over blocks of (max|x_block| / 254) * sum_block |w_hat|
    (RNE makes each activation's error at most half its block's step amax / 127), plus f32
    rounding of the sums."""
    M, K = x.shape
    bound = np.zeros((M, w_hat.shape[0]))
    for k0 in range(0, K, qb):
        amax = np.abs(x[:, k0:k0 + qb]).max(axis=1, keepdims=True).astype(np.float64)
        bound += amax / 254 * np.abs(w_hat[:, k0:k0 + qb]).sum(axis=1)[None, :]
    return bound + 1e-5 * np.abs(x) @ np.abs(w_hat).T + 1e-6


WIDE = ("u3", "i4", "b2", "u8", "f4e2m1fn")  # also with other groups and more rows


@pytest.mark.parametrize("fmt", [*INTEGERS, "f4e2m1fn"])
def test_a8_matmul_within_the_int8_bound(fmt):
    rng = np.random.default_rng(3)
    N, K = 48, 200  # N: whole 16-row blocks and a partial tile; K: a partial last group
    w = rng.standard_normal((N, K)).astype(np.float32)
    cases = [(64, fmt[0] == "u", 1)]
    if fmt in WIDE:
        cases += [(64, False, 16), (32, False, 3)]
    for group, zp, M in cases:
        qw = lowbitc.quantize(w, fmt, group, zero_point=zp)
        w_hat = qw.dequantize().astype(np.float64)
        x = (rng.standard_normal((M, K)) * rng.uniform(0.1, 10, (M, 1))).astype(np.float32)
        y = ops.matmul(x, qw, act="i8")
        err = np.abs(y - x.astype(np.float64) @ w_hat.T)
        bound = a8_bound(x, w_hat, a8.block(group))
        assert (err <= bound).all(), (fmt, group, M, float((err / bound).max()))
        # int8 activations are not exact: the test would pass for f32 too otherwise
        assert M > 1 or err.max() > 0 or fmt in ("u1", "b1")


@pytest.mark.parametrize("fmt, zp, N, M", [("u4", True, 80, 2), ("i3", False, 80, 2),
                                           ("b2", False, 80, 2), ("f4e2m1fn", False, 80, 2),
                                           ("u6", False, 80, 2), ("u8", True, 80, 2),
                                           ("i8", False, 80, 2), ("u4", True, 40, 1),
                                           ("u2", True, 96, 1)])
def test_a8_fused_matches_interpreter(fmt, zp, N, M):
    """The compiled kernel (fused byte dot on whole 16-row windows, the generic integer dot
    at the edge) agrees with the interpreter to f32 rounding; N = 40 at M = 1 has a partial
    last block (the inline packing pads it to 16 rows)."""
    rng = np.random.default_rng(4)
    K, group = 256, 128
    qw = lowbitc.quantize(rng.standard_normal((N, K)).astype(np.float32), fmt, group,
                          zero_point=zp)
    name, params = ops.matmul_choice(M, N, K, qw, "f32", "i8")
    assert name == "matmul_a8"
    k = ops.get_kernel(name, **params)
    if fmt not in ("u8", "i8"):  # (those are bytes in memory order)
        assert k.packings["w"].name == "rows16"
    x = rng.standard_normal((M, K)).astype(np.float32)
    # the activations quantized once (quantize_a8): compiled and interpreted agree exactly
    quant = ops.get_kernel("quantize_a8", A="f32", BM=params["BM"], QB=params["QB"])
    kb = -(-K // params["QB"])
    outs = []
    for run in (quant, quant.interpret):
        xq = np.zeros((M, K), np.int8)
        xd, xs = np.zeros((kb, M), np.float32), np.zeros((kb, M), np.float32)
        run(x, xq, xd, xs)
        outs.append((xq, xd, xs))
    for got, want in zip(outs[0], outs[1], strict=True):
        np.testing.assert_array_equal(got, want)
    w, sz = a8.operands(qw, k, ops.weight_storage)  # the inline packing at M = 1
    assert bool(params.get("XK")) == (M == 1)
    ys = []
    for run in (k, k.interpret):
        y = np.zeros((M, N), np.float32)
        run(*outs[1], w, sz, y, group, K=K, KW=w.count if M == 1 else K)
        ys.append(y)
    np.testing.assert_allclose(ys[0], ys[1], rtol=1e-5, atol=1e-5 * np.abs(ys[1]).max())


@pytest.mark.parametrize("fmt, zp, M", [("u4", True, 1), ("f4e2m1fn", False, 1),
                                        ("f4e2m1fn", False, 16), ("b3", False, 1),
                                        ("i4", False, 16), ("u2", True, 16)])
def test_a8_kernels_take_the_fused_byte_dot(fmt, zp, M):
    """The shipped kernel's dot fuses the weights' decode for every byte map (SC and LO
    constants are shared with the scale code outside the activation-block loop); without
    AVX2, explain says it does not. The float dots' planner says nothing of an integer dot
    (it said "FALLBACK ... E is not a float tile" beside the fused byte dot)."""
    qw = lowbitc.quantize(np.ones((64, 256), np.float32), fmt, 128, zero_point=zp)
    name, params = ops.matmul_choice(M, 4096, 4096, qw, "f32", "i8")
    text = ops.get_kernel(name, **params).explain()
    want = ("dot w: fused integer byte dot" if bytedot.applies() else "dot w: FALLBACK generic "
            "integer dot (the fused byte dot needs AVX2)")
    assert want in text, text
    assert ("0 fallbacks" in text) == bytedot.applies(), text


@pytest.mark.parametrize("fmt, zp, N, K, group", [
    ("u4", True, 40, 300, 64),  # ragged N and K, a partial last group, runs of 2 groups
    ("u4", False, 64, 256, 128),  # runs of 4 groups, the last one short
    ("u3", True, 48, 520, 64),  # two bit planes: 3 groups in 2 extra steps
    ("u2", True, 33, 200, 32),
    ("f4e2m1fn", False, 20, 160, 32),  # through the int8 table
    ("b1", False, 17, 96, 32),
    ("u8", True, 40, 200, 64),  # bytes as b8 in the rows packing: ragged N, K, last group
    ("i8", False, 33, 520, 128),  # 8 groups per run; the byte is the code ^ 0x80
    ("b8", False, 16, 96, 32)])
def test_inline_packing(fmt, zp, N, K, group):
    """The inline GEMV packing: the inverse gives codes, scales and zero points back; every
    scale sits in the words right after its run of groups; M = 1 through it equals the
    tile-major kernel bit for bit (the same sums in the same order); a replica owns its
    copy; M > 1 keeps tile-major scales."""
    rng = np.random.default_rng(11)
    qw = lowbitc.quantize(rng.standard_normal((N, K)).astype(np.float32), fmt, group,
                          zero_point=zp)
    w, sz = a8.inline_pack(qw)
    assert a8.inline_pack(qw)[0] is w
    codes, scales, zeros = a8.from_inline(w, N, K, group, zp)
    np.testing.assert_array_equal(codes, qw.codes)
    np.testing.assert_array_equal(scales, qw.scales)
    if zp:
        np.testing.assert_array_equal(zeros, qw.zeros)
    else:
        assert zeros is None
    p, e = a8.inline_shape(qw.dtype.bits, zp)
    assert p * (2 if zp else 1) == e * qw.dtype.bits
    assert np.shares_memory(sz, w.words) and sz.shape[0] == -(-N // 16)
    # block 0, run 1: its first group's scale for row 0 right before the run's codes
    if qw.scales.shape[1] > p:
        assert sz[0, 1, 0] == qw.scales[0, p] and sz[0, 1, 1] == qw.scales[1, p]
    x = rng.standard_normal((1, K)).astype(np.float32)
    tile = a8.params(qw.dtype, group, zp, 1, "i8", N, inline=False)
    k = ops.get_kernel("matmul_a8", **tile)
    want = np.zeros((1, N), np.float32)
    a8.matmul(k, x, "f32", ops.weight_storage(qw, k), a8.tile_scales(qw, tile["BN"]), want,
              group)
    inline = a8.params(qw.dtype, group, zp, 1, "i8", N, inline=True)
    if fmt == "u3":  # ops does not choose it (two planes) but the kernel reads it
        inline = {**tile, "BN": 16, "P": p, "XK": 32 * e}
    assert inline["BN"] == 16 and (inline["P"], inline["XK"]) == (p, 32 * e)
    k = ops.get_kernel("matmul_a8", **inline)
    y = np.zeros((1, N), np.float32)
    a8.matmul(k, x, "f32", w, sz, y, group)
    np.testing.assert_array_equal(y, want)
    if qw.dtype.bits == 8:  # 16 rows' 4 bytes per vector: vpdpbusd's weight operand
        assert k.packings == {"w": RowsPacking(8)}
        assert ("dot w: fused integer byte dot" in k.explain()) == bytedot.applies()
        step = w.words.reshape(-1, 8 * (w.count // 32), 16)[0, 8 * e]  # run 0's first codes
        np.testing.assert_array_equal(step.view(np.uint8).reshape(16, 4)[:min(N, 16)],
                                      qw.codes[:16, :4])
    # ops.matmul takes it for one bit plane (u3's two keep tile-major)
    np.testing.assert_array_equal(ops.matmul(x, qw, act="i8"), want)
    assert ("XK" in a8.params(qw.dtype, group, zp, 1, "i8", N)) == (fmt != "u3")
    twin = qw.replica()
    w2, sz2 = a8.inline_pack(twin)
    assert not np.shares_memory(w2.words, w.words) and np.shares_memory(sz2, w2.words)
    y2 = np.zeros((1, N), np.float32)
    a8.matmul(k, x, "f32", w2, sz2, y2, group)
    np.testing.assert_array_equal(y2, want)
    x3 = rng.standard_normal((3, K)).astype(np.float32)
    y3 = ops.matmul(x3, qw, act="i8")
    np.testing.assert_array_equal(y3[1], ops.matmul(x3[1:2], qw, act="i8")[0])
    assert "XK" not in a8.params(qw.dtype, group, zp, 3, "i8", N)


def test_a8_launches_bound_once_per_weight():
    """ops.matmul binds a GEMV's two launches (the quantizer's, the dot's) once per weight and
    activation dtype (a8.call), more rows per call: the same result as a8.matmul; a replica
    binds its own (its launches read its arrays, not the original's)."""
    rng = np.random.default_rng(5)
    qw = lowbitc.quantize(rng.standard_normal((64, 256)).astype(np.float32), "u4", 128,
                          zero_point=True)
    for x in (rng.standard_normal((1, 256)).astype(np.float32),
              rng.standard_normal((3, 256)).astype(np.float16)):
        y = ops.matmul(x, qw, act="i8")
        adt = "f16" if x.dtype == np.float16 else "f32"
        k = ops._plan(("matmul", "llvm", qw.dtype, adt, True, 128, len(x), 64, 256, "i8",
                       False))
        want = np.zeros_like(y)
        a8.matmul(k, x, adt, *a8.operands(qw, k, ops.weight_storage), want, 128)
        np.testing.assert_array_equal(y, want)
        np.testing.assert_array_equal(ops.matmul(x, qw, act="i8"), want)
    assert len(qw.__dict__["_a8_runs"]) == 1  # the GEMV's
    twin = qw.replica()
    assert "_a8_runs" not in twin.__dict__
    w, sz = a8.inline_pack(twin)
    w.words[:] = 0  # codes, scales and zero points of the twin only
    np.testing.assert_array_equal(ops.matmul(x[:1], twin, act="i8"), 0)
    assert np.abs(ops.matmul(x[:1], qw, act="i8")).max() > 0


@pytest.mark.parametrize("m", [1, 40])
def test_a8_bound_chain_and_its_fallback_give_the_launches_result(m):
    """a8.bound runs the quantizer and the dot as one native call (LaunchChain) on buffers of
    its own; while another call is inside it (its lock held) a call quantizes into fresh
    buffers through two launches: both give a8.matmul's result bit for bit, for a GEMV and
    for 40 rows (the quantizer then a grid of its own over the pool)."""
    rng = np.random.default_rng(7)
    qw = lowbitc.quantize(rng.standard_normal((96, 512)).astype(np.float32), "u4", 128,
                          zero_point=True)
    x = rng.standard_normal((m, 512)).astype(np.float32)
    k = ops.get_kernel("matmul_a8", **a8.params(qw.dtype, 128, True, m, "i8", 96))
    want = np.zeros((m, 96), np.float32)
    a8.matmul(k, x, "f32", *a8.operands(qw, k, ops.weight_storage), want, 128)
    run = a8.bound(k, "f32", np.empty_like(x), *a8.operands(qw, k, ops.weight_storage),
                   np.empty_like(want), 128)
    cells = {n: c.cell_contents for n, c in zip(run.__code__.co_freevars, run.__closure__)}
    chain, fresh = cells["chain"], cells["fresh"]
    spare = dict(zip(fresh.__code__.co_freevars, fresh.__closure__))["spare"].cell_contents
    assert type(chain).__name__ == "LaunchChain"
    spares = []
    for busy in (False, True, False):
        y = np.full_like(want, np.nan)
        if busy:
            assert chain._busy.acquire(blocking=False)
        try:
            run(x, y)
        finally:
            if busy:
                chain._busy.release()
        np.testing.assert_array_equal(y, want)
        spares.append(len(spare))
    assert spares == [0, 1, 1]  # the fresh-buffer launches: bound on the first contention
    assert chain.try_call(x, y) and np.array_equal(y, want)
    with pytest.raises(UserArgumentError, match=r"expected 2 arrays \(x, y\), got 1"):
        chain.try_call(x)
    with pytest.raises(UserArgumentError, match="argument 'y'"):
        chain.try_call(x, y[:, :5].copy())


def test_a8_bound_chain_on_the_python_pool(monkeypatch):
    """With the portable Python pool (no native run2) a bound run's chain launches its two
    kernels one after the other: the same result."""
    from lowbitc.backends.llvm import pool

    rng = np.random.default_rng(10)
    qw = lowbitc.quantize(rng.standard_normal((96, 512)).astype(np.float32), "u4", 128,
                          zero_point=True)
    x = rng.standard_normal((40, 512)).astype(np.float32)
    k = ops.get_kernel("matmul_a8", **a8.params(qw.dtype, 128, True, 40, "i8", 96))
    want = np.zeros((40, 96), np.float32)
    a8.matmul(k, x, "f32", *a8.operands(qw, k, ops.weight_storage), want, 128)
    monkeypatch.setattr(pool, "_POOL", pool.PythonPool())
    run = a8.bound(k, "f32", np.empty_like(x), *a8.operands(qw, k, ops.weight_storage),
                   np.empty_like(want), 128)
    y = np.full_like(want, np.nan)
    run(x, y)
    np.testing.assert_array_equal(y, want)


def test_a8_bound_gemv_from_many_threads():
    """Threads calling one weight's bound GEMV at once (each call either through the chain
    or, while it is busy, through fresh buffers) all get the single-threaded result."""
    rng = np.random.default_rng(8)
    qw = lowbitc.quantize(rng.standard_normal((128, 1024)).astype(np.float32), "u4", 128,
                          zero_point=True)
    xs = [rng.standard_normal((1, 1024)).astype(np.float32) for _ in range(4)]
    want = [ops.matmul(x, qw, act="i8").copy() for x in xs]
    errors = []

    def work(i: int) -> None:
        for _ in range(50):
            if not np.array_equal(ops.matmul(xs[i], qw, act="i8"), want[i]):
                errors.append(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_ops_matmul_gemv_fast_path_follows_the_plan():
    """A second int8 GEMV with the same signature takes the launch bound by the first
    (ops._bound_gemv) and gives the same result, into `out` too; a plan forgotten or
    replaced (ops._PLANS), another act, a non-contiguous x or a wrong `out` take the full
    path (which checks and converts)."""
    rng = np.random.default_rng(9)
    qw = lowbitc.quantize(rng.standard_normal((64, 256)).astype(np.float32), "u4", 128,
                          zero_point=True)
    x = rng.standard_normal((1, 256)).astype(np.float32)
    y = ops.matmul(x, qw, act="i8")
    assert ops._bound_gemv(x, qw, "llvm", None, "i8") is not None
    np.testing.assert_array_equal(ops.matmul(x, qw, act="i8"), y)
    out = np.empty((1, 64), np.float32)
    assert ops.matmul(x, qw, act="i8", out=out) is out
    np.testing.assert_array_equal(out, y)
    assert ops._bound_gemv(x, qw, "llvm", None, "f32") is None
    wide = np.zeros((1, 512), np.float32)
    wide[:, ::2] = x
    assert ops._bound_gemv(wide[:, ::2], qw, "llvm", None, "i8") is None
    np.testing.assert_array_equal(ops.matmul(wide[:, ::2], qw, act="i8"), y)
    with pytest.raises(UserArgumentError, match="out: expected"):
        ops.matmul(x, qw, act="i8", out=np.empty((1, 63), np.float32))
    ops._PLANS.clear()  # forgotten: the full path plans (and binds) again
    assert ops._bound_gemv(x, qw, "llvm", None, "i8") is None
    np.testing.assert_array_equal(ops.matmul(x, qw, act="i8"), y)
    assert ops._bound_gemv(x, qw, "llvm", None, "i8") is not None
    plan = next(key for key in ops._PLANS if key[-2] == "i8" and key[6] == 1)
    ops._PLANS[plan] = ops.get_kernel("matmul_a8", **a8.params(qw.dtype, 128, True, 1, "i8",
                                                                 64, inline=False))
    assert ops._bound_gemv(x, qw, "llvm", None, "i8") is None  # replaced: not the old launch
    np.testing.assert_array_equal(ops.matmul(x, qw, act="i8"), y)


def test_a8_bound_launches_are_not_copied_or_pickled():
    """A QTensor that ran an int8 GEMV (a8.call cached its bound launches) still deep-copies
    and pickles; the copy binds its own launches and gives the same result."""
    rng = np.random.default_rng(6)
    qw = lowbitc.quantize(rng.standard_normal((64, 256)).astype(np.float32), "u4", 128,
                          zero_point=True)
    x = rng.standard_normal((1, 256)).astype(np.float32)
    y = ops.matmul(x, qw, act="i8")
    assert "_a8_runs" in qw.__dict__ and "_a8_fast" in qw.__dict__
    for twin in (copy.deepcopy(qw), pickle.loads(pickle.dumps(qw))):
        assert "_a8_runs" not in twin.__dict__ and "_a8_fast" not in twin.__dict__
        np.testing.assert_array_equal(ops.matmul(x, twin, act="i8"), y)


def test_inline_packing_applies_to_gemvs_of_rows_packed_codes(monkeypatch):
    """M = 1, codes of one bit plane in the rows packing (u8/i8 given as b8), whole-step
    groups; a8.INLINE = False turns it off."""
    u4, u8 = formats.lookup("u4"), formats.lookup("u8")
    assert a8.params(u4, 128, True, 1, "i8")["XK"] == 32
    assert a8.params(u4, 128, True, 1, "i8")["BN"] == 16
    assert a8.params(u8, 128, True, 1, "i8")["XK"] == 32  # as b8, the byte = code + RB
    assert a8.params(u8, 128, True, 1, "i8")["W"].name == "b8"
    assert a8.params(formats.lookup("i8"), 128, False, 1, "i8")["RB"] == 128
    assert "RB" not in a8.params(u8, 128, True, 1, "i8", inline=False)
    assert "XK" not in a8.params(u4, 48, True, 1, "i8")
    assert "XK" not in a8.params(u4, 128, True, 1, "i8", inline=False)
    assert "XK" not in a8.params(formats.lookup("u3"), 128, True, 1, "i8")  # two planes
    monkeypatch.setattr(a8, "INLINE", False)
    assert "XK" not in a8.params(u4, 128, True, 1, "i8")


@pytest.fixture
def compile_with(monkeypatch):
    """Set a backend constant (module, name, value) for kernels compiled from then on, in
    memory only: the persistent cache's key does not see such constants."""
    monkeypatch.setenv("LOWBITC_NO_CACHE", "1")

    def use(module, name: str, value) -> None:
        monkeypatch.setattr(module, name, value)
        kernels._KERNELS.clear()
        ops._PLANS.clear()
    yield use
    kernels._KERNELS.clear()
    ops._PLANS.clear()


@pytest.fixture
def inline_prefetch(compile_with):
    """Set target.INLINE_PREFETCH (the host's default otherwise)."""
    return lambda on: compile_with(target, "INLINE_PREFETCH", on)


@pytest.fixture
def fused_recipe(compile_with):
    """Set bytedot.RECIPE (None: the host's); skips a recipe this host cannot run."""
    host = bytedot.recipe()
    runs = bytedot.RECIPES[bytedot.RECIPES.index(host):] if host else ()

    def use(recipe: str | None) -> None:
        if recipe is not None and recipe not in runs:
            pytest.skip(f"this host runs the fused recipes {runs}, not {recipe}")
        compile_with(bytedot, "RECIPE", recipe)
    return use


# what each recipe's kernels hold (and do not; the generic dot at a window's edge keeps the
# host's own instructions)
RECIPE_ASM = {"vnni512": (r"vpdpbusd\s+[^\n]*zmm", "vpmaddubsw"),
              "vnni256": (r"vpdpbusd\s+[^\n]*ymm", "vpmaddubsw"),
              "avx2": ("vpmaddubsw", None)}  # (LLVM may join the halves on AVX-512 hosts)


@pytest.mark.parametrize("recipe", bytedot.RECIPES)
@pytest.mark.parametrize("fmt, M", [("u4", 1), ("u3", 1), ("u8", 1), ("f4e2m1fn", 1),
                                    ("b2", 3), ("u8", 3), ("i4", 16), ("u7", 1)])
def test_fused_dot_recipes_agree(fmt, M, recipe, fused_recipe):
    """The fused byte dot gives the same sums, bit for bit, with each host's instructions:
    AVX-512 VNNI on 16 lanes, 256-bit vpdpbusd (AVX-VNNI) or AVX2's vpmaddubsw + vpmaddwd on
    two halves (u8's bytes above 127 split so no pair sum saturates; AVX2's 16-bit sums of
    pair sums bounded by E's largest value); weights at the top of their range against
    activations of -127 are the overflowing case."""
    rng = np.random.default_rng(7)
    N, K = 48, 384
    w = rng.standard_normal((N, K)).astype(np.float32)
    w[:16, :128] = np.where(np.arange(128) % 2, 3.0, 2.9)  # codes at the top of the range
    qw = lowbitc.quantize(w, fmt, 128, zero_point=fmt[0] == "u")
    x = rng.standard_normal((M, K)).astype(np.float32)
    x[:, :128] = -np.abs(x).max()  # -127s in int8: the largest pair sums
    fused_recipe(None)
    want = ops.matmul(x, qw, act="i8")
    fused_recipe(recipe)
    name, params = ops.matmul_choice(M, N, K, qw, "f32", "i8")
    text = ops.get_kernel(name, **params).text("asm")
    has, lacks = RECIPE_ASM[recipe]
    assert re.search(has, text) and not (lacks and re.search(lacks, text)), recipe
    np.testing.assert_array_equal(ops.matmul(x, qw.replica(), act="i8"), want)


@pytest.mark.skipif(not bytedot.applies(), reason="the fused byte dot needs AVX2")
@pytest.mark.parametrize("fmt", ["u4", "u2", "u8", "u1"])
def test_inline_gemv_prefetch_distance(fmt, inline_prefetch):
    """An inline GEMV program (one stream) asks for its codes PREFETCH_BYTES ahead (2- and
    4-bit codes PREFETCH_BYTES_BY_BITS, 8 KB), every line of its window and the extra step's
    lines after it: the assembly's prefetches are that run of lines. Where the host does
    without (target.INLINE_PREFETCH_BY_CPU: Zen 4, Zen 3) it has none, and the same results."""
    inline_prefetch(True)
    p = a8.params(formats.lookup(fmt), 128, True, 1, "i8", 256)
    text = ops.get_kernel("matmul_a8", **p).text("asm")
    offsets = sorted(int(v) for v in re.findall(r"prefetcht[0-2]\s+(-?\d+)\(", text))
    bits = formats.lookup(fmt).bits
    far = bytedot.PREFETCH_BYTES_BY_BITS.get(bits, bytedot.PREFETCH_BYTES)
    lines = p["QB"] * bits // 32 + bytedot.inline_extra_lines(bits)  # 16 rows x QB codes
    assert offsets == list(range(far, far + 64 * lines, 64))
    assert bytedot.PREFETCH_BYTES_BY_BITS == {2: 8192, 4: 8192}
    assert bytedot.PREFETCH_BYTES == 4096
    rng = np.random.default_rng(bits)
    qw = lowbitc.quantize(rng.standard_normal((64, 256)).astype(np.float32), fmt, 128,
                          zero_point=True)
    x = rng.standard_normal((1, 256)).astype(np.float32)
    y = ops.matmul(x, qw, act="i8")
    inline_prefetch(False)
    assert "prefetch" not in ops.get_kernel("matmul_a8", **p).text("asm")
    u3 = a8.params(formats.lookup("u3"), 128, True, 1, "i8", 256)  # tile-major 16-row tiles
    assert u3["BN"] == 16 and "XK" not in u3
    assert "prefetcht" in ops.get_kernel("matmul_a8", **u3).text("asm")  # keeps its own
    np.testing.assert_array_equal(ops.matmul(x, qw.replica(), act="i8"), y)
    assert target.INLINE_PREFETCH_BY_CPU == {"znver4": False, "znver3": False}


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("zp", [False, True])
def test_inline_gemv_prefetch_covers_the_stream(bits, zp):
    """Windows of a 16-row block's stream in the inline packing (runs of an extra step, then P
    groups' codes) each asking for their lines and inline_extra_lines more, D bytes ahead,
    ask for every line of the stream past the first D bytes (without the extra lines 6-34 %
    of them were demand misses)."""
    p, e = a8.inline_shape(bits, zp)
    for group in (32, 128, 256):
        glines, ext = group * bits // 32, e * bits  # lines of a group's codes, of a run's step
        run = ext + p * glines
        windows = [r * run + ext + j * glines + w * 4 * bits for r in range(40)
                   for j in range(p) for w in range(-(-group // 128))]
        width = min(group, 128) * bits // 32  # a window is at most QB = 128 codes
        for far in (4096, 8192):
            asked = {s + far // 64 + i for s in windows
                     for i in range(width + bytedot.inline_extra_lines(bits))}
            stream = set(range(far // 64 + run, 36 * run))  # past the first run
            assert stream <= asked, (group, far)


@pytest.mark.parametrize("zp", [False, True])
def test_tile_major_scales(zp):
    """[N, G] scales (and zero points) -> [cdiv(N, bn), G, bn (2 bn)]: every value at its
    tile, group and row, zero points after the tile's scales; rows past N zero; the inverse
    gives them back; cached per tile width and copied by QTensor.replica."""
    rng = np.random.default_rng(7)
    a = rng.standard_normal((40, 3)).astype(np.float32)
    z = rng.standard_normal((40, 3)).astype(np.float32) if zp else None
    t = a8.tile_major(a, 16, z)
    assert t.shape == (3, 3, 32 if zp else 16) and t.flags.c_contiguous
    n, g = np.meshgrid(np.arange(40), np.arange(3), indexing="ij")
    np.testing.assert_array_equal(t[n // 16, g, n % 16], a)
    if zp:
        np.testing.assert_array_equal(t[n // 16, g, 16 + n % 16], z)
        assert not t[2, :, 24:].any()
    assert not t[2, :, 8:16].any()
    back_s, back_z = a8.from_tile_major(t, 40, zp)
    np.testing.assert_array_equal(back_s, a)
    assert (back_z is None) == (not zp)
    if zp:
        np.testing.assert_array_equal(back_z, z)
    qw = lowbitc.quantize(rng.standard_normal((32, 64)).astype(np.float32), "u4", 32,
                          zero_point=zp)
    sz = a8.tile_scales(qw, 16)
    assert a8.tile_scales(qw, 16) is sz
    np.testing.assert_array_equal(sz, a8.tile_major(qw.scales, 16, qw.zeros))
    twin = qw.replica()
    sz2 = a8.tile_scales(twin, 16)
    assert sz2 is not sz and np.array_equal(sz2, sz)


def test_a8_other_formats_keep_f32_activations():
    rng = np.random.default_rng(5)
    w = rng.standard_normal((32, 64)).astype(np.float32)
    x = rng.standard_normal((2, 64)).astype(np.float32)
    for fmt in ("nf4", "f8e4m3fn"):
        qw = lowbitc.quantize(w, fmt, 32)
        np.testing.assert_array_equal(ops.matmul(x, qw, act="i8"), ops.matmul(x, qw))
    with pytest.raises(UserArgumentError, match=r"act: expected one of 'f32', 'i8', got 'i4'"):
        ops.matmul(x, lowbitc.quantize(w, "u4", 32), act="i4")


def test_a8_reads_words_off_a_cache_line():
    """Repacked words copied elsewhere (QTensor.replica) need not start on a 64-byte line."""
    rng = np.random.default_rng(6)
    qw = lowbitc.quantize(rng.standard_normal((256, 256)).astype(np.float32), "u4", 128)
    x = rng.standard_normal((1, 256)).astype(np.float32)
    want = ops.matmul(x, qw, act="i8")
    twin = qw.replica()
    for _ in range(3):
        np.testing.assert_array_equal(ops.matmul(x, twin, act="i8"), want)
