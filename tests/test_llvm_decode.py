"""Decoding in the LLVM backend's fused paths, on every code of every format.

A fused decode tree's code-only part is looked up in a table held in registers (vpermd /
vpermi2d with AVX-512, a gather without); the float decode lower-formats spells never forms a
denormal. Dequantize-to-memory must equal fmt.decode bit for bit (NaN for NaN, signed zeros
kept), and the fused dot must pick exactly the decoded weight its one-hot activation selects.
"""

import numpy as np
import pytest

import lowbitc
from lowbitc.backends.llvm import decode
from lowbitc.compiler import compile
from lowbitc.ir.types import is_machine, numpy_dtype
from lowbitc.packing import pack
from lowbitc.passes.lower_formats import fits_half

STORE = """
kernel dq[W: dtype](w: W[R, C], y: f32[R, C]) grid (1) {
  store(y[0 :+ 2, 0 :+ 256], cast(load(w[0 :+ 2, 0 :+ 256]), f32))
}
"""

DOT = """
kernel gemv[W: dtype](x: f32[M, K], w: W[N, K], y: f32[M, N]) grid (1) {
  q = cast(load(w[0 :+ 32, 0 :+ 64]), f32)
  store(y[0 :+ 8, 0 :+ 32], dot(load(x[0 :+ 8, 0 :+ 64]), transpose(q), zeros(f32, [8, 32])))
}
"""

FORMATS = sorted(lowbitc.dtypes())
# a code of more than 5 bits that is only converted (u6) converts: cheaper than 64 entries
CONVERTED = [f for f in FORMATS if f[0] == "u" and 5 < lowbitc.dtype(f).bits <= decode.MAX_BITS]
TABLED = [
    f
    for f in FORMATS
    if not is_machine(f) and lowbitc.dtype(f).bits <= decode.MAX_BITS and f not in CONVERTED
]


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    nan = np.isnan(a)
    return bool(
        np.array_equal(nan, np.isnan(b))
        and np.array_equal(a[~nan].view(np.uint32), b[~nan].view(np.uint32))
    )


def _words(fmt, codes: np.ndarray) -> np.ndarray:
    return codes.view(numpy_dtype(fmt.name)) if is_machine(fmt.name) else pack(codes, fmt.bits)


def _dequantize_every_code(fmt_name) -> str:
    fmt = lowbitc.dtype(fmt_name)  # a name or a format object (code books)
    row = np.arange(256) % fmt.num_codes
    codes = np.stack([row, row[::-1]]).astype(np.uint8)
    k = compile(STORE, W=fmt)
    y = np.full((2, 256), 7.0, np.float32)
    k(_words(fmt, codes), y)
    assert _same(y, fmt.decode(codes)), f"{fmt.name}: {y} vs {fmt.decode(codes)}"
    return k.text("llvm")


def _dot_every_code(fmt_name) -> str:
    fmt = lowbitc.dtype(fmt_name)
    values = fmt.decode(np.arange(fmt.num_codes, dtype=np.uint8))
    finite = np.flatnonzero(np.isfinite(values))  # 0 * inf or NaN would not stay exact
    codes = finite[np.arange(32 * 64) % len(finite)].reshape(32, 64).astype(np.uint8)
    want = fmt.decode(codes)
    k = compile(DOT, W=fmt)
    for first in range(0, 64, 8):  # row i of x picks column first + i of the weights
        x = np.zeros((8, 64), np.float32)
        x[np.arange(8), first + np.arange(8)] = 1.0
        y = np.full((8, 32), 7.0, np.float32)
        k(x, _words(fmt, codes), y)
        np.testing.assert_array_equal(y, want[:, first : first + 8].T, err_msg=fmt.name)
    return k.text("llvm")


@pytest.mark.parametrize("fmt_name", FORMATS)
def test_fused_dequantize_of_every_code_is_bit_exact(fmt_name):
    text = _dequantize_every_code(fmt_name)
    if fmt_name in TABLED and decode.permutes():
        assert "@llvm.x86.avx512.permvar.si.512" in text or "vpermi2var" in text


@pytest.mark.parametrize("fmt_name", FORMATS)
def test_fused_dot_decodes_every_finite_code_exactly(fmt_name):
    _dot_every_code(fmt_name)


@pytest.mark.parametrize("avx2", [True, False])
@pytest.mark.parametrize("fmt_name", TABLED)
def test_without_avx512_tables_are_vpermd_or_a_gather_with_the_same_values(fmt_name, avx2,
                                                                            monkeypatch):
    """Without AVX-512 an integer format's codes are converted (vcvtdq2ps); other tables are
    looked up with AVX2's 8-entry vpermd and selects (sign-split tables: their magnitudes),
    or without AVX2 gathered from a constant table. Every code decodes exactly either way."""
    monkeypatch.setenv("LOWBITC_NO_CACHE", "1")  # the IR differs: never serve the other build
    monkeypatch.setattr(decode, "permutes", lambda: False)
    monkeypatch.setattr(decode, "cpu_features", lambda: {"avx2": avx2})
    text = _dequantize_every_code(fmt_name)
    dot = _dot_every_code(fmt_name)
    assert "avx512" not in text
    fmt = lowbitc.dtype(fmt_name)
    values = fmt.decode(np.arange(fmt.num_codes, dtype=np.uint8)).astype(np.float32)
    integers = decode.integers(values.view(np.uint32)) is not None
    lookup = ("sitofp <32 x i32>" if integers
              else "@llvm.x86.avx2.permd" if avx2 else "@dtab")
    assert lookup in text and ("@dtab" in text + dot) == (lookup == "@dtab")
    if avx2 and "@llvm.x86.avx2.permps" in dot:
        return  # a weight affine in the code bits: the planes' table dot (vpermps)
    # a gather reads memory at its indices and a conversion converts every bit: those codes
    # are masked to their width first; vpermd reads the low 3 bits and each select a blend
    # of the index shifted to put its bit at bit 31 (decode.avx2_permute): those take them
    # unmasked (decode.reads_low_bits)
    # (with AVX2 a 4-bit integer format's codes are converted where they lie in their word,
    # 16 lanes at a time: rows_avx2.codes_in_place)
    assert lookup in dot or avx2 and integers and fmt.bits == 4 and "sitofp <16 x i32>" in dot
    masked = lookup != "@llvm.x86.avx2.permd"
    assert decode.reads_low_bits(values.view(np.uint32), "f32") != masked
    if masked:
        assert " and <16 x i32>" in dot
    elif fmt.bits == 4:  # one plane of the rows packing: nothing else masks
        assert " and <16 x i32>" not in dot


def test_codebook_decodes_through_a_table():
    cb = lowbitc.codebook([-1.5, -0.25, 0.0, 0.125, 0.5, 0.75, 1.0, 3.0], name="cb_decode8")
    text = _dequantize_every_code(cb)
    _dot_every_code(cb)
    if decode.permutes():
        assert "@llvm.x86.avx512.permvar.si.512" in text


def test_tables_hold_the_decoded_bits_of_every_code():
    # the table of f4e2m1fn's decode is fmt.decode's bit patterns, subnormal 0.5 and -0.0 kept
    from lowbitc.backends.llvm.fusion_plan import plan_store_fusion
    from lowbitc.passes import CPU_PIPELINE, run_pipeline

    fmt = lowbitc.dtype("f4e2m1fn")
    low = run_pipeline(compile(STORE, W="f4e2m1fn").ir, CPU_PIPELINE)
    (plan,) = plan_store_fusion(low.body).values()
    (table,) = plan.tables.values()
    want = fmt.decode(np.arange(16, dtype=np.uint8)).view(np.uint32)
    np.testing.assert_array_equal(table, want)
    assert want[1] == np.float32(0.5).view(np.uint32) and want[8] == 0x80000000


@pytest.mark.parametrize("fmt_name", ["u6", "u5"])
def test_wide_integer_codes_convert_rather_than_look_up_64_entries(fmt_name):
    text = _gemv_every_code(fmt_name)
    assert "@llvm.prefetch" in text  # the next windows' codes (pages apart) are prefetched
    if decode.permutes():
        assert ("vpermi2var" in text) == (fmt_name == "u5")  # 32 entries: one permute
        assert ("itofp <32 x i32>" in text) == (fmt_name == "u6")


def test_6_bit_float_tables_split_off_the_sign():
    # a 64-entry table whose upper half is the lower half negated is looked up in 32 entries
    # (one vpermi2d) with the code's bit 5 moved to the sign: no select between two lookups
    def bits(name: str) -> np.ndarray:
        return lowbitc.dtype(name).decode(np.arange(64, dtype=np.uint8)).view(np.uint32)

    assert decode.sign_split(bits("f6e3m2fn")) and decode.sign_split(bits("f6e2m3fn"))
    assert not decode.sign_split(bits("i6"))  # two's complement: -32 .. -1 above
    text = _gemv_every_code("f6e3m2fn")
    if decode.permutes():
        assert "vpermi2var" in text and "icmp ugt <16 x i32>" not in text


# ------------------------------------------------------------------- through f16

GEMV = """
kernel gemv1[W: dtype](x: f32[1, K], w: W[N, K], y: f32[1, N]) grid (1) {
  q = cast(load(w[0 :+ 32, 0 :+ 64]), f32)
  store(y[0 :+ 1, 0 :+ 32], dot(load(x[0 :+ 1, 0 :+ 64]), transpose(q), zeros(f32, [1, 32])))
}
"""
# the floats the LLVM pipeline decodes through f16 (lower-formats{half=1}); 8 bits: no table
HALF = [f for f in FORMATS if fits_half(lowbitc.dtype(f))]
HALF8 = [f for f in HALF if lowbitc.dtype(f).bits == 8]


def test_the_floats_that_fit_f16_take_it():
    assert {"f8e4m3fn", "f8e4m3", "f8e5m2", "f8e4m3fnuz", "f8e3m4", "f6e3m2fn"} <= set(HALF)
    assert not {"f8e5m2fnuz", "f8e8m0fnu", "nf4", "u8"} & set(HALF)  # f16 inf/NaN, e8, tables


def _gemv_every_code(fmt_name) -> str:
    """A one-row fused dot (the GEMV's joint row sums) picking every finite code's value."""
    fmt = lowbitc.dtype(fmt_name)
    values = fmt.decode(np.arange(fmt.num_codes, dtype=np.uint8))
    finite = np.flatnonzero(np.isfinite(values))
    codes = finite[(np.arange(32 * 64) * 7) % len(finite)].reshape(32, 64).astype(np.uint8)
    want = fmt.decode(codes)
    k = compile(GEMV, W=fmt)
    for col in range(64):
        x = np.zeros((1, 64), np.float32)
        x[0, col] = 1.0
        y = np.full((1, 32), 7.0, np.float32)
        k(x, _words(fmt, codes), y)
        np.testing.assert_array_equal(y[0], want[:, col], err_msg=f"{fmt_name} column {col}")
    return k.text("llvm")


@pytest.mark.parametrize("fmt_name", HALF8)
def test_8_bit_floats_decode_through_f16_exactly(fmt_name):
    # every code, dequantized (NaN and signed zeros included) and in a one-row fused dot, whose
    # sums take the 2^(15 - bias) factor once
    assert "fpext <32 x half>" in _dequantize_every_code(fmt_name)
    assert "fpext <32 x half>" in _gemv_every_code(fmt_name)


@pytest.mark.parametrize("fmt_name", ["u8", "i8"])
def test_byte_weights_are_read_by_the_fused_paths(fmt_name):
    # u8/i8 are machine types (a plain load, no load_codes): the fused dot, the GEMM panel and
    # the dequantize store still read them, 32 bytes at a time, widened in registers
    from lowbitc.backends.llvm.fusion_plan import plan_fusion, plan_store_fusion

    dot = plan_fusion(compile(GEMV, W=fmt_name).lowered.body)
    assert [p.codes.opcode for p in dot.values()] == ["load"]
    store = plan_store_fusion(compile(STORE, W=fmt_name).lowered.body)
    assert [p.codes.opcode for p in store.values()] == ["load"]
    for text in (_gemv_every_code(fmt_name), _dot_every_code(fmt_name)):
        assert "load <32 x i8>" in text
    assert "load <32 x i8>" in _dequantize_every_code(fmt_name)


# ------------------------------------------------------------------- streaming stores


def _misaligned(shape, by_bytes: int) -> np.ndarray:
    n = int(np.prod(shape))
    raw = np.zeros(n + 32, np.float32)
    first = ((by_bytes - raw.ctypes.data) % 64) // 4
    return raw[first : first + n].reshape(shape)


@pytest.mark.parametrize("K", [512, 536])  # row strides of whole lines, and not
def test_dequantize_streams_line_aligned_rows_and_stores_others_plainly(K):
    from lowbitc import ops

    rng = np.random.default_rng(5)
    qw = lowbitc.quantize(
        rng.standard_normal((40, K)).astype(np.float32), "u3", 128, zero_point=True
    )
    want = qw.dequantize()
    fresh = ops.dequantize(qw)
    assert fresh.ctypes.data % 64 == 0  # new outputs start on a line
    for y in (fresh, _misaligned((40, K), 16), _misaligned((40, K), 0)):
        ops.dequantize(qw, out=y)
        assert np.array_equal(y.view(np.uint32), want.view(np.uint32))
    text = ops.get_kernel("dequantize", W="u3", ZP=True).text("llvm")
    if decode.permutes():
        assert "!nontemporal" in text and "call void @llvm.x86.sse.sfence()" in text
