"""Rounded casts into u8, i8, f16 and bf16 in Numba's CUDA simulator, bit for bit against the
host encoder: the 8-bit integers on every code's neighbourhood, the 16-bit floats on a sample
of theirs (a Python thread per CUDA thread: the whole set is the LLVM test's).

Run only in a process with NUMBA_ENABLE_CUDASIM=1 (tests/test_rounding_machine.py starts one).
"""

import os

import pytest
from test_rounding_kernels import MODES
from test_rounding_machine import (
    EIGHT,
    SIXTEEN,
    check_codes,
    edges_and_sample,
    machine_points,
    run_machine_modes,
)

import lowbitc

pytestmark = pytest.mark.cudasim
assert os.environ.get("NUMBA_ENABLE_CUDASIM") == "1", "run through tests/test_rounding_machine.py"
SAMPLE = 6000


@pytest.mark.parametrize("name", SIXTEEN + EIGHT)
def test_every_mode_matches_host_encode(name):
    x = machine_points(name)
    if x.size > SAMPLE:  # every overflow, infinity and NaN point, and a sample of the rest
        x = edges_and_sample(name, x, SAMPLE)
    k = lowbitc.compile(MODES, backend="cuda", F=name, B=128)
    check_codes(lowbitc.dtype(name), x, run_machine_modes(k, name, x), "cuda simulator")
