"""The static (*predicted*) roofline of the tensor-core low-bit GEMM on A100 and H100, the table
in docs/cuda.md: bytes moved, the time bound by memory bandwidth, by the tensor cores and by
instruction issue (from the SASS counts `lowbitc emit matmul --backend cuda --format stats`
reports for the steady-state K loop).

    python -m benchmarks.roofline_cuda [--no-stats] [--json out.json]

Model (one pass over every operand, activations reused from L2 across column blocks):
- bytes = N*K*bits/8 (codes) + 4*N*ceil(K/g) per f32 scale/zero tensor + 2*M*K (f16
  activations) + 4*M*N (f32 output), g = 128;
- tensor cores: mma.m16n8k16 works on 16-row tiles, so 2*ceil(M/16)*16*N*K flops at the
  published dense f16 peak;
- issue: ceil(M/16)*(N/8)*(K/16) HMMA, each with `r` other instructions of the steady-state
  K loop, issued one warp instruction per clock by each of the SM's 4 schedulers. `r` is
  measured per M on the tile `ops.matmul` picks for that M (`lowbitc.mma_plan.mma_params`:
  BM 16 on one warp for M <= 16, BM 32 / 64 on four warps above), by `lowbitc emit matmul -D
  A=f16 -D BM=.. -D BN=.. -D TH=.. --backend cuda --format stats`. Without the toolchain the
  column shows the issue's acceptance bound (u4 <= 8, other widths <= 16) at a 16-row tile,
  amortised over R = min(ceil(M/16), 4) row tiles for M > 16 (r / R + 1/8), labelled
  `bound`, not a measurement.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys

from lowbitc.benchmarks.harness import write_json

# Published figures: NVIDIA A100 datasheet (SXM4 80GB) and H100 datasheet (SXM5); clocks are
# the ones the dense f16 tensor peaks are quoted at (A100 1410 MHz; H100 1830 MHz).
GPUS = {
    "A100": {"name": "A100 SXM4 80GB", "arch": "sm_80", "bandwidth": 2.039e12,
             "tensor_f16": 312e12, "sms": 108, "clock": 1.41e9},
    "H100": {"name": "H100 SXM5", "arch": "sm_90", "bandwidth": 3.35e12,
             "tensor_f16": 989.4e12, "sms": 132, "clock": 1.83e9},
}
FORMATS = {"u2": 2, "u3": 3, "u4": 4, "f4e2m1fn": 4, "u8": 8}
MS = (1, 16, 128, 4096)
SIZES = (4096, 8192)
GROUP = 128
SCHEDULERS = 4  # warp schedulers per SM, one instruction issued per clock each
WARP_M_TILES = 4  # 16-row tiles of a warp tile sharing each decoded B fragment
ACCEPTANCE_BOUND = {"u4": 8}  # non-HMMA per HMMA; every other width: 16


def zero_points(fmt: str) -> bool:
    """Unsigned formats carry zero points in the benchmark (bench_cuda.py), floats do not."""
    return fmt.startswith("u")


def bytes_moved(m: int, n: int, k: int, fmt: str, group: int = GROUP) -> int:
    """Bytes the GEMM must move at least once (see the module docstring)."""
    groups = n * math.ceil(k / group)
    meta = 4 * groups * (2 if zero_points(fmt) else 1)
    return n * k * FORMATS[fmt] // 8 + meta + 2 * m * k + 4 * m * n


def hmma_count(m: int, n: int, k: int) -> int:
    return math.ceil(m / 16) * math.ceil(n / 8) * math.ceil(k / 16)


def effective_ratio(r: float, m: int) -> float:
    """Non-HMMA per HMMA at M rows from a bound `r` at a 16-row tile (module docstring); a
    measured `r` is taken on M's own tile instead."""
    tiles = min(math.ceil(m / 16), WARP_M_TILES)
    return r if tiles == 1 else r / tiles + 1 / 8


def bounds(gpu: dict, m: int, n: int, k: int, fmt: str, r: float, on_tile: bool = False
           ) -> dict:
    """Seconds bound by bandwidth, tensor-core peak and instruction issue; the max predicts.
    `r`: non-HMMA per HMMA measured on M's own tile (`on_tile`), or at a 16-row tile."""
    bw = bytes_moved(m, n, k, fmt) / gpu["bandwidth"]
    tc = 2 * math.ceil(m / 16) * 16 * n * k / gpu["tensor_f16"]
    r_eff = r if on_tile else effective_ratio(r, m)
    issue = hmma_count(m, n, k) * (1 + r_eff) / (SCHEDULERS * gpu["sms"] * gpu["clock"])
    f16 = (2 * n * k + 2 * m * k + 4 * m * n) / gpu["bandwidth"]  # an f16 weight, same model
    return {"bytes": bytes_moved(m, n, k, fmt), "r_eff": r_eff, "bandwidth_s": bw, "tensor_s": tc,
            "issue_s": issue, "predicted_s": max(bw, tc, issue),
            "f16_bound_s": max(f16, 2 * m * n * k / gpu["tensor_f16"])}


def ratio_from_stats(stats: dict) -> float | None:
    """Non-HMMA instructions per HMMA in the steady-state loop (`mma_loop`, what `lowbitc emit
    ... --format stats` reports for a tensor-core kernel), or None without HMMA."""
    for scope in (stats.get("mma_loop") or {}, stats, stats.get("inner_loop") or {}):
        if scope.get("non_hmma_per_hmma") is not None:
            return float(scope["non_hmma_per_hmma"])
    loop = stats.get("inner_loop") or {}
    mix = loop.get("sass_mix") or {}
    hmma = mix.get("HMMA", 0)
    return (loop["instructions"] - hmma) / hmma if hmma else None


def tile(m: int, n: int, fmt: str) -> tuple[int, int, int]:
    """(BM, BN, TH) of the tensor-core kernel ops.matmul runs at M rows (N = K = n, group
    128, f16 activations; untuned defaults)."""
    from lowbitc.dtypes import dtype
    from lowbitc.mma_plan import mma_params

    p = mma_params(m, dtype(fmt), GROUP, zero_points(fmt), "f16", n, n)
    return p["BM"], p["BN"], p["TH"]


def measured_ratio(fmt: str, arch: str, bm_bn_th: tuple[int, int, int] | None = None
                   ) -> float | None:
    """`r` from `lowbitc emit matmul -D A=f16 [-D BM= -D BN= -D TH=] --backend cuda --format
    stats` (the tensor-core kernel ops.matmul runs for f16 activations), None if no HMMA."""
    tiles = [] if bm_bn_th is None else [
        f"{k}={v}" for k, v in zip(("BM", "BN", "TH"), bm_bn_th, strict=True)]
    defs = ["-D", "A=f16", "-D", f"ZP={'true' if zero_points(fmt) else 'false'}"]
    for d in tiles:
        defs += ["-D", d]
    proc = subprocess.run(
        [sys.executable, "-m", "lowbitc.cli", "emit", "matmul", *defs, "--wtype", fmt,
         "--backend", "cuda", "--arch", arch, "--format", "stats"], capture_output=True,
        text=True)
    if proc.returncode != 0:
        return None
    return ratio_from_stats(json.loads(proc.stdout))


def table(ratios: dict[tuple, float | None]) -> tuple[str, list[dict]]:
    """The markdown table (times in us) and its rows. `ratios`: `r` keyed (format, arch,
    (BM, BN, TH)) as measured on that tile, or (format, arch) at a 16-row tile."""
    head = ("| GPU | M | N=K | format | tile BMxBN | MB moved | bandwidth | tensor | "
            "issue (r_eff) | *predicted* | f16 bound | x f16 |")
    lines = [head, "|" + "---|" * 12]
    rows = []
    for gname, gpu in GPUS.items():
        for n in SIZES:
            for fmt in FORMATS:
                for m in MS:
                    bm, bn, th = tile(m, n, fmt)
                    r = ratios.get((fmt, gpu["arch"], (bm, bn, th)))
                    on_tile = r is not None
                    if r is None:
                        r = ratios.get((fmt, gpu["arch"]))
                    measured = r is not None
                    if r is None:
                        r = ACCEPTANCE_BOUND.get(fmt, 16)
                    tag = "" if measured else " bound"
                    b = bounds(gpu, m, n, n, fmt, r, on_tile)
                    rows.append({"gpu": gname, "M": m, "N": n, "K": n, "format": fmt,
                                 "tile": [bm, bn, th], "r": r, "r_measured": measured,
                                 "r_on_tile": on_tile, **b})
                    us = {k: v * 1e6 for k, v in b.items() if k.endswith("_s")}
                    lines.append(
                        f"| {gname} | {m} | {n} | {fmt} | {bm}x{bn} | {b['bytes'] / 1e6:.1f} | "
                        f"{us['bandwidth_s']:.1f} | {us['tensor_s']:.1f} | "
                        f"{us['issue_s']:.1f} ({b['r_eff']:.2f}{tag}) | "
                        f"*{us['predicted_s']:.1f}* | "
                        f"{us['f16_bound_s']:.1f} | {b['f16_bound_s'] / b['predicted_s']:.2f} |")
    return "\n".join(lines), rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.roofline_cuda", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-stats", action="store_true",
                    help="do not run `lowbitc emit ... --format stats` (use the bounds)")
    ap.add_argument("--json", help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    ratios: dict[tuple, float | None] = {}
    if not args.no_stats:
        tiles = sorted({tile(m, n, f) for m in MS for n in SIZES for f in FORMATS})
        for fmt in FORMATS:
            for gpu in GPUS.values():
                for t in tiles:
                    ratios[(fmt, gpu["arch"], t)] = measured_ratio(fmt, gpu["arch"], t)
    text, rows = table(ratios)
    print(text)
    if args.json:
        write_json(args.json, {"gpus": GPUS, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
