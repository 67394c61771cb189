"""`quantize_`: swap every nn.Linear of a model for a QuantLinear (or a TableLinear for
per-group format mixtures and per-row code books), with round-to-nearest, HQQ, GPTQ, AWQ or
GPTQ onto the HQQ grid; calibration statistics come from one run of the float model.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch import nn

from lowbitc import awq
from lowbitc.a8 import check_act
from lowbitc.codebook_fit import RowCodebooks
from lowbitc.dtypes import Format
from lowbitc.errors import UserArgumentError
from lowbitc.gptq import DAMP
from lowbitc.methods import check_refit, quantize
from lowbitc.outliers import outlier_mask
from lowbitc.torch.gptq import collect_hessians, gptq_quantize
from lowbitc.torch.linear import QuantLinear, _format, _set_child
from lowbitc.torch.moments import check_moments, input_moments
from lowbitc.torch.tables import TableLinear

Skip = Callable[[str, nn.Module], bool] | Iterable[str] | None


def _skipper(skip: Skip) -> Callable[[str, nn.Module], bool]:
    if skip is None:
        return lambda name, mod: False
    if callable(skip):
        return skip
    if isinstance(skip, str):
        skip = [skip]
    patterns = list(skip)
    return lambda name, mod: any(fnmatch.fnmatchcase(name, p) for p in patterns)


def quantize_(model: nn.Module, dtype, group_size: int = 128, skip: Skip = None,
              zero_point: bool | None = None, scale_dtype: str = "f32",
              calibrate: Callable[[nn.Module], object] | None = None, outliers=None,
              method: str = "rtn", outlier_dtype: str = "f16", act: str = "f32",
              damp: float = DAMP, refit: int = 0, moments: str | None = None) -> int:
    """Replace every nn.Linear in `model` (in place) by a QuantLinear; returns how many.

    `skip` is a callable (qualified name, module) -> bool, or fnmatch patterns of names to
    leave alone. Linear layers whose weight other modules read directly (the out_proj of
    nn.MultiheadAttention) are always left alone. With `calibrate` (a function that runs the
    float model on sample inputs), weights are quantized with GPTQ on the inputs' statistics
    instead of round-to-nearest; see lowbitc.torch.gptq. `dtype`, `outliers` and `method` are
    lowbitc.quantize's (a list of formats or per-row code books give TableLinear layers);
    `dtype` may also be a function (weight [N, K], column weights [K] or None) -> dtype, e.g.
    `lowbitc.codebook.fitter(3, per="row")`, called per layer. `act="i8"`: the layers quantize
    their activations to int8 (QuantLinear's `act`; TableLinear layers keep f32).
    `method="awq"` (needs `calibrate`, one format, no outliers): activation-aware input
    scaling before round-to-nearest, alpha searched per layer (lowbitc.awq); each layer keeps
    its input scale [in_features] (32 bits per input column) and divides its input by it.
    `method="hqq"` with `calibrate`: no GPTQ; HQQ's fit weighted by each input column's mean
    x^2 (the Hessian's diagonal), outliers chosen by that weighted error (lowbitc.methods).
    `method="hqq-gptq"` (needs `calibrate`): that grid, then GPTQ's feedback with act-order
    onto it (lowbitc.gptq; `damp`: its damping); with per-row code books, GPTQ onto each
    row's table. `refit` (hqq-gptq): rounds of a least-squares refit of that grid under the
    layer's Hessian (lowbitc.quantize's `refit`). `moments="analytic"` or "analytic:L"
    (method="hqq", no `calibrate`): HQQ's fit weighted by each input column's E[x^2]
    computed from the model's own parameters for sequences of L tokens (default 16), no data
    (lowbitc.torch.moments; post-LayerNorm encoders such as BERT; layers outside its blocks
    are fitted unweighted).
    """
    check_act(act)
    check_refit(refit, method)
    length = check_moments(moments, method, calibrate)
    if method == "hqq-gptq" and calibrate is None:
        raise UserArgumentError("calibrate: method='hqq-gptq' needs calibration data "
                                "(calibrate=f running the float model), got None")
    awq_scales = awq.check(calibrate, dtype, outliers) if method == "awq" else None
    drop = _skipper(skip)
    targets = [(name, m) for name, m in model.named_modules()
               if isinstance(m, nn.Linear)
               and not isinstance(m, nn.modules.linear.NonDynamicallyQuantizableLinear)
               and name and not drop(name, m)]
    hessians = (collect_hessians(model, [name for name, _ in targets], calibrate, awq_scales)
                if calibrate is not None else {})
    diags = input_moments(model, length) if length is not None else {}
    for name, m in targets:
        h = hessians.get(name)
        if awq_scales is not None:
            new = _awq_quantized(m, dtype, group_size, zero_point, scale_dtype, h,
                                 awq_scales[name], act)
        else:
            new = _quantized(m, dtype, group_size, zero_point, scale_dtype, h,
                             {"outliers": outliers, "method": method,
                              "outlier_dtype": outlier_dtype}, act, damp, refit,
                             diags.get(name))
        _set_child(model, name, new.to(m.weight.device))
    return len(targets)


def _quantized(m: nn.Linear, dtype, group_size, zero_point, scale_dtype, hessian,
               options: dict, act: str = "f32", damp: float = DAMP, refit: int = 0,
               diag: np.ndarray | None = None) -> nn.Module:
    """One layer's replacement: GPTQ when there is a Hessian and one format, else quantize;
    `diag`: column weights when there is no Hessian (data-free moments)."""
    w = m.weight.detach().to("cpu", torch.float32).numpy()
    diag = diag if hessian is None else torch.diagonal(hessian).numpy()
    if callable(dtype) and not isinstance(dtype, Format | str):
        dtype = dtype(w, diag)
    if options["method"] == "hqq-gptq":  # lowbitc.gptq's feedback onto weighted HQQ's grid
        options = {**options, "hessian": hessian, "damp": damp, "refit": refit}
    if isinstance(dtype, list | tuple | RowCodebooks):
        zp = True if zero_point is None else zero_point
        qw = quantize(w, dtype, group_size, zp, scale_dtype, column_weights=diag, **options)
        return TableLinear(qw, m.bias)
    fmt = _format(dtype)
    zp = fmt.kind == "uint" if zero_point is None else zero_point
    if hessian is None or options["method"] != "rtn":  # HQQ weighted by diag(H) (+ GPTQ)
        qw = quantize(w, fmt, group_size, zp, scale_dtype, column_weights=diag, **options)
    else:
        mask = outlier_mask(w, options["outliers"], diag)
        qw = gptq_quantize(m.weight, hessian, fmt, group_size, zp, scale_dtype, mask=mask,
                           outlier_dtype=options["outlier_dtype"])
    return QuantLinear.from_qtensor(qw, m.bias, act)


def _awq_quantized(m: nn.Linear, dtype, group_size, zero_point, scale_dtype, hessian,
                   abs_mean: np.ndarray, act: str) -> QuantLinear:
    """One layer with activation-aware input scales (lowbitc.awq)."""
    w = m.weight.detach().to("cpu", torch.float32).numpy()
    fmt = _format(dtype)
    zp = fmt.kind == "uint" if zero_point is None else zero_point
    qw, scale, _ = awq.scaled_quantize(w, abs_mean, hessian.numpy(), fmt, group_size, zp,
                                       scale_dtype)
    return QuantLinear.from_qtensor(qw, m.bias, act, input_scale=scale)
