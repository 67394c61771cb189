"""backends/numba_cuda/tensorcore.py's simulator twins inside simulated kernels (one block of
whole warps): mma.sync f16/bf16/s8, ldmatrix x4/x2 (+.trans) and cp.async (+zfill, groups),
each checked against the fragment layouts of lowbitc/layout/mma.py and numpy.

Run only in a process with NUMBA_ENABLE_CUDASIM=1 (tests/test_cuda_tensorcore.py starts one).
"""

import os

import numpy as np
import pytest
import tensorcore_kernels as K
from numba import cuda
from tensorcore_gemm import test_u4_warp_gemm_from_every_primitive  # noqa: F401
from tensorcore_kernels import (  # noqa: F401  (collected here)
    test_cp_async_copies_and_zero_fills,
    test_ldmatrix_against_isa_maps,
    test_ldmatrix_x4_loads_the_mma_a_fragment,
    test_mma_m16n8k16_float,
    test_mma_m16n8k32_s8_wraps_like_int32,
)

from lowbitc.errors import BackendError

pytestmark = pytest.mark.cudasim
assert os.environ.get("NUMBA_ENABLE_CUDASIM") == "1", "run through tests/test_cuda_tensorcore.py"


def test_collective_twin_needs_whole_warps():
    regs = np.zeros((16, 4), np.uint32)
    with pytest.raises(BackendError, match="whole warps"):
        cuda.jit(K.k_mma_f16)[1, 16](regs, regs[:, :2].copy(), np.zeros((16, 4), np.float32),
                                     np.zeros((16, 4), np.float32))


def test_an_error_in_a_collective_reaches_the_kernel():
    src = np.zeros(K.SMEM_HALVES, np.uint16)
    rows = np.full(32, 4, np.uint32)  # 8-byte aligned rows: ldmatrix needs 16
    with pytest.raises(BackendError, match="16-byte aligned"):
        cuda.jit(K.k_ldsm_x4)[1, 32](src, rows, np.zeros((32, 4), np.uint32))
