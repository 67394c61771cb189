"""Every format x every rounding mode inside kernels, bit for bit against the host encoder on
every code's neighbourhood (each value and midpoint, the f32 numbers either side, both signs,
subnormals, zeros, overflow, infinities): the native LLVM kernel of each format here, the CUDA
simulator in a process of its own (cudasim/test_sim_rounding_formats.py). The host encoder is
checked against the exact fractions model on the same points (test_rounding.py).

One scalar kernel (B=1) per format holds all six modes: LLVM's O3 time grows faster than the
code, so this is the cheapest build; the vectorised code is checked on one format of every
family in test_rounding_kernels.py."""

from __future__ import annotations

import numpy as np
import pytest
from test_compiler_encode import probe_values
from test_rounding_kernels import EVERY_FORMAT, MODES, SEED, run_modes

import lowbitc
from lowbitc.rounding import ROUNDINGS


def neighbourhood(fmt) -> np.ndarray:
    """probe_values without NaN where the format has no NaN code (encode rejects it)."""
    x = probe_values(fmt)
    return x if fmt.has_nan else x[~np.isnan(x)]


def check_every_mode(k, fmt, x: np.ndarray, where: str) -> None:
    for mode, got in zip(ROUNDINGS, run_modes(k, fmt, x)):
        want = fmt.encode(x, rounding=mode, seed=SEED)
        bad = np.flatnonzero(got != want)
        assert bad.size == 0, (where, fmt.name, mode, x[bad[:5]], got[bad[:5]], want[bad[:5]])


@pytest.mark.parametrize("name", EVERY_FORMAT)
def test_native_kernel_every_mode_matches_host(name):
    fmt = lowbitc.dtype(name)
    check_every_mode(lowbitc.compile(MODES, F=fmt, B=1), fmt, neighbourhood(fmt), "llvm")


@pytest.mark.cudasim
def test_simulator_every_format_in_its_own_process():
    from cuda_checks import run_simulator_suite

    run_simulator_suite("test_sim_rounding_formats.py", passed=len(EVERY_FORMAT))
