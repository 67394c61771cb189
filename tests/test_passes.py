"""Golden textual-IR tests for each pass (the lines that matter), pipelines with a trace and
verification after every pass, and each pass keeping the interpreter's results."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest

import lowbitc
from lowbitc.dsl.lower import lower_kernel
from lowbitc.dsl.modules import load_source
from lowbitc.errors import LoweringError, VerifyError
from lowbitc.interp import run
from lowbitc.ir import Kernel, print_kernel, walk
from lowbitc.packing import pack
from lowbitc.passes import CPU_PIPELINE, PASSES, run_pipeline
from lowbitc.passes.base import Pass

DEQUANT = """kernel dq[W: dtype](w: W[R, C], y: f32[R, C]) {
  store(y[0 :+ 2, 0 :+ 8], cast(load(w[0 :+ 2, 0 :+ 8]), f32))
}
"""


def ir(source: str, **params) -> Kernel:
    module = load_source(source, "t.lbk")
    return lower_kernel(module, module.kernels[0], params)


def body(k: Kernel) -> list[str]:
    """The body's lines without source locations."""
    text = print_kernel(k).split("body:\n", 1)[1]
    return [re.sub(r' loc\("[^"]*":\d+:\d+\)', "", line) for line in text.splitlines()[:-1]]


def opcodes(k: Kernel) -> list[str]:
    return [op.opcode for op in walk(k.body.ops)]


LOAD = ('  %7 = load %w, %5, %6 {layout="", masked=false, sizes=[2, 8]} : tile<{W}[2,8]>')
STORE = ('  store %y, %{a}, %{b}, %{v} {{layout="", masked=false, sizes=[2, 8]}}')


def test_dsl_lowering_gives_a_cast_of_the_loaded_codes():
    assert body(ir(DEQUANT, W="u3")) == [
        '  %5 = const {dtype="i64", value=0} : i64',
        '  %6 = const {dtype="i64", value=0} : i64',
        LOAD.replace("{W}", "u3"),
        '  %8 = cast %7 {dtype="f32"} : tile<f32[2,8]>',
        '  %9 = const {dtype="i64", value=0} : i64',
        '  %10 = const {dtype="i64", value=0} : i64',
        STORE.format(a=9, b=10, v=8),
    ]


# ------------------------------------------------------------------- lower-formats

def formats_lines(fmt: str) -> list[str]:
    """The lines lower-formats puts between the load and the store's index constants."""
    lines = body(run_pipeline(ir(DEQUANT, W=fmt), ["lower-formats"]))
    assert lines[2] == LOAD.replace("{W}", fmt)
    return lines[3:-3]


def test_lower_formats_unsigned_is_codes_then_convert():
    assert formats_lines("u3") == [
        '  %8 = codes %7 {dtype="i32"} : tile<i32[2,8]>',
        '  %9 = cast %8 {dtype="f32"} : tile<f32[2,8]>',
    ]


def test_lower_formats_signed_sign_extends_with_two_shifts():
    assert formats_lines("i3") == [
        '  %8 = codes %7 {dtype="i32"} : tile<i32[2,8]>',
        '  %9 = const {dtype="i32", value=29} : i32',
        '  %10 = shl %8, %9 : tile<i32[2,8]>',
        '  %11 = shr %10, %9 : tile<i32[2,8]>',
        '  %12 = cast %11 {dtype="f32"} : tile<f32[2,8]>',
    ]


def test_lower_formats_bipolar_is_two_c_minus_levels():
    assert formats_lines("b2") == [
        '  %8 = codes %7 {dtype="i32"} : tile<i32[2,8]>',
        '  %9 = const {dtype="i32", value=1} : i32',
        '  %10 = shl %8, %9 : tile<i32[2,8]>',
        '  %11 = const {dtype="i32", value=3} : i32',
        '  %12 = sub %10, %11 : tile<i32[2,8]>',
        '  %13 = cast %12 {dtype="f32"} : tile<f32[2,8]>',
    ]


def test_lower_formats_small_float_rebiases_normals_by_an_integer_add_and_scales_subnormals():
    # no step forms a denormal f32 (Intel CPUs take a microcode assist on each)
    assert formats_lines("f6e3m2") == [
        '  %8 = codes %7 {dtype="i32"} : tile<i32[2,8]>',
        '  %9 = const {dtype="i32", value=31} : i32',          # magnitude mask (5 bits)
        '  %10 = and %8, %9 : tile<i32[2,8]>',
        '  %11 = const {dtype="i32", value=5} : i32',          # sign bit position
        '  %12 = shr %8, %11 : tile<i32[2,8]>',
        '  %13 = const {dtype="i32", value=31} : i32',
        '  %14 = shl %12, %13 : tile<i32[2,8]>',              # sign to bit 31
        '  %15 = const {dtype="i32", value=21} : i32',         # 23 - 2 mantissa bits
        '  %16 = shl %10, %15 : tile<i32[2,8]>',
        f'  %17 = const {{dtype="i32", value={(127 - 3) << 23}}} : i32',  # (127 - bias) << 23
        '  %18 = add %16, %17 : tile<i32[2,8]>',              # normal codes
        '  %19 = cast %10 {dtype="f32"} : tile<f32[2,8]>',
        f'  %20 = const {{dtype="f32", value={2.0 ** (1 - 3 - 2)!r}}} : f32',  # 2^(1-bias-m)
        '  %21 = mul %19, %20 : tile<f32[2,8]>',              # subnormal codes, exactly
        '  %22 = bitcast %21 {dtype="i32"} : tile<i32[2,8]>',
        '  %23 = const {dtype="i32", value=4} : i32',          # exponent field 0: mag < 2^m
        '  %24 = lt %10, %23 : tile<bool[2,8]>',
        '  %25 = where %24, %22, %18 : tile<i32[2,8]>',
        '  %26 = or %25, %14 : tile<i32[2,8]>',
        '  %27 = bitcast %26 {dtype="f32"} : tile<f32[2,8]>',
    ]


def test_lower_formats_float_with_nan_codes_patches_them_with_a_select():
    lines = formats_lines("f8e4m3fn")
    assert '  %26 = or %25, %14 : tile<i32[2,8]>' in lines
    assert lines[-5:] == [
        '  %27 = const {dtype="i32", value=127} : i32',      # S.1111.111 is NaN
        '  %28 = eq %10, %27 : tile<bool[2,8]>',
        f'  %29 = const {{dtype="i32", value={0x7FC00000}}} : i32',
        '  %30 = where %28, %29, %26 : tile<i32[2,8]>',
        '  %31 = bitcast %30 {dtype="f32"} : tile<f32[2,8]>',
    ]


def test_lower_formats_ieee_float_patches_signed_inf_and_nan():
    lines = formats_lines("f8e5m2")
    assert lines[-9:] == [
        '  %27 = const {dtype="i32", value=124} : i32',      # exponent all ones: 11111.00
        f'  %28 = const {{dtype="i32", value={0x7F800000}}} : i32',
        '  %29 = or %14, %28 : tile<i32[2,8]>',              # signed inf
        '  %30 = eq %10, %27 : tile<bool[2,8]>',
        f'  %31 = const {{dtype="i32", value={0x7FC00000}}} : i32',
        '  %32 = where %30, %29, %31 : tile<i32[2,8]>',
        '  %33 = ge %10, %27 : tile<bool[2,8]>',
        '  %34 = where %33, %32, %26 : tile<i32[2,8]>',
        '  %35 = bitcast %34 {dtype="f32"} : tile<f32[2,8]>',
    ]


def test_lower_formats_codebook_is_one_lookup():
    values = ", ".join(repr(float(v)) for v in lowbitc.dtype("nf4").values().astype(np.float32))
    assert formats_lines("nf4") == [
        '  %8 = codes %7 {dtype="i32"} : tile<i32[2,8]>',
        f'  %9 = lut %8 {{dtype="f32", values=[{values}]}} : tile<f32[2,8]>',
    ]


def test_lower_formats_to_a_narrow_float_converts_after_decoding():
    src = DEQUANT.replace("f32[R, C]", "f16[R, C]").replace("), f32))", "), f16))")
    lines = body(run_pipeline(ir(src, W="u4"), ["lower-formats"]))
    assert lines[3:6] == [
        '  %8 = codes %7 {dtype="i32"} : tile<i32[2,8]>',
        '  %9 = cast %8 {dtype="f32"} : tile<f32[2,8]>',
        '  %10 = cast %9 {dtype="f16"} : tile<f16[2,8]>',
    ]


def test_lower_formats_leaves_machine_casts_alone():
    src = """kernel c(x: i32[N], y: f32[N]) { store(y[0 :+ 4], cast(load(x[0 :+ 4]), f32)) }"""
    k = ir(src)
    assert run_pipeline(k, ["lower-formats"]) == k


# ------------------------------------------------------------------- bitpack

def test_bitpack_turns_load_plus_codes_into_load_codes():
    k = run_pipeline(ir(DEQUANT, W="u3"), ["lower-formats", "bitpack"])
    lines = body(k)
    assert lines[3] == ('  %8 = load_codes %w, %5, %6 {bits=3, dtype="i32", masked=false, '
                        'packing="", sizes=[2, 8]} : tile<i32[2,8]>')
    assert "codes" not in opcodes(k)
    after_dce = run_pipeline(k, ["dce"])
    assert opcodes(after_dce) == ["const", "const", "load_codes", "cast", "const", "const",
                                  "store"]


def test_bitpack_keeps_the_mask_of_a_masked_load():
    src = """kernel m[W: dtype](w: W[N], y: f32[N]) {
  inside = arange(16) < N
  store(y[0 :+ 16], cast(load(w[0 :+ 16], mask=inside), f32), mask=inside)
}"""
    k = run_pipeline(ir(src, W="u5"), ["lower-formats", "bitpack", "dce"])
    (lc,) = [op for op in walk(k.body.ops) if op.opcode == "load_codes"]
    assert (lc.attrs.bits, lc.attrs.masked, lc.attrs.sizes) == (5, True, (16,))
    assert str(lc.operands[-1].type) == "tile<bool[16]>"


def test_bitpack_leaves_machine_loads_alone():
    src = """kernel c(x: u8[N], y: f32[N]) { store(y[0 :+ 4], cast(load(x[0 :+ 4]), f32)) }"""
    k = run_pipeline(ir(src), ["lower-formats", "bitpack"])
    assert "load_codes" not in opcodes(k) and "load" in opcodes(k)


# ------------------------------------------------------------------- cse / dce

CSE_SRC = """kernel c(x: f32[N], y: f32[N]) {
  a = load(x[0 :+ 8])
  b = load(x[0 :+ 8])
  p = a * 2.0
  q = a * 2.0
  for i in range(0, 4) {
    r = a * 2.0
    t = exp(b)
    store(y[i :+ 8], r + t)
  }
  u = exp(b)
  store(y[0 :+ 8], p + q + u)
}"""


def test_cse_merges_pure_ops_but_never_wide_loads_or_inner_results():
    k = ir(CSE_SRC)
    after = run_pipeline(k, ["cse"])
    before_ops, after_ops = opcodes(k), opcodes(after)
    assert before_ops.count("load") == after_ops.count("load") == 2
    assert before_ops.count("mul") == 3 and after_ops.count("mul") == 1
    assert before_ops.count("exp") == after_ops.count("exp") == 2  # inner exp is not visible
    lines = body(after)
    (mul,) = [x for x in lines if " mul " in x]
    m = mul.split(" = ")[0].strip()
    assert any(f"= add {m}, {m} :" in x for x in lines)  # p + q became m + m
    assert after_ops.count("const") < before_ops.count("const")


# loads of one element per row: merged within a region up to the next write; wide windows never
ROW_LOADS = """kernel r(x: f32[N, K], y: f32[N, K]) {
  a = load(x[0 :+ 8, 0 :+ 1])
  b = load(x[0 :+ 8, 0 :+ 1])
  w1 = load(x[0 :+ 8, 0 :+ 4])
  w2 = load(x[0 :+ 8, 0 :+ 4])
  store(y[0 :+ 8, 0 :+ 1], a + b + 1.0)
  c = load(x[0 :+ 8, 0 :+ 1])
  for i in range(0, 2) {
    d = load(x[0 :+ 8, 0 :+ 1])
    e = load(x[0 :+ 8, 0 :+ 1])
    store(y[0 :+ 8, 0 :+ 1], d + e)
  }
  store(y[0 :+ 8, 4 :+ 4], w1 + w2 + c)
}"""


def test_cse_merges_row_loads_up_to_a_write():
    k = ir(ROW_LOADS)
    after = run_pipeline(k, ["cse"])
    # a and b merged; w1, w2 wide; c after a store; d and e merged, not with the outer ones
    assert opcodes(k).count("load") == 7 and opcodes(after).count("load") == 5
    # y the same array as x: every load after a store sees it
    for kern in (k, after):
        xy = np.arange(8 * 8, dtype=np.float32).reshape(8, 8)
        run(kern, xy, xy)
        if kern is k:
            want = xy
    np.testing.assert_array_equal(xy, want)
    x0 = np.arange(8 * 8, dtype=np.float32).reshape(8, 8)
    c = 2 * x0[:, 0] + 1
    assert np.array_equal(want[:, 0], 4 * c) and np.array_equal(want[:, 4], 2 * x0[:, 0] + c)


def test_dce_drops_unused_pure_ops_and_keeps_effects():
    src = """kernel d(x: f32[N], y: f32[N]) {
  a = load(x[0 :+ 8])
  unused = exp(a) * 3.0
  for i in range(0, 2) { junk = a + 1.0 }
  store(y[0 :+ 8], a)
}"""
    k = ir(src)
    after = run_pipeline(k, ["dce"])
    assert "exp" in opcodes(k) and "exp" not in opcodes(after)
    assert "mul" not in opcodes(after) and "add" not in opcodes(after)
    assert opcodes(after).count("store") == 1 and "for" in opcodes(after)
    assert run_pipeline(after, ["dce"]) == after  # a fixed point


def test_dce_removes_a_chain_to_a_fixed_point():
    src = """kernel d(x: f32[N], y: f32[N]) {
  a = load(x[0 :+ 8])
  b = a + 1.0
  c = b * 2.0
  d = exp(c)
  store(y[0 :+ 8], a)
}"""
    after = run_pipeline(ir(src), ["dce"])
    assert not {"add", "mul", "exp"} & set(opcodes(after))


# ------------------------------------------------------------------- pipelines

def test_pipeline_trace_names_every_pass_and_each_snapshot_verifies():
    k = ir(DEQUANT, W="f6e3m2")
    trace: list[tuple[str, Kernel]] = []
    out = run_pipeline(k, CPU_PIPELINE, trace=trace)
    assert [name for name, _ in trace] == list(CPU_PIPELINE)
    assert trace[-1][1] == out
    names = [name for name, _ in trace]

    def after(name: str, nth: int = 0) -> Kernel:
        return trace[[i for i, n in enumerate(names) if n == name][nth]][1]

    assert "cast" in opcodes(after("cse")) and "codes" not in opcodes(after("cse"))
    assert "codes" in opcodes(after("lower-formats"))
    assert "load_codes" in opcodes(after("bitpack"))
    consts = [op for op in walk(after("cse", 1).body.ops) if op.opcode == "const"]
    assert len({(op.attrs, op.results[0].type) for op in consts}) == len(consts)  # after cse
    assert "load" not in opcodes(out) and "codes" not in opcodes(out)           # after dce


def test_every_registered_pass_has_a_name_and_doc():
    assert set(CPU_PIPELINE) <= set(PASSES)
    for name, p in PASSES.items():
        assert p.name == name and p.doc


def test_unknown_pass_is_named_in_the_error():
    with pytest.raises(LoweringError, match="unknown pass 'vectorise'; known: .*bitpack"):
        run_pipeline(ir(DEQUANT, W="u4"), ["cse", "vectorise"])


def test_verify_after_every_pass_catches_a_broken_pass(monkeypatch):
    def breaks(k: Kernel) -> Kernel:  # drops the loads but keeps their users
        return replace(k, body=replace(k.body, ops=tuple(
            op for op in k.body.ops if op.opcode != "load")))

    monkeypatch.setitem(PASSES, "broken", Pass("broken", breaks, "test"))
    k = ir(DEQUANT, W="u4")
    trace: list = []
    with pytest.raises(VerifyError, match="used before it is defined"):
        run_pipeline(k, ["cse", "broken", "dce"], trace=trace)
    assert [n for n, _ in trace] == ["cse"]
    run_pipeline(k, ["broken"], verify_each=False)  # the caller may opt out


@pytest.mark.parametrize("fmt", ["u3", "i5", "b1", "f6e2m3", "f8e5m2", "f8e8m0fnu", "nf4"])
def test_every_prefix_of_the_cpu_pipeline_keeps_the_interpreters_results(fmt):
    f = lowbitc.dtype(fmt)
    src = """kernel dq[W: dtype](w: W[R, C], s: f32[R], y: f32[R, C]) grid (cdiv(R, 2)) {
  r = block.x * 2
  q = cast(load(w[r :+ 2, 0 :+ 8]), f32) * reshape(load(s[r :+ 2]), [2, 1])
  store(y[r :+ 2, 0 :+ 8], where(q == q, q, -1.0))
}"""
    k = ir(src, W=fmt)
    rng = np.random.default_rng(1)
    codes = rng.integers(0, f.num_codes, (5, 8)).astype(np.uint8)
    s = rng.uniform(-2, 2, 5).astype(np.float32)
    outs = []
    for n in range(len(CPU_PIPELINE) + 1):
        y = np.zeros((5, 8), np.float32)
        run(run_pipeline(k, CPU_PIPELINE[:n]), pack(codes, f.bits), s, y)
        outs.append(y)
    want = f.decode(codes) * s[:, None]
    want = np.where(np.isnan(want), -1.0, want).astype(np.float32)
    for y in outs:
        np.testing.assert_array_equal(y, want)


# ------------------------------------------------------------------- lower-encode

def canonical(lines: list[str]) -> list[str]:
    """Lines without the default (canonical) packing attribute of codes ops."""
    return [line.replace('packing="", ', "").replace(', packing=""', "") for line in lines]


QUANT = """kernel q[F: dtype](x: f32[R, C], w: F[R, C]) {
  store(w[0 :+ 2, 0 :+ 8], cast(load(x[0 :+ 2, 0 :+ 8]), F))
}
"""


def test_lower_encode_searches_thresholds_and_stores_codes():
    # u2: 4 values, 3 midpoints; a tie goes to the even code, so 0.5 and 2.5 are nudged up
    # one ulp (they round down) and 1.5 is not (it rounds up to 2)
    assert canonical(body(run_pipeline(ir(QUANT, F="u2"), ["lower-encode"])))[3:] == [
        '  %8 = const {dtype="f32", value=1.5} : f32',
        '  %9 = ge %7, %8 : tile<bool[2,8]>',
        '  %10 = const {dtype="i32", value=2} : i32',
        '  %11 = const {dtype="i32", value=0} : i32',
        '  %12 = where %9, %10, %11 : tile<i32[2,8]>',
        '  %13 = lut %12 {dtype="f32", values=[0.5000000596046448, 1.5, 2.500000238418579]}'
        ' : tile<f32[2,8]>',
        '  %14 = ge %7, %13 : tile<bool[2,8]>',
        '  %15 = const {dtype="i32", value=1} : i32',
        '  %16 = add %12, %15 : tile<i32[2,8]>',
        '  %17 = where %14, %16, %12 : tile<i32[2,8]>',
        '  %18 = from_codes %17 {dtype="u2"} : tile<u2[2,8]>',
        '  %19 = const {dtype="i64", value=0} : i64',
        '  %20 = const {dtype="i64", value=0} : i64',
        '  store_codes %w, %19, %20, %17 {bits=2, dtype="i32", masked=false, sizes=[2, 8]}',
    ]


def test_lower_encode_float_patches_negative_zero_and_keeps_the_code_table():
    lines = body(run_pipeline(ir(QUANT, F="f4e2m1"), ["lower-encode", "dce"]))
    text = "\n".join(lines)
    assert text.count(" lut ") == 4  # 3 search steps after a constant first one, 1 code table
    assert 'bitcast %7 {dtype="i32"}' in text  # the sign of x, for -0 (code 8)
    assert re.search(r'const \{dtype="i32", value=8\}', text) and " cast " not in text


def test_lower_encode_turns_packed_loads_that_are_not_decoded_into_load_codes():
    src = """kernel c(w: u3[R, C], v: u3[R, C]) {
  store(v[0 :+ 2, 0 :+ 8], load(w[0 :+ 2, 0 :+ 8]))
}"""
    lines = canonical(body(run_pipeline(ir(src), ["lower-encode", "dce"])))
    assert lines[2] == ('  %7 = load_codes %w, %5, %6 {bits=3, dtype="i32", masked=false, '
                        'sizes=[2, 8]} : tile<i32[2,8]>')
    assert lines[-1].startswith("  store_codes %v, %") and lines[-1].count("%7") == 1
