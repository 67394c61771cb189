"""Dequantization lowering and the LLVM backend on every code of every format.

For each format, one kernel loads all of its codes (canonical packing) and casts them to f32.
The interpreter before lowering, the interpreter after the CPU pipeline and the JIT-compiled
kernel must all equal fmt.decode bit for bit (NaN for NaN, signed zeros kept).
"""

import numpy as np
import pytest

import lowbitc
from lowbitc.compiler import compile
from lowbitc.interp import run
from lowbitc.ir.types import is_machine, numpy_dtype
from lowbitc.packing import pack
from lowbitc.passes import CPU_PIPELINE, run_pipeline

SRC = """
kernel decode_all[W: dtype, NC: int](w: W[R, C], y: f32[R, C]) grid (1) {
  store(y[0 :+ 1, 0 :+ NC], cast(load(w[0 :+ 1, 0 :+ NC]), f32))
}
"""

FORMATS = sorted(lowbitc.dtypes())


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    nan = np.isnan(a)
    return bool(np.array_equal(nan, np.isnan(b))
                and np.array_equal(a[~nan].view(np.uint32), b[~nan].view(np.uint32)))


def _check(fmt_name: str, fmt=None) -> None:
    fmt = fmt or lowbitc.dtype(fmt_name)
    n = fmt.num_codes
    codes = np.arange(n, dtype=np.uint8)[None, :]
    # machine-typed 8-bit integers (u8, i8) are passed as plain arrays, other formats packed
    words = codes.view(numpy_dtype(fmt_name)) if is_machine(fmt_name) else pack(codes, fmt.bits)
    want = fmt.decode(codes)
    k = compile(SRC, W=fmt, NC=n)
    outs = {}
    for name, fn in {
        "interpreter": lambda y: run(k.ir, words, y, C=n),
        "lowered": lambda y: run(run_pipeline(k.ir, CPU_PIPELINE), words, y, C=n),
        "llvm": lambda y: k(words, y, C=n),
    }.items():
        y = np.full((1, n), 7.0, np.float32)
        fn(y)
        outs[name] = y
    for name, y in outs.items():
        assert _same(y, want), f"{fmt_name}: {name} differs from decode: {y} vs {want}"


@pytest.mark.parametrize("fmt_name", FORMATS)
def test_every_code_of_every_format(fmt_name):
    _check(fmt_name)


def test_codebook_format():
    cb = lowbitc.codebook([-1.5, -0.25, 0.0, 0.125, 0.5, 0.75, 1.0, 3.0], name="cb_test8")
    _check(cb.name, cb)


def test_lowered_ir_has_no_format_casts():
    k = compile(SRC, W="f6e3m2", NC=64)
    low = run_pipeline(k.ir, CPU_PIPELINE)
    text = k.text("lowered")
    assert "load_codes" in text and "bitcast" in text
    assert not any(op.opcode == "cast" and not op.operands[0].type.dtype.startswith(("i", "f", "u"))
                   for op in low.body.ops)
