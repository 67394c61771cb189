"""The fused register dot's row scale (backends/llvm/row_scale.py): a weight
E = core * S + T with S, T f32 leaves constant along K (a row's scale and offset, or scalars)
sums core * a, scales each row's sum once per window and adds T times the activations' sum;
a scale constant along each step of 32 codes but not the window (a step scale) scales each
step's sum, with one or two rows of `a`; and `lut` over a contiguous tile (a row's 8-bit
scale code looked up in a 256-entry code book) read by vector gathers. Each against the
reference interpreter and numpy, with explain saying which form ran."""

import numpy as np
import pytest

import lowbitc
from lowbitc.backends.llvm import target
from lowbitc.compiler import compile
from lowbitc.interp import run

# E = decode(codes) * S; S per row and per K step of 64 (loaded, or looked up in a code book
# Q from 8-bit codes), or a scalar parameter; MODE 3: S per 32 columns (varies along K);
# MODES 4-6: E = core * S +- T with T per row or scalar; MODE 7: T - core * S (not fused so)
ROW_SCALE = """
kernel scaled[MODE: int = 0, Q: dtype = u8, BM: int = 1](
    x: f32[M, K], w: u8[N, KH], s: f32[N, KB], sq: Q[N, KB], c: f32[N, KB2], t: f32,
    y: f32[M, N]) grid (cdiv(N, 16))
{
  n0 = block.x * 16
  acc = zeros(f32, [BM, 16])
  for kb in range(0, KB, 1) {
    a = load(x[0 :+ BM, kb * 64 :+ 64])
    b = load(w[n0 :+ 16, kb * 32 :+ 32])
    q = cast(view((b << 4) | (b >> 4), nf4), f32)
    if MODE == 0 { e = q * load(s[n0 :+ 16, kb :+ 1]) }
    if MODE == 1 { e = (cast(load(sq[n0 :+ 16, kb :+ 1]), f32) + 0.25) * q }
    if MODE == 2 { e = q * t }
    if MODE == 4 { e = q * load(s[n0 :+ 16, kb :+ 1]) - load(c[n0 :+ 16, kb :+ 1]) }
    if MODE == 5 { e = load(c[n0 :+ 16, kb :+ 1]) + t * q }
    if MODE == 6 { e = load(s[n0 :+ 16, kb :+ 1]) * q + t }
    if MODE == 7 { e = load(c[n0 :+ 16, kb :+ 1]) - q * t }
    if MODE == 3 {
      e = reshape(reshape(q, [16, 2, 32]) * reshape(load(c[n0 :+ 16, 2 * kb :+ 2]),
                                                   [16, 2, 1]), [16, 64])
    }
    acc = dot(a, transpose(e), acc)
  }
  store(y[0 :+ BM, n0 :+ 16], acc)
}
"""

BOOK = lowbitc.codebook(np.linspace(-1, 1, 256).astype(np.float32), name="row_scale_book")


def _case(mode: int, m: int, n: int = 48, k: int = 256, seed: int = 0):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 16, (n, k)).astype(np.uint8)
    stored = ((codes[:, 0::2] << 4) | codes[:, 1::2]).astype(np.uint8)  # first code high
    s = rng.uniform(0.5, 2, (n, k // 64)).astype(np.float32)
    sq = rng.integers(0, 256, (n, k // 64)).astype(np.uint8)
    c = rng.uniform(0.5, 2, (n, k // 32)).astype(np.float32)
    t = np.float32(1.75)
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = lowbitc.dtype("nf4").decode(codes).astype(np.float64)
    scale = {0: np.repeat(s, 64, 1), 1: np.repeat(BOOK.decode(sq) + 0.25, 64, 1),
             2: np.full((n, k), t), 3: np.repeat(c, 32, 1), 4: np.repeat(s, 64, 1),
             5: np.full((n, k), t), 6: np.repeat(s, 64, 1), 7: np.full((n, k), -t)}.get(mode)
    offset = {4: -np.repeat(c[:, : k // 64], 64, 1), 5: np.repeat(c[:, : k // 64], 64, 1),
              6: np.full((n, k), t), 7: np.repeat(c[:, : k // 64], 64, 1)}.get(mode, 0.0)
    ref = x.astype(np.float64) @ (w * scale + offset).T
    words = lowbitc.pack(sq, 8)
    return [x, stored, s, words, c, t], ref


@pytest.mark.parametrize("mode,m", [(0, 1), (1, 1), (2, 1), (3, 1), (3, 2), (3, 3), (0, 3),
                                    (1, 2), (4, 1), (4, 3), (5, 1), (6, 2), (7, 1)])
def test_row_scaled_dot_matches_the_interpreter_and_numpy(mode, m):
    args, ref = _case(mode, m)
    y = np.zeros(ref.shape, np.float32)
    kern = compile(ROW_SCALE, MODE=mode, Q=BOOK, BM=m)
    kern(*args, y)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)
    interp = np.zeros_like(y)
    run(kern.ir, *args, interp)
    np.testing.assert_allclose(y, interp, rtol=1e-4, atol=1e-4)
    text = kern.explain()
    assert "fused register dot" in text
    # a scale per row (loaded, looked up or a scalar) is applied to the row's sums; one that
    # varies along K (MODE 3) is not a row scale: constant along each step of 32 codes, it
    # scales each step's sum (one or two rows of a), else the weights one by one
    assert ("each row's sum scaled once by its row scale" in text) == (mode not in (3, 7))
    assert ("each step's sum scaled once by its step scale" in text) == (mode == 3 and m <= 2)
    # E = core * S + T: T times the sum of the activations (T - core * S is not that form)
    assert ("row offset times the activations' sum" in text) == (mode in (4, 5, 6))


def test_row_scale_edges_take_the_generic_dot():
    """N not a multiple of the tile: the last tile's window leaves the tensor (generic dot)."""
    args, ref = _case(1, 1, n=40)
    y = np.zeros(ref.shape, np.float32)
    compile(ROW_SCALE, MODE=1, Q=BOOK)(*args, y)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)


LUT_TILE = """
kernel lut_tile[Q: dtype](c: Q[N, KB], y: f32[N, KB]) grid (cdiv(N, 16)) {
  n0 = block.x * 16
  for kb in range(0, KB, 1) {
    store(y[n0 :+ 16, kb :+ 1], cast(load(c[n0 :+ 16, kb :+ 1]), f32) * 2.0)
  }
}
"""


@pytest.mark.parametrize("gathers", [True, False])
@pytest.mark.parametrize("n", [32, 40])
def test_lut_of_a_tile_reads_every_code(n, gathers, monkeypatch):
    """Every one of the 256 codes of a [16, 1] tile's lookup (vector gathers, or a load per
    element where the host's gathers are slow: target.lut_gathers), and the edge tile
    (masked load, element-wise lookup)."""
    monkeypatch.setattr(target, "LUT_GATHERS", gathers)
    monkeypatch.setenv("LOWBITC_NO_CACHE", "1")  # (the flag is not part of the cache key)
    codes = (np.arange(n * 8) % 256).astype(np.uint8).reshape(n, 8)
    codes[: n // 2] = codes[: n // 2, ::-1]
    y = np.zeros((n, 8), np.float32)
    kern = compile(LUT_TILE, Q=BOOK)
    assert ("llvm.masked.gather" in kern.text("llvm")) == gathers
    kern(lowbitc.pack(codes, 8), y)
    np.testing.assert_array_equal(y, BOOK.decode(codes) * 2)
