"""Compile and run every example kernel in this folder and check it against numpy.

    python examples/run_examples.py            # LLVM backend and the reference interpreter
    python examples/run_examples.py --formats u4 i3 nf4

Each example has a case here: a function that builds random inputs for it, runs the kernel
through a caller-chosen runner, and returns (result, numpy expectation). tests/test_examples.py
uses the same cases, and fails if an examples/*.lbk file has none.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

import lowbitc
from lowbitc.compiler import Kernel, compile
from lowbitc.packing import pack

HERE = Path(__file__).resolve().parent

# run(kernel, *args, **kwargs) executes a compiled kernel one way (native code or interpreter)
Runner = Callable[..., None]


def native(k: Kernel, *args, **kwargs) -> None:
    k(*args, **kwargs)


def interpreted(k: Kernel, *args, **kwargs) -> None:
    k.interpret(*args, **kwargs)


def q4_0_dequant(run: Runner, rng: np.random.Generator, N: int = 5, K: int = 100,
                 **params) -> tuple[np.ndarray, np.ndarray]:
    """GGUF Q4_0-style blocks: (code - 8) * d per block of 32 codes, f16 scales."""
    kb = -(-K // 32)
    codes = rng.integers(0, 16, (N, K)).astype(np.uint8)
    d = rng.standard_normal((N, kb)).astype(np.float16)
    y = np.full((N, K), np.nan, np.float32)
    run(compile(HERE / "q4_0_dequant.lbk", **params), pack(codes, 4), d, y)
    scale = np.repeat(d.astype(np.float32), 32, axis=1)[:, :K]
    return y, (codes.astype(np.float32) - 8.0) * scale


def dequant_silu(run: Runner, rng: np.random.Generator, N: int = 6, K: int = 90,
                 group: int = 16, W: str = "u4", ZP: bool = True,
                 **params) -> tuple[np.ndarray, np.ndarray]:
    """silu((decode(w) - z) * s) with group-wise scales and zero points."""
    fmt = lowbitc.dtype(W)
    g = -(-K // group)
    codes = rng.integers(0, fmt.num_codes, (N, K)).astype(np.uint8)
    s = rng.uniform(0.1, 1.0, (N, g)).astype(np.float32)
    z = rng.uniform(0.0, 3.0, (N, g)).astype(np.float32)
    y = np.full((N, K), np.nan, np.float32)
    k = compile(HERE / "dequant_silu.lbk", W=W, ZP=ZP, **params)
    run(k, pack(codes, fmt.bits), s, z, y, group, K=K)
    col_group = np.arange(K) // group
    x = fmt.decode(codes).astype(np.float64)
    x = (x - (z[:, col_group] if ZP else 0.0)) * s[:, col_group]
    return y, (x / (1.0 + np.exp(-x))).astype(np.float32)


def quantize_rows(run: Runner, rng: np.random.Generator, N: int = 5, K: int = 70,
                  group: int = 32, W: str = "u4", ZP: bool = True,
                  **params) -> tuple[np.ndarray, np.ndarray]:
    """Per-group min-max (or absmax) scales and RTN codes, packed: returns the kernel's
    [codes | scale bits | zero bits] and numpy's, which must be identical."""
    fmt = lowbitc.dtype(W)
    g = -(-K // group)
    x = (rng.standard_normal((N, K)) * rng.uniform(0.1, 4.0, (N, 1))).astype(np.float32)
    q = np.zeros((N, -(-K * fmt.bits // 32)), np.uint32)
    s, z = np.zeros((N, g), np.float32), np.zeros((N, g), np.float32)
    k = compile(HERE / "quantize_rows.lbk", W=W, GROUP=group, ZP=ZP, QMIN=fmt.min,
                QMAX=fmt.max, **params)
    run(k, x, q, s, z)
    pad = np.pad(x, ((0, 0), (0, g * group - K)), constant_values=np.nan).reshape(N, g, group)
    hi, lo = np.nanmax(pad, axis=2), np.nanmin(pad, axis=2)
    f32 = np.float32
    if ZP:
        ws = (hi - lo) / f32(fmt.max - fmt.min)
        ws = np.where(ws > 0, ws, f32(1))
        wz = f32(fmt.min) - lo / ws
    else:
        ws = np.maximum(np.abs(hi), np.abs(lo)) / f32(fmt.max)
        ws = np.where(ws > 0, ws, f32(1))
        wz = np.zeros_like(ws)
    cols = np.arange(K) // group
    codes = fmt.encode((x / ws[:, cols] + wz[:, cols]).astype(np.float32))  # RTN, given scales
    got = np.concatenate([unpack_codes(q, fmt.bits, K), s.view(np.uint32), z.view(np.uint32)], 1)
    want = np.concatenate([codes.astype(np.uint32), ws.view(np.uint32), wz.view(np.uint32)], 1)
    return got, want


def tc_gemm(run: Runner, rng: np.random.Generator, M: int = 5, N: int = 37, K: int = 70,
            group: int = 32, W: str = "u4", backend: str = "llvm",
            **params) -> tuple[np.ndarray, np.ndarray]:
    """The tensor-core GEMM of docs/tutorial.md: f16 activations, group scales; the
    expectation in float64 (the kernel sums f16 x f16 products in f32: compare with an
    f32-sized tolerance)."""
    fmt = lowbitc.dtype(W)
    codes = rng.integers(0, fmt.num_codes, (N, K)).astype(np.uint8)
    s = rng.uniform(0.01, 0.1, (N, -(-K // group))).astype(np.float32)
    x = rng.standard_normal((M, K)).astype(np.float16)
    y = np.full((M, N), np.nan, np.float32)
    run(compile(HERE / "tc_gemm.lbk", backend=backend, W=W, **params), x, pack(codes, fmt.bits),
        s, y, group)
    w = fmt.decode(codes).astype(np.float16).astype(np.float64)
    w = w * np.repeat(s, group, axis=1)[:, :K]
    return y, x.astype(np.float64) @ w.T


def unpack_codes(q: np.ndarray, bits: int, count: int) -> np.ndarray:
    return lowbitc.unpack(q, bits, count).astype(np.uint32)


CASES: dict[str, Callable[..., tuple[np.ndarray, np.ndarray]]] = {
    "q4_0_dequant.lbk": q4_0_dequant,
    "dequant_silu.lbk": dequant_silu,
    "quantize_rows.lbk": quantize_rows,
    "tc_gemm.lbk": tc_gemm,
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--formats", nargs="*", default=["u4", "i3", "b2", "f6e3m2", "f4e2m1", "nf4"],
                    help="weight formats for dequant_silu.lbk")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    failed = 0
    runs: list[tuple[str, Callable]] = [("q4_0_dequant.lbk", q4_0_dequant)]
    runs += [(f"dequant_silu.lbk W={w}", lambda r, g, w=w: dequant_silu(r, g, W=w))
             for w in args.formats]
    runs += [(f"quantize_rows.lbk W={w}", lambda r, g, w=w: quantize_rows(r, g, W=w))
             for w in args.formats]
    runs += [(f"tc_gemm.lbk W={w}", lambda r, g, w=w: tc_gemm(r, g, W=w)) for w in ("u4", "i3")]
    print(f"{'example':<28} {'runner':<12} {'max |err|':>10} {'time':>9}")
    for name, case in runs:
        for rname, runner in (("llvm", native), ("interpreter", interpreted)):
            t0 = time.perf_counter()
            got, want = case(runner, rng)
            dt = time.perf_counter() - t0
            err = float(np.max(np.abs(got - want)))
            ok = np.allclose(got, want, rtol=1e-5, atol=1e-5)
            failed += not ok
            print(f"{name:<28} {rname:<12} {err:>10.2e} {dt * 1e3:>7.1f}ms"
                  + ("" if ok else "  MISMATCH"))
    print("all examples match numpy" if not failed else f"{failed} mismatches")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
