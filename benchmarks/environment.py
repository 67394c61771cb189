"""Facts about the machine a benchmark runs on, and control of its threads.

Shared machines are noisy: the runner records the load average, how many CPUs other
processes used while each group was measured, and the git state, next to every figure.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

try:
    import threadpoolctl
except ImportError:  # BLAS threads are then left as the environment set them
    threadpoolctl = None

from lowbitc.backends.llvm.launch import num_threads

from .baselines import torch

__all__ = ["cpu_mhz", "cpu_usage", "git_state", "thread_limits", "usable_cpus",
           "wait_for_load"]


def usable_cpus() -> int:
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
    return done.stdout if done.returncode == 0 else None


def git_state() -> dict:
    """The commit measured and the tracked files that differed from it (others' edits count)."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    modified = [line[3:] for line in status.splitlines()] if status else []
    commit, describe = _git("rev-parse", "HEAD"), _git("describe", "--always", "--dirty")
    return {"commit": commit and commit.strip(), "describe": describe and describe.strip(),
            "modified_tracked_files": modified}


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
