"""Every DSL construct (docs/dsl.md) on small random inputs: the LLVM backend and the
reference interpreter must both match a hand-written numpy expectation."""

from __future__ import annotations

import math
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

import lowbitc
from lowbitc.compiler import Kernel, compile
from lowbitc.errors import DSLTypeError
from lowbitc.ir import walk
from lowbitc.packing import pack

RNG = np.random.default_rng(1234)


def rand(*shape: int, dtype=np.float32, lo: float = -2.0, hi: float = 2.0) -> np.ndarray:
    return RNG.uniform(lo, hi, shape).astype(dtype)


def check(k: Kernel | str, args: list, outs: dict[int, np.ndarray], rtol: float = 1e-6,
          atol: float = 1e-6, exact: bool = False, **kwargs) -> Kernel:
    """Run k natively and in the interpreter on copies of args; args[i] must equal outs[i]."""
    k = compile(k) if isinstance(k, str) else k
    for name, runner in (("llvm", k), ("interpreter", k.interpret)):
        a = [np.array(x, copy=True) if isinstance(x, np.ndarray) else x for x in args]
        runner(*a, **kwargs)
        for i, want in outs.items():
            got = a[i]
            assert got.dtype == want.dtype, f"{name}: arg {i} dtype {got.dtype} != {want.dtype}"
            if exact:
                np.testing.assert_array_equal(got, want, err_msg=f"{name}: arg {i}")
            else:
                np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64),
                                           rtol=rtol, atol=atol, err_msg=f"{name}: arg {i}")
    return k


# ------------------------------------------------------------------ arithmetic

def test_arithmetic_broadcasting_and_augmented_assignment():
    src = """kernel k(x: f32[4, 8], r: f32[8], c: f32[4], y: f32[4, 8]) {
  a = load(x[0 :+ 4, 0 :+ 8])
  row = reshape(load(r[0 :+ 8]), [1, 8])
  col = reshape(load(c[0 :+ 4]), [4, 1])
  v = (a + row) * col - a / 2.0
  v += 1.5
  v -= -a
  v *= 0.5
  v /= 4.0
  store(y[0 :+ 4, 0 :+ 8], v + 3 * (2 - 1) // 1)
}"""
    x, r, c = rand(4, 8), rand(8), rand(4)
    v = ((x + r) * c[:, None] - x / 2 + 1.5 + x) * 0.5 / 4 + 3
    check(src, [x, r, c, np.zeros((4, 8), np.float32)], {3: v.astype(np.float32)}, rtol=1e-6)


def test_integer_division_and_remainder_truncate_toward_zero():
    src = """kernel k(a: i32[N], b: i32[N], q: i32[N], r: i32[N], f: i32[N]) {
  x = load(a[0 :+ 16])
  y = load(b[0 :+ 16])
  store(q[0 :+ 16], x / y)
  store(r[0 :+ 16], x % y)
  store(f[0 :+ 16], x // y)
}"""
    a = RNG.integers(-50, 50, 16).astype(np.int32)
    b = RNG.choice([-7, -3, -1, 1, 2, 5], 16).astype(np.int32)
    trunc = (np.sign(a) * np.sign(b) * (np.abs(a) // np.abs(b))).astype(np.int32)
    z = np.zeros(16, np.int32)
    check(src, [a, b, z, z, z], {2: trunc, 3: (a - trunc * b).astype(np.int32), 4: trunc},
          exact=True)


def test_compile_time_arithmetic_folds_like_run_time_arithmetic():
    src = """kernel k[A: int = -7, B: int = 2](y: i64[8]) {
  store(y[0 :+ 8], arange(8) * 0 + (A / B) * 100 + A % B + (A << 2) - (A & 3) + cdiv(7, B))
}"""
    k = check(src, [np.zeros(8, np.int64)],
              {0: np.full(8, -3 * 100 + (-1) + (-7 << 2) - (-7 & 3) + 4, np.int64)},
              exact=True)
    assert not any(op.opcode == "div" for op in walk(k.ir.body.ops))
    # the same expression at run time gives the same value (C's / and %, not Python's)
    rt = """kernel k(y: i64[8], a: int, b: int) {
  store(y[0 :+ 8], arange(8) * 0 + (a / b) * 100 + a % b + (a << 2) - (a & 3) + cdiv(7, b))
}"""
    check(rt, [np.zeros(8, np.int64), -7, 2], {0: np.full(8, -300 - 1 - 28 - 1 + 4, np.int64)},
          exact=True)


def test_unary_math_functions():
    names = ["exp", "log", "sqrt", "rsqrt", "tanh", "sin", "cos", "floor", "erf", "sigmoid",
             "abs"]
    body = "\n".join(f"  store(y[{i}, 0 :+ 16], {n}(x))" for i, n in enumerate(names))
    src = f"kernel k(p: f32[16], y: f32[{len(names)}, 16]) {{\n  x = load(p[0 :+ 16])\n" \
          f"{body}\n  store(y[10, 0 :+ 16], -abs(-x))\n}}"
    p = rand(16, lo=0.1, hi=3.0)
    x = p.astype(np.float64)
    erf = np.vectorize(math.erf)(x)
    want = np.stack([np.exp(x), np.log(x), np.sqrt(x), 1 / np.sqrt(x), np.tanh(x), np.sin(x),
                     np.cos(x), np.floor(x), erf, 1 / (1 + np.exp(-x)), np.abs(x)])
    want[10] = -np.abs(x)
    check(src, [p, np.zeros_like(want, np.float32)], {1: want.astype(np.float32)},
          rtol=2e-6, atol=2e-6)


def test_elementwise_min_max_and_reductions():
    src = """kernel k(x: f32[4, 8], y: f32[6, 8], s: f32[3]) {
  a = load(x[0 :+ 4, 0 :+ 8])
  b = a * -1.0
  store(y[0, 0 :+ 8], max(a, b)[0 :+ 8])
}"""
    with pytest.raises(DSLTypeError, match="only tensor parameters can be sliced"):
        compile(src)  # tiles are not sliced: loads, reshapes and reductions do that work
    src = """kernel k(x: f32[4, 8], y: f32[6, 8], s: f32[3]) {
  a = load(x[0 :+ 4, 0 :+ 8])
  store(y[0 :+ 4, 0 :+ 8], max(a, 0.25) + min(a, -0.25))
  store(y[4, 0 :+ 8], sum(a, axis=0))
  store(y[5, 0 :+ 4], max(a))
  store(y[5, 4 :+ 4], min(a, axis=1))
  store(s[0], sum(sum(a)))
  store(s[1], max(max(a, axis=0)))
  store(s[2], min(3.0, 5.0) + max(1, 2))
}"""
    x = rand(4, 8)
    y = np.zeros((6, 8), np.float32)
    y[:4] = np.maximum(x, 0.25) + np.minimum(x, -0.25)
    y[4] = x.sum(0)
    y[5, :4] = x.max(1)
    y[5, 4:] = x.min(1)
    s = np.array([x.astype(np.float64).sum(), x.max(), 5.0], np.float32)
    check(src, [x, np.zeros((6, 8), np.float32), np.zeros(3, np.float32)], {1: y, 2: s},
          rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ comparisons, bits, casts

def test_comparisons_where_and_bool_logic():
    src = """kernel k(x: f32[N], y: f32[N], m: u8[N]) {
  a = load(x[0 :+ 32])
  inside = (a > -1.0) and (a <= 1.0)
  outside = not inside
  store(y[0 :+ 32], where(inside, a, where(a > 0.0, 2.0, -2.0)))
  store(m[0 :+ 32], cast(outside or (a == 0.5), u8) + cast(a != a, u8) * 4)
}"""
    x = rand(32)
    x[3] = 0.5
    inside = (x > -1) & (x <= 1)
    y = np.where(inside, x, np.where(x > 0, 2.0, -2.0)).astype(np.float32)
    m = ((~inside) | (x == 0.5)).astype(np.uint8)
    check(src, [x, np.zeros(32, np.float32), np.zeros(32, np.uint8)], {1: y, 2: m}, exact=True)


def test_integer_bit_operations_and_shifts():
    src = """kernel k(a: i32[N], u: u32[N], y: i32[6, N], v: u32[2, N]) {
  x = load(a[0 :+ 16])
  w = load(u[0 :+ 16])
  store(y[0, 0 :+ 16], x & 0x0F0F)
  store(y[1, 0 :+ 16], x | 0b1010)
  store(y[2, 0 :+ 16], x ^ -1)
  store(y[3, 0 :+ 16], x << 3)
  store(y[4, 0 :+ 16], x >> 2)
  store(y[5, 0 :+ 16], ~x)
  store(v[0, 0 :+ 16], w >> 28)
  store(v[1, 0 :+ 16], (w << 4) >> 4)
}"""
    a = RNG.integers(-(2 ** 20), 2 ** 20, 16).astype(np.int32)
    u = RNG.integers(0, 2 ** 32, 16, dtype=np.uint64).astype(np.uint32)
    y = np.stack([a & 0x0F0F, a | 0b1010, a ^ -1, a << 3, a >> 2, ~a]).astype(np.int32)
    v = np.stack([u >> 28, (u << 4) >> 4]).astype(np.uint32)
    check(src, [a, u, np.zeros((6, 16), np.int32), np.zeros((2, 16), np.uint32)],
          {2: y, 3: v}, exact=True)


def test_casts_between_machine_types():
    src = """kernel k(x: f32[N], i: i32[N], h: f16[N], f: f32[N], w: i8[N]) {
  a = load(x[0 :+ 32])
  store(i[0 :+ 32], cast(a, i32))
  store(h[0 :+ 32], cast(a, f16))
  store(f[0 :+ 32], cast(cast(cast(a, i32), i64), f32) + cast(cast(a, f16), f32))
  store(w[0 :+ 32], cast(cast(a * 40.0, i32), i8))
}"""
    x = rand(32, lo=-100, hi=100)
    i = x.astype(np.int32)  # truncation toward zero
    h = x.astype(np.float16)
    f = (i.astype(np.float32) + h.astype(np.float32)).astype(np.float32)
    w = (x * np.float32(40)).astype(np.int32).astype(np.int8)  # wraps modulo 256
    z = np.zeros(32, np.float32)
    check(src, [x, z.astype(np.int32), z.astype(np.float16), z, z.astype(np.int8)],
          {1: i, 2: h, 3: f, 4: w}, exact=True)


BF16_STORE = """
import ml_dtypes, numpy as np
from lowbitc.compiler import compile
k = compile(\"\"\"kernel k(x: f32[N], b: bf16[N]) {
  store(b[0 :+ 32], cast(load(x[0 :+ 32]), bf16))
}\"\"\")
x = np.linspace(-100, 100, 32, dtype=np.float32)
# ties to even in both directions, NaN, infinities, the largest finite values
x[:8] = np.array([0x3F808000, 0x3F818000, 0xBF808000, 0x7FC00000, 0x7F800000, 0xFF800000,
                  0x7F7FFFFF, 0x00000001], np.uint32).view(np.float32)
b = np.zeros(32, ml_dtypes.bfloat16)
k(x, b)
want = x.astype(ml_dtypes.bfloat16)
same = (b.view(np.uint16) == want.view(np.uint16)) | (np.isnan(b) & np.isnan(want))
assert same.all(), (b, want)
"""


def test_cast_to_bf16_and_store_runs_natively():
    # in a subprocess: a broken conversion once called an unresolved symbol and crashed
    r = subprocess.run([sys.executable, "-c", BF16_STORE], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, f"exit {r.returncode}: {r.stderr[-500:]}"


def test_cast_to_bf16_in_the_interpreter():
    k = compile("""kernel k(x: f32[N], b: bf16[N]) {
  store(b[0 :+ 32], cast(load(x[0 :+ 32]), bf16))
}""")
    x = rand(32, lo=-100, hi=100)
    b = np.zeros(32, ml_dtypes.bfloat16)
    k.interpret(x, b)
    np.testing.assert_array_equal(b, x.astype(ml_dtypes.bfloat16))


def test_dequantizing_casts_of_sub_byte_formats_with_scales():
    src = """kernel k[W: dtype](q: W[N, K], s: f32[N], y: f32[N, K]) {
  w = cast(load(q[0 :+ 3, 0 :+ 20]), f32) * reshape(load(s[0 :+ 3]), [3, 1])
  store(y[0 :+ 3, 0 :+ 20], w)
}"""
    for fmt in ("u2", "i4", "b3", "f5e2m2", "f4e2m1"):
        f = lowbitc.dtype(fmt)
        codes = RNG.integers(0, f.num_codes, (3, 20)).astype(np.uint8)
        s = rand(3)
        want = (f.decode(codes) * s[:, None]).astype(np.float32)
        check(compile(src, W=fmt), [pack(codes, f.bits), s, np.zeros((3, 20), np.float32)],
              {2: want}, exact=True)


# ------------------------------------------------------------------ shapes

def test_transpose_reshape_broadcast_arange_full_zeros():
    src = """kernel k(x: f32[4, 6], t: f32[6, 4], r: f32[3, 8], b: f32[4, 6], c: i64[2, 5]) {
  a = load(x[0 :+ 4, 0 :+ 6])
  store(t[0 :+ 6, 0 :+ 4], transpose(a))
  store(r[0 :+ 3, 0 :+ 8], reshape(a, [3, 8]))
  row = reshape(load(x[0, 0 :+ 6]), [1, 6])
  store(b[0 :+ 4, 0 :+ 6], broadcast(row, [4, 6]) + zeros(f32, [4, 6]) + full(f32, [4, 1], 0.5))
  store(c[0, 0 :+ 5], arange(5) * 3)
  store(c[1, 0 :+ 5], cast(arange(5, i32), i64) + full(i64, [5], 7))
}"""
    x = rand(4, 6)
    c = np.stack([np.arange(5) * 3, np.arange(5) + 7]).astype(np.int64)
    b = (np.broadcast_to(x[0], (4, 6)) + np.float32(0.5)).astype(np.float32)
    z = np.zeros
    check(src, [x, z((6, 4), np.float32), z((3, 8), np.float32), z((4, 6), np.float32),
                z((2, 5), np.int64)], {1: x.T.copy(), 2: x.reshape(3, 8), 3: b, 4: c},
          exact=True)


def test_transpose_with_a_permutation_of_three_dims():
    src = """kernel k(x: f32[2, 3, 4], y: f32[4, 2, 3]) {
  store(y[0 :+ 4, 0 :+ 2, 0 :+ 3], transpose(load(x[0 :+ 2, 0 :+ 3, 0 :+ 4]), [2, 0, 1]))
}"""
    x = rand(2, 3, 4)
    check(src, [x, np.zeros((4, 2, 3), np.float32)], {1: x.transpose(2, 0, 1).copy()},
          exact=True)


def test_dot_with_an_accumulator_and_the_at_operator():
    src = """kernel k(a: f32[M, K], b: f32[K, N], y: f32[M, N], z: f32[M, N]) {
  x = load(a[0 :+ 5, 0 :+ 7])
  w = load(b[0 :+ 7, 0 :+ 3])
  acc = full(f32, [5, 3], 1.0)
  store(y[0 :+ 5, 0 :+ 3], dot(x, w, acc))
  store(z[0 :+ 5, 0 :+ 3], x @ w)
}"""
    a, b = rand(5, 7), rand(7, 3)
    p = a.astype(np.float64) @ b.astype(np.float64)
    check(src, [a, b, np.zeros((5, 3), np.float32), np.zeros((5, 3), np.float32)],
          {2: (p + 1).astype(np.float32), 3: p.astype(np.float32)}, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ memory

def test_loads_and_stores_are_masked_at_the_edges():
    src = """kernel k[BM: int = 4, BN: int = 8](x: f32[M, N], y: f32[M, N], o: f32[2, 12])
  grid (cdiv(M, BM), cdiv(N, BN))
{
  m0 = block.x * BM
  n0 = block.y * BN
  store(y[m0 :+ BM, n0 :+ BN], load(x[m0 :+ BM, n0 :+ BN]) * 2.0 + 1.0)
  if block.x == 0 and block.y == 0 {
    store(o[0 :+ 2, 0 :+ 12], load(x[M - 1 :+ 2, N - 6 :+ 12]) + 100.0)
  }
}"""
    for m, n in ((1, 1), (3, 7), (5, 8), (9, 17)):
        x = rand(m, n)
        o = np.full((2, 12), 100.0, np.float32)  # reads outside the tensor give 0
        sub = x[m - 1:m + 1, max(n - 6, 0):n + 6]
        o[:sub.shape[0], max(6 - n, 0):max(6 - n, 0) + sub.shape[1]] += sub
        check(src, [x, np.full((m, n), np.nan, np.float32), np.zeros((2, 12), np.float32)],
              {1: x * 2 + 1, 2: o})


@pytest.mark.parametrize("dt", ["f32", "f16", "u32", "i8"])
def test_windows_whose_rows_run_past_the_end(dt):
    """A 2-D window whose columns lie inside and whose rows run past the last row: the rows
    inside copied, the rest zeros (with and without a mask); a window starting above the
    first row or with columns outside reads element by element; every answer equal to
    numpy's and the interpreter's."""
    src = f"""kernel k(x: {dt}[R, C], y: {dt}[8, 16], z: {dt}[8, 16], r0: int, c0: int) {{
  store(y[0 :+ 8, 0 :+ 16], load(x[r0 :+ 8, c0 :+ 16]))
  store(z[0 :+ 8, 0 :+ 16], load(x[r0 :+ 8, c0 :+ 16], mask=arange(16) % 3 != 1))
}}"""
    k = compile(src)
    npdt = {"f32": np.float32, "f16": np.float16, "u32": np.uint32, "i8": np.int8}[dt]
    x = RNG.integers(1, 100, (11, 40)).astype(npdt)
    keep = np.arange(16) % 3 != 1
    for r0, c0 in ((0, 0), (5, 3), (10, 24), (11, 0), (-2, 4), (6, 30)):
        want = np.zeros((8, 16), npdt)
        rows = [r for r in range(r0, r0 + 8) if 0 <= r < 11]
        cols = [c for c in range(c0, c0 + 16) if 0 <= c < 40]
        for r in rows:
            want[r - r0, [c - c0 for c in cols]] = x[r, cols]
        check(k, [x, np.full((8, 16), 7, npdt), np.full((8, 16), 7, npdt), r0, c0],
              {1: want, 2: np.where(keep, want, 0).astype(npdt)}, exact=True)


def test_explicit_masks_on_load_and_store():
    src = """kernel k(x: f32[N], y: f32[N], lim: f32) {
  keep = arange(16) % 3 != 0
  a = load(x[0 :+ 16], mask=keep)
  store(y[0 :+ 16], a + 1.0, mask=a < lim)
}"""
    x = rand(16)
    keep = np.arange(16) % 3 != 0
    a = np.where(keep, x, 0).astype(np.float32)
    y = np.full(16, -9.0, np.float32)
    want = np.where(a < 0.5, a + 1, y).astype(np.float32)
    check(src, [x, y, 0.5], {1: want}, exact=True)


def test_single_element_indices_drop_dims_and_scalars_store_one_element():
    src = """kernel k(x: f32[R, C], y: f32[R], s: f32[2], r: int) {
  store(y[0 :+ 4], load(x[0 :+ 4, r]))
  v = load(x[1, 2])
  store(s[0], v * 3.0)
  store(s[1], 7.0)
}"""
    x = rand(4, 5)
    check(src, [x, np.zeros(4, np.float32), np.zeros(2, np.float32), 3],
          {1: x[:, 3].copy(), 2: np.array([x[1, 2] * 3, 7], np.float32)}, exact=True)


def test_f16_and_bf16_tensors():
    src = """kernel k(h: f16[N], b: bf16[N], yh: f16[N], f: f32[N]) {
  x = cast(load(h[0 :+ 16]), f32)
  z = cast(load(b[0 :+ 16]), f32)
  store(f[0 :+ 16], x * z)
  store(yh[0 :+ 16], cast(x + z, f16))
}"""
    h = rand(16, dtype=np.float16)
    b = rand(16).astype(ml_dtypes.bfloat16)
    x, z = h.astype(np.float32), b.astype(np.float32)
    check(src, [h, b, np.zeros(16, np.float16), np.zeros(16, np.float32)],
          {3: x * z, 2: (x + z).astype(np.float16)}, exact=True)


# ------------------------------------------------------------------ control flow

def test_for_with_carried_scalars_and_tiles_and_runtime_bounds():
    src = """kernel k(x: f32[N, 8], y: f32[8], c: i64[2], lo: int, hi: int, st: int) {
  acc = zeros(f32, [8])
  count = 0
  total = 0.0
  for i in range(lo, hi, st) {
    acc = acc + load(x[i, 0 :+ 8])
    count += 1
    total = total + 0.5
  }
  for j in range(hi, lo) { count = count + 1000 }
  store(y[0 :+ 8], acc * total)
  store(c[0], count)
  store(c[1], cast(total * 4.0, i64))
}"""
    x = rand(11, 8)
    for lo, hi, st in ((0, 11, 1), (1, 10, 3), (4, 4, 1), (2, 11, 4)):
        rows = list(range(lo, hi, st))
        total = 0.5 * len(rows)
        acc = x[rows].sum(0) if rows else np.zeros(8, np.float32)
        check(src, [x, np.zeros(8, np.float32), np.zeros(2, np.int64), lo, hi, st],
              {1: (acc * np.float32(total)).astype(np.float32),
               2: np.array([len(rows), int(total * 4)], np.int64)}, rtol=1e-6)


def test_nested_loops_carry_values_through_both_levels():
    src = """kernel k(x: f32[R, C], y: f32[1]) {
  s = 0.0
  for i in range(0, R) {
    row = 0.0
    for j in range(0, C, 2) { row = row + load(x[i, j]) }
    s = s + row * cast(i + 1, f32)
  }
  store(y[0], s)
}"""
    x = rand(5, 7)
    want = sum((i + 1) * x[i, ::2].astype(np.float64).sum() for i in range(5))
    check(src, [x, np.zeros(1, np.float32)], {1: np.array([want], np.float32)}, rtol=1e-5)


def test_dynamic_if_elif_else_and_static_if():
    src = """kernel k[NEG: bool = false](x: f32[N], y: f32[N], mode: int) {
  a = load(x[0 :+ 8])
  if mode == 0 { a = a + 1.0 } elif mode == 1 { a = a * 3.0 } else { a = zeros(f32, [8]) }
  if NEG { a = -a }
  store(y[0 :+ 8], a)
}"""
    x = rand(8)
    for neg in (False, True):
        k = compile(src, NEG=neg)
        ifs = [op for op in walk(k.ir.body.ops) if op.opcode == "if"]
        assert len(ifs) == 2  # the static if leaves no op; elif nests inside else
        for mode, want in ((0, x + 1), (1, x * 3), (7, np.zeros(8, np.float32))):
            check(k, [x, np.zeros(8, np.float32), mode],
                  {1: (-want if neg else want).astype(np.float32)}, exact=True)


def test_static_range_unrolls_at_compile_time():
    src = """kernel k[U: int = 4](x: f32[N], y: f32[N]) {
  acc = zeros(f32, [4])
  for u in static_range(0, U) {
    acc = acc + load(x[u * 4 :+ 4]) * (u + 1)
  }
  store(y[0 :+ 4], acc)
}"""
    x = rand(16)
    k = check(src, [x, np.zeros(16, np.float32)],
              {1: np.concatenate([sum(x[u * 4:u * 4 + 4] * (u + 1) for u in range(4)),
                                  np.zeros(12, np.float32)]).astype(np.float32)}, rtol=1e-6)
    assert not any(op.opcode == "for" for op in walk(k.ir.body.ops))
    assert sum(op.opcode == "load" for op in walk(k.ir.body.ops)) == 4


def test_funcs_are_inlined_with_tiles_scalars_and_nesting():
    src = """func square(v) { return v * v }
func axpy(a, x, y) {
  t = a * x
  return square(t) + y
}
func clamp(v, lo, hi) { return min(max(v, lo), hi) }
kernel k(x: f32[N], y: f32[N], o: f32[N]) {
  a = load(x[0 :+ 8])
  b = load(y[0 :+ 8])
  store(o[0 :+ 8], clamp(axpy(2.0, a, b), -1.0, 3.0) + square(3))
}"""
    x, y = rand(8), rand(8)
    want = np.clip((2 * x) ** 2 + y, -1, 3) + 9
    k = check(src, [x, y, np.zeros(8, np.float32)], {2: want.astype(np.float32)}, exact=True)
    assert "square" not in k.text("ir")


@pytest.mark.parametrize("flag, want", [(True, 11.0), (False, 2.0)])
def test_a_return_ends_the_taken_compile_time_branch(flag, want):
    """`return` as the last statement of a compile-time if's branch returns from the func
    (the statements after the if are not lowered); inside a run-time if it is an error."""
    src = f"""func f(x) {{
  if A {{
    x = x + 1.0
    if A {{ return x + 10.0 }}
    return x
  }}
  return x + 2.0
}}
kernel k[A: bool = {str(flag).lower()}](y: f32[N]) {{
  store(y[0 :+ 4], f(zeros(f32, [4])))
}}"""
    check(src, [np.zeros(4, np.float32)], {0: np.full(4, want, np.float32)}, exact=True)
    bad = """func f(x, c) {
  if c > 0 { return x }
  return x + 1.0
}
kernel k(y: f32[N], c: int) { store(y[0 :+ 4], f(zeros(f32, [4]), c)) }"""
    with pytest.raises(DSLTypeError, match="return inside a run-time if"):
        compile(bad)


def test_imports_between_lbk_files(tmp_path):
    (tmp_path / "act.lbk").write_text("func silu(v) { return v * sigmoid(v) }\n")
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "scale.lbk").write_text(
        'import "../act.lbk"\nfunc scaled_silu(v, s) { return silu(v) * s }\n')
    main = tmp_path / "main.lbk"
    main.write_text('import "lib/scale.lbk"\nimport "act.lbk"\n'
                    "kernel k(x: f32[N], y: f32[N]) {\n"
                    "  store(y[0 :+ 8], scaled_silu(load(x[0 :+ 8]), 2.0) + silu(1.0 + "
                    "zeros(f32, [8])))\n}\n")
    x = rand(8).astype(np.float64)
    silu = lambda v: v / (1 + np.exp(-v))  # noqa: E731
    want = (silu(x) * 2 + silu(1.0)).astype(np.float32)
    check(compile(main), [x.astype(np.float32), np.zeros(8, np.float32)], {1: want},
          rtol=1e-6)


def test_grid_in_three_dims_with_block_ids_and_scalar_params():
    src = """kernel k(y: f32[X, Y, Z], scale: f32, off: int) grid (X, Y, Z) threads 4 {
  v = cast(block.x * 100 + block.y * 10 + block.z + off, f32) * scale
  store(y[block.x, block.y, block.z], v)
}"""
    x, yy, z = np.meshgrid(np.arange(2), np.arange(3), np.arange(4), indexing="ij")
    want = ((x * 100 + yy * 10 + z + 5) * 0.5).astype(np.float32)
    k = check(src, [np.zeros((2, 3, 4), np.float32), 0.5, 5], {0: want}, exact=True)
    assert k.ir.threads == 4


def test_compile_time_format_parameter_and_codebook_object():
    cb = lowbitc.codebook([-2.0, -0.5, 0.0, 0.25, 1.0, 4.0, 8.0, 9.5], name="sem_cb8")
    src = """kernel k[W: dtype = u4](q: W[N, K], y: f32[N, K]) {
  store(y[0 :+ 2, 0 :+ 10], cast(load(q[0 :+ 2, 0 :+ 10]), f32))
}"""
    codes = RNG.integers(0, 8, (2, 10)).astype(np.uint8)
    check(compile(src, W=cb), [pack(codes, 3), np.zeros((2, 10), np.float32)],
          {1: cb.decode(codes).astype(np.float32)}, exact=True)


def test_odd_shapes_one_row_one_column_and_tiles_larger_than_tensors():
    src = """kernel k[B: int](x: f32[M, N], y: f32[M, N]) grid (cdiv(M, B), cdiv(N, B)) {
  i = block.x * B
  j = block.y * B
  store(y[i :+ B, j :+ B], sqrt(abs(load(x[i :+ B, j :+ B]))))
}"""
    for b in (1, 3, 16):
        k = compile(src, B=b)
        for m, n in ((1, 1), (1, 13), (13, 1), (7, 5)):
            x = rand(m, n)
            check(k, [x, np.zeros((m, n), np.float32)], {1: np.sqrt(np.abs(x))}, exact=True)


@pytest.mark.parametrize("n", [16, 48])
def test_row_reductions_of_whole_vectors(n):
    """max, min and sum along rows of a multiple of 16 f32 (the LLVM backend's vector tree):
    the same as numpy, including rows whose extreme is in the last lane or is -3e38."""
    src = f"""kernel k(x: f32[3, {n}], y: f32[3, 3]) {{
  a = load(x[0 :+ 3, 0 :+ {n}])
  store(y[0, 0 :+ 3], max(a, axis=1))
  store(y[1, 0 :+ 3], min(a, axis=1))
  store(y[2, 0 :+ 3], sum(a, axis=1))
}}"""
    x = np.random.default_rng(n).uniform(-2.0, 2.0, (3, n)).astype(np.float32)  # (own stream)
    x[0, -1] = 9.0
    x[1, :] = -3.0e38
    x[2, n // 2] = -7.0
    want = np.stack([x.max(1), x.min(1), x.astype(np.float64).sum(1)]).astype(np.float32)
    check(src, [x, np.zeros((3, 3), np.float32)], {1: want}, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n", [16, 64])
def test_row_sums_of_i32_whole_vectors(n):
    """i32 sums along rows of a multiple of 16 (the vector tree: no gathers across rows),
    of int8 codes widened as quantize_a8 does, equal numpy's exactly."""
    src = f"""kernel k(x: i8[5, {n}], y: i32[5]) {{
  store(y[0 :+ 5], sum(cast(load(x[0 :+ 5, 0 :+ {n}]), i32), axis=1))
}}"""
    x = np.random.default_rng(n).integers(-128, 128, (5, n)).astype(np.int8)
    x[1, :] = -128
    x[2, -1] = 127
    want = x.astype(np.int32).sum(1, dtype=np.int32)
    check(src, [x, np.zeros(5, np.int32)], {1: want}, exact=True)


def test_bf16_arithmetic_reductions_and_dot_compute_in_f32_and_round():
    # bf16 values are held as their bits in the LLVM backend; every op goes through f32
    src = """kernel k(a: bf16[4, 8], b: bf16[8, 4], s: bf16[4], y: bf16[4, 4], m: f32[4, 4]) {
  x = load(a[0 :+ 4, 0 :+ 8])
  w = load(b[0 :+ 8, 0 :+ 4])
  store(s[0 :+ 4], sum(x + x, axis=1))
  store(y[0 :+ 4, 0 :+ 4], dot(x, w, zeros(bf16, [4, 4])))
  store(m[0 :+ 4, 0 :+ 4], dot(cast(x, f32), cast(w, f32)))
}"""
    k = compile(src)
    a = rand(4, 8).astype(ml_dtypes.bfloat16)
    b = rand(8, 4).astype(ml_dtypes.bfloat16)
    outs = []
    for runner in (k, k.interpret):
        s, y = np.zeros(4, ml_dtypes.bfloat16), np.zeros((4, 4), ml_dtypes.bfloat16)
        m = np.zeros((4, 4), np.float32)
        runner(a, b, s, y, m)
        outs.append((s.astype(np.float32), y.astype(np.float32), m))
    af, bf = a.astype(np.float64), b.astype(np.float64)
    for s, y, m in outs:
        np.testing.assert_allclose(s, (2 * af).sum(1), rtol=2e-2)
        np.testing.assert_allclose(y, af @ bf, rtol=3e-2, atol=3e-2)
        np.testing.assert_allclose(m, af @ bf, rtol=1e-5, atol=1e-5)
