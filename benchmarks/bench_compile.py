"""Compile-cache goals: first compile of the shipped GEMM for one format (<= 2 s) and loading
it from the cache in a new process (<= 50 ms), each in fresh subprocesses.

A child process times itself from its first statement (interpreter start-up excluded):
`import numpy`, `import lowbitc`, then `lowbitc.compile(matmul.lbk, W=...)` until the kernel
is ready. Figures are medians over several children; load averages are recorded because
other processes share these 2 cores. Run: `python -m benchmarks.bench_compile`.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.harness import machine_info, write_json

RESULTS = Path(__file__).parent / "results" / "compile.json"
MATMUL = Path(__file__).resolve().parents[1] / "lowbitc" / "kernels" / "matmul.lbk"
CHILD = """
import time
t0 = time.perf_counter()
import numpy
t1 = time.perf_counter()
import lowbitc
t2 = time.perf_counter()
k = lowbitc.compile({path!r}, W=lowbitc.dtype({wtype!r}))
t3 = time.perf_counter()
import json, sys
print(json.dumps({{"numpy": t1 - t0, "import_lowbitc": t2 - t1, "compile": t3 - t2,
                  "total": t3 - t0, "lowbitc": t3 - t1, "front_end": "lark" in sys.modules}}))
"""


def child(cache: str, wtype: str) -> dict:
    env = {**os.environ, "LOWBITC_CACHE_DIR": cache}
    env.pop("LOWBITC_NO_CACHE", None)
    code = CHILD.format(path=str(MATMUL), wtype=wtype)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, timeout=600)
    return json.loads(out.stdout.strip().splitlines()[-1])


def medians(runs: list[dict]) -> dict:
    keys = ("numpy", "import_lowbitc", "compile", "lowbitc", "total")
    return {k: statistics.median(r[k] for r in runs) for k in keys}


def main(first_runs: int = 3, cached_runs: int = 9, wtype: str = "u4") -> dict:
    load_before = os.getloadavg()
    first, cached = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(first_runs):  # interleaved: a fresh cache, then loads from it
            cache = str(Path(tmp) / f"c{i}")
            first.append(child(cache, wtype))
            for _ in range(cached_runs // first_runs):
                cached.append(child(cache, wtype))
    # another engineer's edit changes the codegen hash mid-run: such a load is a miss, not a hit
    misses = [r for r in cached if r["front_end"]]
    cached = [r for r in cached if not r["front_end"]] or misses
    results = {
        "kernel": "lowbitc/kernels/matmul.lbk", "wtype": wtype,
        "definition": "seconds from the child's first statement (interpreter start-up "
                      "excluded); lowbitc = import lowbitc + compile, total adds import numpy",
        "first_compile": {"median": medians(first), "runs": first},
        "cached_load": {"median": medians(cached), "runs": cached,
                        "misses_excluded": len(misses)},
        "goals": {"first_compile_total_s": 2.0, "cached_load_s": 0.050},
        "load_average_before": list(load_before),
        "load_average_after": list(os.getloadavg()),
        "machine": machine_info(),
    }
    results["goals_met"] = {
        "first_compile_total": results["first_compile"]["median"]["total"] <= 2.0,
        "cached_load_total": results["cached_load"]["median"]["total"] <= 0.050,
        "cached_load_lowbitc_only": results["cached_load"]["median"]["lowbitc"] <= 0.050,
    }
    write_json(RESULTS, results)
    return results


if __name__ == "__main__":
    r = main()
    for what in ("first_compile", "cached_load"):
        m = r[what]["median"]
        print(f"{what:14s} total {m['total'] * 1e3:7.1f} ms (numpy {m['numpy'] * 1e3:.1f}, "
              f"import lowbitc {m['import_lowbitc'] * 1e3:.1f}, compile {m['compile'] * 1e3:.1f})")
    print("load average", r["load_average_before"], "->", r["load_average_after"])
    print("goals met:", r["goals_met"])
