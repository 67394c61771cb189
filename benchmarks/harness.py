"""Timing harness for lowbitc benchmarks: robust medians, interleaved rounds, machine facts.

These machines are noisy (shared, 2 cores), so every figure is a median over many runs and
candidates are compared with baselines measured in the same rounds (`interleaved`).
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import math
import os
import platform
import random
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from lowbitc.backends.llvm import target
from lowbitc.cache.host import real_host

__all__ = ["in_turn", "interleaved", "interleaved_stats", "machine_info", "summarize", "timeit",
           "write_json"]

# A timed run lasts at least this long: short calls are looped so timer noise stays small.
_MIN_RUN_SECONDS = 2e-4
_CPU_FLAGS = ("avx", "fma", "f16c", "bmi", "sse4", "vnni", "amx", "sha", "vaes", "gfni")
_PACKAGES = ("numpy", "llvmlite", "numba", "torch", "ml_dtypes", "numba-cuda")


def summarize(samples: list[float]) -> dict:
    """Median, 10th and 90th percentiles (seconds per call) and the number of runs."""
    arr = np.asarray(samples, dtype=np.float64)
    if arr.size == 0:
        raise ValueError("summarize: no samples")
    p10, median, p90 = np.percentile(arr, [10, 50, 90])
    return {"median": float(median), "p10": float(p10), "p90": float(p90), "runs": int(arr.size)}


def in_turn(fns: list[Callable[[], object]]) -> Callable[[], object]:
    """One callable that calls `fns` in turn, one per call: each call of a GEMV reads the
    next of several distinct weights, so none stays in cache (lowbitc.memory)."""
    if len(fns) == 1:
        return fns[0]
    state = {"i": 0}

    def call() -> object:
        i = state["i"]
        state["i"] = (i + 1) % len(fns)
        return fns[i]()

    return call


def _calls_per_run(fn: Callable[[], object], min_seconds: float = _MIN_RUN_SECONDS) -> int:
    """How many calls make one timed run last about `min_seconds`."""
    start = time.perf_counter()
    fn()
    once = time.perf_counter() - start
    if once >= min_seconds:
        return 1
    return min(10_000, math.ceil(min_seconds / max(once, 1e-8)))


def _run(fn: Callable[[], object], number: int) -> float:
    start = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - start) / number


def timeit(
    fn: Callable[[], object], *, warmup: int = 3, repeat: int = 20, min_time: float = 0.0
) -> dict:
    """Seconds per call of `fn()`: at least `repeat` runs and `min_time` seconds of runs.

    Returns median, p10, p90, runs, `number` (the calls looped inside one run) and `total`
    (seconds spent in timed runs).
    """
    if repeat < 1 or warmup < 0 or min_time < 0:
        raise ValueError(
            f"timeit: need repeat >= 1, warmup >= 0, min_time >= 0; got "
            f"repeat={repeat}, warmup={warmup}, min_time={min_time}"
        )
    for _ in range(warmup):
        fn()
    number = _calls_per_run(fn)
    samples: list[float] = []
    spent = 0.0
    while len(samples) < repeat or spent < min_time:
        per_call = _run(fn, number)
        samples.append(per_call)
        spent += per_call * number
    return {**summarize(samples), "number": number, "total": spent}


def interleaved_stats(
    candidates: Mapping[str, Callable[[], object]], rounds: int = 30, *, warmup: int = 2,
    min_run: float = _MIN_RUN_SECONDS, seed: int = 0,
) -> dict[str, dict]:
    """Time every candidate once per round, in a new order each round, so noise hits all alike.

    The order is a random permutation per round (`seed`: the same orders every run), not a
    rotation: a rotation keeps each candidate's predecessor fixed, and what one library leaves
    behind (its pool's threads spinning down, its first call's host state) then always lands
    on the same next candidate.

    Each timed run (one sample) loops a candidate's calls for at least `min_run` seconds: a
    burst of consecutive calls, as a model's layers call one engine in turn. Returns per-name
    statistics as `timeit` does (median/p10/p90/runs/number) and `cpu_per_wall`, the median
    over samples of the process's CPU seconds per wall second (all threads): about how many
    threads worked, e.g. ~1 for a two-thread kernel whose work one thread did.
    """
    if not candidates:
        raise ValueError("interleaved: no candidates")
    if rounds < 1:
        raise ValueError(f"interleaved: rounds must be >= 1, got {rounds}")
    if min_run < 0:
        raise ValueError(f"interleaved: min_run must be >= 0 seconds, got {min_run}")
    names = list(candidates)
    for name in names:
        for _ in range(warmup):
            candidates[name]()
    numbers = {name: _calls_per_run(candidates[name], min_run) for name in names}
    samples: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    order = random.Random(seed)
    for _ in range(rounds):
        for name in order.sample(names, len(names)):
            start = time.process_time()
            samples[name].append(_run(candidates[name], numbers[name]))
            wall = samples[name][-1] * numbers[name]
            cpu[name].append((time.process_time() - start) / wall if wall > 0 else 0.0)
    return {name: {**summarize(samples[name]), "number": numbers[name],
                   "cpu_per_wall": float(np.median(cpu[name]))} for name in names}


def interleaved(
    candidates: Mapping[str, Callable[[], object]], rounds: int = 30, *, warmup: int = 2
) -> dict[str, float]:
    """Median seconds per call of each candidate, all measured in the same interleaved rounds
    (a new order each round)."""
    stats = interleaved_stats(candidates, rounds, warmup=warmup)
    return {name: s["median"] for name, s in stats.items()}


def _cpuinfo() -> tuple[str, list[str]]:
    model, flags = platform.processor() or "unknown", []
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return model, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model in ("unknown", "", platform.machine()):
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = sorted(f for f in value.split() if f.startswith(_CPU_FLAGS))
    return model, flags


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def _numpy_blas() -> dict:
    """numpy's BLAS/LAPACK build facts (name, version, threading) as numpy reports them."""
    try:
        config = np.show_config(mode="dicts")
    except TypeError:  # numpy < 1.26 has no dict mode
        return {}
    deps = config.get("Build Dependencies", {}) if isinstance(config, dict) else {}
    blas = deps.get("blas", {})
    return {k: blas.get(k) for k in ("name", "version", "openblas configuration") if k in blas}


def _llvm_host() -> dict:
    """The CPU lowbitc compiled for (LLVM's name, its AVX features) and, when
    LOWBITC_TARGET_CPU named another one, this host's ("host_cpu")."""
    info = {
        "cpu": target.cpu_name(),
        "vector_features": sorted(k for k, on in target.cpu_features().items()
                                  if on and "avx" in k),
    }
    host = real_host().cpu
    if host != info["cpu"]:
        info["host_cpu"] = host
    return info


def _git_commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def machine_info() -> dict:
    """CPU model, core counts, vector flags, numpy's BLAS, package versions, thread settings."""
    model, flags = _cpuinfo()
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    env = ("LOWBITC_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu_model": model,
        "cpu_count": os.cpu_count(),
        "usable_cpus": affinity,
        "cpu_flags": flags,
        "llvm_host": _llvm_host(),
        "numpy_blas": _numpy_blas(),
        "versions": _versions(),
        "thread_env": {k: os.environ.get(k) for k in env},
        # other processes share these cores: a high load average explains noisy figures
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "git_commit": _git_commit(),
    }


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"write_json: cannot serialise {type(value).__name__}")


def write_json(path: str | os.PathLike, results: object) -> Path:
    """Write `results` as indented JSON (numpy values converted), atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(results, indent=2, sort_keys=False, default=_json_default) + "\n")
    os.replace(tmp, path)
    return path
