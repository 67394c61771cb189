"""Dequant prototypes in Numba's CUDA simulator, bit-exact against numpy.

Run only in a process with NUMBA_ENABLE_CUDASIM=1 (tests/test_cuda_toolchain.py starts one);
tests/conftest.py keeps the main pytest process from collecting this directory.
"""

import os

import numpy as np
import pytest

from lowbitc.backends.numba_cuda import prototypes as P

pytestmark = pytest.mark.cudasim
assert os.environ.get("NUMBA_ENABLE_CUDASIM") == "1", "run through tests/test_cuda_toolchain.py"

CASES = [
    *[("u", b, 128, 128, "canonical") for b in range(1, 9)],
    ("u", 4, 256, 64, "canonical"),
    ("u", 3, 256, 32, "canonical"),
    ("u", 7, 256, 256, "canonical"),
    ("u", 4, 256, 256, "interleaved"),
    ("u", 4, 128, 32, "interleaved"),
    ("e2m1", 4, 128, 128, "canonical"),
    ("e2m1", 4, 256, 64, "canonical"),
]


def _scales(rng: np.random.Generator, shape: tuple[int, int], limit: float) -> np.ndarray:
    mag = np.exp2(rng.uniform(-12, np.log2(limit) - 0.01, size=shape))
    return (mag * rng.choice([-1, 1], size=shape)).astype(np.float16)


@pytest.mark.parametrize("fmt,bits,k,group,order", CASES)
def test_dequant_matches_numpy(fmt, bits, k, group, order):
    spec = P.DequantSpec(fmt, bits, k, group, order)
    rng = np.random.default_rng(bits * 1000 + k + group)
    n = 3
    codes = rng.integers(0, 1 << bits, size=(n, k), dtype=np.uint8)
    codes[0, : min(k, 1 << bits)] = np.arange(min(k, 1 << bits))  # every code appears
    scales = _scales(rng, (n, spec.groups), 4.0 if fmt == "e2m1" else 64.0)
    got = P.run(spec, codes, scales, blocks=2, threads=2)
    want = P.reference(codes, scales, spec)
    # bit-exact, except that the magic-number subtraction (1024+0)*s - 1024*s gives +0 where
    # 0 * s is -0 for a negative scale
    np.testing.assert_array_equal(got.view(np.uint16)[want != 0], want.view(np.uint16)[want != 0])
    assert not got[want == 0].any()


def test_intrinsic_twins_are_active():
    from lowbitc.backends.numba_cuda import intrinsics

    assert intrinsics.SIMULATOR and intrinsics.prmt is intrinsics.prmt_py
