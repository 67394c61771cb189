"""The LLVM backend's fused paths beyond the transposed 2-D weight tile: 2-D windows of
higher-rank packed tensors (backends/llvm/fused_view.py), dots over untransposed codes
(backends/llvm/axpy.py) and exp of f32 vectors in registers (backends/llvm/vexp.py)."""

import numpy as np
import pytest

import lowbitc
from lowbitc.compiler import compile
from lowbitc.packing import pack

SCORES = """
kernel scores[W: dtype = u4, D: int = 64](x: f32[1, D], k: W[T, H, D], s: f32[H, D], y: f32[H, T])
  grid (H, cdiv(T, 32))
{
  h = block.x
  t = block.y * 32
  c = cast(load(k[t :+ 32, h, :]), f32)
  store(y[h :+ 1, t :+ 32], dot(load(x[0 :+ 1, :]) * reshape(load(s[h, :]), [1, D]),
                               transpose(c)))
}
"""

WEIGHTED = """
kernel weighted[W: dtype = u4, D: int = 96](p: f32[H, T], v: W[T, H, D], y: f32[H, D])
  grid (H)
{
  h = block.x
  acc = zeros(f32, [1, D])
  for t in range(0, T, 16) {
    acc = acc + dot(load(p[h :+ 1, t :+ 16]), cast(load(v[t :+ 16, h, :]), f32) - 1.0)
  }
  store(y[h :+ 1, :], acc)
}
"""

GEMV_KN = """
kernel gemv_kn[W: dtype = u4](x: f32[2, K], w: W[K, N], y: f32[2, N])
  grid (cdiv(N, 128))
{
  n = block.x * 128
  acc = zeros(f32, [2, 128])
  for k in range(0, K, 32) {
    acc = dot(load(x[:, k :+ 32]), cast(load(w[k :+ 32, n :+ 128]), f32) * 0.5 - 3.0, acc)
  }
  store(y[:, n :+ 128], acc)
}
"""

EXP = """
kernel vexp(x: f32[N], y: f32[N])
  grid (cdiv(N, 64))
{
  i = block.x * 64
  store(y[i :+ 64], exp(load(x[i :+ 64])))
}
"""


def _codes(rng, fmt: str, shape) -> tuple[np.ndarray, np.ndarray]:
    bits = lowbitc.dtype(fmt).bits
    codes = rng.integers(0, 2 ** bits, shape).astype(np.uint8)
    words = pack(codes.reshape(-1, shape[-1]), bits)
    return codes.astype(np.float32), words.reshape(*shape[:-1], -1)


# 64 codes of 3 or 4 bits: the 32-code steps; whole 512-bit rows of 2, 4 bits: the lanes form
@pytest.mark.parametrize("fmt,d", [("u4", 64), ("u3", 64), ("u4", 128), ("u2", 256)])
def test_a_window_of_3d_pages_takes_the_fused_dot(fmt, d):
    rng = np.random.default_rng(1)
    t, h = 96, 3
    codes, words = _codes(rng, fmt, (t, h, d))
    x = rng.standard_normal((1, d)).astype(np.float32)
    s = rng.standard_normal((h, d)).astype(np.float32)
    k = compile(SCORES, W=fmt, D=d)
    y = np.zeros((h, t), np.float32)
    k(x, words, s, y)
    want = np.einsum("d,hd,thd->ht", x[0], s, codes)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-4)
    assert "fused" in k.text("llvm")  # the register dot's label: the fast path was emitted


# rows of 384 bits take the 32-code steps; whole 512-bit rows of 2 or 4 bits the lanes form
@pytest.mark.parametrize("fmt,d", [("u4", 96), ("u2", 96), ("u5", 96), ("u4", 128),
                                   ("u4", 256), ("u2", 256)])
def test_untransposed_codes_take_the_axpy_dot(fmt, d):
    rng = np.random.default_rng(2)
    t, h = 48, 2
    codes, words = _codes(rng, fmt, (t, h, d))
    p = rng.random((h, t)).astype(np.float32)
    k = compile(WEIGHTED, W=fmt, D=d)
    y = np.zeros((h, d), np.float32)
    k(p, words, y)
    np.testing.assert_allclose(y, np.einsum("ht,thd->hd", p, codes - 1.0), rtol=1e-5,
                               atol=1e-4)
    assert "axpy" in k.text("llvm")


def test_axpy_dot_of_a_2d_weight_with_edge_windows():
    rng = np.random.default_rng(3)
    kk, n = 64, 320  # the last block's window runs past N: the generic dot takes it
    codes, words = _codes(rng, "u4", (kk, n))
    x = rng.standard_normal((2, kk)).astype(np.float32)
    k = compile(GEMV_KN, W="u4")
    y = np.zeros((2, n), np.float32)
    k(x, words, y)
    np.testing.assert_allclose(y, x @ (codes * 0.5 - 3.0), rtol=1e-5, atol=1e-4)
    assert "axpy" in k.text("llvm")


def test_vector_exp_is_within_2_ulp_and_keeps_the_edges():
    x = np.linspace(-87.3, 88.7, 64 * 3000, dtype=np.float32)
    k = compile(EXP)
    y = np.empty_like(x)
    k(x, y)
    ref = np.exp(x.astype(np.float64))
    ulp = np.abs(y - ref) / np.spacing(ref.astype(np.float32))
    assert ulp.max() <= 2.0, ulp.max()
    edges = np.array([-3.0e38, -np.inf, -100.0, 0.0, -0.0, 100.0, np.inf, np.nan] * 8,
                     np.float32)
    y = np.empty_like(edges)
    k(edges, y)
    with np.errstate(over="ignore"):
        want = np.exp(edges).astype(np.float32)
    want[2] = want[10] = 0.0  # e^-100 is subnormal in expf; 0 here (documented)
    np.testing.assert_array_equal(y, np.where(np.arange(64) % 8 == 2, 0.0, want))


COLUMN = """
kernel column(x: f32[H, T, C], y: f32[H, 8])
  grid (H)
{
  h = block.x
  store(y[h :+ 1, :], reshape(load(x[h, 4 :+ 8, 0 :+ 1]), [1, 8]))
}
"""


@pytest.mark.parametrize("c", [1, 3])
def test_a_window_of_whole_rows_and_of_strided_rows_loads_the_same(c):
    # c = 1: the 8 rows lie back to back (one copy); c = 3: a copy per row
    x = np.random.default_rng(4).standard_normal((3, 16, c)).astype(np.float32)
    y = np.zeros((3, 8), np.float32)
    compile(COLUMN)(x, y)
    np.testing.assert_array_equal(y, x[:, 4:12, 0])
