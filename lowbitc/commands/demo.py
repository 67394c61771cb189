"""`lowbitc demo`: compile the shipped kernels for a spread of formats, run them on random
weights, check them against numpy and print what happened."""

from __future__ import annotations

import argparse
import time

import numpy as np

from lowbitc import ops
from lowbitc.quant import quantize

NAME = "demo"

DEFAULT_FORMATS = ("u1", "u2", "u3", "u4", "i4", "b2", "u5", "u8", "f4e2m1fn", "f6e3m2fn",
                   "f8e4m3fn", "nf4")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--formats", default=",".join(DEFAULT_FORMATS),
                   help="comma-separated formats (default: a spread of 1-8-bit formats)")
    p.add_argument("--n", type=int, default=1024, help="N = K of the weight (default 1024)")
    p.add_argument("--m", default="1,16", help="activation rows to run (default 1,16)")
    p.add_argument("--group", type=int, default=128, help="group size (default 128)")
    p.add_argument("--repeat", type=int, default=10, help="timed runs per case (median)")


def _median_time(fn, repeat: int) -> float:
    fn()
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def run(args: argparse.Namespace) -> int:
    rng = np.random.default_rng(0)
    n = k = args.n
    ms = [int(m) for m in args.m.split(",")]
    w = rng.standard_normal((n, k)).astype(np.float32)
    print(f"lowbitc demo: weights {n}x{k}, group {args.group}, LLVM CPU backend")
    print(f"{'format':<10} {'kernel':<10} {'M':>4} {'max rel err':>12} {'compile':>8} "
          f"{'lowbitc':>10} {'numpy fp32':>11} {'speed':>7}")
    failures = 0
    for name in args.formats.split(","):
        zp = name.startswith("u")
        qw = quantize(w, name, args.group, zero_point=zp)
        wd = qw.dequantize()
        t0 = time.perf_counter()
        deq = ops.dequantize(qw)
        tc = time.perf_counter() - t0
        exact = np.array_equal(deq.view(np.uint32), wd.view(np.uint32))
        failures += not exact
        td = _median_time(lambda qw=qw: ops.dequantize(qw), args.repeat)
        tn = _median_time(lambda wd=wd: wd.copy(), args.repeat)
        print(f"{name:<10} {'dequant':<10} {'':>4} {'bit-exact' if exact else 'MISMATCH':>12} "
              f"{tc:>7.2f}s {td * 1e3:>8.2f}ms {tn * 1e3:>9.2f}ms {tn / td:>6.2f}x")
        for m in ms:
            x = rng.standard_normal((m, k)).astype(np.float32)
            ref = x.astype(np.float64) @ wd.T.astype(np.float64)
            t0 = time.perf_counter()
            y = ops.matmul(x, qw)
            tc = time.perf_counter() - t0
            err = float(np.abs(y - ref).max() / max(np.abs(ref).max(), 1e-30))
            ok = err < 1e-4
            failures += not ok
            tk = _median_time(lambda x=x, qw=qw: ops.matmul(x, qw), args.repeat)
            tn = _median_time(lambda x=x, wd=wd: x @ wd.T, args.repeat)
            kind = "gemv" if m == 1 else "gemm"
            print(f"{name:<10} {kind:<10} {m:>4} {err:>12.1e} {tc:>7.2f}s {tk * 1e3:>8.2f}ms "
                  f"{tn * 1e3:>9.2f}ms {tn / tk:>6.2f}x" + ("" if ok else "  <- WRONG"))
    print("all results match numpy" if not failures else f"{failures} results DIFFER from numpy")
    return 1 if failures else 0
