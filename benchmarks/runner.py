"""The CPU benchmark runner behind `lowbitc bench`: every row of issue 5's table in one process.

Rows are measured in groups (`groups.py`); inside a group every lowbitc call and its baselines
run in the same interleaved rounds (`harness.interleaved_stats`), so a busy machine slows all of
them alike. `run` returns one JSON-ready dict; `write_results` writes it with a PNG plot.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path

from .cases import ROWS
from .config import Config, quick_config
from .environment import cpu_mhz, cpu_usage, git_state, thread_limits, usable_cpus, wait_for_load
from .groups import SLOWEST, copy_summary, groups, incache_summary, measure, read_summary
from .harness import machine_info, write_json
from .plot import plot_results
from .report import make_row, summarize_rows

__all__ = ["SCHEMA", "Config", "quick_config", "run", "write_results"]

SCHEMA = "lowbitc.bench.cpu/1"


def run(cfg: Config, log: Callable[[str], None] = print) -> dict:
    """Measure every selected row; returns the JSON-ready results (schema `SCHEMA`)."""
    started = time.perf_counter()
    waited = wait_for_load(cfg.wait_load, cfg.wait_seconds, log)
    cfg = dataclasses.replace(cfg, threads=cfg.threads or usable_cpus())
    load_start = list(os.getloadavg())
    rows: list[dict] = []
    groups_out: list[dict] = []
    copy: dict = {}
    read: dict = {}
    incache: dict = {}
    clock = cpu_mhz()
    with thread_limits(cfg.threads) as thread_info:
        for build in groups(cfg):
            grp = build()
            log(f"[bench] {grp.title}: {len(grp.timed)} calls x {cfg.rounds} rounds")
            load = list(os.getloadavg())
            with cpu_usage() as usage:
                stats = measure(grp, cfg.rounds, cfg.burst_ms)
            if grp.kind == "incache":
                incache = incache_summary(grp, stats, cfg, clock)
            if any(k.startswith("copy_") for k in stats):
                copy = copy_summary(stats, grp.timed)
            if any(k.startswith("read_") for k in stats):
                read = read_summary(stats, grp.timed)
            for spec, key, base, extras in grp.bindings:
                base_key = copy.get("best") if base == "copy" else slowest(base, stats)
                rows.append(make_row(spec, cfg, grp, stats, key, base_key, extras, load))
                rows[-1]["cpu_usage"] = usage
                log(f"[bench]   {spec.name}: {rows[-1]['status']}")
            groups_out.append({"title": grp.title, "load_average": load, "cpu_usage": usage,
                               "stats": stats, "problems": grp.problems})
            log(f"[bench]   other processes used {usage.get('others_cpus', float('nan')):.2f} "
                f"CPUs on average while this group ran")
    add_read_fractions(rows, read)
    order = {s.name: i for i, s in enumerate(ROWS)}
    rows.sort(key=lambda r: order[r["name"]])
    return {
        "schema": SCHEMA,
        "quick": cfg.quick,
        "config": cfg.to_json(),
        "threads": thread_info,
        "load_average": {"start": load_start, "end": list(os.getloadavg()), "wait": waited},
        "git": git_state(),
        "machine": machine_info(),
        "cpu_mhz": clock,
        "copy_bandwidth": copy,
        "read_bandwidth": read,
        "incache": incache,
        "rows": rows,
        "groups": groups_out,
        "summary": summarize_rows(rows),
        "elapsed_seconds": time.perf_counter() - started,
    }


def slowest(base: str, stats: dict) -> str:
    """`base`, or for SLOWEST + "a,b,..." the key among them with the longest median."""
    if not base.startswith(SLOWEST):
        return base
    keys = [k for k in base[len(SLOWEST):].split(",") if k in stats]
    return max(keys, key=lambda k: stats[k]["median"]) if keys else base


def add_read_fractions(rows: list[dict], read: dict) -> None:
    """Per GEMV row, (code + scale + zero-point bytes) / time / the read bandwidth."""
    for r in rows:
        gbs = r.get("lowbitc", {}).get("weight_bandwidth_gbs")
        gemv = r["kind"] in ("gemv", "torch") or (r["kind"] == "a8" and r["M"] == 1)
        if gemv and gbs and read.get("gbs"):
            r["read_bandwidth_fraction"] = gbs / read["gbs"]


def write_results(results: dict, out_dir: str | os.PathLike, stem: str) -> tuple[Path, Path | None]:
    """`<out>/<stem>.json` and, when matplotlib is present, `<out>/<stem>.png`."""
    path = write_json(Path(out_dir) / f"{stem}.json", results)
    png = plot_results(results, Path(out_dir) / f"{stem}.png")
    return path, png
