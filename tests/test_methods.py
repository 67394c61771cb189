"""Per-group format mixtures, fitted code books and HQQ (lowbitc.mixture, codebook_fit,
hqq) against exact references, plus their bad input."""

import numpy as np
import pytest

import lowbitc
from lowbitc import ops
from lowbitc.codebook_fit import RowCodebooks, kmeans_1d
from lowbitc.errors import UserArgumentError
from lowbitc.mixture import group_errors
from lowbitc.quant import quantize as rtn

MIX = ["u4", "nf4", "f4e2m1", "i4"]


def _weight(n=24, k=200, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, k)) * 0.05
    w[: n // 2] = rng.laplace(size=(n // 2, k)) * 0.05 + 0.02  # groups of different shapes
    return w.astype(np.float32)


def test_mixture_picks_each_groups_argmin_error():
    w = _weight()
    q = lowbitc.quantize(w, MIX, 64, zero_point=True)
    errs = np.stack([group_errors(w, rtn(w, f, 64, zero_point=f == "u4").dequantize(), 64)
                     for f in MIX])
    np.testing.assert_array_equal(q.index, errs.argmin(axis=0))
    assert len(np.unique(q.index)) > 1  # the choice varies on these groups
    np.testing.assert_allclose(group_errors(w, q.dequantize(), 64), errs.min(axis=0),
                               rtol=1e-6)
    x = np.random.default_rng(2).standard_normal((2, 200)).astype(np.float32)
    np.testing.assert_allclose(ops.matmul(x, q), x @ q.dequantize().T, rtol=1e-5, atol=1e-6)


def test_mixture_with_outliers_is_dense_plus_sparse():
    w = _weight()
    q = lowbitc.quantize(w, MIX[:2], 32, outliers=0.01)
    dense = lowbitc.quantize(np.where(q.sparse.to_dense() != 0, 0, w), MIX[:2], 32)
    assert np.array_equal(q.dequantize(), dense.dequantize() + q.sparse.to_dense())


def test_mixture_of_different_widths_is_rejected():
    with pytest.raises(UserArgumentError, match="dtype.*one width"):
        lowbitc.quantize(_weight(), ["u4", "u3"], 64)
    with pytest.raises(UserArgumentError, match="dtype"):
        lowbitc.quantize(_weight(), ["u4"] * 5, 64)


@pytest.mark.parametrize("weighted", [False, True])
def test_kmeans_reaches_a_fixed_point(weighted):
    rng = np.random.default_rng(3)
    x = rng.standard_normal(5000)
    wt = rng.uniform(0.1, 5, 5000) if weighted else np.ones(5000)
    c = kmeans_1d(x, 8, wt if weighted else None)
    assert (np.diff(c) > 0).all()
    near = np.abs(x[:, None] - c[None]).argmin(axis=1)  # every value to its nearest centroid
    for i in range(8):  # ... and every centroid the weighted mean of its values
        sel = near == i
        assert np.isclose(c[i], np.average(x[sel], weights=wt[sel]), rtol=1e-9, atol=1e-12)


def test_fitted_code_books_beat_a_uniform_grid():
    w = _weight()
    book = lowbitc.codebook.fit(w, 3, group_size=64)
    assert book.kind == "codebook" and book.bits == 3
    err = lambda f: np.square(lowbitc.quantize(w, f, 64).dequantize() - w).sum()  # noqa: E731
    assert err(book) < err("i3")
    rows = lowbitc.codebook.fit(w, 3, per="row")
    assert isinstance(rows, RowCodebooks) and rows.tables.shape == (24, 8)
    q = lowbitc.quantize(w, rows, 64)
    # each weight decodes to its row's nearest table entry
    near = np.abs(w[:, :, None] - rows.tables[:, None, :]).min(axis=2)
    np.testing.assert_allclose(np.abs(q.dequantize() - w), near, atol=1e-7)
    assert lowbitc.codebook([0.0, 1.0]).table == (0.0, 1.0)  # still a code-book maker


def test_code_book_bad_input_names_the_argument():
    w = _weight()
    with pytest.raises(UserArgumentError, match="bits"):
        lowbitc.codebook.fit(w, 9)
    with pytest.raises(UserArgumentError, match="weights"):
        lowbitc.codebook.fit(w, 3, weights=np.ones(7))
    rows = lowbitc.codebook.fit(w, 3, per="row")
    with pytest.raises(UserArgumentError, match="tables"):  # a code book of the wrong size
        lowbitc.quantize(w, RowCodebooks(rows.tables[:, :4], 3), 64)
    with pytest.raises(UserArgumentError, match="tables"):  # one per row
        lowbitc.quantize(w[:5], rows, 64)


@pytest.mark.parametrize("fmt,zp", [("u4", True), ("i3", False), ("nf4", False)])
def test_hqq_never_loses_to_round_to_nearest(fmt, zp):
    w = _weight()
    a = lowbitc.quantize(w, fmt, 64, zero_point=zp)
    b = lowbitc.quantize(w, fmt, 64, zero_point=zp, method="hqq")
    ea = group_errors(w, a.dequantize(), 64)
    eb = group_errors(w, b.dequantize(), 64)
    assert (eb <= ea * (1 + 1e-5) + 1e-12).all()
    # codes are the rounding of w under the refined scales (an ordinary QTensor)
    y = w[:, :192] / np.repeat(b.scales[:, :3], 64, axis=1)
    if zp:
        y = y + np.repeat(b.zeros[:, :3], 64, axis=1)
    np.testing.assert_array_equal(b.codes[:, :192], b.dtype.encode(y))


def _weighted_error(w, q, d):
    return float((d * np.square(w.astype(np.float64) - q)).sum())


def test_weighted_hqq_lowers_the_weighted_error():
    """Column weights 10^3 on a few columns (as activation outliers give): HQQ weighted by
    them fits those columns; unweighted quantizers do not know of them."""
    w = _weight(k=256)
    d = np.ones(256)
    d[np.random.default_rng(1).choice(256, 12, replace=False)] = 1e3
    plain = lowbitc.quantize(w, "u3", 64, zero_point=True).dequantize()
    unweighted = lowbitc.quantize(w, "u3", 64, zero_point=True, method="hqq").dequantize()
    weighted = lowbitc.quantize(w, "u3", 64, zero_point=True, method="hqq",
                                column_weights=d).dequantize()
    e = [_weighted_error(w, q, d) for q in (plain, unweighted, weighted)]
    assert e[2] < 0.8 * min(e[:2]), e
    # the weights do not change what is stored: an ordinary QTensor of u3 codes
    q = lowbitc.quantize(w, "u3", 64, zero_point=True, method="hqq", column_weights=d)
    assert q.codes.max() <= 7 and q.scales.shape == (24, 4)


def test_hqq_outliers_by_weighted_error_beat_largest_weights(monkeypatch):
    """method="hqq" with outliers: the kept weights are those the dense grid fits worst
    (SpQR's choice), so the weighted error is below keeping the largest w^2 * d (with the
    same weighted HQQ fit, and with round-to-nearest); dense + sparse is still exactly the
    dequantized weight, with the budget's count."""
    w = _weight(k=256)
    d = np.random.default_rng(2).lognormal(0, 1.5, 256)
    kw = {"zero_point": True, "outliers": 0.02, "column_weights": d}
    a = lowbitc.quantize(w, "u3", 64, **kw)
    b = lowbitc.quantize(w, "u3", 64, method="hqq", **kw)
    monkeypatch.setattr(lowbitc.methods, "_reselect", lambda w, mask, *args: mask)
    c = lowbitc.quantize(w, "u3", 64, method="hqq", **kw)
    assert a.sparse.nnz == b.sparse.nnz == c.sparse.nnz == round(0.02 * w.size)
    eb = _weighted_error(w, b.dequantize(), d)
    assert eb < 0.9 * _weighted_error(w, c.dequantize(), d)
    assert eb < 0.8 * _weighted_error(w, a.dequantize(), d)
    dense = lowbitc.quant.QTensor(b.dtype, b.shape, 64, b.codes, b.scales, b.zeros)
    np.testing.assert_array_equal(b.dequantize(), dense.dequantize() + b.sparse.to_dense())
