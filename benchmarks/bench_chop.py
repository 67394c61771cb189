"""lowbitc.chop with stochastic rounding against the deterministic mode (issue 20's row):
16M float32 values to f8e4m3fn, both timed in the same interleaved rounds (medians), with
the machine's load recorded (the ratio is what to read on a shared machine).

    python benchmarks/bench_chop.py [--rounds 15] [--out benchmarks/results/chop.json]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from lowbitc.benchmarks.environment import cpu_usage
from lowbitc.benchmarks.harness import interleaved_stats, machine_info, write_json
from lowbitc.emulate import chop

SIZE, FORMAT = 1 << 24, "f8e4m3fn"
GOAL_RATIO = 2.0  # stochastic / deterministic time <= 2


def measure(rounds: int, size: int = SIZE, fmt: str = FORMAT) -> dict:
    x = np.random.default_rng(0).standard_normal(size).astype(np.float32) * 50
    candidates = {mode: (lambda m=mode: chop(x, fmt, rounding=m, seed=1))
                  for mode in ("nearest_even", "stochastic")}
    load = os.getloadavg()
    with cpu_usage() as busy:
        stats = interleaved_stats(candidates, rounds)
    det, sto = stats["nearest_even"]["median"], stats["stochastic"]["median"]
    return {
        "case": f"chop of {size} float32 values to {fmt}: stochastic vs nearest_even",
        "size": size, "format": fmt, "rounds": rounds, "stats": stats,
        "ratio": sto / det, "goal": {"ratio <=": GOAL_RATIO}, "pass": sto / det <= GOAL_RATIO,
        "values_per_second": {"nearest_even": size / det, "stochastic": size / sto},
        "loadavg_before": load, "machine_load": busy,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--size", type=int, default=SIZE)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "chop.json"))
    args = ap.parse_args(argv)
    r = measure(args.rounds, args.size)
    s = r["stats"]
    print(f"{r['case']}: nearest_even {s['nearest_even']['median'] * 1e3:.1f} ms, stochastic "
          f"{s['stochastic']['median'] * 1e3:.1f} ms, ratio {r['ratio']:.2f} (goal <= "
          f"{GOAL_RATIO}); other processes used {r['machine_load'].get('others_cpus', 0):.2f} "
          f"CPUs, load average {r['loadavg_before'][0]:.1f}", flush=True)
    write_json(args.out, {"machine": machine_info(), "rows": [r]})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
