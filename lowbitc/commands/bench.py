"""`lowbitc bench`: measure the CPU kernels against numpy, torch and the copy bandwidth.

Runs every row of issue 5's table (or those named by --rows) in one process, prints the table
and writes `<out>/cpu.json` and `<out>/cpu.png` (`cpu-quick.*` with --quick).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import TYPE_CHECKING

from lowbitc.benchmarks.cases import row_names, select_rows

if TYPE_CHECKING:
    from lowbitc.benchmarks import runner

NAME = "bench"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true",
                   help="small shapes and few rounds: a smoke run (results in cpu-quick.*)")
    p.add_argument("--rows", default=None,
                   help="comma-separated rows or patterns (e.g. 'gemv_*,dequant_u3'); "
                        f"default all: {', '.join(row_names())}")
    p.add_argument("--out", default="benchmarks/results",
                   help="directory for the JSON and PNG (default benchmarks/results)")
    p.add_argument("--threads", type=int, default=0,
                   help="threads for lowbitc, numpy's BLAS and torch (default: every usable CPU)")
    p.add_argument("--size", type=int, default=None,
                   help="K = N of the GEMV/GEMM/dequant rows (default 4096; 512 with --quick)")
    p.add_argument("--rounds", type=int, default=None,
                   help="interleaved rounds per group (default 40; 5 with --quick)")
    p.add_argument("--burst-ms", type=float, default=None, metavar="MS",
                   help="each sample loops one candidate's calls for at least MS milliseconds "
                        "(default 5; 0: single calls, each right after another candidate's)")
    p.add_argument("--copy-mib", type=int, default=None,
                   help="MiB copied by the copy-bandwidth baseline (default 128; 16 with --quick)")
    p.add_argument("--stream", type=float, default=None, metavar="F",
                   help="GEMV/GEMM weights rotate through copies totalling F x the last-level "
                        "cache, for lowbitc and every baseline (default 4; 0: one weight)")
    p.add_argument("--read-mib", type=int, default=None,
                   help="MiB the read-bandwidth baseline streams (default 512; 32 with --quick)")
    p.add_argument("--wait-load", type=float, default=0.0, metavar="L",
                   help="first wait (up to --wait-seconds) until the 1-minute load average <= L")
    p.add_argument("--wait-seconds", type=float, default=600.0,
                   help="longest wait for --wait-load (default 600)")


def config_from_args(args: argparse.Namespace) -> runner.Config:
    from lowbitc.benchmarks import runner  # noqa: PLC0415 - lazy: it imports torch (~2 s)

    overrides = {"rows": select_rows(args.rows), "threads": args.threads,
                 "wait_load": args.wait_load, "wait_seconds": args.wait_seconds}
    for name in ("size", "rounds", "copy_mib", "read_mib", "stream", "burst_ms"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    return runner.quick_config(**overrides) if args.quick else runner.Config(**overrides)


def command_line(args: argparse.Namespace) -> str:
    """The `lowbitc bench` command that reproduces this run (options given, in order)."""
    words = ["lowbitc", "bench"] + (["--quick"] if args.quick else [])
    for name in ("rows", "out", "threads", "size", "rounds", "burst_ms", "copy_mib", "read_mib",
                 "stream", "wait_load"):
        value = getattr(args, name)
        if value not in (None, 0, 0.0) or (name in ("stream", "burst_ms") and value is not None):
            words += [f"--{name.replace('_', '-')}", str(value)]
    return shlex.join(words)


# OpenBLAS's worker threads spin for ~0.1-0.2 s after each sgemm; in interleaved rounds that
# spinning takes the CPU from whatever runs next (measured: lowbitc's M=16 GEMM 2x slower right
# after a numpy call, numpy's own time unchanged). A timeout of 4 makes them sleep at once.
# GNU OpenMP's (ggml's and torch's CPU pools) spin as long by default: with llama.cpp's q4_0 in
# the rotation lowbitc's int8 GEMV took 364-527 us (u4) instead of 282-313; a spin count of
# 30000 keeps their threads awake between their own back-to-back calls (ggml q4_0 227-280 us
# against 242-271 at the default, torch int4 alike) and lets them sleep before the next
# candidate's (session 8, Zen 5, 3 alternating runs). Both are read when the libraries load, so
# the command re-runs itself once with them set (a value the user set is kept).
BLAS_SLEEP = {"OPENBLAS_THREAD_TIMEOUT": "4", "GOMP_SPINCOUNT": "30000"}


def blas_sleep_argv(argv: list[str], env: dict) -> list[str] | None:
    """The command line that re-runs this bench with BLAS_SLEEP set, or None if it is set."""
    if all(k in env for k in BLAS_SLEEP):
        return None
    return [sys.executable, "-c", "import sys; from lowbitc.cli import main; sys.exit(main())",
            *argv[1:]]


def blas_sleep_env(env) -> dict:
    """`env` with BLAS_SLEEP's variables added where it does not set them."""
    return {**BLAS_SLEEP, **env}


def run(args: argparse.Namespace) -> int:
    again = blas_sleep_argv(sys.argv, os.environ)
    if again is not None and sys.argv[1:2] == ["bench"]:
        sys.stdout.flush()
        os.execve(sys.executable, again, blas_sleep_env(os.environ))
    from lowbitc.benchmarks import runner  # noqa: PLC0415 - lazy: it imports torch (~2 s)
    from lowbitc.benchmarks.report import format_table  # noqa: PLC0415

    cfg = config_from_args(args)
    results = runner.run(cfg)
    results["command"] = command_line(args)
    results["argv"] = list(sys.argv)
    results["blas_env"] = {k: os.environ.get(k) for k in BLAS_SLEEP}
    stem = "cpu-quick" if cfg.quick else "cpu"
    path, png = runner.write_results(results, args.out, stem)
    print(format_table(results))
    s = results["summary"]
    load = results["load_average"]
    print(f"{s['pass']}/{s['rows']} rows meet their goal ({s['fail']} fail, {s['wrong']} wrong, "
          f"{s['error']} error, {s['skipped']} skipped); {results['config']['threads']} threads; "
          f"load average {load['start'][0]:.2f} -> {load['end'][0]:.2f}")
    read = results.get("read_bandwidth") or {}
    if read:
        print(f"read bandwidth ({read['threads']} threads, {read['bytes_per_call'] / 2**20:.0f} "
              f"MiB streamed): {read['gbs']:.1f} GB/s; 'of read BW': a GEMV row's code, scale "
              "and zero-point bytes / time / that")
    others = [g["cpu_usage"].get("others_cpus") for g in results["groups"]]
    others = [o for o in others if o is not None]
    if others:
        print(f"other processes kept {min(others):.2f}-{max(others):.2f} CPUs busy while the "
              "groups ran (0 = quiet machine)")
    print(f"wrote {path}" + (f" and {png}" if png else " (no PNG: matplotlib is not installed)"))
    return 1 if s["wrong"] or s["error"] else 0

