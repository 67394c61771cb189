"""In-process A/B of compiler variants of `ops.matmul`: each variant is a Python snippet run
before its kernels compile (setting module constants of the backend), all variants' kernels
live in one process and are timed in interleaved rounds, so the host's memory speed, which
moves 20-30 % between runs on the machines this project runs on, hits them alike.

Each round times, per variant (order reversed every other round), a burst of calls rotating
through copies of the weight totalling >= 4x the last-level cache ("streamed", as a model's
layers are read in decoding) and a burst on the one weight ("in cache"); reported are the
medians of the per-call times and of the per-round ratios to the first variant, and the
process CPU seconds per wall second of the streamed bursts (about how many threads worked).
Results of every variant are checked bit for bit against the first's. The persistent kernel
cache is off while they compile (its key does not see the snippets' constants). Run, e.g.:

    python -m benchmarks.ab u4 --act i8 --threads 2 "base:pass" \\
        "t0:target.PREFETCH_LOCALITY['rows'] = 3"

The snippets see the modules `target`, `rows`, `bytedot`, `prefetch`, `fusion` (of
lowbitc.backends.llvm) and `a8`; they run in order and what one sets stays set for the
variants after it (so each sets everything it changes, or the changed variant comes last).
A format list joined by '+' makes a per-group mixture; an interop format (Q4_0, Q4_K,
GPTQ4) is another tool's tensor read as lowbitc does.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import statistics
import time
from collections.abc import Callable, Iterator

import numpy as np

from benchmarks.cases import INTEROP_FORMATS
from lowbitc.memory import copies_for


def _burst(fn: Callable[[], object], ms: float) -> float:
    """Seconds per call of `fn` over a burst of at least `ms` milliseconds."""
    t0, n = time.perf_counter(), 0
    while True:
        fn()
        n += 1
        t = time.perf_counter() - t0
        if t >= ms / 1e3:
            return t / n


def snippet_scope() -> dict:
    """The modules a variant's snippet sees by name."""
    from lowbitc import a8
    from lowbitc.backends.llvm import bytedot, fusion, prefetch, rows, target

    return {"target": target, "rows": rows, "bytedot": bytedot, "prefetch": prefetch,
            "fusion": fusion, "a8": a8}


@contextlib.contextmanager
def no_cache() -> Iterator[None]:
    """The persistent kernel cache off inside the block (its key does not see the snippets),
    LOWBITC_NO_CACHE as it was after it."""
    old = os.environ.get("LOWBITC_NO_CACHE")
    os.environ["LOWBITC_NO_CACHE"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("LOWBITC_NO_CACHE", None)
        else:
            os.environ["LOWBITC_NO_CACHE"] = old


def weight_copies(nbytes: int, copies: int = 0) -> int:
    """`copies`, or (0) as many copies of a weight of `nbytes` as total >= 4x the LLC."""
    return copies or max(2, min(64, copies_for(nbytes)))


def case(fmt: str, group: int, m: int, n: int):
    """(the weight [n, n] as `fmt` quantizes it, activations [m, n]); `fmt` may be formats
    joined by '+' (a mixture) or an interop format."""
    from benchmarks import candidates as cand

    w, x = cand.weights(n, n, 0), cand.activations(m, n, 1)
    if fmt in INTEROP_FORMATS:
        return cand.imported(w, fmt, group), x
    return cand.quantized(w, fmt.split("+") if "+" in fmt else fmt, group), x


def parse_variants(ap: argparse.ArgumentParser, texts: list[str]) -> list[tuple[str, str]]:
    """[(name, snippet)] of 'name:python snippet' arguments (ap.error on anything else)."""
    variants = []
    for v in texts:
        name, sep, code = v.partition(":")
        if not sep or not name:
            ap.error(f"variant: expected 'name:python snippet', got {v!r}")
        variants.append((name, code))
    return variants


def run(fmt: str, variants: list[tuple[str, str]], act: str = "f32", m: int = 1,
        n: int = 4096, group: int = 128, rounds: int = 30, burst_ms: float = 5.0,
        copies: int = 0) -> dict:
    """{variant: {"streamed", "in_cache" (median seconds a call), "streamed_ratio",
    "in_cache_ratio" (median per-round ratio to the first variant), "cpu_per_wall",
    "max_abs_diff" (against the first variant's result), "llvm" (a digest of its kernels'
    LLVM IR: equal digests, equal code)}}. The snippets' settings stay in place afterwards:
    run it in a process of its own (the kernels it compiled are forgotten on return)."""
    from benchmarks import candidates as cand
    from lowbitc import kernels, ops

    scope = snippet_scope()
    qw, x = case(fmt, group, m, n)
    copies = weight_copies(cand.weight_bytes(qw), copies)
    weights = [qw] + [qw.replica() for _ in range(copies - 1)]
    plans, outs, digests = {}, {}, {}
    with no_cache():
        for name, code in variants:
            ops._PLANS.clear()
            kernels._KERNELS.clear()
            exec(code, scope)  # noqa: S102 - the caller's own experiment
            outs[name] = ops.matmul(x, qw, act=act)
            plans[name] = dict(ops._PLANS)
            text = "".join(k.text("llvm") for k in plans[name].values())
            digests[name] = hashlib.sha256(text.encode()).hexdigest()[:16]
    for name in plans:
        ops._PLANS.clear()
        ops._PLANS.update(plans[name])
        for q in weights:  # first calls: packing, binding
            ops.matmul(x, q, act=act)

    def calls(qs):
        def go():
            for q in qs:
                ops.matmul(x, q, act=act)
        return go

    streamed, cached = calls(weights), calls([qw])
    times = {name: {"s": [], "c": [], "cpu": []} for name, _ in variants}
    for r in range(rounds):
        for name, _ in (variants if r % 2 == 0 else variants[::-1]):
            ops._PLANS.clear()
            ops._PLANS.update(plans[name])
            c0, t0 = time.process_time(), time.perf_counter()
            times[name]["s"].append(_burst(streamed, burst_ms) / len(weights))
            times[name]["cpu"].append((time.process_time() - c0) / (time.perf_counter() - t0))
            times[name]["c"].append(_burst(cached, burst_ms))
    first = variants[0][0]
    out = {}
    for name, _ in variants:
        t, b = times[name], times[first]
        out[name] = {
            "streamed": statistics.median(t["s"]),
            "in_cache": statistics.median(t["c"]),
            "streamed_ratio": statistics.median(np.divide(t["s"], b["s"])),
            "in_cache_ratio": statistics.median(np.divide(t["c"], b["c"])),
            "cpu_per_wall": statistics.median(t["cpu"]),
            "max_abs_diff": float(np.abs(outs[name] - outs[first]).max()),
            "llvm": digests[name],
        }
    ops._PLANS.clear()
    kernels._KERNELS.clear()
    return {"format": fmt, "act": act, "M": m, "N": n, "K": n, "group": group,
            "copies": copies, "rounds": rounds, "variants": out}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("format", help="weight format, formats joined by '+' (a mixture), or an "
                    "interop format (Q4_0, Q4_K, GPTQ4)")
    ap.add_argument("variants", nargs="+", help="'name:python snippet', the first the base")
    ap.add_argument("--act", default="f32", choices=("f32", "i8"))
    ap.add_argument("--M", type=int, default=1)
    ap.add_argument("--N", type=int, default=4096, help="N = K")
    ap.add_argument("--group", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--copies", type=int, default=0, help="weight copies (0: >= 4x the LLC)")
    args = ap.parse_args(argv)
    variants = parse_variants(ap, args.variants)
    os.environ["LOWBITC_NUM_THREADS"] = str(args.threads)
    res = run(args.format, variants, args.act, args.M, args.N, args.group, args.rounds,
              copies=args.copies)
    print(f"{res['format']} act={res['act']} M={res['M']} N=K={res['N']} "
          f"threads={args.threads} copies={res['copies']} rounds={res['rounds']}")
    for name, v in res["variants"].items():
        diff = "" if v["max_abs_diff"] == 0 else f"  differs by {v['max_abs_diff']:.3g}"
        print(f"  {name:12s} streamed {v['streamed'] * 1e6:8.1f} us (x{v['streamed_ratio']:.3f})"
              f"  in cache {v['in_cache'] * 1e6:8.1f} us (x{v['in_cache_ratio']:.3f})"
              f"  cpu/wall {v['cpu_per_wall']:.2f}  llvm {v['llvm']}{diff}")


if __name__ == "__main__":
    main()
