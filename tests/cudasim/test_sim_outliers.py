"""ops.matmul with outliers on the CUDA backend in Numba's simulator: dense kernel plus the
CSR pass equals x @ dequantize().T. Run through tests/test_outliers.py (own process)."""

import os

import numpy as np
import pytest

import lowbitc
from lowbitc import ops

pytestmark = pytest.mark.cudasim
assert os.environ.get("NUMBA_ENABLE_CUDASIM") == "1", "run through tests/test_outliers.py"


@pytest.mark.parametrize("outliers", [0.02, "columns:3"])
def test_cuda_matmul_with_outliers_matches_reference(outliers):
    rng = np.random.default_rng(5)
    w = rng.standard_normal((40, 64)).astype(np.float32)
    qw = lowbitc.quantize(w, "u3", 32, zero_point=True, outliers=outliers)
    assert qw.sparse is not None and qw.sparse.nnz > 0
    x = rng.standard_normal((3, 64)).astype(np.float32)
    y = ops.matmul(x, qw, backend="cuda")
    np.testing.assert_allclose(y, x @ qw.dequantize().T, rtol=1e-4, atol=1e-4)
