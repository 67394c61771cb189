"""GPTQ's error feedback onto fixed grids (lowbitc.gptq, `method="hqq-gptq"`) against exact
references, plus its bad input."""

import numpy as np
import pytest
import torch
from torch import nn

import lowbitc
from lowbitc import gptq
from lowbitc.errors import UserArgumentError
from lowbitc.methods import requantized
from lowbitc.torch import QuantLinear, quantize_
from lowbitc.torch.tables import TableLinear


def _layer(n=16, k=40, seed=0):
    """A weight and the Hessian of correlated inputs with columns of different scales."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((300, k)) @ rng.standard_normal((k, k)) * 0.3
    x *= rng.uniform(0.2, 3.0, k)
    w = (rng.standard_normal((n, k)) * 0.05).astype(np.float32)
    w[rng.random((n, k)) < 0.02] *= 8  # a few large weights
    return w, x.T @ x / len(x)


def _reference(w, h, column, damp, order, mask):
    """Optimal Brain Surgeon's sequential form, one column at a time: after column q, the
    remaining columns take -e * Hinv[q, F] / Hinv[q, q] and Hinv drops q (no Cholesky, no
    blocks)."""
    diag = np.diag(h).copy()
    diag[diag == 0] = 1.0
    hd = h.copy()
    hd[np.diag_indices_from(hd)] = diag + damp * diag.mean()
    hinv = np.linalg.inv(hd)
    work = w.astype(np.float64).copy()
    codes = np.zeros(w.shape, np.uint8)
    left = list(order)
    for q in order:
        c, v = column(q, work[:, q])
        codes[:, q] = c
        if mask is not None:
            v = np.where(mask[:, q], work[:, q], v)
        e = (work[:, q] - v) / hinv[q, q]
        left.remove(q)
        work[:, left] -= np.outer(e, hinv[q, left])
        hinv = hinv - np.outer(hinv[:, q], hinv[q, :]) / hinv[q, q]
    return codes


@pytest.mark.parametrize("act_order", [False, True])
def test_feedback_matches_the_sequential_reference(act_order):
    w, h = _layer()
    qt = lowbitc.quantize(w, "u3", 8, zero_point=True)
    column = gptq.affine_column(qt.dtype, qt.scales, qt.zeros, 8)
    mask = np.random.default_rng(3).random(w.shape) < 0.05
    codes, kept = gptq.feedback(w, h, column, 0.05, block=7, act_order=act_order, mask=mask)
    order = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(w.shape[1])
    ref = _reference(w, h, column, 0.05, order, mask)
    assert (codes != ref).sum() <= 1  # float64 rounding ties may differ in a code
    assert (kept[~mask] == 0).all() and (kept[mask] != 0).any()


def test_a_diagonal_hessian_feeds_nothing_back():
    w, _ = _layer()
    h = np.diag(np.linspace(0.5, 2.0, w.shape[1]))
    q = lowbitc.quantize(w, "u3", 8, True, method="hqq-gptq", hessian=h)
    plain = lowbitc.quantize(w, "u3", 8, True, method="hqq", column_weights=np.diag(h))
    np.testing.assert_array_equal(q.scales, plain.scales)
    np.testing.assert_array_equal(q.codes, requantized(plain, w).codes)


def _output_error(w, h, q):
    e = w.astype(np.float64) - q.dequantize()
    return float(np.einsum("ij,jk,ik->", e, h, e))


def test_hqq_gptq_with_outliers_is_dense_plus_sparse_and_lowers_the_output_error():
    w, h = _layer()
    q = lowbitc.quantize(w, "u3", 8, True, outliers=0.02, method="hqq-gptq", hessian=h,
                         damp=0.01)
    plain = lowbitc.quantize(w, "u3", 8, True, outliers=0.02, method="hqq",
                             column_weights=np.diag(h))
    dense = q.dtype.decode(q.codes)
    dense = (dense - np.repeat(q.zeros, 8, axis=1)) * np.repeat(q.scales, 8, axis=1)
    np.testing.assert_allclose(q.dequantize(), dense + q.sparse.to_dense(), rtol=1e-6,
                               atol=1e-7)
    assert q.sparse.nnz == plain.sparse.nnz == round(0.02 * w.size)
    assert _output_error(w, h, q) < 0.8 * _output_error(w, h, plain)


def test_row_code_books_with_gptq_lower_the_output_error():
    w, h = _layer()
    book = lowbitc.codebook.fit(w, 2, np.diag(h), per="row")
    q = lowbitc.quantize(w, book, 8, method="hqq-gptq", hessian=h, damp=0.01)
    plain = lowbitc.quantize(w, book, 8)
    assert set(np.unique(q.dequantize()[0])) <= set(book.tables[0])
    assert _output_error(w, h, q) < 0.8 * _output_error(w, h, plain)


def test_hqq_gptq_bad_input_names_the_argument():
    w, h = _layer()
    with pytest.raises(UserArgumentError, match="hessian"):
        lowbitc.quantize(w, "u3", 8, method="hqq-gptq")
    with pytest.raises(UserArgumentError, match="hessian"):
        lowbitc.quantize(w, "u3", 8, method="hqq-gptq", hessian=h[:-1])
    with pytest.raises(UserArgumentError, match="hessian"):
        lowbitc.quantize(w, ["u4", "nf4"], 8, method="hqq-gptq", hessian=h)
    with pytest.raises(UserArgumentError, match="damp"):
        lowbitc.quantize(w, "u3", 8, method="hqq-gptq", hessian=h, damp=-0.1)
    with pytest.raises(UserArgumentError, match="calibrate"):
        quantize_(nn.Sequential(nn.Linear(40, 16)), "u3", 8, method="hqq-gptq")


def test_quantize_hqq_gptq_calibrates_each_layer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 24), nn.ReLU(), nn.Linear(24, 16))
    x = torch.randn(64, 40)
    ref = model(x)
    quantize_(model, "u4", 8, calibrate=lambda m: m(x), method="hqq-gptq", outliers=0.01)
    assert all(isinstance(model[i], QuantLinear) for i in (0, 2))
    assert model[0].outlier_values is not None
    cos = nn.functional.cosine_similarity(model(x), ref, dim=-1)
    assert cos.min() > 0.99


def test_quantize_hqq_gptq_onto_per_row_code_books():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(40, 24))
    x = torch.randn(64, 40)
    ref = model(x)
    quantize_(model, lowbitc.codebook.fitter(4, per="row"), 8, calibrate=lambda m: m(x),
              method="hqq-gptq")
    assert isinstance(model[0], TableLinear)
    assert nn.functional.cosine_similarity(model(x), ref, dim=-1).min() > 0.99
