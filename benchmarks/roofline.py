"""Roofline table of a CPU benchmark run: bytes moved per GEMV, bandwidth reached, cycles per
weight and what bounds each format.

    python -m lowbitc.benchmarks.roofline benchmarks/results/cpu.json

A GEMV reads every weight once, so its memory floor is bytes / copy bandwidth. A format whose
time is far above that floor is bound by the instructions that unpack, convert and multiply
each weight; `cycles_per_weight` (per core, at the nominal clock) is that cost.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lowbitc.dtypes import dtype

__all__ = ["MEMORY_BOUND_FRACTION", "context_markdown", "incache_markdown", "roofline_markdown",
           "roofline_rows"]

# a run reaching this fraction of the copy bandwidth is called memory bound
MEMORY_BOUND_FRACTION = 0.6


def _bits(fmt: str) -> int:
    return dtype(fmt).bits  # u4 -> 4, f4e2m1fn -> 4, nf4 -> 4


def _entry(name: str, fmt: str, bits: float, e: dict, n: int, k: int, copy_gbs: float,
           clock_ghz: float | None, threads: int) -> dict:
    t, t10 = e["time"]["median"], e["time"]["p10"]
    weights = float(n * k)
    out = {
        "name": name, "format": fmt, "bits": bits,
        "weight_bytes_per_weight": e["weight_bytes"] / weights,
        "bytes_per_call": e["bytes_moved"],
        "time": t,
        "bandwidth_gbs": e["bytes_moved"] / t / 1e9,
        "copy_fraction": e["bytes_moved"] / t / 1e9 / copy_gbs,
        "memory_floor": e["bytes_moved"] / (copy_gbs * 1e9),
    }
    out["time_over_floor"] = t / out["memory_floor"]
    out["cycles_per_weight"] = t * clock_ghz * 1e9 * threads / weights if clock_ghz else None
    out["cycles_per_weight_p10"] = (t10 * clock_ghz * 1e9 * threads / weights if clock_ghz
                                    else None)
    out["incache_cycles_per_weight"] = None
    out["bound"] = ("memory bandwidth" if out["copy_fraction"] >= MEMORY_BOUND_FRACTION
                    else "below the copy bandwidth")
    return out


def _classify(e: dict, incache: dict | None, others_cpus: float | None) -> None:
    """Memory if the copy bandwidth is (nearly) reached; else instructions if a weight costs
    about as much from DRAM as from cache (both from p10 times); else something in between."""
    best = (incache or {}).get("p10", {})
    if not best.get("reliable") or best.get("cycles_per_weight_core") is None:
        return
    cached = best["cycles_per_weight_core"]
    e["incache_cycles_per_weight"] = cached
    if e["copy_fraction"] >= MEMORY_BOUND_FRACTION or not e["cycles_per_weight_p10"]:
        return
    if cached > 0 and e["cycles_per_weight_p10"] <= 1.5 * cached:
        e["bound"] = "instructions (unpack, convert, FMA): as slow as in cache"
    else:
        busy = f"; others held {others_cpus:.1f} CPUs" if others_cpus else ""
        e["bound"] = (f"{e['cycles_per_weight_p10'] / cached:.1f}x its in-cache cost, far "
                      f"below bandwidth: contention or latency{busy}")


def _dequant_bound(e: dict, row: dict) -> str:
    """Memory, or else the kernel; says what allocating a fresh output each call costs."""
    alloc = next((x for x in row.get("extra", []) if "time" in x), None)
    extra = (f"; allocating the output each call: {alloc['bandwidth_gbs']:.1f} GB/s"
             if alloc else "")
    if e["copy_fraction"] >= MEMORY_BOUND_FRACTION:
        return "memory bandwidth" + extra
    return "the kernel's instructions (output buffer reused)" + extra


def roofline_rows(results: dict) -> list[dict]:
    """One entry per measured GEMV format, plus numpy fp32, torch int4 and the u3 dequant."""
    copy = results["copy_bandwidth"]["best_gbs"]
    clock = results.get("cpu_mhz")
    clock = clock / 1e3 if clock else None
    threads = results["config"]["threads"]
    out: list[dict] = []
    for r in results["rows"]:
        if "time" not in r:
            continue
        n, k = r["N"], r["K"]
        if r["kind"] == "gemv":
            out.append(_entry(r["name"], r["format"], _bits(r["format"]), r["lowbitc"], n, k,
                              copy, clock, threads))
            _classify(out[-1], results.get("incache", {}).get(r["format"]),
                      r.get("cpu_usage", {}).get("others_cpus"))
            if r["format"] == "u1":  # the baseline, once
                out.insert(0, _entry("numpy fp32", "f32", 32, r["baseline"], n, k, copy, clock,
                                     threads))
        elif r["kind"] == "torch":
            out.append(_entry("torch int4 (bf16 act.)", "u4", 4, r["baseline"], n, k, copy,
                              clock, threads))
        elif r["kind"] == "dequant":
            e = _entry(r["name"], r["format"], _bits(r["format"]), r["lowbitc"], n, k, copy,
                       clock, threads)
            e["bound"] = _dequant_bound(e, r)
            out.append(e)
    return out


def _fmt_time(s: float) -> str:
    return f"{s * 1e3:.3f} ms"


def roofline_markdown(results: dict) -> str:
    """The roofline table in Markdown."""
    head = ["case", "bits", "bytes/weight", "bytes per call", "median time", "bandwidth",
            "of copy bw", "memory floor", "time / floor", "cycles/weight/core (median; p10)",
            "in cache (p10)", "bound"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in roofline_rows(results):
        cyc = (f"{e['cycles_per_weight']:.2f}; {e['cycles_per_weight_p10']:.2f}"
               if e["cycles_per_weight"] is not None else "-")
        inc = e["incache_cycles_per_weight"]
        inc = f"{inc:.2f}" if inc is not None else "-"
        lines.append("| " + " | ".join([
            e["name"], str(e["bits"]), f"{e['weight_bytes_per_weight']:.4f}",
            f"{e['bytes_per_call'] / 1e6:.2f} MB", _fmt_time(e["time"]),
            f"{e['bandwidth_gbs']:.1f} GB/s", f"{e['copy_fraction'] * 100:.0f}%",
            _fmt_time(e["memory_floor"]), f"{e['time_over_floor']:.1f}x", cyc, inc, e["bound"],
        ]) + " |")
    return "\n".join(lines)


def context_markdown(results: dict) -> str:
    """When, where and under what load the figures were measured (one paragraph)."""
    load, cfg, copy = results["load_average"], results["config"], results["copy_bandwidth"]
    others = [g["cpu_usage"]["others_cpus"] for g in results.get("groups", [])
              if g.get("cpu_usage", {}).get("others_cpus") is not None]
    busy = (f" Other processes kept {min(others):.2f}-{max(others):.2f} of the CPUs busy "
            "while the groups were measured." if others else "")
    per = ", ".join(f"{k} {v:.1f}" for k, v in copy.get("per_threads_gbs", {}).items())
    git = results.get("git", {})
    dirty = git.get("modified_tracked_files") or []
    return (
        f"Measured {results['machine'].get('date')} on {results['machine'].get('cpu_model')} "
        f"({cfg['threads']} threads, clock reported {results.get('cpu_mhz')} MHz), git "
        f"{git.get('describe')}" + (f" (uncommitted edits in {', '.join(dirty)})" if dirty
                                    else "") + ". "
        f"Load average {load['start'][0]:.2f} at the start, {load['end'][0]:.2f} at the end."
        f"{busy} Copy bandwidth in the same run: {per} GB/s (best "
        f"{copy.get('best_gbs', 0):.1f}). Medians of {cfg['rounds']} interleaved rounds."
    )


def incache_markdown(results: dict) -> str:
    """Instruction cost per weight of each format, from the in-cache GEMVs."""
    sizes = results["config"]["incache_sizes"]
    lines = [f"| format | K=N={sizes[0]} median | K=N={sizes[1]} median | "
             "cycles/weight/core (p10) | (median) |", "|---|---|---|---|---|"]
    for f, e in results.get("incache", {}).items():
        cells = [f, *(_fmt_time(e["time"][str(n)]["median"]) for n in sizes)]
        for stat in ("p10", "median"):
            c = e[stat]
            cells.append(f"{c['cycles_per_weight_core']:.2f}" + ("" if c["reliable"]
                                                                else " (noise)"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/cpu.json")
    data = json.loads(path.read_text())
    print(context_markdown(data), roofline_markdown(data), incache_markdown(data), sep="\n\n")
