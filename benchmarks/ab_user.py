"""In-process A/B of compiler variants of a user kernel of `examples/user/` (the bench's
`user_*` rows): each variant is a Python snippet run before the kernel compiles; it may set
backend module constants (as in benchmarks/ab.py), `params` (extra compile parameters, e.g.
`params['GC'] = 32`) or `source` (another .lbk file to compile in the example's place). All
variants' kernels live in one process and are timed in interleaved rounds, streamed (a burst
rotating through copies of the weight arguments totalling >= 4x the last-level cache) and in
cache (the one weight), beside the bench's baseline, `ops.matmul` on a QTensor of the same
bytes. Results are checked bit for bit against the first variant's. Run, e.g.:

    python -m benchmarks.ab_user gptq_act --M 1 "base:pass" "gc32:params['GC'] = 32"
"""

from __future__ import annotations

import argparse
import os
import statistics

import numpy as np

from benchmarks import candidates as cand
from benchmarks.ab import _burst, no_cache, parse_variants, snippet_scope, weight_copies
from benchmarks.user_cases import USER_KERNELS, user_case


def run(which: str, variants: list[tuple[str, str]], m: int = 1, n: int = 4096,
        rounds: int = 30, burst_ms: float = 5.0, copies: int = 0) -> dict:
    """{variant: {"streamed", "in_cache" (median seconds a call), "streamed_ratio",
    "in_cache_ratio" (median per-round ratio to the first variant), "vs_matmul" (median
    per-round ratio of ops.matmul's streamed time to the variant's: the bench row's
    figure), "max_abs_diff", "params" (the kernel's compile parameters)}}; `copies` of the
    weight arguments are streamed (0: >= 4x the last-level cache). Run it in a process of its
    own: the snippets' settings stay."""
    import lowbitc
    from lowbitc import ops

    if which not in USER_KERNELS:
        raise ValueError(f"which: expected one of {sorted(USER_KERNELS)}, got {which!r}")
    compile_ = lowbitc.compile
    scope = snippet_scope()
    runs, outs, params = {}, {}, {}

    def count(nbytes: int) -> int:
        return weight_copies(nbytes, copies)

    with no_cache():
        for name, code in variants:
            scope["params"], scope["source"] = {}, None
            exec(code, scope)  # noqa: S102 - the caller's own experiment
            extra, source = dict(scope["params"]), scope["source"]

            def patched(src, *a, _extra=extra, _source=source, **kw):
                return compile_(_source or src, *a, **{**kw, **_extra})

            lowbitc.compile = patched
            try:
                timed, qw, x = user_case(name, which, n, m, seed=0, copies=count)
                cached, _, _ = user_case(name, which, n, m, seed=0)
            finally:
                lowbitc.compile = compile_
            runs[name] = (timed.fn, cached.fn)
            params[name] = timed.info["kernel_params"]
            outs[name] = np.array(cached.fn(), copy=True)
    weights = [qw] + [qw.replica() for _ in range(count(cand.weight_bytes(qw)) - 1)]

    def matmul_streamed():
        for q in weights:
            ops.matmul(x, q)

    for q in weights:
        ops.matmul(x, q)
    times = {name: {"s": [], "c": [], "b": []} for name, _ in variants}
    for r in range(rounds):
        for name, _ in (variants if r % 2 == 0 else variants[::-1]):
            streamed, in_cache = runs[name]
            times[name]["s"].append(_burst(streamed, burst_ms))
            times[name]["b"].append(_burst(matmul_streamed, burst_ms) / len(weights))
            times[name]["c"].append(_burst(in_cache, burst_ms))
    first = variants[0][0]
    out = {}
    for name, _ in variants:
        t, b = times[name], times[first]
        out[name] = {
            "streamed": statistics.median(t["s"]),
            "in_cache": statistics.median(t["c"]),
            "streamed_ratio": statistics.median(np.divide(t["s"], b["s"])),
            "in_cache_ratio": statistics.median(np.divide(t["c"], b["c"])),
            "vs_matmul": statistics.median(np.divide(t["b"], t["s"])),
            "max_abs_diff": float(np.abs(outs[name] - outs[first]).max()),
            "params": params[name],
        }
    return {"kernel": which, "M": m, "N": n, "rounds": rounds, "variants": out}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kernel", help=f"one of {', '.join(sorted(USER_KERNELS))}")
    ap.add_argument("variants", nargs="+", help="'name:python snippet', the first the base")
    ap.add_argument("--M", type=int, default=1)
    ap.add_argument("--N", type=int, default=4096, help="N = K")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args(argv)
    variants = parse_variants(ap, args.variants)
    os.environ["LOWBITC_NUM_THREADS"] = str(args.threads)
    res = run(args.kernel, variants, args.M, args.N, args.rounds)
    print(f"user {res['kernel']} M={res['M']} N=K={res['N']} threads={args.threads} "
          f"rounds={res['rounds']}")
    for name, v in res["variants"].items():
        diff = "" if v["max_abs_diff"] == 0 else f"  differs by {v['max_abs_diff']:.3g}"
        print(f"  {name:12s} streamed {v['streamed'] * 1e6:8.1f} us (x{v['streamed_ratio']:.3f})"
              f"  in cache {v['in_cache'] * 1e6:8.1f} us (x{v['in_cache_ratio']:.3f})"
              f"  ops.matmul/this {v['vs_matmul']:.3f}{diff}")


if __name__ == "__main__":
    main()
