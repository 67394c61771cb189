"""The tensor-core primitives natively on a CUDA device (sm_80+): the tests the simulator suite
runs (tests/cudasim/test_sim_tensorcore.py; defined in tests/tensorcore_kernels.py), against the
fragment layouts and numpy. Marked `gpu`: skipped, with the reason, where there is no device."""

import pytest

pytest.importorskip("numba.cuda")
from tensorcore_gemm import test_u4_warp_gemm_from_every_primitive  # noqa: E402, F401
from tensorcore_kernels import (  # noqa: E402, F401  (collected here)
    test_cp_async_copies_and_zero_fills,
    test_ldmatrix_against_isa_maps,
    test_ldmatrix_x4_loads_the_mma_a_fragment,
    test_mma_m16n8k16_float,
    test_mma_m16n8k32_s8_wraps_like_int32,
)

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _sm80():
    from numba import cuda

    cc = cuda.get_current_device().compute_capability
    if cc < (8, 0):
        pytest.skip(f"gpu: mma.m16n8k16 and cp.async need sm_80+, this device is sm_{cc[0]}{cc[1]}")
