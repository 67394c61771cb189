"""The CPU benchmark runner behind `lowbitc bench`: every row of issue 5's table in one process.

Rows are measured in groups; inside a group every lowbitc call and its baselines run in the
same rotating rounds (`harness.interleaved_stats`), so a busy machine slows all of them alike.
The result is one JSON-ready dict (see `run`), written by `write_results` with a PNG plot.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import subprocess
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

try:
    import threadpoolctl
except ImportError:  # BLAS threads are then left as the environment set them
    threadpoolctl = None

from lowbitc.backends.llvm.launch import num_threads

from lowbitc.errors import UserArgumentError

from . import candidates as cand
from .baselines import copy_baseline, numpy_gemm, torch
from .cases import GEMV_FORMATS, ROWS, RowSpec
from .harness import interleaved_stats, machine_info, write_json
from .plot import plot_results
from .report import make_row, summarize_rows

__all__ = ["Config", "quick_config", "run", "thread_limits", "write_results"]

SCHEMA = "lowbitc.bench.cpu/1"
MIB = 1 << 20


@dataclass(frozen=True)
class Config:
    """Shapes and effort of one run; the defaults are issue 5's (K = N = 4096, group 128)."""

    size: int = 4096  # K = N
    small: int = 256  # K = N of the per-call overhead row
    group_size: int = 128
    rounds: int = 40
    threads: int = 0  # 0: every usable CPU
    copy_mib: int = 128  # bytes copied by the copy-bandwidth baseline (src size)
    quick: bool = False
    rows: tuple[RowSpec, ...] = ROWS
    wait_load: float = 0.0  # > 0: first wait (up to wait_seconds) for a 1-min load this low
    wait_seconds: float = 600.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("size", "small", "group_size", "rounds", "copy_mib"):
            if getattr(self, name) < 1:
                raise UserArgumentError(f"{name}: expected a positive integer, "
                                        f"got {getattr(self, name)}")
        if self.threads < 0:
            raise UserArgumentError(f"threads: expected >= 1 (or 0 for all CPUs), "
                                    f"got {self.threads}")

    def to_json(self) -> dict:
        out = asdict(self)
        out["rows"] = [r.name for r in self.rows]
        return out


def quick_config(**overrides) -> Config:
    """Small shapes and few rounds: a smoke run of every row in well under a minute."""
    base = {"size": 512, "rounds": 5, "copy_mib": 16, "quick": True}
    return Config(**{**base, **overrides})


def _usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _thread_report(requested: int) -> dict:
    blas = None
    if threadpoolctl is not None:
        blas = [i.get("num_threads") for i in threadpoolctl.threadpool_info()
                if i.get("user_api") == "blas"]
    return {"requested": requested, "lowbitc": num_threads(), "blas": blas,
            "blas_controlled": threadpoolctl is not None,
            "torch": torch.get_num_threads() if torch is not None else None}


@contextmanager
def thread_limits(threads: int) -> Iterator[dict]:
    """lowbitc's launcher, numpy's BLAS and torch all use `threads` inside the block."""
    old_env = os.environ.get("LOWBITC_NUM_THREADS")
    old_torch = torch.get_num_threads() if torch is not None else None
    with ExitStack() as stack:
        os.environ["LOWBITC_NUM_THREADS"] = str(threads)
        if threadpoolctl is not None:
            stack.enter_context(threadpoolctl.threadpool_limits(threads, user_api="blas"))
        if torch is not None:
            torch.set_num_threads(threads)
        try:
            yield _thread_report(threads)
        finally:
            if old_env is None:
                os.environ.pop("LOWBITC_NUM_THREADS", None)
            else:
                os.environ["LOWBITC_NUM_THREADS"] = old_env
            if old_torch is not None:
                torch.set_num_threads(old_torch)


def cpu_mhz() -> float | None:
    """The clock /proc/cpuinfo reports for the first CPU (nominal on VMs), or None."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "cpu MHz":
            return float(value)
    return None


def _cpu_jiffies() -> list[int] | None:
    """The machine's aggregate CPU counters from /proc/stat (user nice system idle ...)."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    return [int(v) for v in first[1:]]


@contextmanager
def cpu_usage() -> Iterator[dict]:
    """Fills the yielded dict with how busy the machine was, and with whose work.

    `others_cpus`: CPUs' worth of time other processes used on average while the block ran
    (0 on a quiet machine; near the CPU count when the figures are measured under contention).
    """
    out: dict = {}
    j0, p0, w0 = _cpu_jiffies(), os.times(), time.perf_counter()
    try:
        yield out
    finally:
        wall = time.perf_counter() - w0
        p1, j1 = os.times(), _cpu_jiffies()
        ours = (p1.user - p0.user) + (p1.system - p0.system)
        out.update(wall_seconds=wall, process_cpus=ours / wall if wall else None)
        if j0 and j1 and wall:
            d = [b - a for a, b in zip(j0, j1, strict=False)]
            hz = os.sysconf("SC_CLK_TCK")
            busy = (sum(d[:3]) + sum(d[5:8])) / hz  # user nice system irq softirq steal
            out.update(machine_busy_cpus=busy / wall,
                       others_cpus=max(0.0, busy - ours) / wall,
                       steal_cpus=(d[7] if len(d) > 7 else 0) / hz / wall)


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                              cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state() -> dict:
    """The commit measured and the tracked files that differed from it (others' edits count)."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    modified = [line[3:] for line in status.splitlines()] if status else []
    return {"commit": _git("rev-parse", "HEAD"), "describe": _git("describe", "--always",
            "--dirty"), "modified_tracked_files": modified}


@dataclass
class Group:
    """Timed calls measured together, and which row reads which of them."""

    title: str
    timed: dict[str, cand.Timed] = field(default_factory=dict)
    problems: dict[str, dict] = field(default_factory=dict)  # key -> {"status", "reason"}
    bindings: list[tuple[RowSpec, str, str | None, tuple[str, ...]]] = field(default_factory=list)

    def add(self, key: str, build: Callable[[], cand.Timed | None], missing: str = "") -> None:
        """Build one timed call; a failure or a missing optional piece is recorded, not raised."""
        if key in self.timed or key in self.problems:
            return
        try:
            made = build()
        except Exception as e:  # a kernel that fails to build fails its rows, not the run
            self.problems[key] = {"status": "error", "reason": f"{type(e).__name__}: {e}",
                                  "traceback": traceback.format_exc(limit=4)}
            return
        if made is None:
            self.problems[key] = {"status": "skipped", "reason": missing}
        else:
            self.timed[key] = made


def _numpy(m: int, n: int, seed: int, name: str | None = None) -> cand.Timed:
    """numpy fp32 x[m, n] @ W[n, n].T; its weight bytes are the fp32 matrix."""
    t = cand.from_baseline(numpy_gemm(m, n, n, seed), weight_bytes=4.0 * n * n)
    t.name = name or t.name
    return t


def _gemv_group(cfg: Config, specs: list[RowSpec]) -> Group:
    n, g = cfg.size, cfg.group_size
    grp = Group(f"GEMV M=1, K=N={n}")
    w, x = cand.weights(n, n, cfg.seed), cand.activations(1, n, cfg.seed + 1)
    qw = functools.cache(lambda fmt: cand.quantized(w, fmt, g))

    grp.add("numpy_fp32_M1", lambda: _numpy(1, n, cfg.seed))
    for spec in specs:
        key = f"lowbitc_gemv_{spec.fmt}"
        grp.add(key, lambda f=spec.fmt, k=key: cand.matmul_case(k, x, qw(f)))
        if spec.kind == "torch":
            grp.add("torch_int4_bf16_M1", lambda: cand.torch_case(n, n, g),
                    missing="torch is not installed")
            xb = cand.activations(1, n, cfg.seed + 1, "bf16")
            extra = "lowbitc_gemv_u4_bf16"
            grp.add(extra, lambda e=extra, x1=xb: cand.matmul_case(e, x1, qw("u4")))
            grp.bindings.append((spec, key, "torch_int4_bf16_M1", (extra,)))
        else:
            grp.bindings.append((spec, key, "numpy_fp32_M1", ()))
    return grp


def _gemm_group(cfg: Config, spec: RowSpec) -> Group:
    n, m = cfg.size, spec.M
    grp = Group(f"GEMM M={m}, K=N={n}")
    w, x = cand.weights(n, n, cfg.seed), cand.activations(m, n, cfg.seed + 1)
    base = f"numpy_fp32_M{m}"
    grp.add(base, lambda: _numpy(m, n, cfg.seed))
    key = f"lowbitc_gemm_{spec.fmt}_M{m}"
    grp.add(key, lambda: cand.matmul_case(key, x, cand.quantized(w, spec.fmt, cfg.group_size)))
    grp.bindings.append((spec, key, base, ()))
    return grp


def _dequant_group(cfg: Config, specs: list[RowSpec]) -> Group:
    """Copy bandwidth on 1 and on `threads` threads, and the dequantize rows, interleaved."""
    n = cfg.size
    grp = Group(f"dequantize {n}x{n} and copy bandwidth")
    nbytes = cfg.copy_mib * MIB
    grp.add("copy_1t", lambda: cand.from_baseline(copy_baseline(nbytes, threads=1)))
    if cfg.threads > 1:
        grp.add(f"copy_{cfg.threads}t",
                lambda: cand.from_baseline(copy_baseline(nbytes, threads=cfg.threads)))
    w = cand.weights(n, n, cfg.seed)
    qw = functools.cache(lambda fmt: cand.quantized(w, fmt, cfg.group_size))
    for spec in specs:
        key, extra = f"lowbitc_dequant_{spec.fmt}", f"lowbitc_dequant_{spec.fmt}_kernel"
        grp.add(key, lambda k=key, f=spec.fmt: cand.dequant_case(k, qw(f)))
        grp.add(extra, lambda k=extra, f=spec.fmt: cand.dequant_kernel_case(k, qw(f)))
        grp.bindings.append((spec, key, "copy", (extra,)))
    return grp


def _small_group(cfg: Config, spec: RowSpec) -> Group:
    n = cfg.small
    grp = Group(f"ops.matmul call overhead, M=1 K=N={n}")
    w, x = cand.weights(n, n, cfg.seed), cand.activations(1, n, cfg.seed + 1)
    grp.add("numpy_fp32_small", lambda: _numpy(1, n, cfg.seed, "numpy_fp32_small"))
    key = "lowbitc_small_u4"
    grp.add(key, lambda: cand.matmul_case(key, x, cand.quantized(w, spec.fmt, cfg.group_size)))
    grp.bindings.append((spec, key, "numpy_fp32_small", ()))
    return grp


def _groups(cfg: Config) -> Iterator[Callable[[], Group]]:
    """Group builders in run order (built lazily so big operands are freed between groups)."""
    by_kind: dict[str, list[RowSpec]] = {}
    for spec in cfg.rows:
        by_kind.setdefault(spec.kind, []).append(spec)
    gemv = by_kind.get("gemv", []) + by_kind.get("torch", [])
    gemv.sort(key=lambda s: (s.kind == "torch", GEMV_FORMATS.index(s.fmt)))
    if gemv:
        yield lambda: _gemv_group(cfg, gemv)
    for spec in by_kind.get("gemm", []):
        yield lambda s=spec: _gemm_group(cfg, s)
    yield lambda: _dequant_group(cfg, by_kind.get("dequant", []))  # copy bandwidth: always
    for spec in by_kind.get("small", []):
        yield lambda s=spec: _small_group(cfg, s)


def _measure(grp: Group, rounds: int) -> dict:
    """Time every correct call of the group in the same interleaved rounds."""
    fns = {k: t.fn for k, t in grp.timed.items() if t.correct}
    stats = interleaved_stats(fns, rounds) if fns else {}
    return stats


def _copy_summary(stats: dict, timed: dict[str, cand.Timed]) -> dict:
    bw = {k: timed[k].bytes_moved / s["median"] / 1e9 for k, s in stats.items()
          if k.startswith("copy_")}
    if not bw:
        return {}
    best = max(bw, key=bw.get)
    return {"per_threads_gbs": bw, "best_gbs": bw[best], "best": best,
            "bytes_per_call": timed[best].bytes_moved}


def wait_for_load(max_load: float, timeout: float, log: Callable[[str], None]) -> dict:
    """Sleep until the 1-minute load average is <= max_load or `timeout` seconds pass."""
    start = time.perf_counter()
    if max_load > 0:
        log(f"[bench] waiting up to {timeout:.0f} s for the load average to drop to {max_load}")
    while max_load > 0 and os.getloadavg()[0] > max_load:
        if time.perf_counter() - start >= timeout:
            break
        time.sleep(5)
    return {"max_load": max_load, "waited_seconds": time.perf_counter() - start,
            "reached": max_load <= 0 or os.getloadavg()[0] <= max_load}


def run(cfg: Config, log: Callable[[str], None] = print) -> dict:
    """Measure every selected row; returns the JSON-ready results (schema `SCHEMA`)."""
    started = time.perf_counter()
    waited = wait_for_load(cfg.wait_load, cfg.wait_seconds, log)
    cfg = dataclasses.replace(cfg, threads=cfg.threads or _usable_cpus())
    load_start = list(os.getloadavg())
    rows: list[dict] = []
    groups_out: list[dict] = []
    copy: dict = {}
    with thread_limits(cfg.threads) as thread_info:
        for build in _groups(cfg):
            grp = build()
            log(f"[bench] {grp.title}: {len(grp.timed)} calls x {cfg.rounds} rounds")
            load = list(os.getloadavg())
            with cpu_usage() as usage:
                stats = _measure(grp, cfg.rounds)
            if any(k.startswith("copy_") for k in stats):
                copy = _copy_summary(stats, grp.timed)
            for spec, key, base, extras in grp.bindings:
                base_key = copy.get("best") if base == "copy" else base
                rows.append(make_row(spec, cfg, grp, stats, key, base_key, extras, load))
                rows[-1]["cpu_usage"] = usage
                log(f"[bench]   {spec.name}: {rows[-1]['status']}")
            groups_out.append({"title": grp.title, "load_average": load, "cpu_usage": usage,
                               "stats": stats, "problems": grp.problems})
            log(f"[bench]   other processes used {usage.get('others_cpus', float('nan')):.2f} "
                f"CPUs on average while this group ran")
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
        "cpu_mhz": cpu_mhz(),
        "copy_bandwidth": copy,
        "rows": rows,
        "groups": groups_out,
        "summary": summarize_rows(rows),
        "elapsed_seconds": time.perf_counter() - started,
    }


def write_results(results: dict, out_dir: str | os.PathLike, stem: str) -> tuple[Path, Path | None]:
    """`<out>/<stem>.json` and, when matplotlib is present, `<out>/<stem>.png`."""
    path = write_json(Path(out_dir) / f"{stem}.json", results)
    png = plot_results(results, Path(out_dir) / f"{stem}.png")
    return path, png
