"""Per-group scales inside the LLVM backend's fused dequantization: a tree that regroups the
codes' rows (`reshape(c, [N, K / g, g])`, a scale and zero point per g codes, and back) fuses
into the transposed dot, the untransposed (axpy) dot and the dequantize-to-memory store, its
leaves read per 32-code step (backends/llvm/fused_leaves.py); with AVX-512 and a scale that
is the same for the codes of each word, the axpy dot keeps its lanes form and folds the scales
into the weights."""

import numpy as np
import pytest

import lowbitc
from lowbitc.backends.llvm import decode
from lowbitc.compiler import compile
from lowbitc.packing import pack

GROUPED_AXPY = """
kernel grouped_axpy[W: dtype = u4, D: int = 128, GV: int = 32, R: int = 1](p: f32[HR, T],
    v: W[T, H, D], s: f32[H, T, NG], z: f32[H, T, NG], y: f32[HR, D])
  grid (H)
{
  h = block.x
  acc = zeros(f32, [R, D])
  for t in range(0, T, 16) {
    c = reshape(cast(load(v[t :+ 16, h, :]), f32), [16, D / GV, GV])
    zs = reshape(load(z[h, t :+ 16, 0 :+ D / GV]), [16, D / GV, 1])
    e = (c - zs) * reshape(load(s[h, t :+ 16, 0 :+ D / GV]), [16, D / GV, 1])
    acc = acc + dot(load(p[h * R :+ R, t :+ 16]), reshape(e, [16, D]))
  }
  store(y[h * R :+ R, :], acc)
}
"""

GROUPED_GEMV = """
kernel grouped_gemv[W: dtype = u4, K: int = 128, G: int = 32](x: f32[2, K], w: W[N, K],
    s: f32[N, NG], y: f32[2, N])
  grid (cdiv(N, 16))
{
  n = block.x * 16
  c = reshape(cast(load(w[n :+ 16, :]), f32) - 8.0, [16, K / G, G])
  e = reshape(c * reshape(load(s[n :+ 16, 0 :+ K / G]), [16, K / G, 1]), [16, K])
  store(y[:, n :+ 16], dot(load(x[:, :]), transpose(e)))
}
"""

GROUPED_STORE = """
kernel grouped_store[W: dtype = u4, K: int = 128, G: int = 32](w: W[N, K], s: f32[N, NG],
    y: f32[N, K])
  grid (cdiv(N, 8))
{
  n = block.x * 8
  c = reshape(cast(load(w[n :+ 8, :]), f32), [8, K / G, G])
  store(y[n :+ 8, :], reshape(c * reshape(load(s[n :+ 8, 0 :+ K / G]), [8, K / G, 1]), [8, K]))
}
"""


def _codes(rng, fmt: str, shape) -> tuple[np.ndarray, np.ndarray]:
    bits = lowbitc.dtype(fmt).bits
    codes = rng.integers(0, 2 ** bits, shape).astype(np.uint8)
    words = pack(codes.reshape(-1, shape[-1]), bits)
    return codes.astype(np.float32), words.reshape(*shape[:-1], -1)


# u4 x 128 / u2 x 256: whole 512-bit rows, groups of whole words: the lanes form; groups of 4
# u4 codes split a word and 96 codes are no whole register: 32-code steps (with groups of 16,
# 32 and 96 read as a short load and a shuffle, a splat and a splat; groups of 24 straddle
# the 32-code steps: lane by lane)
# (two rows of weights: every accumulator and word-lane sum of the lanes form in registers)
@pytest.mark.parametrize("fmt,d,g,lanes,rows", [
    ("u4", 128, 32, True, 1), ("u4", 128, 8, True, 1), ("u2", 256, 64, True, 1),
    ("u4", 128, 4, False, 1), ("u3", 96, 16, False, 1), ("u4", 96, 32, False, 1),
    ("u5", 96, 96, False, 1), ("u4", 96, 24, False, 1), ("u4", 128, 32, True, 2),
    ("u2", 128, 16, False, 2), ("u3", 96, 16, False, 2)])
def test_grouped_values_fuse_into_the_axpy_dot(fmt, d, g, lanes, rows):
    rng = np.random.default_rng(4)
    t, h = 48, 2
    codes, words = _codes(rng, fmt, (t, h, d))
    p = rng.random((h * rows, t)).astype(np.float32)
    s = rng.random((h, t, d // g)).astype(np.float32) + 0.5
    z = rng.random((h, t, d // g)).astype(np.float32) * 4
    k = compile(GROUPED_AXPY, W=fmt, D=d, GV=g, R=rows)
    y = np.zeros((h * rows, d), np.float32)
    k(p, words, s, z, y)
    e = (codes.reshape(t, h, d // g, g) - z.transpose(1, 0, 2)[..., None]) \
        * s.transpose(1, 0, 2)[..., None]
    want = np.einsum("hrt,thd->hrd", p.reshape(h, rows, t), e.reshape(t, h, d))
    want = want.reshape(h * rows, d)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-4)
    notes = k.explain()
    assert "FALLBACK" not in notes
    assert ("lanes form" in notes) == (lanes and decode.permutes()), notes  # AVX-512 only
    assert "fused untransposed dot" in notes


@pytest.mark.parametrize("fmt,kk,g", [("u4", 128, 32), ("u4", 128, 16), ("u3", 192, 64)])
def test_grouped_weights_fuse_into_the_transposed_dot(fmt, kk, g):
    rng = np.random.default_rng(5)
    n = 40  # the last block runs past N: its window takes the generic dot
    codes, words = _codes(rng, fmt, (n, kk))
    x = rng.standard_normal((2, kk)).astype(np.float32)
    s = rng.random((n, kk // g)).astype(np.float32)
    k = compile(GROUPED_GEMV, W=fmt, K=kk, G=g)
    y = np.zeros((2, n), np.float32)
    k(x, words, s, y)
    e = ((codes - 8.0).reshape(n, kk // g, g) * s[..., None]).reshape(n, kk)
    np.testing.assert_allclose(y, x @ e.T, rtol=1e-5, atol=1e-4)
    notes = k.explain()
    assert "FALLBACK" not in notes and "fused register dot" in notes, notes


def test_grouped_dequantize_stores_from_registers():
    rng = np.random.default_rng(6)
    n, kk, g = 24, 128, 32
    codes, words = _codes(rng, "u4", (n, kk))
    s = rng.random((n, kk // g)).astype(np.float32)
    k = compile(GROUPED_STORE, W="u4", K=kk, G=g)
    y = np.zeros((n, kk), np.float32)
    k(words, s, y)
    np.testing.assert_array_equal(y, (codes.reshape(n, kk // g, g) * s[..., None]).reshape(n, kk))
    assert "fused dequantize-to-memory" in k.explain()

