"""Shared pytest configuration.

Every pytest run compiles into a cache directory of its own (removed at exit), so the suite
never writes to the user's `~/.cache/lowbitc` (or `$LOWBITC_CACHE_DIR`) and never reads kernels
a different checkout left there. `LOWBITC_TEST_CACHE_DIR` names a directory to use instead
(to keep compiled kernels between runs). Subprocesses the tests start inherit the variable.
"""

import atexit
import os
import shutil
import tempfile
import threading
import time

import pytest

# tests/cudasim needs NUMBA_ENABLE_CUDASIM=1, which is process-wide: only the subprocess that
# tests/test_cuda_toolchain.py starts (with that variable set) collects it.
collect_ignore = [] if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" else ["cudasim"]


def _yield_while_polling_simulated_threads() -> None:
    """numba-cuda's simulator runs a block as one Python thread per CUDA thread while the
    launching thread polls them (`BlockManager.run`: `is_alive` of every thread, in a loop
    that never waits), taking the GIL from the simulated threads. Polling through an
    `is_alive` that first yields the GIL (`time.sleep(0)`) gives the same answers in the same
    order: test_sim_mma.py's default cases took 25-27 s of CPU and 39-44 s of wall time
    without it, 13-14 s and 23-29 s with it (Zen 5, load 5-10)."""
    try:
        from numba.cuda.simulator import kernel
    except ImportError:
        return
    thread = getattr(kernel, "BlockThread", None)
    if thread is None or thread.is_alive is not threading.Thread.is_alive:
        return

    def is_alive(self) -> bool:
        time.sleep(0)
        return threading.Thread.is_alive(self)

    thread.is_alive = is_alive


if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    _yield_while_polling_simulated_threads()

if os.environ.get("LOWBITC_TEST_CACHE_DIR"):
    os.environ["LOWBITC_CACHE_DIR"] = os.environ["LOWBITC_TEST_CACHE_DIR"]
elif os.environ.get("LOWBITC_TEST_RUN_CACHE") is None:  # not a pytest started by a test
    _run_cache = tempfile.mkdtemp(prefix="lowbitc-test-cache-")
    os.environ["LOWBITC_CACHE_DIR"] = os.environ["LOWBITC_TEST_RUN_CACHE"] = _run_cache
    atexit.register(shutil.rmtree, _run_cache, True)


def cuda_device_missing() -> str | None:
    """Why no CUDA device can run tests here, or None when one can."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return "NUMBA_ENABLE_CUDASIM=1: the simulator is not a device"
    try:
        from numba import cuda
    except ImportError:
        return "numba-cuda is not installed"
    try:
        if cuda.is_available():
            return None
    except Exception as exc:  # a broken driver install
        return f"the CUDA driver failed: {exc}"
    return "no CUDA device (numba.cuda.is_available() is False)"


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` run natively on a CUDA device and are skipped, with the reason,
    where there is none."""
    gpu = [item for item in items if item.get_closest_marker("gpu") is not None]
    reason = cuda_device_missing() if gpu else None
    if reason:
        for item in gpu:
            item.add_marker(pytest.mark.skip(reason=f"gpu: {reason}"))
    # `sweep`: every cell of a table (e.g. each format x arch x activation SASS bound); run
    # only when asked for with -m (`-m slow` or `-m sweep`), so the suite's default run (CI)
    # keeps its representative cells and its time
    if not config.getoption("markexpr", ""):
        for item in items:
            if item.get_closest_marker("sweep") is not None:
                item.add_marker(pytest.mark.skip(
                    reason="sweep: run with -m slow or -m sweep (every cell of the table)"))
