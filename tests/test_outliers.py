"""Outliers kept in float beside a low-bit dense part (lowbitc.outliers): the split, the CSR
matrix, ops.matmul's second pass on CPU and CUDA, save/load, bad input."""

import numpy as np
import pytest
from cuda_checks import assemble_without_spills, needs_toolchain, run_simulator_suite

import lowbitc
from lowbitc import ops
from lowbitc.errors import UserArgumentError
from lowbitc.outliers import Sparse, outlier_mask
from lowbitc.quant import load


def _weight(n=48, k=160, seed=0):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((n, k)) * 0.05).astype(np.float32)
    w[rng.integers(0, n, 20), rng.integers(0, k, 20)] = rng.choice([-1, 1], 20) * 0.8
    return w


@pytest.mark.parametrize("fmt,zp", [("u3", True), ("i4", False), ("nf4", False)])
@pytest.mark.parametrize("outliers", [0.005, 0.05, "columns:5"])
def test_dense_plus_sparse_is_the_dequantized_sum(fmt, zp, outliers):
    w = _weight()
    qw = lowbitc.quantize(w, fmt, 32, zero_point=zp, outliers=outliers)
    mask = outlier_mask(w, outliers)
    sp = qw.sparse
    assert sp.nnz == mask.sum() and np.array_equal(sp.to_dense() != 0, mask & (sp.to_dense() != 0))
    dense = lowbitc.quant.QTensor(qw.dtype, qw.shape, 32, qw.codes, qw.scales, qw.zeros)
    # the dense part is what quantize gives for w with the outliers zeroed, exactly
    plain = lowbitc.quant.quantize(np.where(mask, 0, w), fmt, 32, zero_point=zp)
    assert np.array_equal(plain.codes, qw.codes) and np.array_equal(plain.scales, qw.scales)
    expect = dense.dequantize() + sp.to_dense()
    assert np.array_equal(qw.dequantize(), expect)
    # kept weights come back up to the f16 rounding of their residual
    rows, cols = np.nonzero(mask)
    np.testing.assert_allclose(qw.dequantize()[rows, cols], w[rows, cols], atol=2e-3)
    x = np.random.default_rng(1).standard_normal((3, w.shape[1])).astype(np.float32)
    np.testing.assert_allclose(ops.matmul(x, qw), x @ expect.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(ops.dequantize(qw), expect)


@pytest.mark.parametrize("m,n,k,counts", [
    (1, 130, 40, [0, 1, 15, 16, 17, 31, 32, 33, 40]),  # the 16-entry steps and their tails
    (3, 70, 300, None),  # several activation rows, a last block of 6 rows
    (2, 5, 7, [0, 0, 0, 0, 0]),  # no entries at all
])
@pytest.mark.parametrize("value_dtype", [np.float16, np.float32])
def test_native_sparse_pass_adds_every_entry(m, n, k, counts, value_dtype):
    """The CPU pass (backends/llvm/sparse.py, f16 values widened in the kernel) against a
    float64 product, rows holding 0 to K entries, with y's previous contents kept."""
    rng = np.random.default_rng(5)
    if counts is None:
        counts = rng.integers(0, k // 3, n)
    counts = np.resize(np.asarray(counts), n)
    d = np.zeros((n, k), np.float32)
    for r, c in enumerate(counts):
        d[r, rng.choice(k, c, replace=False)] = rng.standard_normal(c)
    rows, cols = np.nonzero(d)
    indptr = np.zeros(n + 1, np.int32)
    np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
    sp = Sparse((n, k), indptr, cols.astype(np.int32), d[rows, cols].astype(value_dtype))
    x = rng.standard_normal((m, k)).astype(np.float32)
    y = rng.standard_normal((m, n)).astype(np.float32)
    expect = y.astype(np.float64) + x.astype(np.float64) @ sp.to_dense().astype(np.float64).T
    assert sp.matmul_add(x, y) is y
    np.testing.assert_allclose(y, expect, rtol=1e-5, atol=1e-5)


def test_fraction_keeps_the_largest_magnitudes_and_columns_keep_whole_columns():
    w = _weight()
    mask = outlier_mask(w, 0.01)
    assert mask.sum() == round(0.01 * w.size)
    score = w.astype(np.float64) ** 2 / (w.astype(np.float64) ** 2).mean(axis=1, keepdims=True)
    assert score[mask].min() >= score[~mask].max()  # largest relative to their row
    cw = np.random.default_rng(3).uniform(0, 2, w.shape[1])
    mask = outlier_mask(w, 0.01, cw)
    score = w.astype(np.float64) ** 2 * cw  # largest output error with these activations
    assert score[mask].min() >= score[~mask].max()
    cw = np.ones(w.shape[1])
    cw[7] = 1e6  # the activations make column 7 the most important
    cols = outlier_mask(w, "columns:2", cw)
    assert cols[:, 7].all() and cols.sum() == 2 * w.shape[0]
    assert len(set(np.nonzero(cols)[1])) == 2


def test_outliers_lower_the_error():
    w = _weight()
    err = [np.square(lowbitc.quantize(w, "u3", 64, zero_point=True, outliers=f).dequantize()
                     - w).sum() for f in (0, 0.005, 0.02)]
    assert err[0] > err[1] > err[2]


def test_save_load_keeps_outliers(tmp_path):
    qw = lowbitc.quantize(_weight(), "u4", 64, zero_point=True, outliers=0.01,
                          outlier_dtype="f32")
    qw.save(tmp_path / "w.safetensors")
    back = load(tmp_path / "w.safetensors")
    assert back.sparse.values.dtype == np.float32
    np.testing.assert_array_equal(back.dequantize(), qw.dequantize())


@pytest.mark.parametrize("bad", [-0.01, 0.11, "columns:0", "rows:3", True, "x"])
def test_bad_outliers_name_the_argument(bad):
    with pytest.raises(UserArgumentError, match="outliers"):
        lowbitc.quantize(_weight(), "u4", 64, outliers=bad)


def test_bad_outlier_dtype_and_method():
    with pytest.raises(UserArgumentError, match="outlier_dtype"):
        lowbitc.quantize(_weight(), "u4", 64, outliers=0.01, outlier_dtype="bf16")
    with pytest.raises(UserArgumentError, match="method"):
        lowbitc.quantize(_weight(), "u4", 64, method="awq")


@needs_toolchain
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_cuda_sparse_pass_assembles_without_spills(arch):
    from lowbitc.backends.numba_cuda import sparse
    from lowbitc.backends.numba_cuda.toolchain import ptx_for

    ptx = ptx_for(sparse.csr_matmul_add, sparse.SIGNATURE, arch)
    assemble_without_spills(ptx, arch)


@needs_toolchain
def test_cuda_outliers_in_simulator():
    run_simulator_suite("test_sim_outliers.py", passed=2)
