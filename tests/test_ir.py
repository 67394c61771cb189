"""The textual tile IR: `parse(print_kernel(k)) == k` for every shipped and example kernel,
before and after every pass; source locations on every body op; verifier rejections with
golden messages."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from lowbitc.compiler import load, pick_kernel
from lowbitc.dsl.lower import lower_kernel
from lowbitc.errors import DSLSyntaxError, LowbitcError, VerifyError
from lowbitc.ir import Kernel, parse, print_kernel, verify, walk
from lowbitc.ir.memory_rules import MEMORY_RULES
from lowbitc.ir.opdefs import OPS
from lowbitc.ir.type_rules import VALUE_RULES
from lowbitc.passes import CPU_PIPELINE, PASSES, run_pipeline

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "lowbitc" / "kernels"
EXAMPLES = ROOT / "examples"

# (file, compile-time params): a spread of formats over every decode path (integer, bipolar,
# finite float, float with NaN/inf codes, code book, exponent-only, machine int8)
CONFIGS = [
    (SHIPPED / "matmul.lbk", {"W": "u4"}),
    (SHIPPED / "matmul.lbk", {"W": "u3", "ZP": True}),
    (SHIPPED / "matmul.lbk", {"W": "f6e3m2", "A": "f16"}),
    (SHIPPED / "matmul.lbk", {"W": "nf4", "A": "bf16", "BM": 1}),
    (SHIPPED / "matmul.lbk", {"W": "b1", "BN": 16}),
    (SHIPPED / "matmul.lbk", {"W": "i8"}),
    (SHIPPED / "matmul_a8.lbk", {"W": "u4"}),
    (SHIPPED / "matmul_a8.lbk", {"W": "f4e2m1fn", "SC": 2.0, "LO": -12.0, "ZP": True}),
    (SHIPPED / "matmul_mix.lbk", {}),
    (SHIPPED / "matmul_mix.lbk", {"T": 2, "ZP": True, "A": "f16"}),
    (SHIPPED / "quantize_a8.lbk", {}),
    (SHIPPED / "quantize_a8.lbk", {"A": "bf16", "BM": 16, "QB": 64}),
    (SHIPPED / "dequantize.lbk", {"W": "u4"}),
    (SHIPPED / "dequantize.lbk", {"W": "i3", "ZP": True}),
    (SHIPPED / "dequantize.lbk", {"W": "f8e5m2"}),
    (SHIPPED / "dequantize.lbk", {"W": "f8e4m3fn"}),
    (SHIPPED / "dequantize.lbk", {"W": "f8e8m0fnu"}),
    (SHIPPED / "chop.lbk", {"F": "f4e2m1fn", "MODE": 5}),
    (SHIPPED / "chop.lbk", {"F": "nf4", "MODE": 3, "SC": True, "FTZ": True, "SAT": False}),
    (SHIPPED / "matmul_mma.lbk", {"W": "u4"}),
    (SHIPPED / "matmul_mma.lbk", {"W": "u3", "ZP": True}),
    (SHIPPED / "matmul_mma.lbk", {"W": "u4", "A": "bf16", "SK": 2}),
    (SHIPPED / "splitk_sum.lbk", {"SK": 3}),
    (SHIPPED / "attention.lbk", {"kernel": "attention_split", "WK": "u2", "WV": "u4"}),
    (SHIPPED / "attention.lbk", {"kernel": "attention_combine"}),
    (SHIPPED / "kv_quantize.lbk", {"kernel": "quantize_keys", "W": "u4"}),
    (SHIPPED / "kv_quantize.lbk", {"kernel": "quantize_values", "W": "f8e4m3fn", "ZP": False}),
    (EXAMPLES / "tc_gemm.lbk", {"W": "u4"}),
    (EXAMPLES / "q4_0_dequant.lbk", {}),
    (EXAMPLES / "dequant_silu.lbk", {"W": "u4"}),
    (EXAMPLES / "dequant_silu.lbk", {"W": "nf4", "ZP": False}),
    (EXAMPLES / "quantize_rows.lbk", {"W": "u3", "GROUP": 10}),
    (EXAMPLES / "quantize_rows.lbk", {"W": "nf4", "ZP": False, "QMIN": -1.0, "QMAX": 1.0}),
]
IDS = [f"{p.stem}-{'-'.join(f'{k}={v}' for k, v in c.items()) or 'defaults'}" for p, c in CONFIGS]


def lowered_ir(path: Path, params: dict) -> Kernel:
    """The lowered IR of `path`'s kernel (params["kernel"] names it in a file of several)."""
    params = dict(params)
    name = params.pop("kernel", None)
    module, _ = load(path)
    return lower_kernel(module, pick_kernel(module, name), params)


def assert_round_trip(k: Kernel) -> None:
    text = print_kernel(k)
    back = parse(text)
    assert back == k
    assert print_kernel(back) == text


def test_every_example_kernel_is_covered():
    covered = {p.name for p, _ in CONFIGS}
    assert {p.name for p in EXAMPLES.glob("*.lbk")} <= covered
    assert {p.name for p in SHIPPED.glob("*.lbk")} <= covered


@pytest.mark.parametrize(("path", "params"), CONFIGS, ids=IDS)
def test_round_trip_before_and_after_every_pass(path, params):
    k = lowered_ir(path, params)
    assert_round_trip(k)
    for name in sorted(PASSES):  # each pass alone on the DSL's IR
        assert_round_trip(verify(PASSES[name].run(k)))
    trace: list[tuple[str, Kernel]] = []
    run_pipeline(k, CPU_PIPELINE, trace=trace)
    assert [n for n, _ in trace] == list(CPU_PIPELINE)
    for _, snapshot in trace:
        assert_round_trip(snapshot)


@pytest.mark.parametrize(("path", "params"), CONFIGS[:1] + CONFIGS[-2:], ids=IDS[:1] + IDS[-2:])
def test_every_body_op_keeps_its_source_location(path, params):
    k = lowered_ir(path, params)
    lines = path.read_text().count("\n") + 1
    for snapshot in (k, run_pipeline(k, CPU_PIPELINE)):
        ops = list(walk(snapshot.body.ops))
        assert ops
        for op in ops:
            assert op.loc is not None, f"{op.opcode} has no source location"
            assert op.loc.file == str(path) and 1 <= op.loc.line <= lines


def test_printed_ids_are_canonical_after_dce():
    # dce used to leave gaps in the numbering, which the parser rejects
    k = run_pipeline(lowered_ir(SHIPPED / "dequantize.lbk", {"W": "u3"}), ["lower-formats",
                                                                         "bitpack", "dce"])
    assert_round_trip(k)


# ---------------------------------------------------------------- verifier rejections

HEAD = """kernel @k(%x: tensor<f32[N]>, %y: tensor<f32[N]>) dims(%N: i64) threads=1 meta() {
grid:
  %3 = const {dtype="i64", value=1} : i64
  yield %3
body:
  %4 = const {dtype="i64", value=0} : i64
  %5 = load %x, %4 {layout="", masked=false, sizes=[8]} : tile<f32[8]> loc("t.lbk":3:5)
"""
TAIL = """  store %y, %4, %5 {layout="", masked=false, sizes=[8]}
}
"""


def check(body: str) -> Kernel:
    return verify(parse(HEAD + body + TAIL, "t.ir"))


def test_the_well_formed_skeleton_verifies_and_round_trips():
    assert_round_trip(check(""))
    # an if with results (its types come from the branches' yields)
    assert_round_trip(check('  %6 = lt %4, %4 : bool\n'
                            "  %7 = if %6 : i64 region() {\n    yield %4\n  } region() {\n"
                            "    %8 = const {dtype=\"i64\", value=3} : i64\n    yield %8\n  }\n"))


REJECTIONS = [
    ('  %6 = add %5, %4 : tile<f32[8]> loc("t.lbk":4:7)\n',
     VerifyError, "t.lbk:4:7: VerifyError: add: operand formats differ: f32, i64"),
    ('  %6 = add %5, %5 : tile<f32[4]> loc("t.lbk":4:7)\n',
     VerifyError, "t.lbk:4:7: VerifyError: add: result types tile<f32[4]> but the op gives "
     "tile<f32[8]>"),
    ("  %6 = dot %5, %5, %5 : tile<f32[8]>\n",
     VerifyError, "dot: needs 2-D tiles, got tile<f32[8]>, tile<f32[8]>, tile<f32[8]>"),
    ('  %6 = reshape %5 {shape=[8, 1]} : tile<f32[8,1]>\n'
     '  %7 = reshape %5 {shape=[1, 8]} : tile<f32[1,8]>\n'
     '  %8 = full {dtype="f32", shape=[8, 8], value=0.0} : tile<f32[8,8]>\n'
     '  %9 = dot %6, %6, %8 : tile<f32[8,8]>\n',
     VerifyError, "dot: shapes do not chain: tile<f32[8,1]> @ tile<f32[8,1]> + tile<f32[8,8]>"),
    ('  %6 = reshape %5 {shape=[3, 3]} : tile<f32[3,3]>\n',
     VerifyError, "reshape: cannot reshape tile<f32[8]> to [3, 3]"),
    ('  %6 = transpose %5 {perm=[1, 0]} : tile<f32[8]>\n',
     VerifyError, "transpose: perm [1, 0] does not fit tile<f32[8]>"),
    ('  %6 = reduce %5 {axis=0, kind="prod"} : f32\n',
     VerifyError, "reduce: kind must be sum, max or min, got 'prod'"),
    ('  %6 = shl %5, %5 : tile<f32[8]>\n', VerifyError, "shl: needs integer operands, got f32"),
    ('  %6 = exp %4 : i64\n', VerifyError, "exp: needs float operands, got i64"),
    ('  %6 = where %5, %5, %5 : tile<f32[8]>\n', VerifyError,
     "where: condition must be bool, got f32"),
    ('  %6 = cast %5 {bits=3, dtype="f32"} : tile<f32[8]>\n',
     VerifyError, "cast: unknown attributes ['bits']"),
    ('  %6 = const {dtype="f32", value=1.0} : f32\n'
     "  for %4, %6, %6 {unroll=false} region(%7: i64) {\n    yield\n  }\n",
     VerifyError, "for: start, stop and step must be i64"),
    ('  %6 = const {dtype="i64", value=1} : i64\n'
     "  for %4, %6, %6 {unroll=false} region(%7: i64) {\n    %8 = add %7, %6 : i64\n  }\n",
     VerifyError, "for: region must end in yield"),
    ('  %6 = const {dtype="i64", value=1} : i64\n'
     "  %7 = for %4, %6, %6, %5 {unroll=false} region(%8: i64, %9: tile<f32[8]>) {\n"
     "    yield %8\n  } : tile<f32[8]>\n",
     DSLSyntaxError, None),  # types come before the region in the printed form
    ('  %6 = const {dtype="i64", value=1} : i64\n'
     "  %7 = for %4, %6, %6, %5 {unroll=false} : tile<f32[8]> region(%8: i64, %9: tile<f32[8]>)"
     " {\n    yield %8\n  }\n",
     VerifyError, "for: yield types differ from the op's results"),
    ("  yield\n", VerifyError, "yield must be the last op of its region"),
    ('  %6 = lt %4, %4 : bool\n'
     "  %7 = if %6 : i64 region() {\n    yield %4\n  } region() {\n    yield %5\n  }\n",
     VerifyError, "if: yield types differ from the op's results"),
    ('  %6 = lt %4, %4 : bool\n'
     "  if %6 region() {\n    yield\n  }\n",
     VerifyError, "if: needs 2 regions, has 1"),
    ('  %6 = load %x, %4, %4 {layout="", masked=false, sizes=[8, 1]} : tile<f32[8,1]>\n',
     VerifyError, "load: tensor<f32[N]> has 1 dims; got 2 starts, 2 sizes"),
    ('  %6 = cast %5 {dtype="i32"} : tile<i32[8]>\n'
     '  store %y, %4, %6 {layout="", masked=false, sizes=[8]}\n',
     VerifyError, "store: value is i32, tensor holds f32"),
    ('  %6 = load %x, %4, %5 {layout="", masked=true, sizes=[8]} : tile<f32[8]>\n',
     VerifyError, "load: mask must be a bool tile that broadcasts to [8], got tile<f32[8]>"),
    ("  %6 = frob %5 : i64\n", DSLSyntaxError, "t.ir:8:8: DSLSyntaxError: unknown opcode 'frob'"),
    ("  %6 = add %5, %9 : i64\n", DSLSyntaxError,
     "t.ir:8:16: DSLSyntaxError: undefined value '%9'"),
    ("  %7 = add %5, %5 : tile<f32[8]>\n", DSLSyntaxError, None),
]


@pytest.mark.parametrize(("body", "error", "message"), REJECTIONS,
                         ids=[f"r{i}" for i in range(len(REJECTIONS))])
def test_verifier_rejections_have_golden_messages(body, error, message):
    with pytest.raises(error) as info:
        check(body)
    if message is not None:
        assert str(info.value).splitlines()[0] == message


def test_codes_are_not_arithmetic():
    text = (HEAD.replace("tensor<f32[N]>, %y", "tensor<u4[N]>, %y")
            .replace("tile<f32[8]> loc", "tile<u4[8]> loc")
            + '  %6 = add %5, %5 : tile<u4[8]> loc("t.lbk":9:3)\n}\n')
    with pytest.raises(VerifyError) as info:
        verify(parse(text))
    assert str(info.value) == ("t.lbk:9:3: VerifyError: add: arithmetic on u4 codes needs a "
                               "cast to a machine type first")


def test_every_opcode_has_one_type_rule():
    """The op table pairs each opcode's attributes with exactly one rule (values or memory)."""
    assert not set(VALUE_RULES) & set(MEMORY_RULES)
    assert set(OPS) == set(VALUE_RULES) | set(MEMORY_RULES)
    assert all(OPS[n].infer is rule for n, rule in {**VALUE_RULES, **MEMORY_RULES}.items())


def test_kernel_level_invariants():
    k = check("")
    dup = replace(k, dims=(replace(k.dims[0], name="x"),))
    with pytest.raises(VerifyError, match="parameter and dim names must be unique"):
        verify(dup)
    with pytest.raises(VerifyError, match="threads must be >= 1, got 0"):
        verify(replace(k, threads=0))
    no_counts = replace(k, grid=replace(k.grid, ops=k.grid.ops[:1]))
    with pytest.raises(VerifyError, match="grid must yield 1-3 block counts"):
        verify(no_counts)


def test_parse_errors_point_at_the_text():
    with pytest.raises(DSLSyntaxError) as info:
        parse("kernel @k() dims() threads=1 meta() {\ngrid:\n  %0 = const {dtype=\"i64\", "
              "value=1} i64\n  yield %0\nbody:\n}\n", "x.ir")
    assert isinstance(info.value, LowbitcError)
    assert str(info.value).splitlines()[0] == ("x.ir:3:37: DSLSyntaxError: expected ':' but "
                                               "found 'i64'")
    with pytest.raises(DSLSyntaxError, match="expected 'kernel'"):
        parse("graph @k")
