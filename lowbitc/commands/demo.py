"""`lowbitc demo`: compile the shipped kernels for a spread of formats, check them against numpy,
then time the GEMV where low-bit weights pay off: weights streaming from memory.

Part 1 quantizes a 1024 x 1024 weight per format and checks dequantize (bit-exact), a GEMV and
a GEMM against numpy. Part 2 times M = 1 at N = K = 4096 (numpy's fp32 weight is 64 MiB), each
side calling distinct copies of its weight in turn, together at least 4x the last-level cache,
as a model's layers are read in decoding; the one-weight time (it stays in cache) is shown
beside it, labelled.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from lowbitc import ops
from lowbitc.dtypes import dtype as get_dtype
from lowbitc.memory import copies_for, llc_bytes, time_in_turn, weight_bytes
from lowbitc.quant import QTensor, quantize

NAME = "demo"

DEFAULT_FORMATS = ("u1", "u2", "u3", "u4", "u8", "f4e2m1fn", "f8e4m3fn", "nf4")
MIB = 1 << 20


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--formats", default=",".join(DEFAULT_FORMATS),
                   help="comma-separated formats (default: a spread of 1-8-bit formats)")
    p.add_argument("--n", type=int, default=4096,
                   help="N = K of the timed GEMV (default 4096: a 64 MiB fp32 weight)")
    p.add_argument("--check-n", type=int, default=1024,
                   help="N = K of the correctness checks (default 1024)")
    p.add_argument("--group", type=int, default=128, help="group size (default 128)")
    p.add_argument("--rounds", type=int, default=8,
                   help="timed passes over the rotating weights (median of every call)")
    p.add_argument("--copies", type=int, default=0,
                   help="distinct weights to rotate through (default: enough for 4x the LLC)")


def _check(name: str, w: np.ndarray, group: int, rng: np.random.Generator) -> tuple[str, bool]:
    """dequantize bit-exact, GEMV and GEMM (M = 16) within 1e-4 of numpy (float64)."""
    qw = quantize(w, name, group, zero_point=name.startswith("u"))
    wd = qw.dequantize()
    exact = np.array_equal(ops.dequantize(qw).view(np.uint32), wd.view(np.uint32))
    worst = 0.0
    for m in (1, 16):
        x = rng.standard_normal((m, w.shape[1])).astype(np.float32)
        ref = x.astype(np.float64) @ wd.T.astype(np.float64)
        err = float(np.abs(ops.matmul(x, qw) - ref).max() / max(np.abs(ref).max(), 1e-30))
        worst = max(worst, err)
    ok = exact and worst < 1e-4
    rel = float(np.abs(wd - w).mean() / np.abs(w).mean())
    text = (f"{name:<10} {'bit-exact' if exact else 'MISMATCH':>10} {worst:>12.1e} "
            f"{rel:>14.3f}" + ("" if ok else "  <- WRONG"))
    return text, ok


def _random_qtensor(name: str, n: int, group: int, rng: np.random.Generator) -> QTensor:
    """An n x n weight of random codes and group scales (zero points for u formats): timing
    does not depend on the values, and quantizing 16M weights per format would take seconds."""
    fmt = get_dtype(name)
    groups = -(-n // group)
    finite = np.flatnonzero(np.isfinite(fmt.decode(np.arange(1 << fmt.bits, dtype=np.uint8))))
    codes = rng.choice(finite.astype(np.uint8), (n, n))
    scales = rng.uniform(0.01, 0.02, (n, groups)).astype(np.float32)
    zeros = (rng.integers(0, 1 << fmt.bits, (n, groups)).astype(np.float32)
             if name.startswith("u") else None)
    return QTensor(fmt, (n, n), group, codes, scales, zeros)


def _streaming_row(name: str, args: argparse.Namespace, x: np.ndarray, numpy_time: float,
                   rng: np.random.Generator) -> tuple[str, bool]:
    n, rounds = args.n, args.rounds
    qw = _random_qtensor(name, n, args.group, rng)
    y = ops.matmul(x, qw)  # compiles (or loads) the kernel and makes its packing
    ref = x @ qw.dequantize().T
    ok = float(np.abs(y - ref).max()) <= 1e-3 * max(float(np.abs(ref).max()), 1e-30)
    nbytes = weight_bytes(qw)
    copies = [qw] + [qw.replica() for _ in range((args.copies or copies_for(nbytes)) - 1)]
    streaming = time_in_turn([lambda q=q: ops.matmul(x, q) for q in copies], rounds)
    in_cache = time_in_turn([lambda: ops.matmul(x, qw)], rounds * 4)
    speedup = numpy_time / streaming
    note = "" if speedup >= 1 else "  (slower: decoding this format costs more than it saves here)"
    bits = 8 * nbytes / (n * n)
    text = (f"{name:<10} {bits:>6.2f} {nbytes / MIB:>7.1f} {len(copies):>7} "
            f"{streaming * 1e6:>9.0f} us {speedup:>7.2f}x {in_cache * 1e6:>11.0f} us"
            + ("" if ok else "  <- WRONG") + note)
    return text, ok


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _target() -> str:
    """The CPU the kernels are compiled for, as LLVM names it (LOWBITC_TARGET_CPU's, if set)."""
    from lowbitc.backends.llvm import target
    from lowbitc.cache.host import real_host

    named, host = target.cpu_name(), real_host().cpu
    if named != host:
        return f"code compiled for {named} (LOWBITC_TARGET_CPU; this host is {host})"
    return f"code compiled for {named}"


def run(args: argparse.Namespace) -> int:
    rng = np.random.default_rng(0)
    names = [f.strip() for f in args.formats.split(",") if f.strip()]
    for name in names:
        get_dtype(name)  # unknown names fail before any work
    start = time.perf_counter()
    n = args.check_n
    print(f"lowbitc demo: LLVM CPU backend on {_cpu_model()}, {os.cpu_count()} CPUs, "
          f"{_target()}")
    print(f"\n1. Correctness: {n} x {n} weights quantized per format, group {args.group}: "
          "ops.dequantize\n   against QTensor.dequantize, ops.matmul (M = 1, 16) against numpy")
    print(f"{'format':<10} {'dequant':>10} {'matmul err':>12} {'quant. error':>14}")
    w = rng.standard_normal((n, n)).astype(np.float32)
    failures = 0
    for name in names:
        text, ok = _check(name, w, args.group, rng)
        failures += not ok
        print(text)

    n = args.n
    llc = llc_bytes()
    x = rng.standard_normal((1, n)).astype(np.float32)
    dense = [rng.standard_normal((n, n), dtype=np.float32)
             for _ in range(args.copies or copies_for(4 * n * n, llc=llc))]
    numpy_time = time_in_turn([lambda d=d: x @ d.T for d in dense], args.rounds)
    print(f"\n2. Speed: GEMV (M = 1), N = K = {n}, weights streaming from memory as a model's "
          f"layers do:\n   each call reads the next of `copies` distinct weights (together >= 4x "
          f"the {llc / MIB:.0f} MiB last-level cache).\n   numpy fp32 (the 1x): "
          f"{4 * n * n / MIB:.0f} MiB per weight, {len(dense)} copies, "
          f"{numpy_time * 1e6:.0f} us per call")
    del dense
    print(f"{'format':<10} {'bits/w':>6} {'MiB/w':>7} {'copies':>7} {'streaming':>12} "
          f"{'vs numpy':>8} {'one weight':>14}")
    for name in names:
        text, ok = _streaming_row(name, args, x, numpy_time, rng)
        failures += not ok
        print(text)
    print("   bits/w: bits read per weight, scales and zero points included. 'one weight': one\n"
          "   weight called again and again, so it stays in cache (what a model does not see).")
    print(f"\n{'all results match numpy' if not failures else f'{failures} results DIFFER'}"
          f" ({time.perf_counter() - start:.0f} s)")
    return 1 if failures else 0
