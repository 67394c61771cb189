"""The least-squares refit of a GPTQ grid under the Hessian (lowbitc.refit, `refit=`) against
an explicit least-squares solve, plus its bad input."""

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

import lowbitc
from lowbitc import gptq, refit
from lowbitc.errors import UserArgumentError
from lowbitc.torch import quantize_


def _layer(n=12, k=44, seed=0):
    """A weight and the Hessian of correlated inputs with columns of different scales."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((300, k)) @ rng.standard_normal((k, k)) * 0.3
    x *= rng.uniform(0.2, 3.0, k)
    w = (rng.standard_normal((n, k)) * 0.05).astype(np.float32)
    w[rng.random((n, k)) < 0.02] *= 8
    return w, x.T @ x / len(x)


def _lstsq(design, t, hd):
    """argmin_x (t - A x)^T H (t - A x), as an ordinary least-squares problem on L^T A."""
    lt = np.linalg.cholesky(hd).T
    return np.linalg.lstsq(lt @ design, lt @ t, rcond=None)[0]


def _outliers(w, seed=1):
    mask = np.random.default_rng(seed).random(w.shape) < 0.05
    return mask, np.where(mask, w * 1.1, 0).astype(np.float32)


def _errors(w, hd, mask, kept, *qts):
    return [refit.row_errors(w, np.where(mask, kept, q.dequantize()), hd) for q in qts]


@pytest.mark.parametrize(("fmt", "zero_point"), [("u3", True), ("i3", False)])
def test_affine_refit_is_the_least_squares_grid(fmt, zero_point):
    w, h = _layer()
    g = 8  # K = 44: a partial last group of 4
    qt = lowbitc.quantize(w, fmt, g, zero_point)
    mask, kept = _outliers(w)
    hd = gptq.damped(h, 0.1)
    new = refit.refit_affine(qt, w, hd, mask, kept)
    v = qt.dtype.decode(qt.codes).astype(np.float64)
    groups = qt.scales.shape[1]
    for r in range(w.shape[0]):
        onehot = ((np.arange(w.shape[1]) // g)[:, None] == np.arange(groups)) \
            & ~mask[r][:, None]
        design = onehot * v[r][:, None]  # w_hat = s[g] * v (+ b[g]) off the outliers
        if zero_point:
            design = np.concatenate([design, onehot], axis=1)
        x = _lstsq(design, w[r] - kept[r], hd)
        np.testing.assert_allclose(new.scales[r], x[:groups], rtol=1e-4)
        if zero_point:
            np.testing.assert_allclose(new.zeros[r] * new.scales[r], -x[groups:], rtol=1e-4,
                                       atol=1e-7)
    old_e, new_e = _errors(w, hd, mask, kept, qt, new)
    assert (new_e <= old_e).all() and new_e.sum() < 0.9 * old_e.sum()


def test_table_refit_is_the_least_squares_code_book_sorted():
    w, h = _layer()
    book = lowbitc.codebook.fit(w, 2, per="row")
    qt = lowbitc.quantize(w, book, 8)
    mask, kept = _outliers(w, 2)
    hd = gptq.damped(h, 0.1)
    new = refit.refit_tables(qt, w, hd, mask, kept)
    assert (np.diff(new.tables, axis=1) >= 0).all()
    for r in range(w.shape[0]):
        design = (qt.codes[r][:, None] == np.arange(4)) & ~mask[r][:, None]
        x = _lstsq(design.astype(float), w[r] - kept[r], hd)
        # the same values, renumbered in ascending order, coding the same weights
        np.testing.assert_allclose(new.tables[r], np.sort(x), rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(new.tables[r][new.codes[r]], x[qt.codes[r]], rtol=1e-4,
                                   atol=1e-7)
    old_e, new_e = _errors(w, hd, mask, kept, qt, new)
    assert (new_e <= old_e).all() and new_e.sum() < old_e.sum()


def test_outlier_refit_zeroes_the_gradient():
    w, h = _layer()
    mask, _ = _outliers(w)
    hd = gptq.damped(h, 0.1)
    dense = lowbitc.quantize(w, "u3", 8, True).dequantize().astype(np.float64)
    kept = refit.refit_outliers(w, dense, hd, mask)
    assert (kept[~mask] == 0).all()
    e = w - np.where(mask, kept, dense)
    grad = e @ hd  # d/de of e^T H e, per row; the outliers' entries are free
    scale = np.abs(w).max() * np.abs(hd).max()
    assert np.abs(grad[mask]).max() < 1e-5 * scale


def _output_error(w, h, q):
    e = w.astype(np.float64) - q.dequantize()
    return float(np.einsum("ij,jk,ik->", e, h, e))


@pytest.mark.parametrize("dtype", ["u2", "rows"])
def test_quantize_refit_lowers_the_output_error_and_stays_dense_plus_sparse(dtype):
    w, h = _layer()
    fmt = lowbitc.codebook.fit(w, 2, np.diag(h), per="row") if dtype == "rows" else dtype
    kw = {"outliers": 0.02, "method": "hqq-gptq", "hessian": h, "damp": 0.1}
    base = lowbitc.quantize(w, fmt, 8, True, **kw)
    hd = gptq.damped(h, 0.1)  # the error each refit minimises (a GPTQ rerun need not)
    errors = [_output_error(w, hd, base)]
    for rounds in (1, 2):
        q = lowbitc.quantize(w, fmt, 8, True, refit=rounds, **kw)
        assert q.sparse.nnz == base.sparse.nnz
        np.testing.assert_array_equal(q.sparse.indices, base.sparse.indices)
        dense = q.dequantize() - q.sparse.to_dense()
        alone = dataclasses.replace(q, sparse=None).dequantize()
        np.testing.assert_allclose(dense, alone, rtol=1e-6, atol=1e-6)
        errors.append(_output_error(w, hd, q))
    assert errors[1] < 0.95 * errors[0] and errors[2] < 0.95 * errors[0]


def test_refit_bad_input_names_the_argument():
    w, h = _layer()
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(UserArgumentError, match="refit"):
            lowbitc.quantize(w, "u3", 8, method="hqq-gptq", hessian=h, refit=bad)
    with pytest.raises(UserArgumentError, match="refit"):
        lowbitc.quantize(w, "u3", 8, method="hqq", refit=1)
    with pytest.raises(UserArgumentError, match="refit"):
        quantize_(nn.Sequential(nn.Linear(44, 12)), "u3", 8, calibrate=lambda m: None,
                  refit=2)


def test_quantize_refit_through_quantize_():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(44, 24), nn.ReLU(), nn.Linear(24, 16))
    x = torch.randn(64, 44)
    ref = model(x)
    quantize_(model, "u2", 8, calibrate=lambda m: m(x), method="hqq-gptq", outliers=0.02,
              refit=2)
    cos = nn.functional.cosine_similarity(model(x), ref, dim=-1)
    assert cos.min() > 0.95
