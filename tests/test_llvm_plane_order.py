"""The register dot over a byte window's sub-byte codes reads them by planes (backends/llvm/
fused_windows.py `plane_order`: lane q * n + i holds code per * i + q of the step's n bytes) and
permutes the activations and every leaf that varies along K alike. Each width that divides
8, leaves constant and varying along K, 1 to 5 rows of activations, against numpy and the
reference interpreter."""

import numpy as np
import pytest

import lowbitc
from lowbitc.backends.llvm.fused_windows import plane_order
from lowbitc.backends.llvm.fusion_plan import W
from lowbitc.compiler import compile
from lowbitc.interp import run

# bytes viewed as F codes (first code in the low bits), times a leaf: LEAF 0 none, 1 a row
# scale, 2 an f32 tile as large as the weights (varies along every K), 3 a column offset
# [1, BK] (one per K position, the same for every row)
PLANES = """
kernel planes[F: dtype, BITS: int, LEAF: int = 0, BM: int = 1](
    x: f32[M, K], w: u8[N, KB], s: f32[N, K], y: f32[M, N]) grid (cdiv(N, 16))
{
  n0 = block.x * 16
  acc = zeros(f32, [BM, 16])
  for k in range(0, K, 64) {
    a = load(x[0 :+ BM, k :+ 64])
    q = cast(view(load(w[n0 :+ 16, k * BITS / 8 :+ 8 * BITS]), F), f32)
    if LEAF == 1 { q = q * load(s[n0 :+ 16, k :+ 1]) }
    if LEAF == 2 { q = q - load(s[n0 :+ 16, k :+ 64]) }
    if LEAF == 3 { q = q * load(s[0 :+ 1, k :+ 64]) }
    acc = dot(a, transpose(q), acc)
  }
  store(y[0 :+ BM, n0 :+ 16], acc)
}
"""


def test_plane_order_is_a_permutation_by_planes():
    """Lane q * n + i of a step holds code per * i + q, for every width that divides 8."""
    class Plan:  # the fields plane_order reads
        def __init__(self, bits):
            self.chain = ("load", "view")
            self.tree = []
            self.codes = type("Codes", (), {"operands": [
                type("V", (), {"type": type("T", (), {"dtype": f"u{bits}"})()})()]})()

    for bits in (1, 2, 4):
        order = plane_order(Plan(bits))
        per, n = 8 // bits, W * bits // 8
        assert sorted(order) == list(range(W))
        assert all(order[q * n + i] == per * i + q for q in range(per) for i in range(n))
    assert plane_order(Plan(8)) == ()


@pytest.mark.parametrize("fmt,leaf,m", [
    ("u4", 0, 1), ("nf4", 1, 1), ("i4", 2, 1), ("u4", 3, 1), ("u2", 1, 1), ("b2", 2, 2),
    ("u1", 0, 1), ("u1", 3, 3), ("f4e2m1fn", 2, 5), ("u2", 3, 4),
])
def test_plane_ordered_dot_matches_numpy_and_the_interpreter(fmt, leaf, m):
    rng = np.random.default_rng(1)
    n, k = 40, 256  # the last tile of rows leaves the tensor (generic dot)
    bits = lowbitc.dtype(fmt).bits
    codes = rng.integers(0, 2 ** bits, (n, k)).astype(np.uint8)
    words = lowbitc.pack(codes, bits)  # LSB-first: the first code in the low bits
    raw = np.ascontiguousarray(words.view(np.uint8)[:, : k * bits // 8])
    s = rng.uniform(0.5, 2, (n, k)).astype(np.float32)
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = lowbitc.dtype(fmt).decode(codes).astype(np.float64)
    w = {0: w, 1: w * np.repeat(s[:, ::64], 64, 1), 2: w - s,
         3: w * s[0][None, :]}[leaf]
    ref = x.astype(np.float64) @ w.T
    _check(compile(PLANES, F=fmt, BITS=bits, LEAF=leaf, BM=m), x, raw, s, ref)


def _check(kern, x, raw, s, ref) -> None:
    """The fused byte-window dot `kern(x, raw, s, y)` against `ref` and the interpreter."""
    assert "codes of a byte window unpacked in registers" in kern.explain()
    y = np.zeros(ref.shape, np.float32)
    kern(x, raw, s, y)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-3)
    interp = np.zeros_like(y)
    run(kern.ir, x, raw, s, interp)
    np.testing.assert_allclose(y, interp, rtol=1e-4, atol=1e-3)


# bytes whose codes a byte op moves (ROT: rotate left by S bits; XOR: flip the low code's bits,
# which does more than move codes) before they are viewed as F codes, times a row scale
MOVED = """
kernel moved[F: dtype, BITS: int, S: int, XOR: int = 0, BM: int = 1](
    x: f32[M, K], w: u8[N, KB], s: f32[N, K], y: f32[M, N]) grid (cdiv(N, 16))
{
  n0 = block.x * 16
  acc = zeros(f32, [BM, 16])
  for k in range(0, K, 64) {
    a = load(x[0 :+ BM, k :+ 64])
    b = load(w[n0 :+ 16, k * BITS / 8 :+ 8 * BITS])
    q = cast(view(((b << S) | (b >> (8 - S))) ^ XOR, F), f32) * load(s[n0 :+ 16, k :+ 1])
    acc = dot(a, transpose(q), acc)
  }
  store(y[0 :+ BM, n0 :+ 16], acc)
}
"""


@pytest.mark.parametrize("fmt,shift,xor,m", [
    ("nf4", 4, 0, 1), ("u4", 4, 0, 3), ("u2", 2, 0, 1), ("u2", 6, 0, 2), ("u1", 1, 0, 1),
    ("u1", 5, 0, 2), ("u4", 4, 15, 1),
])
def test_codes_moved_within_bytes_read_in_the_lane_order(fmt, shift, xor, m):
    """Byte ops that only move codes within each byte (bitsandbytes' nibble swap, any rotate)
    are read as a lane order (fused_windows.byte_moves: the bytes as loaded, the activations
    permuted alike); an op that changes codes (xor) is evaluated on the bytes. Every code of
    each width, against numpy and the interpreter."""
    rng = np.random.default_rng(2)
    n, k = 40, 256
    bits = lowbitc.dtype(fmt).bits
    raw = rng.integers(0, 256, (n, k * bits // 8)).astype(np.uint8)
    raw[:8, :32] = np.arange(256, dtype=np.uint8).reshape(8, 32)  # every byte
    moved = (((raw << shift) | (raw >> (8 - shift))) ^ xor).astype(np.uint8)
    codes = _codes(moved, bits, k)
    s = rng.uniform(0.5, 2, (n, k)).astype(np.float32)
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = lowbitc.dtype(fmt).decode(codes).astype(np.float64) * np.repeat(s[:, ::64], 64, 1)
    ref = x.astype(np.float64) @ w.T
    _check(compile(MOVED, F=fmt, BITS=bits, S=shift, XOR=xor, BM=m), x, raw, s, ref)


def _codes(raw: np.ndarray, bits: int, k: int) -> np.ndarray:
    """The codes of bytes `raw` [N, k * bits / 8], the first code of a byte in its low bits."""
    per = 8 // bits
    planes = [(raw >> (p * bits)) & ((1 << bits) - 1) for p in range(per)]
    return np.stack(planes, axis=-1).reshape(raw.shape[0], k)


def test_a_narrow_byte_window_prefetches_its_last_byte():
    """A 2-D byte window of a line or less (32 bytes of u4 codes) asks for one prefetch per row
    and window, at its last byte: windows lie back to back along the row, so the last bytes
    of successive windows, from any start, reach every line the windows read."""
    lines = compile(PLANES, F="u4", BITS=4).text("llvm").splitlines()
    asks = [i for i, ln in enumerate(lines) if "call void @llvm.prefetch" in ln]
    assert asks and all(lines[i - 1].endswith(", i64 31") for i in asks)  # one per row
    for nbytes in (8, 16, 32, 48, 64):
        for start in range(64):
            asked = set()
            for i in range(40):
                first = start + i * nbytes
                asked.add((first + nbytes - 1) // 64)
                assert set(range(first // 64, (first + nbytes - 1) // 64 + 1)) <= asked | {
                    first // 64} if i == 0 else asked
