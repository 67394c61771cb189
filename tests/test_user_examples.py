"""The user kernels of examples/user (issue 15): each in a checkpoint's own layout, read as
stored, checked against the format's published definition (the `gguf` package's own
quantize/dequantize for GGUF blocks), natively, in the interpreter, and as a torch op under
torch.compile(fullgraph=True)."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest

import lowbitc
from lowbitc import dtype, pack
from lowbitc.benchmarks.user_cases import awq_pack

USER = Path(__file__).resolve().parents[1] / "examples" / "user"
RNG = np.random.default_rng(1515)
_NAMES = itertools.count()


def _close(got, want, tol=2e-5):
    scale = max(float(np.abs(want).max()), 1e-30)
    assert float(np.abs(np.asarray(got, np.float64) - want).max()) / scale <= tol


def _torch_check(k, outputs, args, want, tol=2e-5):
    """The kernel as a torch op, eager and under torch.compile(fullgraph=True)."""
    torch = pytest.importorskip("torch", reason="register_kernel needs PyTorch")
    from lowbitc.torch import register_kernel

    op = register_kernel(k, f"lbuser::{k.name}{next(_NAMES)}", outputs=outputs)
    targs = [torch.from_numpy(a.view(np.int32) if a.dtype == np.uint32 else a)
             if isinstance(a, np.ndarray) else a for a in args]
    _close(op(*targs).float().numpy(), want, tol)
    torch._dynamo.reset()  # the same lambda compiles per op: no recompile limit across tests
    f = torch.compile(lambda *a: op(*a) + 0.0, fullgraph=True)
    _close(f(*targs).float().numpy(), want, tol)


def _both(k, args, out_index, want, tol=2e-5):
    for run in (k, k.interpret):
        a = [np.array(x, copy=True) if isinstance(x, np.ndarray) else x for x in args]
        run(*a)
        _close(a[out_index], want, tol)


@pytest.mark.parametrize("gelu", [False, True])
def test_gemv_b2_bias_activation_residual(gelu):
    n, kk, m = 70, 256, 3
    k = lowbitc.compile(USER / "gemv_b2_act.lbk", GELU=gelu, BM=4)
    codes = RNG.integers(0, 4, (n, kk), dtype=np.uint8)
    x = RNG.standard_normal((m, kk)).astype(np.float32)
    s, bias = RNG.random(n).astype(np.float32), RNG.standard_normal(n).astype(np.float32)
    res = RNG.standard_normal((m, n)).astype(np.float32)
    v = (x.astype(np.float64) @ (2.0 * codes - 3).T) * s + bias
    erf = np.vectorize(math.erf)
    h = 0.5 * v * (1 + erf(v / np.sqrt(2))) if gelu else v / (1 + np.exp(-v))
    want = h + res
    args = [x, pack(codes, 2), s, bias, res, np.zeros((m, n), np.float32)]
    _both(k, args, 5, want)
    _torch_check(k, ["y"], args[:5], want)


@pytest.mark.parametrize("t", ["f16", "bf16"])
@pytest.mark.parametrize("w", ["u4", "u3", "nf4"])
def test_dequantize_to_half(w, t):
    n, kk, g = 20, 300, 64
    k = lowbitc.compile(USER / "dequant_half.lbk", W=dtype(w), T=dtype(t), G=g)
    codes = RNG.integers(0, 1 << dtype(w).bits, (n, kk), dtype=np.uint8)
    kg = -(-kk // g)
    s = RNG.random((n, kg)).astype(np.float32)
    z = RNG.integers(0, 4, (n, kg)).astype(np.float32)
    gi = np.arange(kk) // g
    exact = (dtype(w).decode(codes) - z[:, gi]) * s[:, gi]
    out_t = lowbitc.ir.types.numpy_dtype(t)
    want = exact.astype(np.float32).astype(out_t).astype(np.float64)
    args = [pack(codes, dtype(w).bits), s, z, np.zeros((n, kk), out_t)]
    _both(k, args, 3, want, tol=0.0)
    _torch_check(k, ["y"], args[:3] + [kk], want, tol=0.0)


@pytest.mark.parametrize("fmt, source", [("Q8_0", "gguf"), ("Q4_0", "gguf"), ("Q5_0", "gguf"),
                                         ("Q5_0", "random"), ("Q4_K", "lowbitc"),
                                         ("Q4_K", "random")])
def test_gguf_blocks_read_as_stored(fmt, source):
    """The raw blocks (quantized by gguf, by lowbitc's K-quant encoder where gguf only reads
    the type, or random bytes with finite f16 scales: every bit pattern of the packed
    scales, mins and high bits) against gguf's own dequantize."""
    gguf = pytest.importorskip("gguf", reason="the GGUF oracle is the gguf package")
    from lowbitc.interop.kquants import quantize_blocks

    qtype = getattr(gguf.GGMLQuantizationType, fmt)
    block, per = gguf.constants.GGML_QUANT_SIZES[qtype]  # weights, bytes per block
    n, kk, m = 40, 512, 2
    if source == "random":
        raw = RNG.integers(0, 256, (n * kk // block, per), dtype=np.uint8)
        halves = 2 if fmt == "Q4_K" else 1  # d (and dmin) lead the block
        raw[:, : 2 * halves] = (RNG.random((raw.shape[0], halves)) * 0.05).astype(
            np.float16).view(np.uint8)
        raw = raw.reshape(n, -1)
    else:
        raw = quantize_blocks(RNG.standard_normal((n, kk)).astype(np.float32), fmt)
    w_hat = gguf.quants.dequantize(raw, qtype).astype(np.float64)
    # (Q4_K's default BN = 64 would put all 40 rows in one edge tile: 16 runs the fast path)
    k = lowbitc.compile(USER / f"gguf_{fmt.lower()}_gemv.lbk", **({"BN": 16} if fmt == "Q4_K"
                                                                   else {}))
    x = RNG.standard_normal((m, kk)).astype(np.float32)
    want = x.astype(np.float64) @ w_hat.T
    stored = raw if fmt in ("Q8_0", "Q4_K") else raw.reshape(n, kk // block, per)  # same bytes
    args = [x, stored, np.zeros((m, n), np.float32)]
    _both(k, args, 2, want)
    _torch_check(k, ["y"], args[:2], want)
    dots = [ln for ln in k.explain().splitlines() if ": dot " in ln]
    if fmt in ("Q8_0", "Q4_K"):  # read as stored, fused: the dot decodes bytes in registers
        assert dots and all("fused register dot (bytes" in ln for ln in dots)
    else:  # codes viewed out of the blocks' bytes: unpacked in registers in the dot
        assert dots and all("codes of a byte window" in ln for ln in dots)


@pytest.mark.parametrize("bm", [4, 16])
@pytest.mark.parametrize("fmt", ["Q4_0", "Q5_0"])
def test_gguf_byte_windows_with_rows_and_edges(fmt, bm):
    """The byte-window fused paths with several rows of activations (the register dot at
    BM = 4, the panel at 16, M not a multiple of BM) and a K whose last window of blocks is
    partial (KB = 15, not a multiple of NBK: the generic dot), against gguf's dequantize."""
    gguf = pytest.importorskip("gguf", reason="the GGUF oracle is the gguf package")
    from lowbitc.interop.kquants import quantize_blocks

    qtype = getattr(gguf.GGMLQuantizationType, fmt)
    n, kk, m = 40, 480, bm + 3
    raw = quantize_blocks(RNG.standard_normal((n, kk)).astype(np.float32), fmt)
    w_hat = gguf.quants.dequantize(raw, qtype).astype(np.float64)
    k = lowbitc.compile(USER / f"gguf_{fmt.lower()}_gemv.lbk", BM=bm)
    assert "byte window" in k.explain() or "panel microkernel" in k.explain()
    x = RNG.standard_normal((m, kk)).astype(np.float32)
    y = np.zeros((m, n), np.float32)
    k(x, raw.reshape(n, kk // 32, -1), y)
    _close(y, x.astype(np.float64) @ w_hat.T)


@pytest.mark.parametrize("bm, m", [(1, 1), (2, 2), (3, 3), (2, 5)])
def test_gguf_q4_k_header_window_and_joined_dots(bm, m):
    """Q4_K's block header read as one row window (column_merge.py) and its two nibble dots
    in one row loop (carry.plan_joins), M = 1-3 and 5 (BM not dividing it), rows past the
    last tile (N = 40, BN = 16), three super-blocks, against gguf's dequantize and the
    interpreter."""
    gguf = pytest.importorskip("gguf", reason="the GGUF oracle is the gguf package")
    from lowbitc.interop.kquants import quantize_blocks

    n, kk = 40, 768
    raw = quantize_blocks(RNG.standard_normal((n, kk)).astype(np.float32), "Q4_K")
    w_hat = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.Q4_K).astype(np.float64)
    k = lowbitc.compile(USER / "gguf_q4_k_gemv.lbk", BM=bm, BN=16)
    text = k.explain()
    assert text.count("one row window for 6 column loads") == 3, text  # the scale bytes
    assert text.count("one row window for 2 column loads") == 2, text  # d and dmin
    assert text.count("one row loop with the chained dot") == 2, text
    x = RNG.standard_normal((m, kk)).astype(np.float32)
    _both(k, [x, raw, np.zeros((m, n), np.float32)], 2, x.astype(np.float64) @ w_hat.T)


@pytest.mark.parametrize("zoff", [1, 0])
def test_gptq_checkpoint_layout(zoff):
    n, kk, gs, m = 64, 512, 128, 2
    g = kk // gs
    q = RNG.integers(0, 16, (kk, n), dtype=np.uint8)
    zeros = RNG.integers(zoff, 16, (g, n), dtype=np.uint8)
    scales = (RNG.random((g, n)) * 0.1).astype(np.float16)
    qweight = np.ascontiguousarray(pack(np.ascontiguousarray(q.T), 4).T)  # [K/8, N]
    qzeros = pack(zeros - zoff, 4)  # [G, N/8], stored minus ZOFF
    w = (q.T.astype(np.float64) - np.repeat(zeros.T, gs, 1)) * np.repeat(
        scales.T.astype(np.float64), gs, 1)
    k = lowbitc.compile(USER / "gptq_gemv.lbk", GS=gs, ZOFF=zoff)
    x = RNG.standard_normal((m, kk)).astype(np.float32)
    want = x.astype(np.float64) @ w.T
    args = [x, qweight, qzeros, scales, np.zeros((m, n), np.float32)]
    _both(k, args, 4, want)
    _torch_check(k, ["y"], args[:4], want)
    dots = [ln for ln in k.explain().splitlines() if ": dot " in ln]
    assert dots and all("fused column dot" in ln for ln in dots)  # K-packed words, fused


def test_awq_checkpoint_layout():
    n, kk, gs, m = 64, 256, 128, 2
    g = kk // gs
    q = RNG.integers(0, 16, (kk, n), dtype=np.uint8)
    zeros = RNG.integers(0, 16, (g, n), dtype=np.uint8)
    scales = (RNG.random((g, n)) * 0.1).astype(np.float16)
    w = (q.T.astype(np.float64) - np.repeat(zeros.T, gs, 1)) * np.repeat(
        scales.T.astype(np.float64), gs, 1)
    k = lowbitc.compile(USER / "awq_gemv.lbk", GS=gs)
    x = RNG.standard_normal((m, kk)).astype(np.float32)
    want = x.astype(np.float64) @ w.T
    args = [x, awq_pack(q), awq_pack(zeros), scales, np.zeros((m, n), np.float32)]
    _both(k, args, 4, want)
    _torch_check(k, ["y"], args[:4], want)
    text = k.explain()  # codes along N, the zero points a leaf: the untransposed dot
    dots = [ln for ln in text.splitlines() if ": dot " in ln]
    assert dots and all("fused untransposed dot" in ln for ln in dots)
    assert text.endswith("0 fallbacks")


def test_bnb_nf4_with_double_quantized_absmax():
    code2 = np.linspace(-1, 1, 256).astype(np.float32)  # a sorted 8-bit map, as code2
    q = lowbitc.codebook(code2, name="lbtest_dynmap")
    n, kk, m = 48, 1024, 2
    kb = kk // 64
    k = lowbitc.compile(USER / "bnb_nf4_gemv.lbk", Q=q, R=256 // kb, BN=16)
    el = RNG.integers(0, 16, (n, kk), dtype=np.uint8)
    stored = ((el[:, 0::2] << 4) | el[:, 1::2]).astype(np.uint8)  # first element high
    absq = RNG.integers(0, 256, (n, kb), dtype=np.uint8)
    absmax2 = (RNG.random(-(-n * kb // 256)) + 0.5).astype(np.float32)
    offset = 0.1
    blocks = np.arange(n * kb).reshape(n, kb)
    absmax = code2[absq].astype(np.float64) * absmax2[blocks // 256] + np.float32(offset)
    w = dtype("nf4").decode(el).astype(np.float64) * np.repeat(absmax, 64, 1)
    x = RNG.standard_normal((m, kk)).astype(np.float32)
    want = x.astype(np.float64) @ w.T
    args = [x, stored, pack(absq, 8), absmax2, offset, np.zeros((m, n), np.float32)]
    for run in (k, k.interpret):
        y = np.zeros((m, n), np.float32)
        run(*args[:5], y, KB=kb)
        _close(y, want)
    _torch_check(k, ["y"], args[:5] + [kb], want)
    # the nibble swap runs on the bytes in registers: the dot is fused
    assert "codes of a byte window" in [ln for ln in k.explain().splitlines()
                                        if ": dot " in ln][0]


@pytest.mark.parametrize("weight, ref", [
    ("q * transpose(s)", lambda q, s: q * s),                      # no zero point: no fold
    ("(q - 8.0) * transpose(s)", lambda q, s: (q - 8) * s),       # a scalar zero point
    ("transpose(s) * (q - 8.0) + 1.0", lambda q, s: s * (q - 8) + 1),  # not (Y - U) * V
])
def test_column_dot_weights(weight, ref):
    src = (USER / "gptq_gemv.lbk").read_text().replace(
        "(q - (transpose(z) + ZOFF)) * transpose(s)", weight)
    n, kk, m = 48, 256, 3
    k = lowbitc.compile(src, GS=128)
    assert "fused column dot" in k.explain()
    q = RNG.integers(0, 16, (kk, n), dtype=np.uint8)
    scales = (RNG.random((2, n)) * 0.1).astype(np.float16)
    s = np.repeat(scales.astype(np.float64), 128, 0)  # [K, N]
    x = RNG.standard_normal((m, kk)).astype(np.float32)
    want = x.astype(np.float64) @ ref(q.astype(np.float64), s)
    args = [x, np.ascontiguousarray(pack(np.ascontiguousarray(q.T), 4).T),
            pack(np.zeros((2, n), np.uint8), 4), scales, np.zeros((m, n), np.float32)]
    _both(k, args, 4, want)
