"""Shared pytest configuration."""

import os

import pytest

# tests/cudasim needs NUMBA_ENABLE_CUDASIM=1, which is process-wide: only the subprocess that
# tests/test_cuda_toolchain.py starts (with that variable set) collects it.
collect_ignore = [] if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" else ["cudasim"]


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
