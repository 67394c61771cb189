"""Timed calls of kernels a user writes (issue 15's rows): the `repack_*` rows call a user
GEMV with canonical words (the words cache checks and reuses the transform) against the same
call with the words prepared once (`Kernel.prepare`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

import lowbitc
from lowbitc import pack
from lowbitc.quant import quantize
from lowbitc.repack import PackedWords, aligned_copy

from . import candidates as cand

__all__ = ["USER_GEMV", "USER_KERNELS", "user_case", "user_gemv_case"]

# the natural user GEMV of the DSL tour: codes along K, one dot, no scales
USER_GEMV = """
kernel gemv[W: dtype](x: f32[1, K], w: W[N, K], y: f32[1, N]) grid (cdiv(N, 32)) {
  acc = zeros(f32, [1, 32])
  for k in range(0, K, 64) {
    a = load(x[0 :+ 1, k :+ 64])
    acc = dot(a, transpose(cast(load(w[block.x * 32 :+ 32, k :+ 64]), f32)), acc)
  }
  store(y[0 :+ 1, block.x * 32 :+ 32], acc)
}
"""


def user_gemv_case(name: str, kernel, x: np.ndarray, w: object, ref: np.ndarray,
               wbytes: int) -> cand.Timed:
    """`kernel(x, w, y)` into one reused y, checked against the float64 `ref`."""
    n = ref.shape[1]
    y = np.zeros((1, n), np.float32)

    def run() -> np.ndarray:
        kernel(x, w, y)
        return y

    got, first = cand._first_call(run)
    return cand.Timed(name=name, fn=run, flops=2.0 * n * x.shape[1],
                      bytes_moved=wbytes + x.nbytes + 4.0 * n, weight_bytes=wbytes,
                      check=cand._compare(got, ref, cand.MATMUL_TOLERANCE),
                      info={"first_call_seconds": first,
                            "kernel_params": cand._json_params(kernel.params),
                            "packings": {k: p.name for k, p in kernel.packings.items()}})


def _examples() -> Path:
    return Path(__file__).resolve().parents[1] / "examples" / "user"


def _gemv_b2(n: int, m: int, w: np.ndarray, x: np.ndarray):
    """The fused b2 GEMV + scale + bias + SiLU + residual, and its baseline's QTensor (b2, one
    scale per row: the same code and scale bytes)."""
    qw = quantize(w, "b2", n)
    k = lowbitc.compile(_examples() / "gemv_b2_act.lbk", BM=min(m, 8) if m <= 8 else 16)
    s = np.ascontiguousarray(qw.scales[:, 0])
    bias = np.zeros(n, np.float32)
    res = np.zeros((m, n), np.float32)
    v = x.astype(np.float64) @ qw.dequantize().astype(np.float64).T
    return k, [x, k.prepare("w", qw.packed), s, bias, res], v / (1 + np.exp(-v)), qw


def _gemv_q8_0(n: int, m: int, w: np.ndarray, x: np.ndarray):
    """GGUF Q8_0 from its raw bytes, and an i8 QTensor with groups of 32 (the same code bytes;
    f32 scales where Q8_0 has f16)."""
    import gguf  # the test extra; a missing package skips the row

    raw = gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q8_0)
    w_hat = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.Q8_0)
    k = lowbitc.compile(_examples() / "gguf_q8_0_gemv.lbk", BM=min(m, 8) if m <= 8 else 16)
    return k, [x, raw], x.astype(np.float64) @ w_hat.astype(np.float64).T, quantize(w, "i8", 32)


def _gemv_gptq(n: int, m: int, w: np.ndarray, x: np.ndarray):
    """The GPTQ checkpoint layout (K-packed qweight, N-packed qzeros, f16 scales) of a u4
    QTensor with zero points and groups of 128, and that QTensor."""
    qw = quantize(w, "u4", 128, zero_point=True)
    zeros = np.clip(np.rint(qw.zeros), 1, 15).astype(np.uint8)
    scales = qw.scales.astype(np.float16)
    qweight = np.ascontiguousarray(pack(qw.codes, 4).T)  # [K/8, N]: codes packed along K
    w_hat = (qw.codes.astype(np.float64) - np.repeat(zeros, 128, 1)) * np.repeat(
        scales.astype(np.float64), 128, 1)
    k = lowbitc.compile(_examples() / "gptq_gemv.lbk", BM=min(m, 8))  # the column dot: <= 8
    args = [x, qweight, pack(np.ascontiguousarray(zeros.T) - 1, 4),
            np.ascontiguousarray(scales.T)]
    return k, args, x.astype(np.float64) @ w_hat.T, qw


def _gemv_gptq_act(n: int, m: int, w: np.ndarray, x: np.ndarray):
    """The GPTQ act-order layout of a u4 QTensor with zero points and groups of 128: its
    columns stored in a random order (as GPTQ's desc_act leaves them: each input row k of
    qweight keeps its group's scales and zero points, g_idx[k] says which), and that QTensor
    (the same code, scale and zero-point bytes)."""
    qw = quantize(w, "u4", 128, zero_point=True)
    zeros = np.clip(np.rint(qw.zeros), 1, 15).astype(np.uint8)
    scales = qw.scales.astype(np.float16)
    perm = np.random.default_rng(n + m).permutation(n)  # stored row k is column perm[k]
    g_idx = (perm // 128).astype(np.int32)
    codes = np.ascontiguousarray(qw.codes[:, perm])
    qweight = np.ascontiguousarray(pack(codes, 4).T)  # [K/8, N]
    w_hat = (codes.astype(np.float64) - zeros[:, g_idx]) * scales.astype(np.float64)[:, g_idx]
    # GC: the checkpoint's group count rounded up to a power of two, as the example asks
    # (one pass over K; rows of the shared tiles past G would be decoded for nothing)
    gc = max(8, 1 << (zeros.shape[1] - 1).bit_length())
    k = lowbitc.compile(_examples() / "gptq_act_gemv.lbk", BM=min(m, 8), GC=gc)
    args = [np.ascontiguousarray(x[:, perm]), qweight,
            pack(np.ascontiguousarray(zeros.T) - 1, 4), np.ascontiguousarray(scales.T), g_idx]
    return k, args, args[0].astype(np.float64) @ w_hat.T, qw


AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble s of an AWQ word holds column 8j + AWQ_ORDER[s]


def awq_pack(v: np.ndarray) -> np.ndarray:
    """AWQ's words of codes v [R, N] (packed along N in AWQ's nibble order): u32[R, N / 8]."""
    r, n = v.shape
    cols = v.reshape(r, n // 8, 8)[:, :, list(AWQ_ORDER)].astype(np.uint32)
    return np.bitwise_or.reduce(cols << (4 * np.arange(8, dtype=np.uint32)), axis=2)


def _gemv_awq(n: int, m: int, w: np.ndarray, x: np.ndarray):
    """The AWQ checkpoint layout (codes and zero points N-packed in nibble order, f16 scales)
    of a u4 QTensor with zero points and groups of 128, and that QTensor."""
    qw = quantize(w, "u4", 128, zero_point=True)
    zeros = np.clip(np.rint(qw.zeros), 0, 15).astype(np.uint8)
    scales = qw.scales.astype(np.float16)
    w_hat = (qw.codes.astype(np.float64) - np.repeat(zeros, 128, 1)) * np.repeat(
        scales.astype(np.float64), 128, 1)
    bm = min(m, 8)  # the untransposed dot keeps BM x BN <= 256 accumulators in registers
    k = lowbitc.compile(_examples() / "awq_gemv.lbk", BM=bm, BN=256 // bm)
    args = [x, awq_pack(np.ascontiguousarray(qw.codes.T)), awq_pack(np.ascontiguousarray(
        zeros.T)), np.ascontiguousarray(scales.T)]
    return k, args, x.astype(np.float64) @ w_hat.T, qw


def _gemv_gguf(name: str, fmt: str, block: int, zero_point: bool):
    """A GGUF block format's GEMV from its raw bytes viewed [N, K / block, bytes] (quantized
    by the `gguf` package, or lowbitc's own K-quant encoder where gguf only reads the type),
    checked against gguf's dequantize, and a QTensor of `fmt` with groups of 32."""
    def case(n: int, m: int, w: np.ndarray, x: np.ndarray):
        import gguf  # the test extra; a missing package skips the row

        from lowbitc.interop.kquants import quantize_blocks

        qtype = getattr(gguf.GGMLQuantizationType, name)
        raw = quantize_blocks(w, name)
        w_hat = gguf.quants.dequantize(raw, qtype)
        k = lowbitc.compile(_examples() / f"gguf_{name.lower()}_gemv.lbk",
                            BM=min(m, 8) if m <= 8 else 16)
        blocks = raw if block == 256 else raw.reshape(n, n // block, -1)  # as the kernel reads
        return (k, [x, blocks], x.astype(np.float64) @ w_hat.astype(np.float64).T,
                quantize(w, fmt, 32, zero_point=zero_point))
    return case


def _gemv_nf4(n: int, m: int, w: np.ndarray, x: np.ndarray):
    """bitsandbytes-style NF4 (high nibble first, blocks of 64) with the absmax double
    quantized (u8 codes of a 256-value map, an f32 scale per 256 blocks, an offset), and the
    nf4 QTensor with groups of 64 it was made from (the same codes; f32 absmax)."""
    qw = quantize(w, "nf4", 64)
    kb = n // 64
    absmax = qw.scales.astype(np.float64)
    offset = float(absmax.mean())
    code2 = np.linspace(-1, 1, 256)  # a sorted 8-bit map standing in for bitsandbytes' code2
    r = (absmax - offset).reshape(-1, 256)
    absmax2 = np.abs(r).max(axis=1).astype(np.float32)
    absq = np.clip(np.rint((r / absmax2[:, None] + 1) * 127.5), 0, 255).astype(np.uint8)
    q = lowbitc.codebook(code2.astype(np.float32), name="bench_absq")
    amax = (q.decode(absq).astype(np.float64) * absmax2[:, None]).reshape(n, kb) \
        + np.float32(offset)
    w_hat = lowbitc.dtype("nf4").decode(qw.codes).astype(np.float64) * np.repeat(amax, 64, 1)
    stored = ((qw.codes[:, 0::2] << 4) | qw.codes[:, 1::2]).astype(np.uint8)
    k = lowbitc.compile(_examples() / "bnb_nf4_gemv.lbk", Q=q, R=256 // kb, BM=m,
                        BN=max(32, 256 // kb))  # a tile holds whole groups of 256 blocks
    args = [x, stored, pack(absq.reshape(n, kb), 8), absmax2, np.float32(offset)]
    return k, args, x.astype(np.float64) @ w_hat.T, qw, {"KB": kb}


USER_KERNELS = {"b2_act": _gemv_b2, "q8_0": _gemv_q8_0, "gptq": _gemv_gptq,
                "gptq_act": _gemv_gptq_act, "awq": _gemv_awq,
                "q4_0": _gemv_gguf("Q4_0", "u4", 32, False),
                "q5_0": _gemv_gguf("Q5_0", "u5", 32, False),
                "q4_k": _gemv_gguf("Q4_K", "u4", 256, True), "nf4": _gemv_nf4}


def _replica(a: object) -> object:
    """A copy of a kernel argument in new memory (arrays, PackedWords) starting on a 64-byte
    line, as QTensor.replica's words do (a plain copy starts 16 bytes past one, or at any
    16-byte step on the heap: a GEMV over it ran up to 1.6x slower, a mixture that changed
    from run to run); scalars as they are."""
    if isinstance(a, np.ndarray):
        return aligned_copy(a)
    if isinstance(a, PackedWords):
        return replace(a, words=aligned_copy(a.words))
    return a


def _nbytes(a: object) -> int:
    if isinstance(a, PackedWords):
        return a.words.nbytes
    return a.nbytes if isinstance(a, np.ndarray) else 0


def user_case(name: str, which: str, n: int, m: int, seed: int,
              copies: Callable[[float], int] = lambda _: 1):
    """(the example kernel's Timed call, its baseline QTensor) at N = K = n, M = m; with
    `copies(weight bytes)` > 1 each call reads the next of that many copies of the weight
    arguments (from DRAM, as a model's layers are; Timed.info["weights_in_turn"] says how
    many, for the baseline to rotate as many)."""
    w = cand.weights(n, n, seed)
    x = cand.activations(m, n, seed + 1)
    k, args, ref, qw, *dims = USER_KERNELS[which](n, m, w, x)
    y = np.zeros((m, n), np.float32)
    wbytes = sum(_nbytes(a) for a in args[1:])
    calls = [[args[0], *(_replica(a) for a in args[1:]), y] for _ in range(copies(wbytes))]
    kw = dims[0] if dims else {}  # dims only a packed argument has

    def call(full: list) -> Callable[[], np.ndarray]:
        def run() -> np.ndarray:
            k(*full, **kw)
            return y
        return run

    runs = [call(full) for full in calls]
    got, first = cand._first_call(runs[0])
    for r in runs[1:]:
        r()  # (a first call per copy: any words transform happens here, not in the timing)
    t = cand.Timed(name=name, fn=cand.in_turn(runs), flops=2.0 * m * n * n,
                   bytes_moved=wbytes + x.nbytes, weight_bytes=wbytes,
                   check=cand._compare(got, ref, 1e-3),
                   info={"first_call_seconds": first, "weights_in_turn": len(calls),
                         "kernel_params": cand._json_params({"W": qw.dtype.name,
                                                             **k.params})})
    return t, qw, x
