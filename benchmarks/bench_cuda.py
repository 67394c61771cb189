"""lowbitc's CUDA matmul on a GPU against torch's f16 matmul and torch's int4 tensor-core
kernel (`torch.ops.aten._weight_int4pack_mm`, tinygemm) on the same shapes.

    python -m benchmarks.bench_cuda [--quick] [--out benchmarks/results/cuda.json]

Shapes: M in {1, 16, 128, 4096}, N = K in {4096, 8192} (--quick: M in {1, 16}, N = K = 4096);
formats u4 (with zero points, group 128: the case torch's int4 kernel also runs), u2, u3, u8,
f4e2m1fn. Each candidate is timed on device-resident operands where it can be (lowbitc's
QuantLinear on CUDA tensors); when that path is not available the host-array op
(`ops.matmul(..., backend="cuda")`, transfers included) is timed and labelled so. Times are
medians of rounds, each round one device synchronisation around enough calls to last ~20 ms.
Outputs are checked against a float64 reference (M <= 128) and the error is recorded.
Without a CUDA device it prints why and exits with status 2 (no traceback).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import numpy as np

from lowbitc.benchmarks.harness import machine_info, summarize, write_json

MS = (1, 16, 128, 4096)
SIZES = (4096, 8192)
FORMATS = ("u4", "u2", "u3", "u8", "f4e2m1fn")
GROUP = 128
CHECK_MAX_M = 128
DEFAULT_OUT = "benchmarks/results/cuda.json"


def gpu_missing() -> str | None:
    """Why this machine cannot run the benchmark, or None."""
    try:
        import torch
    except ImportError:
        return "PyTorch is not installed (pip install 'lowbitc[cuda,torch]')"
    if not torch.cuda.is_available():
        return "no CUDA device: torch.cuda.is_available() is False"
    try:
        from numba import cuda
    except ImportError:
        return "numba-cuda is not installed (pip install 'lowbitc[cuda,torch]')"
    if not cuda.is_available():
        return "numba-cuda sees no CUDA device (driver missing or NUMBA_ENABLE_CUDASIM=1)"
    cc = torch.cuda.get_device_capability()
    if cc < (8, 0):
        return f"the GPU is sm_{cc[0]}{cc[1]}; tensor-core mma needs sm_80 or later"
    return None


def int4pack_inputs(qw) -> tuple[np.ndarray, np.ndarray]:
    """A u4 QTensor as torch's int4 kernel takes it: codes uint8 [N, K/2] (even k in the high
    nibble) and scales-and-zeros float32 [K/group, N, 2] with w = (q - 8) * s + zero, so
    zero = (8 - z) * s reproduces w = (q - z) * s."""
    q = qw.codes.astype(np.uint8)
    if qw.dtype.name != "u4" or q.shape[1] % 2:
        raise ValueError(f"int4pack_inputs: a u4 weight with even K expected, got {qw.dtype.name}"
                         f" {q.shape}")
    pairs = (q[:, 0::2] << 4) | q[:, 1::2]
    s = qw.scales.astype(np.float32)  # [N, groups]
    z = np.zeros_like(s) if qw.zeros is None else qw.zeros.astype(np.float32)
    sz = np.stack([s.T, ((8.0 - z) * s).T], axis=-1)
    return pairs, np.ascontiguousarray(sz)


def int4pack_dequantize(pairs: np.ndarray, sz: np.ndarray, group: int) -> np.ndarray:
    """The weight torch's int4 kernel computes from `int4pack_inputs` (float64 [N, K])."""
    q = np.empty((pairs.shape[0], pairs.shape[1] * 2), np.float64)
    q[:, 0::2], q[:, 1::2] = pairs >> 4, pairs & 0xF
    s = np.repeat(sz[..., 0].T, group, axis=1)[:, : q.shape[1]]
    zero = np.repeat(sz[..., 1].T, group, axis=1)[:, : q.shape[1]]
    return (q - 8) * s + zero


def _time(fn: Callable[[], object], sync: Callable[[], None], rounds: int) -> dict:
    """Median seconds per call: rounds of `reps` calls between two synchronisations."""
    for _ in range(3):
        fn()
    sync()
    start = time.perf_counter()
    fn()
    sync()
    reps = max(1, min(1000, int(0.02 / max(time.perf_counter() - start, 1e-7))))
    samples = []
    for _ in range(rounds):
        sync()
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        sync()
        samples.append((time.perf_counter() - start) / reps)
    return summarize(samples) | {"reps": reps}


def _lowbitc_candidates(qw, device: str):
    """(label, make, notes) for lowbitc, `make(x16)` giving a callable: QuantLinear on tensors
    on `device` when that path runs, else ops.matmul on host arrays (transfers included)."""
    import torch

    from lowbitc import ops
    from lowbitc.torch import QuantLinear

    try:
        layer = QuantLinear.from_qtensor(qw).to(device)
        layer(torch.zeros((1, qw.shape[1]), dtype=torch.float16, device=device))

        def on_device(x16):
            xt = torch.from_numpy(x16).to(device)
            return lambda: layer(xt)

        return f"lowbitc QuantLinear ({device} tensors)", on_device, []
    except Exception as exc:  # the device path is not available on this build
        note = f"QuantLinear on {device}: {type(exc).__name__}: {exc}"
    return ("lowbitc ops.matmul (host arrays, transfers included)",
            lambda x16: lambda: ops.matmul(x16, qw, backend="cuda"), [note])


def _error(got, ref: np.ndarray) -> float:
    import torch

    g = got.float().cpu().numpy() if isinstance(got, torch.Tensor) else np.asarray(got)
    return float(np.abs(g.astype(np.float64) - ref).max() / max(np.abs(ref).max(), 1e-30))


def bench_weight(n: int, fmt: str, ms, rounds: int, rng, device: str = "cuda") -> list[dict]:
    """One N = K weight in `fmt`, quantized and moved to the device once, at every M (device
    "cpu" exercises the same code without a GPU: tests)."""
    import torch

    from lowbitc.quant import quantize

    w = (rng.standard_normal((n, n)) * 0.02).astype(np.float32)
    qw = quantize(w, fmt, GROUP, zero_point=fmt.startswith("u"))
    wd = qw.dequantize()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    wt = torch.from_numpy(wd.astype(np.float16)).to(device)
    packed = None
    try:
        label, make, notes = _lowbitc_candidates(qw, device)
    except Exception as exc:
        label, make, notes = None, None, [f"lowbitc: {type(exc).__name__}: {exc}"]
    if fmt == "u4":
        pairs, sz = int4pack_inputs(qw)
        szt = torch.from_numpy(sz).to(device, torch.bfloat16)
        try:
            packed = torch.ops.aten._convert_weight_to_int4pack(
                torch.from_numpy(pairs).to(device), 8)
        except Exception as exc:  # e.g. a CPU tensor: torch's CPU int4 op takes other inputs
            notes.append(f"torch_int4pack_mm: {type(exc).__name__}: {exc}")
    rows = []
    for m in ms:
        x16 = rng.standard_normal((m, n)).astype(np.float16)
        ref = x16.astype(np.float64) @ wd.T.astype(np.float64) if m <= CHECK_MAX_M else None
        row: dict = {"M": m, "N": n, "K": n, "format": fmt, "group": GROUP, "times": {},
                     "rel_error": {}, "errors": list(notes), "lowbitc_path": label}

        def run(name: str, fn: Callable[[], object], row=row, ref=ref) -> None:
            try:
                out = fn()
                row["times"][name] = _time(fn, sync, rounds)
                if ref is not None:
                    row["rel_error"][name] = _error(out, ref)
            except Exception as exc:  # keep timing the other candidates
                row["errors"].append(f"{name}: {type(exc).__name__}: {exc}")

        if make is not None:
            run("lowbitc", make(x16))
        xt = torch.from_numpy(x16).to(device)
        run("torch_f16", lambda xt=xt: xt @ wt.T)
        if packed is not None:
            xb = xt.to(torch.bfloat16)
            run("torch_int4pack_mm",
                lambda xb=xb: torch.ops.aten._weight_int4pack_mm(xb, packed, GROUP, szt))
        t = row["times"]
        if "lowbitc" in t:
            row["speedup"] = {k: t[k]["median"] / t["lowbitc"]["median"] for k in t
                              if k != "lowbitc"}
        rows.append(row)
    return rows


def run(quick: bool, rounds: int) -> dict:
    import torch

    rng = np.random.default_rng(0)
    ms, sizes = ((1, 16), (4096,)) if quick else (MS, SIZES)
    rows = [row for n in sizes for fmt in FORMATS for row in bench_weight(n, fmt, ms, rounds, rng)]
    props = torch.cuda.get_device_properties(0)
    return {"device": {"name": props.name, "capability": list(torch.cuda.get_device_capability()),
                       "sms": props.multi_processor_count, "memory_bytes": props.total_memory},
            "torch": torch.__version__, "machine": machine_info(), "rounds": rounds,
            "rows": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_cuda", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="M in {1, 16}, N = K = 4096 only")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    why = gpu_missing()
    if why is not None:
        print(f"bench_cuda: nothing timed: {why}. Run it on a machine with an NVIDIA GPU "
              f"(sm_80 or later) after `pip install -e '.[cuda,torch]'`.", file=sys.stderr)
        return 2
    results = run(args.quick, args.rounds)
    path = write_json(args.out, results)
    for r in results["rows"]:
        times = ", ".join(f"{k} {v['median'] * 1e6:.1f} us" for k, v in r["times"].items())
        print(f"M={r['M']:5d} N=K={r['N']} {r['format']:9s} {times}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
