"""Compile-cache goals: first compile of the shipped GEMM for one format (<= 2 s) and loading
it from the cache in a new process (<= 50 ms), each in fresh subprocesses.

What is timed, in each child (`python -c`, interpreter start-up excluded from all but `wall`):
- `import_numpy`, `import_lowbitc`: the imports before the call;
- `call`: `lowbitc.compile(matmul.lbk, W=...)` until the kernel is ready to run. For a cache
  hit this is the load: key (source, params, target, toolchain, codegen hash), index lookup,
  checksum, the kernel's shared library dlopened (object code into MCJIT where no linker
  was found), ABI; it must not import the DSL, the passes, networkx or numba (nor llvmlite
  when the entry is a shared library), and each child reports whether it did;
  `call_thread_cpu` is the CPU time of the calling thread in it (less inflated than wall time
  when other processes hold the cores); `call_cpu` that of the whole process, which also
  counts OpenBLAS's worker threads spinning after numpy's import;
- `first_run`: the kernel's first call on a small problem (M=1, N=K=256), after `call`;
- `wall`: the whole `python -c` process as the parent sees it (start-up, imports, call, exit).
The user's view of the same thing, `ops_first_call`: `ops.matmul` on a u3 weight with zero
points (300 x 517, group 64, M = 5) in a new process, built from arrays (quantize's search is
not on this path): `ops_import` (`lowbitc.ops`), `first` and `second` call; the goal is
first - second <= 50 ms when the kernel is cached, first <= 2 s when it is not, and no heavy
module (ml_dtypes, torch, llvmlite, lark, networkx, numba) loaded on a hit.
Python's bytecode cache is warm, as in an installed package: children write .pyc files under
a private PYTHONPYCACHEPREFIX, and one uncounted child fills it first (this tree's shells set
PYTHONDONTWRITEBYTECODE, which would make every child recompile lowbitc from source).
Figures are medians; each child records the load average, since other processes share the
2 cores. A cached child that had to build (another engineer's edit changed the codegen hash
mid-run) is a miss, reported and left out. Run: `python -m benchmarks.bench_compile`.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.harness import machine_info, write_json

RESULTS = Path(__file__).parent / "results" / "compile.json"
MATMUL = Path(__file__).resolve().parents[1] / "lowbitc" / "kernels" / "matmul.lbk"
HEAVY = ("lark", "networkx", "numba", "lowbitc.dsl", "lowbitc.passes", "lowbitc.ir.parser")
CHILD = """
import time
t0 = time.perf_counter()
import os, sys
import numpy as np
t1 = time.perf_counter()
import lowbitc
t2, c2, h2 = time.perf_counter(), time.process_time(), time.thread_time()
k = lowbitc.compile({path!r}, W=lowbitc.dtype({wtype!r}))
t3, c3, h3 = time.perf_counter(), time.process_time(), time.thread_time()
heavy = sorted(m for m in {heavy!r} if m in sys.modules)
x, y = np.ones((1, 256), np.float32), np.empty((1, 256), np.float32)
w = np.zeros((256, 256 * {bits} // 32), np.uint32)
k(x, w, np.ones((256, 2), np.float32), np.zeros((1, 1), np.float32), y, 128, K=256)
t4 = time.perf_counter()
from lowbitc.cache import default_cache
import json
print(json.dumps({{"import_numpy": t1 - t0, "import_lowbitc": t2 - t1, "call": t3 - t2,
                  "call_cpu": c3 - c2, "call_thread_cpu": h3 - h2, "first_run": t4 - t3,
                  "heavy_modules_loaded": heavy,
                  "built": default_cache().stats["builds"] > 0,
                  "llvmlite_loaded": "llvmlite" in sys.modules,
                  "module": type(k._exe.module).__name__,
                  "load_average": os.getloadavg()[0]}}))
"""
OPS_CHILD = """
import time
import os, sys
import numpy as np
import lowbitc
from lowbitc.quant import QTensor
rng = np.random.default_rng(0)
N, K, G, M = 300, 517, 64, 5
g = -(-K // G)
qw = QTensor(lowbitc.dtype("u3"), (N, K), G, rng.integers(0, 8, (N, K)).astype(np.uint8),
             rng.random((N, g)).astype(np.float32), rng.random((N, g)).astype(np.float32))
x = rng.standard_normal((M, K)).astype(np.float32)
t0 = time.perf_counter()
ops = lowbitc.ops
t1 = time.perf_counter()
ops.matmul(x, qw)
t2 = time.perf_counter()
ops.matmul(x, qw)
t3 = time.perf_counter()
from lowbitc.cache import default_cache
import json
print(json.dumps({{"ops_import": t1 - t0, "first": t2 - t1, "second": t3 - t2,
                  "first_minus_second": (t2 - t1) - (t3 - t2),
                  "heavy_modules_loaded": sorted(m for m in {heavy!r} if m in sys.modules),
                  "built": default_cache().stats["builds"] > 0,
                  "load_average": os.getloadavg()[0]}}))
"""
OPS_HEAVY = ("ml_dtypes", "torch", "llvmlite", "lark", "networkx", "numba")
OPS_KEYS = ("ops_import", "first", "second", "first_minus_second")
KEYS = (
    "import_numpy",
    "import_lowbitc",
    "call",
    "call_cpu",
    "call_thread_cpu",
    "first_run",
    "wall",
)


def child(cache: str, wtype: str, pycache: str, code: str | None = None) -> dict:
    """One fresh process running CHILD (or `code`) against the cache directory `cache`."""
    env = {**os.environ, "LOWBITC_CACHE_DIR": cache, "PYTHONPYCACHEPREFIX": pycache}
    for name in ("LOWBITC_NO_CACHE", "PYTHONDONTWRITEBYTECODE"):
        env.pop(name, None)
    bits = int(wtype[1:])
    if code is None:
        code = CHILD.format(path=str(MATMUL), wtype=wtype, heavy=HEAVY, bits=bits)
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    wall = time.perf_counter() - t0
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "wall": wall}


def medians(runs: list[dict], keys: tuple[str, ...] = KEYS) -> dict:
    return {k: statistics.median(r[k] for r in runs) for k in keys}


def ops_first_call(tmp: str, pycache: str, runs: int, cached_per_first: int) -> dict:
    """ops.matmul's first call in new processes: cold (fresh cache), then cached."""
    code = OPS_CHILD.format(heavy=OPS_HEAVY)
    cold, hit = [], []
    for i in range(runs):
        cache = str(Path(tmp) / f"ops{i}")
        cold.append(child(cache, "u3", pycache, code))
        hit += [r for r in (child(cache, "u3", pycache, code) for _ in range(cached_per_first))
                if not r["built"]]
    cold_m, hit_m = medians(cold, OPS_KEYS), medians(hit, OPS_KEYS)
    return {
        "cold": {"median": cold_m, "runs": cold},
        "cached": {"median": hit_m, "runs": hit},
        "cached_imports_heavy": sorted({m for r in hit for m in r["heavy_modules_loaded"]}),
        "goals_met": {"cold first call <= 2 s": cold_m["first"] <= 2.0,
                      "cached first - second <= 50 ms": hit_m["first_minus_second"] <= 0.050},
    }


def main(first_runs: int = 5, cached_per_first: int = 3, wtype: str = "u4") -> dict:
    load_before = os.getloadavg()
    first, cached, misses = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        pycache = str(Path(tmp) / "pycache")
        child(str(Path(tmp) / "warm"), wtype, pycache)  # fills the bytecode cache: not counted
        for i in range(first_runs):  # interleaved: a fresh cache, then loads from it
            cache = str(Path(tmp) / f"c{i}")
            first.append(child(cache, wtype, pycache))
            for _ in range(cached_per_first):
                r = child(cache, wtype, pycache)
                (misses if r["built"] else cached).append(r)
        ops = ops_first_call(tmp, pycache, first_runs, cached_per_first)
    hit, compile_ = medians(cached), medians(first)
    results = {
        "kernel": "lowbitc/kernels/matmul.lbk",
        "wtype": wtype,
        "definition": __doc__.split("What is timed", 1)[1].split("Run:", 1)[0].strip(),
        "first_compile": {"median": compile_, "runs": first},
        "cached_load": {"median": hit, "runs": cached, "misses_excluded": len(misses)},
        "goals": {"first_compile_s": 2.0, "cached_load_call_s": 0.050},
        "goals_met": {
            "first_compile (import lowbitc + call)": compile_["import_lowbitc"] + compile_["call"]
            <= 2.0,
            "first_compile (whole process)": compile_["wall"] <= 2.0,
            "cached_load (call)": hit["call"] <= 0.050,
            "cached_load (import lowbitc + call)": hit["import_lowbitc"] + hit["call"] <= 0.050,
        },
        "cached_load_imports_front_end": sorted(
            {m for r in cached for m in r["heavy_modules_loaded"]}
        ),
        "cached_load_imports_llvmlite": any(r["llvmlite_loaded"] for r in cached),
        "cached_load_modules": sorted({r["module"] for r in cached}),
        "ops_first_call": ops,
        "load_average_before": list(load_before),
        "load_average_after": list(os.getloadavg()),
        "machine": machine_info(),
    }
    write_json(RESULTS, results)
    return results


if __name__ == "__main__":
    r = main()
    for what in ("first_compile", "cached_load"):
        m = r[what]["median"]
        print(
            f"{what:14s} call {m['call'] * 1e3:7.1f} ms  (import numpy "
            f"{m['import_numpy'] * 1e3:.1f}, import lowbitc {m['import_lowbitc'] * 1e3:.1f}, "
            f"first run {m['first_run'] * 1e3:.1f}, whole process {m['wall'] * 1e3:.0f})"
        )
    print(
        "llvmlite on a hit:",
        r["cached_load_imports_llvmlite"],
        " loaded as:",
        r["cached_load_modules"],
        " front end on a hit:",
        r["cached_load_imports_front_end"] or "none",
        " misses excluded:",
        r["cached_load"]["misses_excluded"],
    )
    ops = r["ops_first_call"]
    cold, hit = ops["cold"]["median"], ops["cached"]["median"]
    print(
        f"ops.matmul     cold first call {cold['first'] * 1e3:.0f} ms; cached: first "
        f"{hit['first'] * 1e3:.1f} ms, second {hit['second'] * 1e3:.2f} ms, first - second "
        f"{hit['first_minus_second'] * 1e3:.1f} ms (import lowbitc.ops "
        f"{hit['ops_import'] * 1e3:.1f} ms); heavy modules on a hit: "
        f"{ops['cached_imports_heavy'] or 'none'}; goals met: {ops['goals_met']}"
    )
    print("versions:", r["machine"]["versions"])
    print("load average", r["load_average_before"], "->", r["load_average_after"])
    print("goals met:", r["goals_met"])
