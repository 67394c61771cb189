"""The vectorize pass: golden text of the widths it records, pass options, the round trip,
and the LLVM backend emitting the recorded widths (a register layout changes the code)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from test_passes import ir

import lowbitc
from lowbitc.backends.llvm.target import host_vector_bits
from lowbitc.errors import LoweringError
from lowbitc.interp import run
from lowbitc.ir import Kernel, parse, print_kernel, walk
from lowbitc.passes import CPU_PIPELINE, run_pipeline

LAYOUT = """kernel lay(x: f32[8, 16], s: f32[8, 1], y: f32[8, 16]) {
  t = load(x[0 :+ 8, 0 :+ 16], layout=LAYOUT)
  c = load(s[0 :+ 8, 0 :+ 1])
  store(y[0 :+ 8, 0 :+ 16], where(t > 0.5, t * 2.0 + c, cast(cast(t, i32), f32)))
}
"""
# one thread: a 2x4 grid of 4x4 blocks (rows of 4 kept together) or one 8x16 block
BLOCKS, WHOLE = "local(2, 4) * local(4, 4)", "local(8, 16)"


def widths(k: Kernel) -> list[tuple[str, int]]:
    return [(op.opcode, op.attrs.vec) for op in walk(k.body.ops) if getattr(op.attrs, "vec", 0)]


def lines(k: Kernel, opcode: str) -> list[str]:
    text = print_kernel(k)
    return [
        re.sub(r' loc\("[^"]*":\d+:\d+\)', "", x).strip()
        for x in text.splitlines()
        if f"= {opcode} " in x
    ]


def test_vectorize_records_the_innermost_mode_of_the_layout_golden():
    k = run_pipeline(ir(LAYOUT.replace("LAYOUT", BLOCKS)), ["infer-layouts", "vectorize"])
    tv = 'layout="tv((8,16), modes=(2,4,4,4), spatial=(), local=(0,2,1,3))"'
    assert lines(k, "mul") == [f"%13 = mul %6, %12 {{vec=4}} : tile<f32[8,16], {tv}>"]
    assert lines(k, "cast") == [
        f'%15 = cast %6 {{dtype="i32", vec=4}} : tile<i32[8,16], {tv}>',
        f'%16 = cast %15 {{dtype="f32", vec=4}} : tile<f32[8,16], {tv}>',
    ]
    whole = run_pipeline(ir(LAYOUT.replace("LAYOUT", WHOLE)), ["infer-layouts", "vectorize"])
    assert set(widths(whole)) == {("gt", 16), ("mul", 16), ("add", 16), ("cast", 16), ("where", 16)}


def test_vectorize_without_a_layout_takes_the_whole_row_and_the_target_width():
    src = """kernel v(x: i8[4, 64], y: i8[4, 64], z: f64[4, 64], w: f16[4, 64]) {
  a = load(x[0 :+ 4, 0 :+ 64])
  store(y[0 :+ 4, 0 :+ 64], a + a)
  store(z[0 :+ 4, 0 :+ 64], cast(a, f64))
  store(w[0 :+ 4, 0 :+ 64], cast(a, f16))
}"""
    k = ir(src)
    assert widths(run_pipeline(k, ["vectorize"])) == [("add", 64), ("cast", 8), ("cast", 1)]
    assert widths(run_pipeline(k, ["vectorize{bits=256}"])) == [
        ("add", 32),
        ("cast", 4),
        ("cast", 1),
    ]  # f64: 4 lanes; f16 stays scalar
    odd = ir(src.replace("4, 64]", "4, 12]").replace(":+ 64", ":+ 12"))
    assert widths(run_pipeline(odd, ["vectorize"]))[:2] == [("add", 4), ("cast", 4)]


def test_vectorize_leaves_scalars_and_the_text_of_unvectorized_ops_alone():
    src = "kernel s(x: f32[N], y: f32[N], a: f32) { store(y[0 :+ 8], load(x[0 :+ 8]) * (a + 1.0)) }"
    k = run_pipeline(ir(src), ["vectorize"])
    assert lines(k, "add") == ["%8 = add %a, %7 : f32"]
    assert lines(k, "mul") == ["%9 = mul %6, %8 {vec=8} : tile<f32[8]>"]
    assert "vec" not in print_kernel(ir(src))  # an unset late attribute is not printed


@pytest.mark.parametrize("layout", [BLOCKS, WHOLE])
def test_vectorized_ir_round_trips_and_runs_in_the_interpreter(layout):
    k = run_pipeline(ir(LAYOUT.replace("LAYOUT", layout)), CPU_PIPELINE)
    assert parse(print_kernel(k)) == k
    rng = np.random.default_rng(0)
    x, s = rng.random((8, 16), np.float32), rng.random((8, 1), np.float32)
    y = np.zeros((8, 16), np.float32)
    run(k, x, s, y)
    np.testing.assert_array_equal(y, want(x, s))


def want(x: np.ndarray, s: np.ndarray) -> np.ndarray:
    return np.where(x > 0.5, x * np.float32(2) + s, x.astype(np.int32).astype(np.float32))


def test_pass_options_are_checked():
    k = ir(LAYOUT.replace("LAYOUT", WHOLE))
    with pytest.raises(LoweringError, match="vectorize: unknown option 'lanes'; known: bits"):
        run_pipeline(k, ["vectorize{lanes=4}"])
    with pytest.raises(LoweringError, match="option bits takes an integer, got 'wide'"):
        run_pipeline(k, ["vectorize{bits=wide}"])
    with pytest.raises(LoweringError, match="bits must be a power of two >= 8, got 100"):
        run_pipeline(k, ["vectorize{bits=100}"])


def test_a_register_layout_changes_the_llvm_vectors_and_both_agree_with_the_interpreter():
    rng = np.random.default_rng(2)
    x, s = rng.random((8, 16), np.float32), rng.random((8, 1), np.float32)
    seen = {}
    for layout in (BLOCKS, WHOLE):
        k = lowbitc.compile(LAYOUT.replace("LAYOUT", layout), backend="llvm")
        text = k.text("llvm")
        seen[layout] = {int(w) for w in re.findall(r"fmul (?:\w+ )*<(\d+) x float>", text)}
        y, ref = np.zeros((8, 16), np.float32), np.zeros((8, 16), np.float32)
        k(x, s, y)
        run(k.lowered, x, s, ref)
        np.testing.assert_array_equal(y, ref)
        np.testing.assert_array_equal(y, want(x, s))
    assert seen == {BLOCKS: {4}, WHOLE: {min(16, host_vector_bits() // 32)}}  # the host's widest
