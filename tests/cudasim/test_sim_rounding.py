"""Rounding modes and Philox in Numba's CUDA simulator: the same codes as the host encoder
and the LLVM backend, bit for bit (small shapes: the simulator runs a Python thread per CUDA
thread).

Run only in a process with NUMBA_ENABLE_CUDASIM=1 (tests/test_rounding_kernels.py starts one).
"""

import os

import numpy as np
import pytest
from test_compiler_encode import probe_values
from test_rounding_kernels import MODES, PHILOX_IDX, PHILOX_IR, SEED, run_modes, run_philox

import lowbitc
from lowbitc.rounding import ROUNDINGS, random_bits

pytestmark = pytest.mark.cudasim
assert os.environ.get("NUMBA_ENABLE_CUDASIM") == "1", "run through tests/test_rounding_kernels.py"


@pytest.mark.parametrize("seed", [0, 2**32 + 5, -1])
def test_philox_matches_host(seed):
    out = run_philox("cuda", seed)
    assert np.array_equal(out, random_bits(seed & (2**64 - 1), PHILOX_IDX.view(np.uint64)))
    if seed == 0:
        assert out[0] == 0x6627E8D5  # Random123's known answer for counter 0, key 0
    assert PHILOX_IR  # (the kernel text is shared with the LLVM test)


@pytest.mark.parametrize("name", ["f4e2m1fn", "u4", "f6e3m2fn", "nf4"])
def test_every_mode_matches_host_encode(name):
    fmt = lowbitc.dtype(name)
    x = probe_values(fmt)
    x = x[~np.isnan(x)] if not fmt.has_nan else x
    x = np.random.default_rng(3).permutation(x)[:128]
    k = lowbitc.compile(MODES, backend="cuda", F=fmt, B=32)
    for mode, got in zip(ROUNDINGS, run_modes(k, fmt, x)):
        want = fmt.encode(x, rounding=mode, seed=SEED)
        assert np.array_equal(got, want), (name, mode, x[got != want][:5])


STOCHASTIC = ["f4e2m1fn", "f6e3m2fn", "u4", "bf16", "f8e4m3fn"]


def run_stochastic_chop(name: str, backend: str, x: np.ndarray, **tiles) -> np.ndarray:
    k = lowbitc.compile(lowbitc.ops.kernel_path("chop"), backend=backend,
                        F=lowbitc.dtype(name), MODE=5, **tiles)
    y = np.full_like(x, np.nan)
    k(x, np.ones((1, 1), np.float32), y, x.shape[1], 77, np.float32(0), np.float32(np.inf),
      np.float32(-np.inf), np.float32(np.inf))
    return y


@pytest.mark.parametrize("name", STOCHASTIC)
@pytest.mark.parametrize("tiles", [{"BM": 1, "BK": 64}, {"BM": 4, "BK": 32}])
def test_stochastic_chop_same_as_cpu_backend_and_host(name, tiles):
    """The simulator's stochastic codes equal the LLVM kernel's (another tiling) and the
    host's, bit for bit."""
    fmt = lowbitc.dtype(name)
    scale = min(fmt.max, 1e30) / 3  # (bf16's max / 3 * a normal sample overflows f32)
    x = (np.random.default_rng(4).standard_normal((5, 40)) * scale).astype(np.float32)
    sim = run_stochastic_chop(name, "cuda", x, **tiles)
    cpu = run_stochastic_chop(name, "llvm", x, BM=2, BK=16)
    want = fmt.decode(fmt.encode(x, rounding="stochastic", seed=77))
    assert np.array_equal(sim.view(np.uint32), cpu.view(np.uint32)), (name, tiles)
    assert np.array_equal(sim.view(np.uint32), want.view(np.uint32)), (name, tiles)
