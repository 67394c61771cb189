"""Every format x every rounding mode in Numba's CUDA simulator, bit for bit against the host
encoder on every code's neighbourhood (the same points as the LLVM test).

Run only in a process with NUMBA_ENABLE_CUDASIM=1 (tests/test_rounding_formats.py starts one).
"""

import os

import pytest
from test_rounding_formats import check_every_mode, neighbourhood
from test_rounding_kernels import EVERY_FORMAT, MODES

import lowbitc

pytestmark = pytest.mark.cudasim
assert os.environ.get("NUMBA_ENABLE_CUDASIM") == "1", "run through tests/test_rounding_formats.py"


@pytest.mark.parametrize("name", EVERY_FORMAT)
def test_every_mode_matches_host_encode(name):
    fmt = lowbitc.dtype(name)
    k = lowbitc.compile(MODES, backend="cuda", F=fmt, B=128)
    check_every_mode(k, fmt, neighbourhood(fmt), "cuda simulator")
