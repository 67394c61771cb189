"""The KV cache's kernels on the numba-cuda backend without a GPU: PTX that ptxas assembles
with no spills (sm_80; sm_90 for the u4 attention), and the simulator suite
(tests/cudasim/test_sim_kv.py, which also covers the backend's reshape of a sum index, once
rendered without parentheses) in a process of its own."""

from __future__ import annotations

import pytest
from cuda_checks import assemble_without_spills, needs_toolchain, run_simulator_suite

import lowbitc
from lowbitc.backends.numba_cuda.backend import BACKEND
from lowbitc.kernels import get_kernel
from lowbitc.kv.store import quantize_params

KERNELS = [
    ("attention", "attention_split", dict(WK="u4", WV="u4", QH=1, D=128, G=32, VG=32)),
    ("attention", "attention_split", dict(WK="u2", WV="u4", QH=2, D=128, G=32, VG=128)),
    ("attention", "attention_split", dict(WK="f8e4m3fn", WV="u2", QH=4, D=64, G=32, VG=32,
                                          KZP=False)),
    ("attention", "attention_split", dict(WK="f32", WV="f32", QH=2, D=128, G=32, VG=128,
                                          QUANT=False, KZP=False, VZP=False)),
    ("attention", "attention_combine", dict(D=128)),
    ("kv_quantize", "quantize_keys", dict(G=32, D=128, **quantize_params(lowbitc.dtype("u2")))),
    ("kv_quantize", "quantize_values", dict(VG=32, D=128,
                                            **quantize_params(lowbitc.dtype("f8e4m3fn")))),
]


CASES = [(*case, "sm_80") for case in KERNELS] + [(*KERNELS[0], "sm_90")]


@needs_toolchain
@pytest.mark.cuda_toolchain
@pytest.mark.parametrize("file, kernel, params, arch", CASES,
                         ids=[f"{k}-{p.get('WK', p.get('W', ''))}-{a}" for _, k, p, a in CASES])
def test_kv_kernels_assemble_without_spills(file, kernel, params, arch):
    k = get_kernel(file, "cuda", kernel=kernel, **params)
    assemble_without_spills(BACKEND.ptx(k.lowered, arch), arch)


@pytest.mark.cudasim
def test_kv_simulator_suite_in_its_own_process():
    run_simulator_suite("test_sim_kv.py", passed=5)
