"""The numba-cuda backend: rendering (pure, no GPU), its errors, the shipped kernels' PTX
through `lowbitc emit` and ptxas (no spills, every width, sm_80 and sm_90), and the simulator
suite (tests/cudasim/test_sim_backend.py) in a process of its own."""

from __future__ import annotations

import ast
import json

import numpy as np
import pytest
from cuda_checks import assemble_without_spills, needs_toolchain, run_simulator_suite

from lowbitc import ops
from lowbitc.backends.numba_cuda import elements
from lowbitc.backends.numba_cuda.backend import BACKEND
from lowbitc.commands import emit
from lowbitc.commands.compile import compile_file
from lowbitc.compiler import load, pick_kernel
from lowbitc.dsl.lower import lower_kernel
from lowbitc.errors import BackendError
from lowbitc.interp import run as interpret
from lowbitc.ir.core import walk
from lowbitc.ops import kernel_path
from lowbitc.passes import run_pipeline
from lowbitc.quant import quantize

FORMATS = ["u1", "u3", "u4", "u7", "u8", "i5", "b2", "f4e2m1fn", "f6e3m2fn", "f8e4m3fn",
           "f8e8m0fnu", "nf4"]


def _lowered(name: str, **params):
    module, _ = load(kernel_path(name) if not name.startswith("kernel") else name)
    ir = lower_kernel(module, pick_kernel(module, None), params)
    return run_pipeline(ir, BACKEND.pipeline)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kernel", ["matmul", "dequantize"])
def test_emit_is_python_built_from_generated_names(kernel, fmt):
    src = BACKEND.emit(_lowered(kernel, W=fmt, ZP=True))
    tree = ast.parse(src)
    (fn,) = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    assert fn.name == f"lbk_{kernel}"
    args = [a.arg for a in fn.args.args]
    assert args == [f"a{i}" for i in range(len(args))]  # never the user's parameter names
    names = {n.id for n in ast.walk(fn) if isinstance(n, ast.Name)}
    assert not names & {"x", "w", "s", "z", "y", "group", "K", "N", "M"}
    assert "cuda.syncthreads()" in src or kernel == "dequantize"
    compile(src, "<generated>", "exec")


def test_dequantize_fuses_into_one_loop_without_shared_memory():
    r = BACKEND.rendered(_lowered("dequantize", W="u4", ZP=True))
    assert r.shared_bytes == 0 and "syncthreads" not in r.source
    # decode, zero point, scale and store: one loop over word-aligned units of 8 codes per
    # store (the kernel stores full chunks and the group's last chunk apart), each unit
    # loading its word once, with a per-code fallback at the edges
    stores = sum(op.opcode == "store" for op in walk(_lowered("dequantize", W="u4").body.ops))
    assert r.source.count("while e") == stores and r.source.count("while j") == stores
    assert sum(" >> 5) + " in line for line in r.source.splitlines()) == stores  # one word
    # the edge mask arange(BK) + k < k1 is checked once per unit (for its last column)
    assert "+ 7 < " in r.source and "if True" not in r.source  # units of 8 u4 codes


def test_matmul_stages_dot_operands_in_shared_memory():
    r = BACKEND.rendered(_lowered("matmul", W="u3", BM=4, BN=32, BK=64))
    # activations [4, 64] and decoded weights [32, 64] in f32, accumulators [4, 32] x 2,
    # the (unused without ZP) row sums [4]; rows of 32k floats padded by one (bank conflicts)
    assert r.shared_bytes == 4 * (4 * 65 + 32 * 65 + 2 * 4 * 33 + 4)
    assert "[j" in r.source and " * 65 + k" in r.source  # the transposed read, padded


def test_gemv_tile_splits_k_among_threads():
    src = BACKEND.emit(_lowered("matmul", W="u4", BM=1, BN=32, BK=64))
    assert "tid // 32" in src and " += 4" in src  # 4 threads per output, every 4th k


SRC = """kernel k(x: f32[N], y: f32[N]) {
  store(y[0 :+ 16], exp(load(x[0 :+ 16])))
}
"""


def test_missing_handler_names_op_types_and_line(monkeypatch):
    monkeypatch.delitem(elements.ELEMENT, "exp")
    with pytest.raises(BackendError) as err:
        BACKEND.emit(_lowered(SRC))
    msg = str(err.value)
    assert "exp(tile<f32[16]>)" in msg and "no handler" in msg and ":2:" in msg


def test_encoding_cast_and_bf16_are_clear_errors():
    enc = """kernel k(x: f32[N], y: f32[N]) {
  store(y[0 :+ 8], cast(cast(load(x[0 :+ 8]), f4e2m1fn), f32) + 0.0)
}
"""
    k = _lowered(enc)
    if any(op.opcode == "cast" and op.attrs.dtype == "f4e2m1fn" for op in walk(k.body.ops)):
        with pytest.raises(BackendError, match="encoding to format f4e2m1fn"):
            BACKEND.emit(k)
    bf = "kernel k(x: bf16[N], y: bf16[N]) {\n  store(y[0 :+ 8], load(x[0 :+ 8]) * 2.0)\n}\n"
    with pytest.raises(BackendError, match="bf16 values are carried as their bits"):
        BACKEND.emit(_lowered(bf))  # (loads, stores and casts of bf16 are supported)


def test_shared_memory_limit_is_checked():
    """Past 48 KiB the tiles go to dynamic shared memory (launch.py); past the largest
    arch's dynamic limit (227 KiB) rendering fails with a located error."""
    src = """kernel k(a: f32[M, K], b: f32[K, N], y: f32[M, N]) {
  acc = dot(load(a[0 :+ S, 0 :+ 64]), load(b[0 :+ 64, 0 :+ S]), zeros(f32, [S, S]))
  store(y[0 :+ S, 0 :+ S], acc)
}
"""
    r = BACKEND.rendered(_lowered(src.replace("S", "128")))
    assert 48 * 1024 < r.dynamic_bytes == r.shared_bytes and "cuda.shared.array(0, F32)" in r.source
    with pytest.raises(BackendError, match="shared memory"):
        BACKEND.emit(_lowered(src.replace("S", "256")))


# ---------------------------------------------------------------- PTX through `lowbitc emit`

FAST = [("dequantize", "u4", "sm_80"), ("matmul", "u4", "sm_90")]
PARAMS = {"f16": {"A": "f16", "ZP": True}}  # f16 activations: numba's fp16 shims linked in
SWEEP = [(k, f"u{b}", arch) for k in ("dequantize", "matmul") for b in range(1, 9)
         for arch in ("sm_80", "sm_90") if (k, f"u{b}", arch) not in FAST]


def _emit(kernel: str, fmt: str, arch: str, what: str, **params) -> str:
    (k, _), = compile_file(emit.kernel_file(kernel), None, {"W": fmt, **params}, backend="cuda")
    return emit.cuda_text(k, what, arch)


def _check_ptx(kernel: str, fmt: str, arch: str, **params) -> None:
    ptx = _emit(kernel, fmt, arch, "ptx", **params)
    assert ptx.count(".entry") == 1 and f".target {arch}" in ptx
    assemble_without_spills(ptx, arch)


@needs_toolchain
@pytest.mark.cuda_toolchain
@pytest.mark.parametrize("kernel,fmt,arch", FAST)
def test_shipped_kernel_ptx_assembles_without_spills(kernel, fmt, arch):
    _check_ptx(kernel, fmt, arch)


@needs_toolchain
@pytest.mark.cuda_toolchain
def test_f16_activation_matmul_links_the_fp16_shims():
    _check_ptx("matmul", "nf4", "sm_80", **PARAMS["f16"])


@needs_toolchain
@pytest.mark.cuda_toolchain
@pytest.mark.slow
@pytest.mark.parametrize("kernel,fmt,arch", SWEEP)
def test_every_width_assembles_without_spills(kernel, fmt, arch):
    _check_ptx(kernel, fmt, arch)


@needs_toolchain
@pytest.mark.cuda_toolchain
def test_emit_stats_is_json_with_resources():
    stats = json.loads(_emit("dequantize", "f4e2m1fn", "sm_80", "stats"))
    assert stats["arch"] == "sm_80" and stats["spill_bytes"] == 0
    assert stats["registers"] > 0 and stats["shared_bytes"] == 0
    assert stats["sass_mix"].get("STG", 0) >= 1 and stats["inner_loop"]["instructions"] > 0


# ---------------------------------------------------------------- the simulator suite


@pytest.mark.cudasim
def test_simulator_suite_in_its_own_process():
    run_simulator_suite("test_sim_backend.py")


def test_backend_is_registered():
    from lowbitc.backends import get_backend

    assert get_backend("cuda") is BACKEND and BACKEND.name == "cuda"


@pytest.mark.parametrize("bits", range(1, 9))
def test_magic_convert_keeps_interpreter_results(bits):
    qw = quantize(np.random.default_rng(bits).standard_normal((5, 45)).astype(np.float32),
                  f"u{bits}", 16, zero_point=True)
    k = _lowered("dequantize", W=f"u{bits}", ZP=True)
    ops_ = [op.opcode for op in walk(k.body.ops)]
    assert "magic-convert" in BACKEND.pipeline
    if bits < 8:  # u8 is also a machine type: plain bytes, converted with one cast
        assert "bitcast" in ops_ and "cast" not in ops_
    y = np.zeros((5, 45), np.float32)
    interpret(k, ops.weight_storage(qw), qw.scales, qw.zeros, y, 16, K=45)
    assert np.array_equal(y.view(np.uint32), qw.dequantize().view(np.uint32))
