"""Narrow column loads of one tensor read as one row window (backends/llvm/column_merge.py):
loads of the same rows whose column starts differ by constants (a block header's fields)
read each row's span once and take their columns by a shuffle. Against numpy and the
interpreter, with rows past the tensor's end (N not a multiple of BN), a window whose span
runs past the last column (those columns read 0), two-byte fields viewed as f16, i16
elements, and the loads that must not merge: masked, a store between, different rows."""

import numpy as np
import pytest

from lowbitc.compiler import compile
from lowbitc.interp import run

MERGED = "one row window for"

# per block b of H bytes a row: d (f16, bytes 0-1), s[j] (byte 2 + j), and the high nibble of
# byte 5 + j, the last block's byte 5 + j past the row's end when HB = KB * H - 1 (reads 0)
# MODE 0: merged; 1: a store between the loads (not merged); 2: the s[j] load masked (the
# others merged); 3: one load of other rows (n0 + 1: not merged with the rest)
KERNEL = """
kernel hdr[BN: int = 16, H: int = 6, MODE: int = 0, J: int = 0](
    h: u8[N, HB], y: f32[N, KB], z: u8[N, 1])
  grid (cdiv(N, BN))
{
  n0 = block.x * BN
  for b in range(0, KB, 1) {
    o = b * H
    d = cast(view(load(h[n0 :+ BN, o :+ 2]), f16), f32)
    if MODE == 1 { store(z[n0 :+ BN, 0 :+ 1], load(h[n0 :+ BN, o + 3 :+ 1])) }
    if MODE == 2 {
      s = cast(load(h[n0 :+ BN, o + 2 + J :+ 1], mask=reshape(arange(BN) % 2 == 0, [BN, 1])), f32)
    } else {
      s = cast(load(h[n0 :+ BN, o + 2 + J :+ 1]), f32)
    }
    if MODE == 3 {
      t = cast(load(h[n0 + 1 :+ BN, o + 5 + J :+ 1]) >> 4, f32)
    } else {
      t = cast(load(h[n0 :+ BN, o + 5 + J :+ 1]) >> 4, f32)
    }
    store(y[n0 :+ BN, b :+ 1], d * s - t)
  }
}
"""

WIDE = """
kernel wide[BN: int = 16](h: i16[N, C], y: i16[N, 1]) grid (cdiv(N, BN)) {
  n0 = block.x * BN
  a = load(h[n0 :+ BN, 1 :+ 1])
  b = load(h[n0 :+ BN, 3 :+ 2])
  store(y[n0 :+ BN, 0 :+ 1], a * 3 + reshape(sum(b, 1), [BN, 1]))
}
"""


def _blocks(n: int, kb: int, hsize: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    h = rng.integers(0, 256, (n, kb * hsize), dtype=np.uint8)
    h.reshape(n, kb, hsize)[:, :, :2] = rng.uniform(0.5, 2, (n, kb, 1)).astype(
        np.float16).view(np.uint8)
    return np.ascontiguousarray(h[:, : kb * hsize - 1])  # the last block's last byte past the end


def _reference(h: np.ndarray, kb: int, hsize: int, mode: int, j: int) -> np.ndarray:
    n = h.shape[0]
    full = np.zeros((n + 1, kb * hsize), np.uint8)  # (a row and a byte past the end read 0)
    full[:n, : h.shape[1]] = h
    blocks = full.reshape(n + 1, kb, hsize)
    d = blocks[:n, :, :2].copy().view(np.float16)[..., 0].astype(np.float64)
    s = blocks[:n, :, 2 + j].astype(np.float64)
    if mode == 2:
        s[(np.arange(n) % 16) % 2 == 1] = 0
    t = (blocks[1:, :, 5 + j] if mode == 3 else blocks[:n, :, 5 + j]) >> 4
    return d * s - t


@pytest.mark.parametrize("mode", [0, 1, 2, 3])
@pytest.mark.parametrize("n", [40, 32])
def test_header_columns_match_numpy_and_the_interpreter(mode, n):
    kb, hsize, j = 3, 6, 0
    h = _blocks(n, kb, hsize)
    k = compile(KERNEL, MODE=mode, H=hsize, J=j)
    y = np.zeros((n, kb), np.float32)
    k(h, y, np.zeros((n, 1), np.uint8))
    want = _reference(h, kb, hsize, mode, j)
    np.testing.assert_allclose(y, want, rtol=1e-6)
    iy = np.zeros_like(y)
    run(k.ir, h, iy, np.zeros((n, 1), np.uint8))
    np.testing.assert_array_equal(y, iy)
    lines = [ln for ln in k.explain().splitlines() if "load h" in ln]
    merged = [ln for ln in lines if MERGED in ln]
    # MODE 0: d and the two byte columns; 1: the store splits them in two windows (d and the
    # stored column before it, s and t after); 2: the masked one stays out; 3: the other rows'
    # load stays out (d and s still share a window)
    assert len(merged) == {0: 3, 1: 4, 2: 2, 3: 2}[mode], lines
    size = 3 if mode == 0 else 2
    assert all(f"{MERGED} {size} column loads" in ln for ln in merged), merged


def test_windows_wider_than_a_vector_are_not_merged():
    """Columns o and o + 70 of a byte tensor span more than 64 bytes: t stays out."""
    k = compile(KERNEL.replace("o + 5 + J", "o + 70 + J"), H=6, J=0)
    assert sum(MERGED in ln for ln in k.explain().splitlines()) == 2  # d and s only


def test_two_byte_elements():
    rng = np.random.default_rng(1)
    for n in (16, 21):
        h = rng.integers(-300, 300, (n, 5), dtype=np.int16)
        k = compile(WIDE)
        y = np.zeros((n, 1), np.int16)
        k(h, y)
        want = h[:, 1:2] * 3 + h[:, 3:4] + h[:, 4:5]
        np.testing.assert_array_equal(y, want)
        iy = np.zeros_like(y)
        run(k.ir, h, iy)
        np.testing.assert_array_equal(y, iy)
        assert sum(MERGED in ln for ln in k.explain().splitlines()) == 2
