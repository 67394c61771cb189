"""The tensor-core primitives natively on a CUDA device (sm_80+): the same checks the simulator
suite runs (tests/cudasim/test_sim_tensorcore.py), against the fragment layouts and numpy.
Marked `gpu`: skipped, with the reason, where there is no device."""

import pytest

pytestmark = pytest.mark.gpu
K = pytest.importorskip("tensorcore_kernels")
LDSM = [("k_ldsm_x4", 4, False), ("k_ldsm_x4_trans", 4, True), ("k_ldsm_x2", 2, False),
        ("k_ldsm_x2_trans", 2, True)]


@pytest.fixture(autouse=True)
def _sm80():
    from numba import cuda

    cc = cuda.get_current_device().compute_capability
    if cc < (8, 0):
        pytest.skip(f"gpu: mma.m16n8k16 and cp.async need sm_80+, this device is sm_{cc[0]}{cc[1]}")


@pytest.mark.parametrize("kind", ["f16", "bf16"])
def test_mma_m16n8k16_float(kind):
    K.check_mma_m16n8k16_float(kind)


def test_mma_m16n8k32_s8_wraps_like_int32():
    K.check_mma_m16n8k32_s8_wraps_like_int32()


@pytest.mark.parametrize("name,num,trans", LDSM)
def test_ldmatrix_against_isa_maps(name, num, trans):
    K.check_ldmatrix_against_isa_maps(name, num, trans)


def test_ldmatrix_x4_loads_the_mma_a_fragment():
    K.check_ldmatrix_x4_loads_the_mma_a_fragment()


def test_cp_async_copies_and_zero_fills():
    K.check_cp_async_copies_and_zero_fills()
