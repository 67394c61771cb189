"""The linearize pass: golden text of the offsets and strides it adds, the verifier's check of
them, the round trip, and the interpreter and the LLVM backend running linearized windows."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest
from test_passes import body, ir

import lowbitc
from lowbitc.backends.llvm.backend import BACKEND
from lowbitc.errors import VerifyError
from lowbitc.interp import run
from lowbitc.ir import Kernel, parse, print_kernel, verify, walk
from lowbitc.packing import pack
from lowbitc.passes import CPU_PIPELINE, run_pipeline

DQ = """kernel dq[W: dtype](w: W[R, C], s: f32[R], y: f32[R, C]) grid (cdiv(R, 2)) {
  r = block.x * 2
  q = cast(load(w[r :+ 2, 0 :+ 8]), f32) * reshape(load(s[r :+ 2]), [2, 1])
  store(y[r :+ 2, 0 :+ 8], q)
}"""


def test_linearize_golden_packed_rows_in_words_and_dense_offsets_in_elements():
    k = run_pipeline(ir(DQ, W="u3"), ["lower-formats", "bitpack", "dce", "linearize"])
    assert body(k) == [
        '  %10 = const {dtype="i64", value=3} : i64',  # words per row: (C * 3 + 31) >> 5
        "  %11 = mul %C, %10 : i64",
        '  %12 = const {dtype="i64", value=31} : i64',
        "  %13 = add %11, %12 : i64",
        '  %14 = const {dtype="i64", value=5} : i64',
        "  %15 = shr %13, %14 : i64",
        "  %16 = block_id {axis=0} : i64",
        '  %17 = const {dtype="i64", value=2} : i64',
        "  %18 = mul %16, %17 : i64",
        '  %19 = const {dtype="i64", value=0} : i64',
        "  %20 = mul %18, %15 : i64",  # the window's first row, in words
        '  %21 = load_codes %w, %18, %19, %20, %15 {bits=3, dtype="i32", linear=true, '
        'masked=false, packing="", sizes=[2, 8]} : tile<i32[2,8]>',
        '  %22 = cast %21 {dtype="f32"} : tile<f32[2,8]>',
        '  %23 = load %s, %18, %18 {layout="", linear=true, masked=false, sizes=[2]} : '
        "tile<f32[2]>",  # rank 1: the offset is the start, no strides
        "  %24 = reshape %23 {shape=[2, 1]} : tile<f32[2,1]>",
        "  %25 = mul %22, %24 : tile<f32[2,8]>",
        '  %26 = const {dtype="i64", value=0} : i64',
        "  %27 = mul %18, %C : i64",  # row * C + column, in elements
        "  %28 = add %27, %26 : i64",
        '  store %y, %18, %26, %28, %C, %25 {layout="", linear=true, masked=false, sizes=[2, 8]}',
    ]


def test_linearize_three_dims_multiplies_row_strides_and_keeps_masks_last():
    src = """kernel t(x: f32[A, B, C], y: f32[A, B, C]) {
  m = arange(4) < C
  v = load(x[1, 0 :+ 2, 0 :+ 4], mask=m)
  store(y[1, 0 :+ 2, 0 :+ 4], v, mask=m)
}"""
    k = run_pipeline(ir(src), ["linearize"])
    lines = body(k)
    assert "  %6 = mul %C, %B : i64" in lines  # stride of dim 0; dim 1's is C
    (ld,) = [x for x in lines if " = load " in x]
    (st,) = [x for x in lines if x.startswith("  store ")]
    assert re.match(r"  %\d+ = load %x, %\d+, %\d+, %\d+, %\d+, %6, %C, %\d+ \{.*linear=true", ld)
    assert re.match(r"  store %y, %\d+, %\d+, %\d+, %\d+, %6, %C, %\d+, %\d+ \{.*linear=true", st)
    assert run_pipeline(k, ["linearize"]) == k  # already linear: nothing to add


def test_linearize_leaves_layout_specific_packings_and_shared_tiles_alone():
    k = run_pipeline(ir(DQ, W="u4"), ["lower-formats", "bitpack", "dce"])
    lanes = run_pipeline(k, ["linearize"], verify_each=True)  # canonical: linearized
    assert any(op.opcode == "load_codes" and op.attrs.linear for op in walk(lanes.body.ops))
    packed = Kernel(
        k.name,
        k.params,
        k.dims,
        k.grid,
        replace(
            k.body,
            ops=tuple(
                replace(op, attrs=replace(op.attrs, packing="lanes16x128"))
                if op.opcode == "load_codes"
                else op
                for op in k.body.ops
            ),
        ),
        k.threads,
        k.meta,
        k.loc,
    )
    out = run_pipeline(packed, ["linearize"])
    (lc,) = [op for op in walk(out.body.ops) if op.opcode == "load_codes"]
    assert not lc.attrs.linear and len(lc.operands) == 3


def test_verifier_checks_the_linear_operands():
    k = run_pipeline(ir(DQ, W="u3"), ["lower-formats", "bitpack", "dce"])
    bad = replace(
        k,
        body=replace(
            k.body,
            ops=tuple(
                replace(op, attrs=replace(op.attrs, linear=True)) if op.opcode == "store" else op
                for op in k.body.ops
            ),
        ),
    )
    with pytest.raises(VerifyError, match="linear needs 2 i64 scalars"):
        verify(bad)


@pytest.mark.parametrize("fmt", ["u3", "i5", "f6e2m3", "nf4"])
def test_linearized_kernels_round_trip_and_agree_in_interpreter_and_llvm(fmt):
    f = lowbitc.dtype(fmt)
    rng = np.random.default_rng(3)
    codes = rng.integers(0, f.num_codes, (5, 8)).astype(np.uint8)
    s = rng.uniform(-2, 2, 5).astype(np.float32)
    low = run_pipeline(ir(DQ, W=fmt), CPU_PIPELINE)
    assert parse(print_kernel(low)) == low
    assert sum(getattr(op.attrs, "linear", False) for op in walk(low.body.ops)) == 3
    want = (f.decode(codes) * s[:, None]).astype(np.float32)
    y_interp, y_llvm = np.zeros((5, 8), np.float32), np.zeros((5, 8), np.float32)
    run(low, pack(codes, f.bits), s, y_interp)
    lowbitc.compile(DQ, backend="llvm", W=fmt)(pack(codes, f.bits), s, y_llvm)
    np.testing.assert_array_equal(y_interp, want)
    np.testing.assert_array_equal(y_llvm, want)


def test_the_llvm_backend_addresses_linearized_windows_by_their_ir_strides():
    # the store's row stride replaced by the dim R: the backend must write rows R apart
    src = """kernel c(x: f32[R, C], y: f32[R, C]) {
  store(y[0 :+ 3, 0 :+ 8], load(x[0 :+ 3, 0 :+ 8]))
}"""
    low = run_pipeline(ir(src), CPU_PIPELINE)
    (st,) = [op for op in low.body.ops if op.opcode == "store"]
    assert st.attrs.linear and st.operands[4] == low.param("C")
    st2 = replace(st, operands=st.operands[:4] + (low.param("R"),) + st.operands[5:])
    skewed = replace(
        low, body=replace(low.body, ops=tuple(st2 if op is st else op for op in low.body.ops))
    )
    x = np.arange(24, dtype=np.float32).reshape(3, 8)
    for k in (low, skewed):
        y = np.zeros(24, np.float32)
        BACKEND.compile(verify(k))(x, y.reshape(3, 8))
        want = np.zeros(24, np.float32)
        rows = 8 if k is low else 3
        for r in range(3):
            want[r * rows : r * rows + 8] = x[r]
        np.testing.assert_array_equal(y, want)
