"""What lowbitc.torch adds on top of the kernels: QuantLinear.forward against lowbitc.ops.matmul
on the same QTensor, measured in the same interleaved rounds (medians).

Also timed, for context: the custom op called through the torch dispatcher
(torch.ops.lowbitc.matmul, the path torch.compile and autograd take), QuantLinear with an input
that requires grad (autograd through the op), and fp32 nn.Linear.

    python benchmarks/bench_torch.py [--rounds 30] [--out benchmarks/results/torch.json]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from lowbitc import ops
from lowbitc.benchmarks.harness import interleaved_stats, machine_info, write_json
from lowbitc.torch import QuantLinear

# (M, N, K, format, group): the 4096^2 GEMV, a small layer where overhead dominates,
# and a batched case
CASES = ((1, 4096, 4096, "u4", 128), (1, 384, 384, "u4", 64), (16, 4096, 4096, "u4", 128))
GOAL_OVERHEAD_US, GOAL_RATIO = 30.0, 1.2


def _batched(candidates: dict, reps: int) -> dict:
    """Each candidate called `reps` times per timed run (short calls: a run of ~1 ms is less
    at the mercy of one preemption than a run of one call)."""
    return {name: (lambda fn=fn: [fn() for _ in range(reps)]) for name, fn in candidates.items()}


def _per_call(stats: dict, reps: int) -> dict:
    per = {"median", "p10", "p90"}
    return {name: {key: v / reps if key in per else v for key, v in s.items()} | {"reps": reps}
            for name, s in stats.items()}


def measure(m: int, n: int, k: int, fmt: str, group: int, rounds: int) -> dict:
    torch.manual_seed(0)
    lin = torch.nn.Linear(k, n)
    q = QuantLinear.from_linear(lin, fmt, group)
    qw = q.qweight
    x = torch.randn(m, k)
    x_np = x.numpy()
    xg = x.clone().requires_grad_()
    op = torch.ops.lowbitc.matmul
    args = (q.qdata, q.scales, q.zeros, fmt, group, k)
    np.testing.assert_allclose(q(x).detach().numpy(), ops.matmul(x_np, qw) + lin.bias.detach()
                               .numpy(), rtol=1e-4, atol=1e-4)
    candidates = {
        "lowbitc.ops.matmul": lambda: ops.matmul(x_np, qw),
        "QuantLinear": lambda: q(x),
        "torch.ops.lowbitc.matmul": lambda: op(x, *args),
        "QuantLinear, x requires grad": lambda: q(xg),
        "nn.Linear fp32": lambda: lin(x),
    }
    reps = max(1, round(2e6 / (m * n * k)))  # ~1 ms runs for small layers, 1 call at 4096^2
    with torch.no_grad():
        stats_nograd = interleaved_stats(_batched({k_: v for k_, v in candidates.items()
                                                   if "grad" not in k_}, reps), rounds)
    grad = {"QuantLinear, x requires grad": candidates["QuantLinear, x requires grad"],
            "lowbitc.ops.matmul (same rounds)": candidates["lowbitc.ops.matmul"]}
    stats = _per_call({**stats_nograd, **interleaved_stats(_batched(grad, reps), rounds)}, reps)
    base = stats["lowbitc.ops.matmul"]["median"]
    ql = stats["QuantLinear"]["median"]
    grad_base = stats["lowbitc.ops.matmul (same rounds)"]["median"]
    return {
        "M": m, "N": n, "K": k, "format": fmt, "group_size": group, "rounds": rounds,
        "stats": stats,
        "quantlinear_overhead_us": (ql - base) * 1e6,
        "quantlinear_ratio": ql / base,
        "op_dispatch_overhead_us": (stats["torch.ops.lowbitc.matmul"]["median"] - base) * 1e6,
        "autograd_overhead_us":
            (stats["QuantLinear, x requires grad"]["median"] - grad_base) * 1e6,
        "goals": {"overhead_us <=": GOAL_OVERHEAD_US, "ratio_at_M1_4096 <=": GOAL_RATIO},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "torch.json"))
    args = ap.parse_args(argv)
    rows = []
    for case in CASES:
        r = measure(*case, args.rounds)
        rows.append(r)
        s = r["stats"]
        print(f"M={r['M']} N={r['N']} K={r['K']} {r['format']} g{r['group_size']}: "
              f"ops.matmul {s['lowbitc.ops.matmul']['median'] * 1e3:.3f} ms, "
              f"QuantLinear {s['QuantLinear']['median'] * 1e3:.3f} ms "
              f"(+{r['quantlinear_overhead_us']:.1f} us, {r['quantlinear_ratio']:.3f}x), "
              f"dispatcher op +{r['op_dispatch_overhead_us']:.1f} us, "
              f"autograd path +{r['autograd_overhead_us']:.1f} us, "
              f"fp32 nn.Linear {s['nn.Linear fp32']['median'] * 1e3:.3f} ms", flush=True)
    write_json(args.out, {"machine": machine_info(), "cases": rows})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
