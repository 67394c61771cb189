"""The rows packing (lowbitc.repack.RowsPacking): 16 rows per vector for few-row dots of
<= 4-bit codes; host transforms, the pass's choice, the fused dot and its scalar edges."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lowbitc
from lowbitc import ops
from lowbitc.backends.llvm import decode
from lowbitc.dtypes import dtype
from lowbitc.errors import UserArgumentError
from lowbitc.ir.core import walk
from lowbitc.packing import pack
from lowbitc.repack import PackedWords, Packing, PlanesPacking, RowsPacking, affine_bits, parse


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("kind", [RowsPacking, PlanesPacking])
def test_round_trip_to_canonical_for_every_width_and_odd_rows(bits, kind):
    rng = np.random.default_rng(bits)
    p = kind(bits)
    for n, k in ((1, 1), (16, 32), (17, 33), (37, 200), (5, 70)):
        codes = rng.integers(0, 1 << bits, (n, k), dtype=np.uint8)
        words = p.from_codes(codes)
        assert words.shape == (n, p.words_per_row(k)) and words.ctypes.data % 64 == 0
        assert np.array_equal(p.to_codes(words, k), codes)
        assert np.array_equal(p.to_canonical(words, k), pack(codes, bits))
        assert np.array_equal(p.from_canonical(pack(codes, bits), k), words)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 8), st.integers(1, 40), st.integers(1, 130), st.integers(0, 2**31))
def test_round_trip_hypothesis(bits, n, k, seed):
    codes = np.random.default_rng(seed).integers(0, 1 << bits, (n, k), dtype=np.uint8)
    p = RowsPacking(bits)
    assert np.array_equal(p.to_codes(p.from_codes(codes), k), codes)


def test_code_positions_follow_the_documented_formula():
    # word j of step s of row r: block*16*wpr + (s*bits + j)*L + r % 16; u4: 8 codes a word
    codes = np.zeros((20, 64), np.uint8)
    codes[5, 40] = 0xA  # step 1, code 8 of the step: word 1, slot 0
    flat = RowsPacking(4).from_codes(codes).reshape(-1)
    assert flat[(1 * 4 + 1) * 16 + 5] == 0xA and np.count_nonzero(flat) == 1
    # the last block has 4 rows (L = 4): row 18 is lane 2
    codes[:] = 0
    codes[18, 3] = 0b101  # u3 = 2 + 1: low bits in plane word 0 (slot 3), bit 2 in word 2
    flat = RowsPacking(3).from_codes(codes).reshape(-1)
    wpr = 2 * 3
    base = 16 * wpr  # block 1 starts after 16 rows
    assert flat[base + 0 * 4 + 2] == 0b01 << 6 and flat[base + 2 * 4 + 2] == 1 << 3
    assert np.count_nonzero(flat) == 2


def test_planes_packing_puts_every_code_bit_in_its_own_word():
    # u3: bit j of code i of a step is bit i of word j (lane = row)
    codes = np.zeros((16, 32), np.uint8)
    codes[7, 9] = 0b101
    flat = PlanesPacking(3).from_codes(codes).reshape(-1)
    assert flat[0 * 16 + 7] == 1 << 9 and flat[2 * 16 + 7] == 1 << 9
    assert np.count_nonzero(flat) == 2


def test_affine_bits_finds_the_integer_formats_only():
    for w in ("u1", "u2", "u3", "i2", "i3", "b1", "b2", "b3"):
        f = dtype(w)
        a, c = affine_bits(f.decode(np.arange(1 << f.bits, dtype=np.uint8)), f.bits)
        q = np.arange(1 << f.bits)
        rebuilt = a + sum(cj * ((q >> j) & 1) for j, cj in enumerate(c))
        assert np.array_equal(rebuilt, f.decode(q.astype(np.uint8))), w
    for w in ("f4e2m1fn", "nf4", "f3e1m1"):
        f = dtype(w)
        assert affine_bits(f.decode(np.arange(1 << f.bits, dtype=np.uint8)), f.bits) is None


def test_planes_dot_looks_up_partial_sums():
    text = _gemv("u2").text("llvm")
    if decode.permutes():  # per bit plane and 4 codes: one permute of a 16-entry sum table
        assert "@llvm.x86.avx512.permvar.sf.512" in text


def test_parse_names_the_rows_packing():
    assert parse("rows16", 3) == RowsPacking(3) and RowsPacking(3).name == "rows16"
    assert parse("planes16", 2) == PlanesPacking(2) and PlanesPacking(2) != RowsPacking(2)
    with pytest.raises(UserArgumentError, match="rows16"):
        parse("rows8", 3)
    with pytest.raises(UserArgumentError, match="bits"):
        RowsPacking(9)


def _gemv(w: str, bm: int = 1, early: bool = False, bn: int = 64):
    return ops.get_kernel("matmul", "llvm", W=dtype(w), A="f32", ZP=w.startswith("u"),
                          EARLY=early, BM=bm, BN=bn, BK=128)


def test_pass_chooses_rows_for_narrow_code_only_gemv_weights():
    for w in ("u4", "i4", "nf4", "f4e2m1fn", "f3e1m1"):
        k = _gemv(w)
        assert k.packings == {"w": RowsPacking(dtype(w).bits)}, w
        loads = [op for op in walk(k.lowered.body.ops) if op.opcode == "load_codes"]
        assert loads and all(op.attrs.packing == "rows16" for op in loads)
    # <= 3-bit integers (a weight affine in the code bits): one plane per bit
    for w in ("u1", "u2", "u3", "i2", "i3", "b1", "b3"):
        k = _gemv(w)
        assert k.packings == {"w": PlanesPacking(dtype(w).bits)}, w
        assert 'packing="planes16"' in k.text("lowered")
    assert _gemv("u5").packings == {"w": Packing(5, 128, 64)}  # wider codes keep the lanes
    # a weight scaled per row inside the dot (EARLY) is not a function of the code alone
    assert _gemv("u4", 4, early=True).packings == {"w": Packing(4, 128, 64)}
    # windows that do not cover whole 16-row blocks keep the lanes packing
    assert _gemv("u4", bn=8).packings == {"w": Packing(4, 128, 8)}


USER_GEMV = """
kernel gemv[W: dtype](x: f32[M, K], w: W[N, K], y: f32[M, N]) grid (cdiv(N, 32)) {
  acc = zeros(f32, [M, 32])
  for k in range(0, K, 64) {
    a = load(x[0 :+ M, k :+ 64])
    acc = dot(a, transpose(cast(load(w[block.x * 32 :+ 32, k :+ 64]), f32)), acc)
  }
  store(y[0 :+ M, block.x * 32 :+ 32], acc)
}
"""


@pytest.mark.parametrize("w", ["u1", "u3", "b2", "i3", "i4", "f4e2m1fn", "nf4"])
def test_user_kernel_gets_the_rows_packing_and_takes_both_forms(w):
    k = lowbitc.compile(USER_GEMV.replace("M", "3"), W=dtype(w))
    p = k.packings["w"]
    kind = PlanesPacking if dtype(w).bits <= 3 and w[0] in "uib" else RowsPacking
    assert p == kind(dtype(w).bits)
    rng = np.random.default_rng(5)
    # 70 rows: two whole 32-row windows, then a window past the last whole 16-row block;
    # 200 columns: a last window past K (steps past the row are skipped)
    n, kk = 70, 200
    codes = rng.integers(0, 1 << dtype(w).bits, (n, kk), dtype=np.uint8)
    x = rng.standard_normal((3, kk)).astype(np.float32)
    ref = x.astype(np.float64) @ dtype(w).decode(codes).astype(np.float64).T
    for arg in (pack(codes, dtype(w).bits), PackedWords(p.from_codes(codes), p, kk)):
        y = np.zeros((3, n), np.float32)
        k(x, arg, y)
        np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-4)
    y = np.zeros((3, n), np.float32)
    k.interpret(x, PackedWords(p.from_codes(codes), p, kk), y)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-4)


def test_words_in_another_packing_are_rejected_before_running():
    k = lowbitc.compile(USER_GEMV.replace("M", "1"), W=dtype("u4"))
    codes = np.zeros((32, 64), np.uint8)
    x, y = np.zeros((1, 64), np.float32), np.zeros((1, 32), np.float32)
    other = Packing(4, 64)
    with pytest.raises(UserArgumentError, match="packing"):
        k(x, PackedWords(other.from_codes(codes), other, 64), y)


@pytest.mark.parametrize("w", ["u1", "u2", "u3", "u4", "i3", "b1", "b2", "b3", "nf4",
                               "f4e2m1fn"])
@pytest.mark.parametrize("m", [1, 3, 8])
def test_matmul_on_rows_packed_weights(w, m):
    rng = np.random.default_rng(m * 11 + dtype(w).bits)
    zp = w.startswith("u")
    # odd rows (a partial 16-row block), K tails shorter than the window, partial groups
    for n, k, g in ((70, 300, 128), (33, 200, 64), (64, 4100, 128), (16, 96, 32)):
        qw = lowbitc.quantize(rng.standard_normal((n, k)).astype(np.float32), w, g, zero_point=zp)
        x = rng.standard_normal((m, k)).astype(np.float32)
        ref = x.astype(np.float64) @ qw.dequantize().astype(np.float64).T
        y = ops.matmul(x, qw)
        np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


@pytest.mark.skipif(not decode.permutes(), reason="reads AVX-512 assembly")
def test_small_windows_broadcast_activations_from_memory():
    """A GEMV window of 32 activations (groups of 32: GGUF, MX) stays in memory: each FMA
    takes its activation as a `{1to16}` operand, not extracted and spread by shuffles on the
    ports the decode's permutes need (rows.ACTIVATIONS_IN_MEMORY)."""
    qw = lowbitc.quantize(np.ones((64, 256), np.float32), "u4", 32, zero_point=True)
    params = {**ops.matmul_params(1, qw, "f32", N=4096), "GM": True, "TM": True}
    assert params["BK"] == 32
    text = ops.get_kernel("matmul", **params).text("asm")
    # 16 rows a vector, 64 rows a program: 128 FMAs, 32 activations x 4 blocks of rows
    # (LLVM reads a few as pairs, one 8-byte load spread twice)
    assert len(re.findall(r"vfmadd\w+\s+-?\w*\(%\w+\)\{1to16\}", text)) >= 96
    assert "vshuff64x2" not in text


@pytest.fixture
def avx2_host(monkeypatch):
    """Build the AVX2 forms (no AVX-512) on any host; never serve the other build."""
    monkeypatch.setenv("LOWBITC_NO_CACHE", "1")
    monkeypatch.setattr(decode, "permutes", lambda: False)
    monkeypatch.setattr(decode, "cpu_features", lambda: {"avx2": True})


@pytest.mark.usefixtures("avx2_host")
def test_avx2_rows_dot_carries_fewer_chains():
    """With 8-lane vectors each <16 x float> chain is two of AVX2's 16 registers: the rows
    dot carries CHAINS_AVX2 of them (8 spilled), and its results stand."""
    from lowbitc.backends.llvm import rows

    assert rows.chains_of_16() == rows.CHAINS_AVX2 == 4
    k = lowbitc.compile(USER_GEMV.replace("M", "1"), W=dtype("f4e2m1fn"))
    text = k.text("llvm")
    assert "avx512" not in text
    # the step loop's carried accumulators: one phi each
    assert text.count("phi <16 x float>") == rows.CHAINS_AVX2
    rng = np.random.default_rng(3)
    codes = rng.integers(0, 16, (48, 130), dtype=np.uint8)
    x = rng.standard_normal((1, 130)).astype(np.float32)
    y = np.zeros((1, 48), np.float32)
    k(x, pack(codes, 4), y)
    ref = x.astype(np.float64) @ dtype("f4e2m1fn").decode(codes).astype(np.float64).T
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("fmt", ["f4e2m1fn", "f4e3m0", "f4e1m2"])
@pytest.mark.parametrize("m", [1, 2, 3])
@pytest.mark.usefixtures("avx2_host")
def test_avx2_sign_magnitude_tables_take_the_activations_sign(monkeypatch, fmt, m):
    """On AVX2 a 4-bit sign-magnitude float format looks up its 8 magnitudes (no sign moved
    in) and blends a or -a by the code's top bit; more rows of `a` (or SIGNED_MAGNITUDES
    off) take the generic lookup. Results as the formula either way."""
    from lowbitc.backends.llvm import rows_avx2

    rng = np.random.default_rng(m)
    codes = rng.integers(0, 16, (48, 200), dtype=np.uint8)
    x = rng.standard_normal((m, 200)).astype(np.float32)
    ref = x.astype(np.float64) @ dtype(fmt).decode(codes).astype(np.float64).T
    for on in (True, False):
        monkeypatch.setattr(rows_avx2, "SIGNED_MAGNITUDES", on)
        k = lowbitc.compile(USER_GEMV.replace("M", str(m)), W=dtype(fmt))
        text = k.text("llvm")
        signed = on and m <= 2
        assert ("fneg <8 x float>" in text) == signed
        # (the generic lookup of 8 magnitudes has no select to blend; it ors the sign in)
        assert ("call <8 x float> @llvm.x86.avx.blendv.ps.256" in text) == signed
        y = np.zeros((m, 48), np.float32)
        k(x, pack(codes, 4), y)
        np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("fmt", ["u4", "i4"])
@pytest.mark.parametrize("m", [1, 2, 3])
@pytest.mark.usefixtures("avx2_host")
def test_avx2_integer_codes_are_converted_in_place(monkeypatch, fmt, m):
    """On AVX2 a 4-bit integer format's code j of a word is masked where it lies, converted
    (q 2^4j) and multiplied by the activation times 2^-4j; a signed format's offset is added
    as b sum(a) once a window. More rows of `a` (or CODES_IN_PLACE off) shift each code down
    first. Results as the formula either way, also for activations whose scaled copies are
    subnormal and for a window past K (200 columns; the offset's sum covers the padding)."""
    from lowbitc.backends.llvm import rows_avx2

    rng = np.random.default_rng(m)
    codes = rng.integers(0, 16, (48, 200), dtype=np.uint8)
    x = rng.standard_normal((m, 200)).astype(np.float32)
    x[0, :40] *= np.float32(1e-28)  # times 2^-24 (code 6 of a word): below 2^-126
    x[-1, 100:] *= np.float32(1e30)
    ref = x.astype(np.float64) @ dtype(fmt).decode(codes).astype(np.float64).T
    for on in (True, False):
        monkeypatch.setattr(rows_avx2, "CODES_IN_PLACE", on)
        k = lowbitc.compile(USER_GEMV.replace("M", str(m)), W=dtype(fmt))
        text = k.text("llvm")
        in_place = on and m <= 2
        # the masks in place, 0xF0 (code 1) ... 0xF000000 (code 6), on 16 lanes
        assert all((f"i32 {0xF << 4 * j}, i32 {0xF << 4 * j}" in text) == in_place
                   for j in range(1, 7))
        y = np.zeros((m, 48), np.float32)
        k(x, pack(codes, 4), y)
        np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-4 * np.abs(ref).max())
        small = x[:1, :40].astype(np.float64) @ dtype(fmt).decode(codes[:, :40]).T
        assert np.abs(small).max() < 1e-25  # (the tiny terms alone: within 2^-121 each)


def test_fused_rows_dot_is_vector_code(monkeypatch):
    text = _gemv("f3e1m1").text("llvm")  # 3 bits in planes of 2 + 1, a table of floats
    assert "@llvm.fma.v16f32" in text
    if decode.permutes():  # one select per code joins the bit planes
        assert "@llvm.x86.avx512.pternlog.d.512" in text and "permvar.si.512" in text


CB3 = lowbitc.codebook([-1.5, -0.25, 0.0, 0.125, 0.5, 0.75, 1.0, 3.0], name="cb_rows3")


@pytest.mark.parametrize("fmt, avx2, lookup", [
    ("u4", True, "sitofp <16 x i32>"),  # an integer format: the codes converted in place
    ("u3", True, "@llvm.x86.avx2.permps"),  # the planes' table dot, 16 sums per two vpermps
    ("u3", False, "sitofp <32 x i32>"),  # (without AVX2 the rows dot)
    (CB3, True, "@llvm.x86.avx2.permd"),  # vpermd, 8 entries
    (CB3, False, "@dtab"),  # a gather from a constant table
])
def test_without_avx512_rows_codes_are_masked_for_the_lookup(monkeypatch, fmt, avx2, lookup):
    monkeypatch.setenv("LOWBITC_NO_CACHE", "1")
    monkeypatch.setattr(decode, "permutes", lambda: False)
    monkeypatch.setattr(decode, "cpu_features", lambda: {"avx2": avx2})
    k = lowbitc.compile(USER_GEMV.replace("M", "1"), W=dtype(fmt))
    text = k.text("llvm")
    assert "avx512" not in text and lookup in text
    # a gather reads memory at its indices, vpermd their low 3 bits: the codes are masked
    # (the table dot's permutes read the low 3 bits and test bit 3 themselves)
    assert " and <16 x i32>" in text or "permps" in lookup
    # (and shifts its words by vpmulhuw where the 3 bits lie within a 16-bit half)
    assert ("@llvm.x86.avx2.pmulhu.w" in text) == ("permps" in lookup)
    bits = dtype(fmt).bits
    rng = np.random.default_rng(9)
    codes = rng.integers(0, 1 << bits, (48, 130), dtype=np.uint8)
    x = rng.standard_normal((1, 130)).astype(np.float32)
    y = np.zeros((1, 48), np.float32)
    k(x, pack(codes, bits), y)
    ref = x.astype(np.float64) @ dtype(fmt).decode(codes).astype(np.float64).T
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-4)
