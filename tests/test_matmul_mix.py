"""The per-group mixture kernel (lowbitc/kernels/matmul_mix.lbk): ops.matmul of a TableQTensor
against its dequantized weights, for 1-4 members, zero points, odd shapes, partial last
groups, outliers, and TableLinear running it."""

import dataclasses

import numpy as np
import pytest
from cuda_checks import assemble_without_spills, needs_toolchain, run_simulator_suite

import lowbitc
from lowbitc import ops
from lowbitc.backends.llvm import decode
from lowbitc.commands import emit
from lowbitc.commands.compile import compile_file
from lowbitc.kernels import get_kernel
from lowbitc.mixture import TableQTensor
from lowbitc.repack import RowsPacking


def _mixture(n, k, members, group, zero_point=True, seed=0, outliers=None):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, k)).astype(np.float32)
    w[:, : k // 3] *= 4.0  # uneven columns so different groups prefer different members
    qt = lowbitc.quantize(w, members, group, zero_point=zero_point, outliers=outliers)
    assert isinstance(qt, TableQTensor)
    # every member in use, whatever the errors chose (the kernel must decode each)
    index = rng.integers(0, len(members), qt.index.shape).astype(np.int32)
    return dataclasses.replace(qt, index=index), rng


def _check(qt, x):
    y = ops.matmul(x, qt)
    ref = x.astype(np.float64) @ qt.dequantize().astype(np.float64).T
    bound = np.abs(x).astype(np.float64) @ np.abs(qt.dequantize()).astype(np.float64).T
    np.testing.assert_allclose(y, ref, rtol=0, atol=float(4e-6 * bound.max() + 1e-6))
    return y


@pytest.mark.parametrize("n,k,group,members", [
    (70, 317, 64, ["u4", "nf4", "f4e2m1fn", "i4"]),  # odd N, K; partial group
    (64, 256, 32, ["nf4", "f4e2m1fn"]),
    (33, 200, 128, ["u3", "i3", "f3e1m1"]),
])
def test_mixture_gemv_matches_its_dequantized_weights(n, k, group, members):
    qt, rng = _mixture(n, k, members, group)
    assert len(np.unique(qt.index)) == len(members)  # every member is used somewhere
    assert qt.member_formats is not None
    for m in (1, 3, 8):
        _check(qt, rng.standard_normal((m, k)).astype(np.float32))


def test_mixture_gemv_runs_the_compiled_kernel():
    qt, rng = _mixture(48, 128, ["u4", "nf4"], 32)
    ops.matmul(rng.standard_normal((1, 128)).astype(np.float32), qt)
    plans = [key for key in ops._PLANS if key[0] == "matmul_mix"]
    assert any(key[2] == qt.member_formats for key in plans)


def test_mixture_gemv_without_zero_points_f16_inputs_and_outliers():
    qt, rng = _mixture(40, 160, ["nf4", "f4e2m1fn", "i4"], 32, zero_point=False,
                       outliers=0.01)
    assert qt.zeros is None and qt.sparse is not None
    x = rng.standard_normal((2, 160)).astype(np.float16)
    y = ops.matmul(x, qt)
    ref = x.astype(np.float64) @ qt.dequantize().astype(np.float64).T
    np.testing.assert_allclose(y, ref, rtol=0, atol=1e-3)


def test_table_linear_uses_the_kernel_for_few_rows():
    torch = pytest.importorskip("torch")
    from lowbitc.torch import quantize_
    from lowbitc.torch.tables import TableLinear

    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(96, 64))
    quantize_(m, ["u4", "nf4", "f4e2m1fn", "i4"], 32)
    layer = m[0]
    assert isinstance(layer, TableLinear)
    x = torch.randn(2, 3, 96)
    with torch.no_grad():
        y = layer(x)
    want = ops.matmul(x.reshape(6, 96).numpy(), layer.qweight) + layer.bias.detach().numpy()
    np.testing.assert_array_equal(y.reshape(6, 64).numpy(), want)
    w = torch.from_numpy(layer.qweight.dequantize())
    torch.testing.assert_close(y, x @ w.T + layer.bias, rtol=1e-5, atol=1e-5)



@needs_toolchain
@pytest.mark.cuda_toolchain
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_mixture_kernel_ptx_assembles_without_spills(arch):
    (k, _), = compile_file(str(ops.kernel_path("matmul_mix")), None,
                           {"W0": "u4", "W1": "nf4", "W2": "f4e2m1fn", "W3": "i4", "ZP": True},
                           backend="cuda")
    ptx = emit.cuda_text(k, "ptx", arch)
    assert ptx.count(".entry") == 1
    assemble_without_spills(ptx, arch)  # (it asserts no spills)


@needs_toolchain
def test_mixture_kernel_in_the_cuda_simulator():
    run_simulator_suite("test_sim_mixture.py", passed=1)


@pytest.mark.parametrize("members", [
    ["u4", "nf4", "f4e2m1fn", "i4"],  # 64 entries over (index, code): two permutes, a select
    ["nf4", "f4e2m1fn"],  # 32 entries: one permute
    ["u3", "i3", "f3e1m1"],  # 3-bit codes, 24 entries
])
def test_mixture_decodes_every_index_and_code_exactly(members):
    """Every (table index, code) pair, N not a multiple of 16 (the last rows take the generic
    dot), 1-8 rows of x: one-hot rows make each output one weight, (v - z) * s in f32, which
    must equal the dequantized weight bit for bit (from 2 rows, the rows16 packing's shared
    table over (index, code): backends/llvm/rows_index.py)."""
    n, k, g = 146, 128, 32  # two whole windows of 64 rows, then 18 rows
    qt, _ = _mixture(n, k, members, g)
    # code (row + column) mod 2^bits: every code in every group of 32; every index in each row
    codes = ((np.arange(n)[:, None] + np.arange(k)) % (1 << qt.bits)).astype(np.uint8)
    index = ((np.arange(n)[:, None] + np.arange(k // g)) % len(members)).astype(np.int32)
    qt = dataclasses.replace(qt, codes=codes, index=index)
    want = qt.dequantize()
    if decode.permutes():
        kern = get_kernel("matmul_mix", "llvm", **ops.mix_params(qt, 2, "f32"))
        assert isinstance(kern.packings["w"], RowsPacking)
        assert "over (row index, code)" in kern.explain()
    for m in range(1, 9):
        for k0 in range(0, k, m):
            cols = np.arange(k0, min(k0 + m, k))
            x = np.zeros((m, k), np.float32)
            x[np.arange(len(cols)), cols] = 1.0
            y = ops.matmul(x, qt)
            np.testing.assert_array_equal(y[:len(cols)], want[:, cols].T, err_msg=f"M={m}")
