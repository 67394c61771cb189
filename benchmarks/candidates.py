"""Timed callables for the CPU benchmark: lowbitc calls checked against numpy, and baselines.

Every lowbitc call is run once and compared with a float64 numpy reference before it is timed;
`Timed.check` records the error, and a call whose result is wrong is never timed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from lowbitc import ops
from lowbitc.interop import gptq
from lowbitc.interop.ggml import ggml_to_qtensor
from lowbitc.interop.kquants import quantize_blocks
from lowbitc.ir.types import numpy_dtype
from lowbitc.memory import weight_bytes
from lowbitc.methods import quantize
from lowbitc.mixture import TableQTensor
from lowbitc.quant import QTensor

from .baselines import Baseline, torch_int4_gemv
from .harness import in_turn
from .peer_ggml import ggml_gemm

__all__ = [
    "MATMUL_TOLERANCE",
    "Timed",
    "activations",
    "dequant_case",
    "from_baseline",
    "ggml_case",
    "matmul_case",
    "quantized",
    "torch_case",
    "weight_bytes",
    "weights",
]

# max |y - ref| / max |ref| allowed for a matmul with exact (f32 or bf16) activations
MATMUL_TOLERANCE = 1e-4
# int8 activations: far above the bound their rounding implies (docs/a8.md) on these inputs
A8_TOLERANCE = 2e-2
# torch's int4 kernel rounds its dequantized weights and its output to bf16
TORCH_TOLERANCE = 2e-2


@dataclass
class Timed:
    """A no-argument call to time, the work one call does, and how its output was checked."""

    name: str
    fn: Callable[[], object]
    flops: float = 0.0
    bytes_moved: float = 0.0  # weights + scales + zeros + activations + output, one call
    weight_bytes: float = 0.0  # packed weights + scales + zeros
    check: dict | None = None  # {"ok", "max_abs_error", "max_rel_error", "tolerance"}
    info: dict = field(default_factory=dict)

    @property
    def correct(self) -> bool:
        return self.check is None or bool(self.check["ok"])


def weights(N: int, K: int, seed: int = 0) -> np.ndarray:
    """Random normal float32 weights [N, K] (nn.Linear orientation)."""
    return np.random.default_rng(seed).standard_normal((N, K), dtype=np.float32)


def activations(M: int, K: int, seed: int = 1, dtype: str = "f32") -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((M, K), dtype=np.float32)
    return x if dtype == "f32" else x.astype(numpy_dtype(dtype))


def quantized(w: np.ndarray, fmt, group_size: int, outliers: float = 0) -> QTensor:
    """`w` quantized to `fmt` (or a list of formats: a per-group mixture); unsigned integer
    formats get group-wise zero points."""
    zero_point = isinstance(fmt, list) or fmt.startswith("u")  # a mixture: its uint members
    return quantize(w, fmt, group_size, zero_point=zero_point, outliers=outliers)


def imported(w: np.ndarray, source: str, group_size: int) -> QTensor:
    """`w` written in another tool's format and read back as lowbitc does: a GGUF type name
    (Q4_0, Q4_K, ...) or "GPTQ4" (4 bits, zero points, `group_size`)."""
    if source == "GPTQ4":
        return gptq.gptq_tensor("w", gptq.gptq_parts(gptq.gptq_quantize(w, 4, group_size)))\
            .weight
    return ggml_to_qtensor(source, quantize_blocks(w, source), w.shape[1])


def _json_params(params: dict) -> dict:
    return {k: v if isinstance(v, (bool, int, float)) else str(getattr(v, "name", v))
            for k, v in params.items()}


def _activation_name(x: np.ndarray) -> str:
    return {np.dtype(np.float32): "f32", np.dtype(np.float16): "f16"}.get(x.dtype, "bf16")


def matmul_kernel_params(x: np.ndarray, qw: QTensor, act: str = "f32") -> dict:
    """The tile parameters `ops.matmul` picks for this call: its defaults, then a stored
    `lowbitc.tune` winner (the persistent cache can change them; results record them)."""
    M, (N, K) = x.shape[0], qw.shape
    if isinstance(qw, TableQTensor):
        return ops.mix_params(qw, M, _activation_name(x))
    if act != "f32":
        return ops.matmul_choice(M, N, K, qw, _activation_name(x), act)[1]
    params = ops.matmul_params(M, qw, _activation_name(x), N=N)
    fixed = {n: params[n] for n in ("W", "A", "ZP", "EARLY")}
    params.update(ops.tuned_params("matmul", fixed, qw.group_size, {"M": M, "N": N, "K": K},
                                   "llvm"))
    return params


def dequant_kernel_params(qw: QTensor) -> dict:
    """The parameters `ops.dequantize` picks (defaults, then a stored tuning winner)."""
    N, K = qw.shape
    params = {"W": qw.dtype, "ZP": qw.zeros is not None}
    params.update(ops.tuned_params("dequantize", dict(params), qw.group_size,
                                   {"N": N, "K": K}, "llvm"))
    return params


def _compare(got: np.ndarray, ref: np.ndarray, tolerance: float, exact: bool = False) -> dict:
    got64 = np.asarray(got, dtype=np.float64)
    if got64.shape != ref.shape:
        return {"ok": False, "max_abs_error": None, "max_rel_error": None,
                "tolerance": tolerance, "detail": f"shape {got64.shape} != {ref.shape}"}
    diff = np.abs(got64 - ref)
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    max_rel = max_abs / max(scale, 1e-30)
    finite = bool(np.isfinite(got64).all())
    ok = finite and (max_abs == 0.0 if exact else max_rel <= tolerance)
    return {"ok": ok, "max_abs_error": max_abs, "max_rel_error": max_rel,
            "tolerance": 0.0 if exact else tolerance}


def _first_call(fn: Callable[[], np.ndarray]) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def matmul_case(name: str, x: np.ndarray, qw: QTensor, copies: int = 1,
                act: str = "f32") -> Timed:
    """`ops.matmul(x, qw, act=act)` as a user calls it (allocation and Python overhead
    included); with `copies` > 1 each call reads the next of that many replicas of qw
    (QTensor.replica). Int8 activations are checked to A8_TOLERANCE."""
    N, K = qw.shape
    M = x.shape[0]
    y, first = _first_call(lambda: ops.matmul(x, qw, act=act))
    ref = x.astype(np.float32).astype(np.float64) @ qw.dequantize().astype(np.float64).T
    wbytes = weight_bytes(qw)
    weights = [qw] + [qw.replica() for _ in range(copies - 1)]  # after the first call: packed
    return Timed(
        name=name,
        fn=in_turn([lambda q=q: ops.matmul(x, q, act=act) for q in weights]),
        flops=2.0 * M * N * K,
        bytes_moved=wbytes + x.nbytes + 4.0 * M * N,
        weight_bytes=wbytes,
        check=_compare(y, ref, A8_TOLERANCE if act == "i8" else MATMUL_TOLERANCE),
        info={"activations": str(x.dtype), "first_call_seconds": first, "weights_in_turn": copies,
              "zero_point": qw.zeros is not None, "act": act,
              "kernel_params": _json_params(matmul_kernel_params(x, qw, act))},
    )


def dequant_case(name: str, qw: QTensor, reuse_output: bool) -> Timed:
    """`ops.dequantize(qw, out=buffer)` into one reused fp32 [N, K] buffer (as the copy
    baseline writes into an existing one), or `ops.dequantize(qw)` allocating each time. The
    buffer is the array a first call returned (line-aligned: streaming stores apply)."""
    N, K = qw.shape
    buffer = ops.dequantize(qw) if reuse_output else None

    def run() -> np.ndarray:
        return ops.dequantize(qw, out=buffer)

    y, first = _first_call(run)
    wbytes = weight_bytes(qw)
    return Timed(
        name=name,
        fn=run,
        bytes_moved=wbytes + 4.0 * N * K,
        weight_bytes=wbytes,
        check=_compare(y, qw.dequantize().astype(np.float64), 0.0, exact=True),
        info={"first_call_seconds": first,
              "output": "one reused buffer (out=)" if reuse_output else "allocated by each call",
              "kernel_params": _json_params(dequant_kernel_params(qw))},
    )


def from_baseline(b: Baseline, weight_bytes: float = 0.0) -> Timed:
    """A baseline from `baselines` as a Timed entry (trusted: not checked)."""
    return Timed(name=b.name, fn=b.fn, flops=b.flops, bytes_moved=b.bytes_moved,
                 weight_bytes=weight_bytes, info=dict(b.info))


def torch_case(K: int, N: int, group_size: int, M: int = 1, copies: int = 1) -> Timed | None:
    """torch's int4 CPU GEMV (bf16 activations), checked against its own dequantized weights;
    None when torch is missing."""
    b = torch_int4_gemv(K, N, M=M, group_size=group_size, copies=copies)
    if b is None:
        return None
    codes, sz, x = b.data["codes"], b.data["scales_zeros"], b.data["x"]
    scale = np.repeat(sz[..., 0].float().numpy().T, group_size, axis=1).astype(np.float64)
    zero = np.repeat(sz[..., 1].float().numpy().T, group_size, axis=1).astype(np.float64)
    w = (codes.numpy().astype(np.float64) - 8.0) * scale + zero
    ref = x.float().numpy().astype(np.float64) @ w.T
    got = b.fn().float().numpy()
    t = from_baseline(b, weight_bytes=N * K / 2 + sz.numel() * 2)
    t.check = _compare(got, ref, TORCH_TOLERANCE)
    return t


def ggml_case(w: np.ndarray, x: np.ndarray, qtype: str, copies: int = 1) -> Timed | None:
    """llama.cpp's mul_mat on w quantized by ggml to `qtype` (benchmarks.peer_ggml), checked
    against x @ W.T with W its blocks dequantized by the gguf package (ggml rounds x to
    8 bits per block: A8_TOLERANCE); None without ggml-python."""
    b = ggml_gemm(w, x, qtype, copies=copies)
    if b is None:
        return None
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    got = b.data["y"]()
    deq = dequantize(b.data["words"], getattr(GGMLQuantizationType, qtype.upper()))
    ref = x.astype(np.float64) @ deq.reshape(w.shape).astype(np.float64).T
    t = from_baseline(b, weight_bytes=b.data["weight_bytes"])
    t.check = _compare(got, ref, A8_TOLERANCE)
    return t
