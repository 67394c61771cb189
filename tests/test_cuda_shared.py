"""Shared tiles and quantizing stores in the numba-cuda backend without a GPU: the rendered
source (swizzled `cuda.shared.array` indexing, barriers), PTX that ptxas assembles, and the
simulator suite (tests/cudasim/test_sim_shared.py) in a process of its own."""

from __future__ import annotations

import re

import pytest
from cuda_checks import SIM_DIR, assemble_without_spills, needs_toolchain, run_simulator_suite

import lowbitc
from lowbitc.backends.numba_cuda.backend import BACKEND

SIM = SIM_DIR / "test_sim_shared.py"


def _sim_kernel(name: str) -> str:
    text = SIM.read_text()
    return re.search(rf'^{name} = """\n(.*?)^"""', text, re.S | re.M).group(1)


def test_rendered_source_declares_swizzled_shared_arrays_and_barriers():
    k = lowbitc.compile(_sim_kernel("GEMM"), backend="cuda")
    src = BACKEND.rendered(k.lowered).source
    assert src.count("cuda.shared.array(32, F32)") >= 2  # the two user tiles
    assert "& 24) >> 3)" in src  # Swizzle<2,0,3>: bits 3-4 xor-ed into bits 0-1
    assert "cuda.syncthreads()" in src


@needs_toolchain
@pytest.mark.cuda_toolchain
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("name", ["STAGED", "CODES", "GEMM", "QUANT"])
def test_shared_tile_kernels_assemble_without_spills(name, arch):
    k = lowbitc.compile(_sim_kernel(name), backend="cuda")
    ptx = BACKEND.ptx(k.lowered, arch)
    asm = assemble_without_spills(ptx, arch)
    if name == "QUANT":  # codes go into shared words with atomics
        assert "atom.global.and.b32" in ptx and "atom.global.or.b32" in ptx
    else:
        assert ".shared" in ptx and "bar.sync" in ptx
        assert asm.shared_bytes > 0 and asm.barriers >= 1


@pytest.mark.cudasim
def test_shared_simulator_suite_in_its_own_process():
    run_simulator_suite(SIM.name, passed=10)


def test_encoding_f64_values_is_an_error_on_the_gpu():
    import numpy as np

    from lowbitc.errors import BackendError
    from lowbitc.passes import run_pipeline

    book = lowbitc.codebook(np.float32([1e-30, 0.1, 1.0000001, 7.0]), name="gpu_f64_book")
    src = """kernel q[F: dtype](x: f64[N], w: F[N]) {
      store(w[0 :+ 8], cast(load(x[0 :+ 8]), F))
    }"""
    k = lowbitc.compile(src, F=book)
    with pytest.raises(BackendError, match="GPU tables are float32") as err:
        BACKEND.emit(run_pipeline(k.ir, BACKEND.pipeline))
    assert err.value.loc.line == 2
