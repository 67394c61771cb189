"""`lowbitc.quantize`: the group-wise search of lowbitc.quant plus the methods that buy
accuracy at low bits (docs/quantization.md): outliers kept in float (lowbitc.outliers),
a per-group choice of format (lowbitc.mixture), fitted per-row code books
(lowbitc.codebook_fit) and HQQ's optimisation of scales and zero points (lowbitc.hqq).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from lowbitc import gptq, hqq, mixture, quant
from lowbitc import outliers as out
from lowbitc import refit as lsq
from lowbitc.codebook_fit import RowCodebooks
from lowbitc.errors import UserArgumentError

METHODS = ("rtn", "hqq", "hqq-gptq")


def quantize(w, dtype, group_size: int, zero_point: bool = False, scale_dtype: str = "f32",
             outliers=None, method: str = "rtn", outlier_dtype: str = "f16",
             column_weights=None, hessian=None, damp: float = gptq.DAMP, refit: int = 0):
    """Quantize float weight `w[N, K]` group-wise along K (see lowbitc.quant).

    `dtype`: a format, a list of up to 4 same-width formats (per-group choice: a
    TableQTensor), or `RowCodebooks` from `lowbitc.codebook.fit(..., per="row")`.
    `outliers`: a fraction in [0, 0.1] of the largest weights, or "columns:C", kept in
    `outlier_dtype` (f16/f32) beside the dense part; `column_weights` [K] (e.g. mean x^2 of
    the inputs) ranks the columns. `method`: "rtn" (the MSE scale search), "hqq", or
    "hqq-gptq": the grid of "hqq" (weighted by `column_weights`, default diag(hessian)), then
    GPTQ's error feedback with act-order onto it (lowbitc.gptq; one format or per-row code
    books), which needs `hessian` [K, K] (mean x^T x of the layer's inputs); `damp` times
    the mean of its diagonal is added to the diagonal before it is inverted. `refit=R`
    (hqq-gptq only): R rounds of a least-squares refit of the grid (scales and zeros, or
    the row code books) and the outliers' values under the damped H with the codes fixed
    (lowbitc.refit), GPTQ rerunning onto each refitted grid but the last.
    """
    if method not in METHODS:
        raise UserArgumentError(f"method: expected one of {METHODS}, got {method!r}")
    w = quant._check_weight(w)
    check_refit(refit, method)
    h = None
    if method == "hqq-gptq":
        if hessian is None or isinstance(dtype, list | tuple):
            raise UserArgumentError("hessian: method='hqq-gptq' needs the layer's Hessian "
                                    "[K, K] and one format or RowCodebooks, got "
                                    f"hessian={type(hessian).__name__}, dtype={dtype!r}")
        h = gptq.check_hessian(hessian, w.shape[1])
        column_weights = np.diag(h) if column_weights is None else column_weights
        method = "hqq"
    mask = out.outlier_mask(w, outliers, column_weights)
    single = not isinstance(dtype, RowCodebooks | list | tuple)
    cw = None if column_weights is None else np.asarray(column_weights, np.float64).ravel()
    if method == "hqq" and mask is not None and single \
            and out.check_outliers(outliers)[0] == "fraction":
        mask = _reselect(w, mask, cw, dtype, group_size, zero_point, scale_dtype)
    dense_w = w if mask is None else out.split(w, mask)
    weights = _fit_weights(w.shape, cw, mask) if method == "hqq" else None
    if isinstance(dtype, RowCodebooks):
        qt = mixture.row_tables(dense_w, dtype.tables, dtype.bits)
    elif isinstance(dtype, list | tuple):
        members = mixture.check_members(dtype)
        parts = [_one(dense_w, f, group_size, zero_point and f.kind == "uint", scale_dtype,
                      method, weights) for f in members]
        qt = mixture.assemble(dense_w, members, parts)
    else:
        qt = _one(dense_w, dtype, group_size, zero_point, scale_dtype, method, weights)
    kept = w
    if h is not None:
        codes, kept = gptq.feedback(w, h, _column(qt), damp, mask=mask)
        qt = dataclasses.replace(qt, codes=codes)
        for r in range(refit):
            qt, kept = lsq.refit(qt, w, h, damp, mask, kept)
            if r + 1 < refit:
                codes, kept = gptq.feedback(w, h, _column(qt), damp, mask=mask)
                qt = dataclasses.replace(qt, codes=codes)
    if mask is not None:
        sparse = out.residual(kept, qt.dequantize(), mask, outlier_dtype)
        qt = dataclasses.replace(qt, sparse=sparse)
    return qt


def _column(qt) -> gptq.Column:
    """GPTQ's rounding onto `qt`'s grid (one format's groups or per-row tables)."""
    if isinstance(qt, mixture.TableQTensor):
        return gptq.table_column(qt.tables)
    return gptq.affine_column(qt.dtype, qt.scales, qt.zeros, qt.group_size)


def check_refit(refit, method: str) -> None:
    """UserArgumentError unless `refit` is a round count that `method` can run."""
    if isinstance(refit, bool) or not isinstance(refit, int | np.integer) or refit < 0:
        raise UserArgumentError(f"refit: expected an int >= 0 (rounds), got {refit!r}")
    if refit and method != "hqq-gptq":
        raise UserArgumentError(f"refit: needs method='hqq-gptq' (the layer's Hessian), got "
                                f"method={method!r}")


def _one(w, dtype, group_size, zero_point, scale_dtype, method, weights=None) -> quant.QTensor:
    qt = quant.quantize(w, dtype, group_size, zero_point, scale_dtype)
    return hqq_requantize(qt, w, weights) if method == "hqq" else qt


def _fit_weights(shape, cw: np.ndarray | None, mask: np.ndarray | None) -> np.ndarray | None:
    """HQQ's per-weight error weights [N, K]: the column weights (or 1), 0 at outliers."""
    if cw is None and mask is None:
        return None
    d = np.ones(shape) if cw is None else np.broadcast_to(cw, shape).copy()
    if mask is not None:
        d[mask] = 0.0
    return d


def _reselect(w, mask, cw, dtype, group_size, zero_point, scale_dtype) -> np.ndarray:
    """SpQR's choice of outliers for a budget of mask.sum() weights: fit the groups without a
    first choice (`mask`, by weighted magnitude), then keep the weights with the largest
    weighted squared error against that grid (ties: any)."""
    fitted = _one(out.split(w, mask), dtype, group_size, zero_point, scale_dtype, "hqq",
                  _fit_weights(w.shape, cw, mask))
    err = np.square(w.astype(np.float64) - requantized(fitted, w).dequantize())
    if cw is not None:
        err = err * cw
    count = int(mask.sum())
    flat = err.ravel()
    keep = np.zeros(flat.size, bool)
    keep[np.argpartition(flat, flat.size - count)[flat.size - count:]] = True
    return keep.reshape(w.shape)


def requantized(qt: quant.QTensor, w: np.ndarray) -> quant.QTensor:
    """`qt`'s scales and zeros applied to `w` (the codes rounding w gives under them)."""
    g, k = qt.group_size, qt.shape[1]
    y = w / np.repeat(qt.scales, g, axis=1)[:, :k]
    if qt.zeros is not None:
        y = y + np.repeat(qt.zeros, g, axis=1)[:, :k]
    return dataclasses.replace(qt, codes=qt.dtype.encode(y))


def groups(w: np.ndarray, g: int) -> np.ndarray:
    """w [N, K] as [N * G, g] groups, the last partial group padded with its own mean (so
    padding changes neither the search nor the fit much)."""
    n, k = w.shape
    pad = -k % g
    if pad:
        tail = w[:, k - (k % g):]
        w = np.concatenate([w, np.repeat(tail.mean(axis=1, keepdims=True), pad, axis=1)], 1)
    return w.reshape(-1, g)


def hqq_requantize(qt: quant.QTensor, w: np.ndarray, weights: np.ndarray | None = None
                   ) -> quant.QTensor:
    """`qt` with HQQ-refined scales (and zeros) and the codes they give (lowbitc.hqq);
    `weights` [N, K] weigh each weight's squared error."""
    n, k = qt.shape
    g = qt.group_size
    if k % g:  # the partial last group keeps the search's result
        full = (k // g) * g
        if full == 0:
            return qt
        head = quant.QTensor(qt.dtype, (n, full), g, qt.codes[:, :full],
                             np.ascontiguousarray(qt.scales[:, :-1]),
                             None if qt.zeros is None else
                             np.ascontiguousarray(qt.zeros[:, :-1]), qt.scale_dtype)
        head = hqq_requantize(head, w[:, :full], None if weights is None else weights[:, :full])
        scales = np.concatenate([head.scales, qt.scales[:, -1:]], axis=1)
        zeros = None if qt.zeros is None else np.concatenate([head.zeros, qt.zeros[:, -1:]], 1)
        codes = np.concatenate([head.codes, qt.codes[:, full:]], axis=1)
        return dataclasses.replace(qt, codes=codes, scales=scales, zeros=zeros)
    sfmt = quant.get_dtype(qt.scale_dtype)
    s, z = hqq.refine(qt.dtype, lambda s: quant._round_scale(s, sfmt), groups(w, g),
                      qt.scales.ravel(), None if qt.zeros is None else qt.zeros.ravel(),
                      weights=None if weights is None else groups(weights, g))
    scales = s.reshape(n, -1).astype(np.float32)
    y = w / np.repeat(scales, g, axis=1)
    zeros = None
    if z is not None:
        zeros = z.reshape(n, -1).astype(np.float32)
        y = y + np.repeat(zeros, g, axis=1)
    return dataclasses.replace(qt, codes=qt.dtype.encode(y), scales=scales, zeros=zeros)
