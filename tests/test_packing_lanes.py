"""The lanes packing (lowbitc.repack): host transforms against the canonical packing, the
bitpack-lanes pass's choice, and kernels reading it (docs/packing.md)."""

from __future__ import annotations

import builtins
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file

import lowbitc
from lowbitc import ops
from lowbitc.dtypes import dtype
from lowbitc.errors import UserArgumentError
from lowbitc.ir.core import walk
from lowbitc.packing import pack
from lowbitc.repack import LANES, PackedWords, Packing, parse, planes

STEPS = (32, 64, 128)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("step", STEPS)
def test_round_trip_to_canonical_for_every_width_and_odd_rows(bits, step):
    rng = np.random.default_rng(bits * step)
    for k in (1, 15, 31, 32, step - 1, step, step + 1, 3 * step + 17):
        codes = rng.integers(0, 1 << bits, (5, k), dtype=np.uint8)
        p = Packing(bits, step)
        words = p.from_canonical(pack(codes, bits), k)
        assert words.shape == (5, p.words_per_row(k)) and words.dtype == np.uint32
        assert np.array_equal(p.to_codes(words, k), codes)
        assert np.array_equal(p.to_canonical(words, k), pack(codes, bits))


@settings(max_examples=40, deadline=None)
@given(
    bits=st.integers(1, 8),
    step=st.sampled_from(STEPS),
    n=st.integers(1, 4),
    k=st.integers(1, 300),
    seed=st.integers(0, 2**32 - 1),
)
def test_round_trip_hypothesis(bits, step, n, k, seed):
    codes = np.random.default_rng(seed).integers(0, 1 << bits, (n, k), dtype=np.uint8)
    p = Packing(bits, step)
    assert np.array_equal(p.to_codes(p.from_codes(codes), k), codes)


@pytest.mark.parametrize("bits", range(1, 9))
def test_every_plane_word_holds_one_lane_and_whole_slots(bits):
    """Each code of a step sits in exactly one slot of its planes; a word's codes all belong
    to one lane position modulo the plane's words (what one vector load per plane needs)."""
    p = Packing(bits, 128)
    assert sum(pl.width for pl in p.planes) == bits == sum(planes(bits))
    assert sum(pl.words for pl in p.planes) == p.step_words
    for pl in p.planes:
        assert sorted(pl.slots.ravel().tolist()) == list(range(128))
        lanes = pl.slots % LANES
        assert (
            all(len(set((lanes[w] % max(pl.words, 1)).tolist())) == 1 for w in range(pl.words))
            or pl.words >= LANES
        )


def test_code_positions_follow_the_documented_formula():
    # u4, step 128: code 16t + l is nibble t of word l
    codes = np.zeros((1, 128), np.uint8)
    codes[0, 16 * 3 + 5] = 0xA
    words = Packing(4, 128).from_codes(codes)
    assert words[0, 5] == 0xA << 12 and np.count_nonzero(words) == 1
    # u3 = 2 + 1: low 2 bits in the 2-bit plane (8 words), bit 2 in the 1-bit plane (4 words)
    codes[0, 16 * 3 + 5] = 0b110
    words = Packing(3, 128).from_codes(codes)
    lane, t = 5, 3
    assert words[0, lane % 8] == 0b10 << (2 * ((lane // 8) * 8 + t))
    assert words[0, 8 + lane % 4] == 1 << ((lane // 4) * 8 + t)


@pytest.mark.parametrize("tile", [4, 16, 64])
def test_blocks_of_rows_hold_each_window_in_one_run(tile):
    """In blocks of `tile` rows (the last of a tensor shorter), step s of row r is at word
    block * tile * wpr + (s * L + r % tile) * step_words: a window of a block's rows is one
    run of memory; the transforms round-trip for partial blocks and partial steps."""
    rng = np.random.default_rng(tile)
    for bits in (3, 4, 5):
        n, k = 2 * tile + 3, 3 * 64 + 17  # two whole blocks and one of 3 rows
        codes = rng.integers(0, 1 << bits, (n, k), dtype=np.uint8)
        flat, tiled = Packing(bits, 64), Packing(bits, 64, tile)
        a, b = flat.from_codes(codes), tiled.from_codes(codes)
        assert b.shape == a.shape and tiled.words_per_row(k) == flat.words_per_row(k)
        assert a.ctypes.data % 64 == 0 and b.ctypes.data % 64 == 0  # on a line, as rows16
        sw, wpr = flat.step_words, flat.words_per_row(k)
        for r in range(n):
            first, rows = r - r % tile, min(tile, n - (r - r % tile))
            for s in range(-(-k // 64)):
                at = first * wpr + (s * rows + r % tile) * sw
                assert np.array_equal(b.ravel()[at:at + sw], a[r, s * sw:(s + 1) * sw])
        assert np.array_equal(tiled.to_codes(b, k), codes)
        assert np.array_equal(tiled.to_canonical(b, k), pack(codes, bits))


def test_bad_packings_are_rejected():
    with pytest.raises(UserArgumentError, match="step"):
        Packing(4, 48)
    with pytest.raises(UserArgumentError, match="tile of 0 or a power of two rows, got 12"):
        Packing(4, 64, 12)
    with pytest.raises(UserArgumentError, match="packing"):
        parse("zigzag", 4)
    assert parse("", 4) is None and parse("lanes16x64", 3) == Packing(3, 64)
    assert parse("lanes16x128t64", 5) == Packing(5, 128, 64)
    assert Packing(5, 128, 64).name == "lanes16x128t64"


def _gemv_kernel(w: str, bm: int, zp: bool = True, bk: int = 128):
    return ops.get_kernel(
        "matmul", "llvm", W=dtype(w), A="f32", ZP=zp, EARLY=False, BM=bm, BN=64, BK=bk
    )


def test_pass_chooses_lanes_for_gemv_weights_only():
    # (codes of <= 4 bits that feed the dot as a table of the code take the rows packing:
    # tests/test_packing_rows.py)
    k = _gemv_kernel("u5", 1)
    # steps of 128 codes (BK), stored in blocks of 64 rows (BN): a window is one run
    assert k.packings == {"w": Packing(5, 128, 64)}
    loads = [op for op in walk(k.lowered.body.ops) if op.opcode == "load_codes"]
    assert loads and all(op.attrs.packing == "lanes16x128t64" for op in loads)
    assert 'packing="lanes16x128t64"' in k.text("lowered")
    assert _gemv_kernel("u5", 1, bk=64).packings == {"w": Packing(5, 64, 64)}
    # the GEMM panel (more rows than the register-resident dot) and dequantize stay canonical
    assert (
        ops.get_kernel(
            "matmul", "llvm", W=dtype("u3"), A="f32", ZP=True, EARLY=True, BM=16, BN=64, BK=128
        ).packings
        == {}
    )
    assert ops.get_kernel("dequantize", "llvm", W=dtype("u3"), ZP=True).packings == {}
    assert _gemv_kernel("u8", 1).packings == {}  # bytes: no packing to choose
    # 8-bit codes stay canonical (bytes in order): a widening byte load reads them
    assert _gemv_kernel("f8e4m3fn", 1).packings == {}


USER_GEMV = """
kernel gemv[W: dtype](x: f32[1, K], w: W[N, K], y: f32[1, N]) grid (cdiv(N, 8)) {
  acc = zeros(f32, [1, 8])
  for k in range(0, K, 64) {
    a = load(x[0 :+ 1, k :+ 64])
    acc = dot(a, transpose(cast(load(w[block.x * 8 :+ 8, k :+ 64]), f32)), acc)
  }
  store(y[0 :+ 1, block.x * 8 :+ 8], acc)
}
"""


@pytest.mark.parametrize("w", ["u3", "i5", "f4e2m1fn"])
def test_user_kernel_gets_the_packing_and_takes_both_forms(w):
    k = lowbitc.compile(USER_GEMV, W=dtype(w))
    assert k.packings == {"w": Packing(dtype(w).bits, 64, 8)}  # blocks of the window's 8 rows
    rng = np.random.default_rng(3)
    n, kk = 37, 200  # a partial row block and a partial last step
    codes = rng.integers(0, 1 << dtype(w).bits, (n, kk), dtype=np.uint8)
    x = rng.standard_normal((1, kk)).astype(np.float32)
    ref = x.astype(np.float64) @ dtype(w).decode(codes).astype(np.float64).T
    canon = pack(codes, dtype(w).bits)
    for arg in (canon, PackedWords(k.packings["w"].from_codes(codes), k.packings["w"], kk)):
        y = np.zeros((1, n), np.float32)
        k(x, arg, y)
        np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-4)
    y = np.zeros((1, n), np.float32)
    k.interpret(x, PackedWords(k.packings["w"].from_codes(codes), k.packings["w"], kk), y)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-4)


def test_wrong_packed_words_are_rejected_before_running():
    k = lowbitc.compile(USER_GEMV, W=dtype("u4"))
    codes = np.zeros((16, 64), np.uint8)
    x, y = np.zeros((1, 64), np.float32), np.zeros((1, 16), np.float32)
    other = Packing(4, 32)
    with pytest.raises(UserArgumentError, match="packing"):
        k(x, PackedWords(other.from_codes(codes), other, 64), y)
    p = k.packings["w"]
    with pytest.raises(UserArgumentError, match="codes per row"):
        k(x, PackedWords(p.from_codes(codes[:, :40]), p, 40), y)


def test_qtensor_caches_the_packed_words_and_does_not_save_them(tmp_path):
    w = np.random.default_rng(0).standard_normal((8, 40)).astype(np.float32)
    qw = lowbitc.quantize(w, "u5", 32)
    p = Packing(5, 32)
    a = qw.packed_as(p)
    assert qw.packed_as(p) is a and a.count == 40
    assert np.array_equal(p.to_codes(a.words, 40), qw.codes)
    qw.save(tmp_path / "q.safetensors")
    assert set(load_file(tmp_path / "q.safetensors")) <= {"packed", "scales", "zeros"}


@pytest.mark.parametrize("w", ["u1", "u2", "u3", "u4", "u5", "u6", "u7", "i3", "nf4"])
@pytest.mark.parametrize("m", [1, 3, 8])
def test_matmul_on_lanes_packed_weights(w, m):
    rng = np.random.default_rng(m * 7 + dtype(w).bits)
    zp = w.startswith("u")
    for n, k, g in ((70, 300, 128), (33, 200, 64), (65, 96, 32)):
        qw = lowbitc.quantize(rng.standard_normal((n, k)).astype(np.float32), w, g, zero_point=zp)
        x = rng.standard_normal((m, k)).astype(np.float32)
        ref = x.astype(np.float64) @ qw.dequantize().astype(np.float64).T
        y = ops.matmul(x, qw)
        np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


@pytest.mark.parametrize("w", ["u5", "f6e3m2fn"])
def test_windows_of_two_steps_in_blocks_of_rows(w):
    """BK = 256: a window takes two steps of 128 codes of each row, a block's steps apart in
    the packing's blocks of 64 rows; N = 100 leaves a last block of 36 rows."""
    k = _gemv_kernel(w, 1, zp=w.startswith("u"), bk=256)
    assert k.packings == {"w": Packing(dtype(w).bits, 128, 64)}
    rng = np.random.default_rng(5)
    n, kk = 100, 640
    codes = rng.integers(0, 1 << dtype(w).bits, (n, kk), dtype=np.uint8)
    scales = (rng.random((n, kk // 128)) + 0.5).astype(np.float32)
    zeros = rng.integers(0, 1 << dtype(w).bits, (n, kk // 128)).astype(np.float32)
    x = rng.standard_normal((1, kk)).astype(np.float32)
    v = dtype(w).decode(codes).astype(np.float64)
    if w.startswith("u"):
        v = v - np.repeat(zeros, 128, 1)
    ref = x.astype(np.float64) @ (v * np.repeat(scales, 128, 1)).T
    y = np.zeros((1, n), np.float32)
    k(x, pack(codes, dtype(w).bits), scales, zeros if w.startswith("u") else
      np.zeros((1, 1), np.float32), y, 128)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_docs_packing_examples_run():
    text = (Path(__file__).resolve().parents[1] / "docs" / "packing.md").read_text()
    snippets = re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)
    assert snippets
    for i, code in enumerate(snippets):
        exec(builtins.compile(code, f"docs/packing.md python block {i}", "exec"), {})  # noqa: S102
