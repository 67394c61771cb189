"""The per-group mixture kernel (lowbitc/kernels/matmul_mix.lbk) on the CUDA backend in Numba's
simulator: y = x @ dequantize().T with every member in use. Run through
tests/test_matmul_mix.py (own process)."""

import dataclasses
import os

import numpy as np
import pytest

import lowbitc
from lowbitc import ops
from lowbitc.kernels import get_kernel

pytestmark = pytest.mark.cudasim
assert os.environ.get("NUMBA_ENABLE_CUDASIM") == "1", "run through tests/test_matmul_mix.py"


def test_cuda_mixture_kernel_matches_its_dequantized_weights():
    rng = np.random.default_rng(3)
    n, k, g = 32, 64, 32
    members = ["u4", "nf4", "f4e2m1fn", "i4"]
    qt = lowbitc.quantize(rng.standard_normal((n, k)).astype(np.float32), members, g,
                          zero_point=True)
    qt = dataclasses.replace(qt, index=rng.integers(0, 4, qt.index.shape).astype(np.int32))
    x = rng.standard_normal((1, k)).astype(np.float32)
    params = {**ops.mix_params(qt, 1, "f32"), "BN": 16, "BK": 32}
    kern = get_kernel("matmul_mix", "cuda", **params)
    scales, zeros, index = qt.group_major
    packing = kern.packings.get("w")
    words = qt.packed if packing is None else qt.packed_as(packing)
    y = np.zeros((1, n), np.float32)
    kern(x, words, scales, zeros, index, y, g, K=k)
    ref = x.astype(np.float64) @ qt.dequantize().astype(np.float64).T
    np.testing.assert_allclose(y, ref, rtol=0, atol=1e-4)
