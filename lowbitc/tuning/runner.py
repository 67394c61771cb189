"""Running candidates through any `concurrent.futures.Executor`.

Each task builds one candidate (`build(config) -> run`, where `run()` executes the compiled
kernel once on prepared inputs) and measures it, in the worker. Builds overlap; in the pools
made here, measurements take a shared lock so two candidates are never timed at once. A
distributed executor (dask's `Client.get_executor()`) works the same way, without the lock.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import sys
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import (
    Executor,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    as_completed,
)
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from lowbitc.errors import LowbitcError, UserArgumentError
from lowbitc.tuning.measure import Measurer
from lowbitc.tuning.space import Config
from lowbitc.tuning.trials import Trial

try:
    from tqdm import tqdm
except ImportError:  # pragma: no cover - tqdm is optional: no progress bar then
    tqdm = None

Build = Callable[[Config], Callable[[], object]]
_worker_lock: Any = None  # set in pool workers by _install_lock


def _install_lock(lock: Any) -> None:
    global _worker_lock
    _worker_lock = lock


@dataclass(frozen=True)
class Task:
    """One unit of work shipped to a worker (everything in it must pickle)."""

    build: Build
    config: Config
    measurer: Measurer
    repeats: int | None
    rung: int = 0


def _describe(e: BaseException) -> str:
    if isinstance(e, LowbitcError):
        return str(e)  # already carries file:line:col and the caret line
    where = traceback.extract_tb(e.__traceback__)[-1:] if e.__traceback__ else []
    at = f" (at {where[0].filename}:{where[0].lineno})" if where else ""
    return f"{type(e).__name__}: {e}{at}"


def run_task(task: Task, lock: Any = None) -> Trial:
    """Build and measure one candidate; any exception becomes an error Trial."""
    repeats = task.repeats or getattr(task.measurer, "repeats", None)
    base = {"config": task.config, "rung": task.rung, "repeats": repeats}
    t0 = time.perf_counter()
    try:
        run = task.build(dict(task.config))
    except Exception as e:
        return Trial(**base, error=_describe(e), error_type=type(e).__name__, phase="compile")
    compile_seconds = time.perf_counter() - t0
    lock = lock if lock is not None else _worker_lock
    try:
        with lock if lock is not None else contextlib.nullcontext():
            seconds = float(task.measurer.measure(run, task.repeats))
        if not seconds > 0 or seconds == float("inf"):
            raise ValueError(f"the measurer returned {seconds!r}, not a positive time")
    except Exception as e:
        return Trial(**base, error=_describe(e), error_type=type(e).__name__, phase="run",
                     compile_seconds=compile_seconds)  # fmt: skip
    return Trial(**base, seconds=seconds, compile_seconds=compile_seconds)


class InlineExecutor(Executor):
    """Runs each task at submit time in the calling thread (tests, debugging)."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        fut: Future = Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as e:
            fut.set_exception(e)
        return fut


def make_executor(kind: str, max_workers: int | None = None) -> tuple[Executor, Any]:
    """A fresh executor of `kind` ("process", "thread", "inline") and its measurement lock."""
    workers = max_workers or os.cpu_count() or 1
    if kind == "process":
        ctx = multiprocessing.get_context("spawn")  # no fork after LLVM or threads started
        lock = ctx.Lock()
        pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_install_lock,
                                   initargs=(lock,))  # fmt: skip
        return pool, None  # workers find the lock through _install_lock
    if kind == "thread":
        return ThreadPoolExecutor(workers, thread_name_prefix="lowbitc-tune"), threading.Lock()
    if kind == "inline":
        return InlineExecutor(), None
    raise UserArgumentError(
        f"executor: expected an Executor or one of 'process', 'thread', 'inline', got {kind!r}"
    )


class Evaluator:
    """Evaluates batches of configurations on an executor; `trials` collects every result."""

    def __init__(
        self,
        build: Build,
        measurer: Measurer,
        executor: Executor | str | None,
        progress: bool | None,
        total: int,
    ):
        self.build, self.measurer = build, measurer
        if isinstance(executor, Executor):
            self.executor, self.lock, self._owned = executor, None, False
        else:
            self.executor, self.lock = make_executor(executor or "process")
            self._owned = True
        if isinstance(self.executor, ProcessPoolExecutor):
            _check_picklable(build, measurer)
        show = sys.stderr.isatty() if progress is None else progress
        self.bar = None
        if show and tqdm is not None:
            self.bar = tqdm(total=total, desc="tuning", unit="cfg", leave=False, file=sys.stderr)
        self.trials: list[Trial] = []

    def __call__(self, configs: list[Config], repeats: int | None, rung: int = 0) -> list[Trial]:
        tasks = [Task(self.build, c, self.measurer, repeats, rung) for c in configs]
        futures = [self._submit(t) for t in tasks]
        for _ in as_completed(futures):
            if self.bar is not None:
                self.bar.update(1)
        trials = [self._outcome(t, f) for t, f in zip(tasks, futures, strict=True)]
        if self._owned and sum(t.error_type == "BrokenProcessPool" for t in trials) > 1:
            trials = self._isolate_crash(tasks, trials)
        self.trials.extend(trials)
        return trials

    def _submit_or_restart(self, task: Task) -> Future:
        args = (task,) if self.lock is None else (task, self.lock)
        try:
            return self.executor.submit(run_task, *args)
        except BrokenProcessPool:
            if not self._owned:
                raise
            # a candidate crashed its worker: replace our pool and carry on
            self.executor.shutdown(wait=False, cancel_futures=True)
            self.executor, self.lock = make_executor("process")
            return self.executor.submit(run_task, *args)

    def _submit(self, task: Task) -> Future:
        try:
            return self._submit_or_restart(task)
        except Exception as e:  # a broken or shut-down foreign executor: report per candidate
            fut: Future = Future()
            fut.set_exception(e)
            return fut

    def _isolate_crash(self, tasks: list[Task], trials: list[Trial]) -> list[Trial]:
        """A crashed worker breaks the whole pool: rerun the lost tasks one at a time, so
        only the candidate that really crashes keeps the error."""
        out = []
        for task, trial in zip(tasks, trials, strict=True):
            if trial.error_type == "BrokenProcessPool":
                trial = self._outcome(task, self._submit(task))
            out.append(trial)
        return out

    @staticmethod
    def _outcome(task: Task, fut: Future) -> Trial:
        try:
            return fut.result()
        except Exception as e:
            return Trial(task.config, error=_describe(e), error_type=type(e).__name__,
                         phase="worker", repeats=task.repeats, rung=task.rung)  # fmt: skip

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self._owned:
            self.executor.shutdown(wait=True, cancel_futures=True)


def _check_picklable(build: Build, measurer: Measurer) -> None:
    for name, obj in (("build", build), ("measurer", measurer)):
        try:
            pickle.dumps(obj)
        except Exception as e:
            raise UserArgumentError(
                f"{name}: a process pool needs it to pickle (a module-level function or a "
                f"functools.partial of one), got {obj!r} ({e}); or pass executor='thread'"
            ) from e
