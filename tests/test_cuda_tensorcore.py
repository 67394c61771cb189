"""Tensor-core primitives (backends/numba_cuda/tensorcore.py, warpsim.py) and their fragment
layouts (lowbitc/layout/mma.py): layouts against the PTX ISA formulas, the whole-warp twins
against the layouts and numpy, each instruction's PTX through ptxas 13.0 (sm_80, sm_90) with its
SASS opcode, and the simulator suite (tests/cudasim/test_sim_tensorcore.py) in its own process."""

from __future__ import annotations

import numpy as np
import pytest
from cuda_checks import assemble_without_spills, needs_toolchain, run_simulator_suite

from lowbitc.errors import UserArgumentError
from lowbitc.layout import mma

W = pytest.importorskip("lowbitc.backends.numba_cuda.warpsim")
K = pytest.importorskip("tensorcore_kernels")
G = pytest.importorskip("tensorcore_gemm")
RNG = np.random.default_rng(7)


# -- layouts: PTX ISA 9.7.14.5.10 (m16n8k32 .s8) and 9.7.14.5.15 (ldmatrix) ---------------------
def test_m16n8k32_s8_fragments_match_ptx_isa():
    a, b, c = mma.mma_m16n8k32_a(), mma.mma_m16n8k32_b(), mma.mma_m16n8k32_c()
    assert (a.shape, a.num_threads, a.num_values) == ((16, 32), 32, 16)
    assert (b.shape, b.num_threads, b.num_values) == ((32, 8), 32, 8)
    for lane in range(32):
        g, t = lane >> 2, lane % 4
        for i in range(16):
            row = g if (i < 4 or 8 <= i < 12) else g + 8
            assert a(lane, i) == (row, t * 4 + (i & 3) + (16 if i >= 8 else 0))
        for i in range(8):
            assert b(lane, i) == (t * 4 + (i & 3) + (16 if i >= 4 else 0), g)
        for i in range(4):
            assert c(lane, i) == ((g if i < 2 else g + 8), t * 2 + (i & 1))


def test_ldmatrix_maps_match_ptx_isa():
    dst, trans = mma.ldmatrix_dst(), mma.ldmatrix_dst_trans()
    for lane in range(32):
        for v in range(2):
            assert dst(lane, v) == (lane // 4, 2 * (lane % 4) + v)
            assert trans(lane, v) == (2 * (lane % 4) + v, lane // 4)
    assert [mma.ldmatrix_src_row(lane, 2) for lane in (0, 7, 8, 15, 16)] == \
        [(0, 0), (0, 7), (1, 0), (1, 7), None]
    assert mma.ldmatrix_src_row(31, 4) == (3, 7)
    with pytest.raises(UserArgumentError, match="num must be 1, 2 or 4"):
        mma.ldmatrix_src_row(0, 3)


# -- whole-warp twins against the layouts ------------------------------------------------------
def test_mma_f16_warp_against_layouts():
    a = RNG.standard_normal((16, 16)).astype(np.float16)
    b = RNG.standard_normal((16, 8)).astype(np.float16)
    c = RNG.standard_normal((16, 8)).astype(np.float32)
    d = W.mma_m16n8k16_warp(K.to_registers(a, mma.mma_m16n8k16_a()),
                            K.to_registers(b, mma.mma_m16n8k16_b()),
                            K.to_lanes(c, mma.mma_m16n8k16_c()))
    want = a.astype(np.float64) @ b.astype(np.float64) + c
    np.testing.assert_allclose(K.from_lanes(d, mma.mma_m16n8k16_c()), want, rtol=2**-22)


def test_mma_s8_warp_against_layouts():
    a = RNG.integers(-128, 128, (16, 32)).astype(np.int8)
    b = RNG.integers(-128, 128, (32, 8)).astype(np.int8)
    c = RNG.integers(-1000, 1000, (16, 8)).astype(np.int32)
    d = W.mma_m16n8k32_s8_warp(K.to_registers(a, mma.mma_m16n8k32_a()),
                               K.to_registers(b, mma.mma_m16n8k32_b()),
                               K.to_lanes(c, mma.mma_m16n8k32_c()))
    want = a.astype(np.int64) @ b.astype(np.int64) + c
    np.testing.assert_array_equal(K.from_lanes(d, mma.mma_m16n8k32_c()), want)


def test_ldmatrix_x2_trans_warp_loads_the_mma_b_fragment():
    """B stored K-major (row k = 8 halves n0..n7): lanes 0-15 point at rows k = lane, and
    .x2.trans hands each lane its m16n8k16 B registers."""
    b = RNG.integers(0, 2**16, (16, 8)).astype(np.uint16)
    mem = b.reshape(-1).view(np.uint8)
    addrs = [16 * (lane % 16) for lane in range(32)]
    got = W.ldmatrix_warp(mem, addrs, 2, trans=True)
    np.testing.assert_array_equal(got, K.to_registers(b, mma.mma_m16n8k16_b()))


def test_warp_twins_reject_bad_operands():
    with pytest.raises(Exception, match="16-byte aligned"):
        W.ldmatrix_warp(np.zeros(512, np.uint8), [8] * 32, 4, False)
    with pytest.raises(UserArgumentError, match="kind"):
        W.mma_m16n8k16_warp(np.zeros((32, 4), np.uint32), np.zeros((32, 2), np.uint32),
                            np.zeros((32, 4), np.float32), kind="f8")
    with pytest.raises(Exception, match="inside a simulated CUDA kernel"):
        W.mma_f16_py(0, 0, 0, 0, 0, 0, 0.0, 0.0, 0.0, 0.0)


# -- PTX -> ptxas 13.0 -> SASS ------------------------------------------------------------------
KERNELS = [
    ("k_mma_f16", K.MMA_SIG, {"HMMA.16816.F32"}),
    ("k_mma_bf16", K.MMA_SIG, {"HMMA.16816.F32.BF16"}),
    ("k_mma_s8", K.MMA_S8_SIG, {"IMMA.16832.S8.S8"}),
    ("k_ldsm_x4", K.LDSM_SIG, {"LDSM.16.M88.4"}),
    ("k_ldsm_x4_trans", K.LDSM_SIG, {"LDSM.16.MT88.4"}),
    ("k_ldsm_x2", K.LDSM_SIG, {"LDSM.16.M88.2"}),
    ("k_ldsm_x2_trans", K.LDSM_SIG, {"LDSM.16.MT88.2"}),
    ("k_cp_async", K.CP_SIG, {"LDGSTS.E.BYPASS.128", "LDGSTS.E.BYPASS.128.ZFILL", "LDGDEPBAR",
                              "DEPBAR.LE"}),
]


@needs_toolchain
@pytest.mark.cuda_toolchain
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("name,sig,opcodes", KERNELS, ids=[k[0] for k in KERNELS])
def test_primitive_assembles_to_its_sass_opcode(name, sig, opcodes, arch):
    T = pytest.importorskip("lowbitc.backends.numba_cuda.toolchain")
    from lowbitc.backends.numba_cuda import sass

    asm = assemble_without_spills(T.ptx_for(getattr(K, name), sig, arch), arch)
    have = {ins.opcode for ins in sass.parse(T.disassemble(asm.cubin))}
    assert opcodes <= have, sorted(have)


@needs_toolchain
@pytest.mark.cuda_toolchain
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_warp_gemm_assembles_to_32_hmma_from_registers(arch):
    """tests/tensorcore_gemm.py's 16x64x64 u4 warp GEMM: 32 HMMA fed by 4 LDSM and 4 LDGSTS,
    B decoded in registers (2 HFMA2 per HMMA), nothing spilled, no stack."""
    T = pytest.importorskip("lowbitc.backends.numba_cuda.toolchain")
    from lowbitc.backends.numba_cuda import sass

    asm = assemble_without_spills(T.ptx_for(G.k_gemm_u4, G.SIG, arch), arch)
    mix = sass.opcode_mix(sass.parse(T.disassemble(asm.cubin)))
    assert asm.stack_bytes == 0
    assert (mix["HMMA"], mix["LDSM"], mix["LDGSTS"], mix["HFMA2"]) == (32, 4, 4, 64), mix


def test_warp_gemm_shared_accesses_are_conflict_free():
    """The warp GEMM's cp.async stores and ldmatrix reads, evaluated per warp (lowbitc.layout.
    banks), on its swizzled tile; unswizzled, the ldmatrix reads would conflict 8-way."""
    from lowbitc.layout.banks import ldmatrix_access, warp_access

    G.test_swizzle_spelled_out_matches_the_layout_swizzle()
    lanes = range(32)
    for i in range(4):
        stores = [G.a_offset((t + 32 * i) // 8, (t + 32 * i) % 8) for t in lanes]
        assert warp_access(stores, 16).conflicts == 0
    for kf in range(4):
        reads = [G.a_offset(t % 16, 2 * kf + t // 16) for t in lanes]
        assert ldmatrix_access(reads, 4).conflicts == 0
        plain = [(t % 16) * 128 + (2 * kf + t // 16) * 16 for t in lanes]
        assert ldmatrix_access(plain, 4).conflicts == 28


@needs_toolchain
@pytest.mark.cuda_toolchain
@pytest.mark.cudasim
def test_simulator_suite():
    run_simulator_suite("test_sim_tensorcore.py", passed=12)
