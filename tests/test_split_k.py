"""The default split-K of the tensor-core matmul (lowbitc/split_k.py): which shapes split and
how far, per target GPU, and that ops and tune start from it (results: the simulator suite,
tests/cudasim/test_sim_mma.py::test_default_split_k_matches_numpy, a `sweep`; the split-K
kernel runs by default in test_split_k_partial_sums_reduced_in_order)."""

import pytest

from lowbitc import autotune, ops
from lowbitc.autotune import WeightSpec
from lowbitc.dtypes import dtype
from lowbitc.errors import UserArgumentError
from lowbitc.mma_plan import mma_params
from lowbitc.split_k import MIN_TILES, SMS, default_split_k


@pytest.mark.parametrize("M,N,K,group,arch,want", [
    (1, 4096, 4096, 128, "sm_80", 2),    # 64 blocks: 128 fill one wave of 108
    (1, 4096, 4096, 128, "sm_90", 4),    # 128 < 132 SMs: one more doubling
    (16, 8192, 8192, 128, "sm_80", 2),   # 128 blocks < 2 x 108
    (1, 16384, 4096, 128, "sm_80", 1),   # 256 blocks: two waves already
    (1, 11008, 4096, 128, "sm_90", 2),   # 172 < 264: one wave at SK 2
    (128, 4096, 4096, 128, "sm_80", 1),  # not small M
    (1, 4096, 512, 128, "sm_80", 1),     # 4 K tiles: too short to split
    (1, 4096, 1024, 64, "sm_90", 2),     # 16 tiles: SK 4 would leave 4 per split
    (1, 64, 4096, 4096, "sm_80", 1),     # one group: the kernel splits by groups
    (5, 4096, 4096, 128, "sm_86", 2),    # A40: 84 SMs
    (1, 4096, 4096, 128, "sm_89", 4),    # L40S: 142 SMs
])
def test_default_split_k_choices(M, N, K, group, arch, want):
    p = mma_params(M, dtype("u4"), group, False, "f16", N, K, arch)
    assert p["SK"] == want, p
    if want > 1:  # every split keeps MIN_TILES K tiles, fewer than two waves of blocks
        tiles = (K // group) // want * -(-group // p["BK"])
        blocks = -(-M // p["BM"]) * -(-N // p["BN"])
        assert tiles >= MIN_TILES and blocks < 2 * SMS[arch]


def test_split_k_is_monotone_in_the_output_tiles():
    """Fewer output tiles never split less (same K); past 2 x SMs blocks nothing splits."""
    sks = [default_split_k(1, n, 8192, 128, 16, 64, 128) for n in range(64, 20000, 64)]
    assert all(a >= b for a, b in zip(sks, sks[1:], strict=False)) and sks[0] == 4
    assert sks[-1] == 1 and set(sks) == {1, 2, 4}


def test_ops_and_tune_start_from_the_default_split_and_tune_overrides_it(monkeypatch):
    """ops.matmul_choice passes N and K (SK 2 for an A100-sized GEMV); tune's default to
    beat carries it; a tuned winner replaces it."""
    spec = WeightSpec(dtype("u4"), 128, None)
    name, params = ops.matmul_choice(1, 4096, 4096, spec, "f16", backend="cuda")
    assert name == "matmul_mma" and params["SK"] == 2
    t = autotune._op_target("matmul", (1, 4096, 4096), "u4", 128, False, "f16", "cuda")
    assert t.default["SK"] == 2 and "SK" not in t.fixed
    monkeypatch.setattr(ops, "tuned_params", lambda *a, **k: {"SK": 1})
    assert ops.matmul_choice(1, 4096, 4096, spec, "f16", backend="cuda")[1]["SK"] == 1


def test_unknown_arch_is_a_clear_error():
    with pytest.raises(UserArgumentError, match=r"arch: expected one of sm_80, .*got 'sm_99'"):
        default_split_k(1, 64, 4096, 128, 16, 64, 64, "sm_99")
