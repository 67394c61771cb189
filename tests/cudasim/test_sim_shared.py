"""Shared tiles in the numba-cuda backend, run in Numba's CUDA simulator against the reference
interpreter: staged copies through swizzled shared memory, re-reads after stores, format codes
in shared memory, a K loop that refills one shared tile per iteration between syncs; and casts
to formats stored into packed tensors whose words several threads and blocks share.

Run only in a process with NUMBA_ENABLE_CUDASIM=1 (tests/test_cuda_shared.py starts one).
"""

import os

import numpy as np
import pytest

import lowbitc

pytestmark = pytest.mark.cudasim
assert os.environ.get("NUMBA_ENABLE_CUDASIM") == "1", "run through tests/test_cuda_shared.py"

STAGED = """
kernel staged[BM: int = 4, BK: int = 8](x: f32[M, K], y: f32[M, K])
  threads 32 grid (cdiv(M, BM), cdiv(K, BK))
{
  s = shared(f32, [BM, BK], layout=swizzle(1, 1, 2))
  copy(s, x[block.x * BM :+ BM, block.y * BK :+ BK])
  sync()
  t = load(s[1 :+ 2, :])
  sync()
  store(s[0 :+ 2, :], t * 2.0)          # overwrites what t read: t is kept, not re-read
  sync()
  copy(y[block.x * BM :+ BM, block.y * BK :+ BK], s)
}
"""

CODES = """
kernel codes[W: dtype = u3](w: W[N, K], y: f32[N, K]) threads 16 grid (cdiv(N, 4)) {
  s = shared(W, [4, 16])
  copy(s, w[block.x * 4 :+ 4, 0 :+ 16])
  sync()
  store(y[block.x * 4 :+ 4, 0 :+ 16], cast(load(s), f32) * 0.5)
}
"""

GEMM = """
kernel gemm[BM: int = 4, BN: int = 4, BK: int = 8](a: f32[M, K], b: f32[N, K], y: f32[M, N])
  threads 16 grid (cdiv(M, BM), cdiv(N, BN))
{
  sa = shared(f32, [BM, BK])
  sb = shared(f32, [BN, BK], layout=swizzle(2, 0, 3))
  acc = zeros(f32, [BM, BN])
  for k in range(0, K, BK) {
    copy(sa, a[block.x * BM :+ BM, k :+ BK])
    copy(sb, b[block.y * BN :+ BN, k :+ BK])
    sync()
    acc = dot(load(sa), transpose(load(sb)), acc)
    sync()
  }
  store(y[block.x * BM :+ BM, block.y * BN :+ BN], acc)
}
"""


def _both(src, args, outs, **params):
    cu = lowbitc.compile(src, backend="cuda", **params)
    ref = lowbitc.compile(src, **params)
    got = [np.array(a, copy=True) if isinstance(a, np.ndarray) else a for a in args]
    want = [np.array(a, copy=True) if isinstance(a, np.ndarray) else a for a in args]
    cu(*got)
    ref.interpret(*want)
    for i in outs:
        np.testing.assert_allclose(got[i], want[i], rtol=1e-5, atol=1e-5)
    return got


def test_staged_swizzled_tile_matches_interpreter():
    x = np.random.default_rng(0).standard_normal((7, 13)).astype(np.float32)
    got = _both(STAGED, [x, np.zeros_like(x)], [1])
    assert not np.array_equal(got[1], x)


def test_format_codes_in_shared_memory():
    codes = np.random.default_rng(1).integers(0, 8, (6, 13)).astype(np.uint8)
    got = _both(
        CODES,
        [lowbitc.pack(codes, 3), np.zeros((6, 13), np.float32)],
        [1],
    )
    assert np.array_equal(got[1], codes * np.float32(0.5))


def test_k_loop_refills_shared_tiles_between_syncs():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((5, 19)).astype(np.float32)
    b = rng.standard_normal((6, 19)).astype(np.float32)
    got = _both(GEMM, [a, b, np.zeros((5, 6), np.float32)], [2])
    np.testing.assert_allclose(got[2], a @ b.T, rtol=1e-5, atol=1e-5)


QUANT = """
kernel quant[F: dtype = u4, B: int = 32](x: f32[N, K], q: F[N, K], y: f32[N, K])
  threads 16 grid (N, cdiv(K, B))
{
  c = cast(load(x[block.x, block.y * B :+ B]), F)
  store(q[block.x, block.y * B :+ B], c)               # tiles of B codes share words
  store(y[block.x, block.y * B :+ B], cast(c, f32))
}
"""


@pytest.mark.parametrize(
    "fmt,B",
    [
        ("u3", 5),
        ("i4", 13),
        ("f6e3m2", 32),
        ("f4e2m1", 7),
        ("nf4", 9),
        ("f8e4m3fn", 16),
        ("b1", 11),
    ],
)
def test_quantizing_stores_match_encode(fmt, B):
    f = lowbitc.dtype(fmt)
    x = (np.random.default_rng(B).standard_normal((3, 45)) * f.max).astype(np.float32)
    q = np.zeros((3, -(-45 * f.bits // 32)), np.uint32)
    got = _both(QUANT, [x, q, np.zeros_like(x)], [1, 2], F=fmt, B=B)
    assert np.array_equal(lowbitc.unpack(got[1], f.bits, 45), f.encode(x))
