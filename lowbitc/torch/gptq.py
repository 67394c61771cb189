"""GPTQ (Frantar et al., 2022) for any lowbitc format: quantize a weight column by column and
push each column's rounding error onto the columns not yet quantized, weighted by the inverse
Hessian of the layer's inputs (H = X^T X over calibration data). Each group's scale (and zero
point) comes from `lowbitc.quantize` on the error-corrected group when the group starts, so
the result is an ordinary QTensor that every kernel runs unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch import nn

from lowbitc.dtypes import Format
from lowbitc.errors import UserArgumentError
from lowbitc.gptq import inverse_factor
from lowbitc.outliers import residual
from lowbitc.quant import QTensor, quantize


def collect_hessians(model: nn.Module, names: Iterable[str],
                     calibrate: Callable[[nn.Module], object],
                     abs_means: dict | None = None) -> dict[str, torch.Tensor]:
    """Run `calibrate(model)` with hooks on the named nn.Linear layers; returns, per name, the
    mean of x^T x over every input row seen (float64 [K, K]). A dict `abs_means` also gets,
    per name, the mean |x| of each input column (float64 numpy [K]; lowbitc.awq)."""
    sums: dict[str, list] = {}
    absolute: dict[str, torch.Tensor] = {}
    handles = []

    def hook(name):
        def record(module, inputs, output):
            x = inputs[0].detach().reshape(-1, module.in_features).to(torch.float64)
            h, n = sums.get(name, (None, 0))
            xtx = x.T @ x
            sums[name] = (xtx if h is None else h + xtx, n + x.shape[0])
            if abs_means is not None:
                absolute[name] = absolute.get(name, 0) + x.abs().sum(0)
        return record

    try:
        for name in names:
            handles.append(model.get_submodule(name).register_forward_hook(hook(name)))
        with torch.no_grad():
            calibrate(model)
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in names if n not in sums]
    if missing:
        raise UserArgumentError(f"calibration: the calibration run never reached {missing}")
    if abs_means is not None:
        abs_means.update({name: (absolute[name] / max(n, 1)).numpy()
                          for name, (_, n) in sums.items()})
    return {name: h / max(n, 1) for name, (h, n) in sums.items()}


def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, fmt: Format, group_size: int,
                  zero_point: bool = False, scale_dtype: str = "f32", damp: float = 0.01,
                  block: int = 128, mask: np.ndarray | None = None,
                  outlier_dtype: str = "f16") -> QTensor:
    """Quantize `weight` [N, K] with GPTQ given its inputs' Hessian [K, K]. Weights where
    `mask` [N, K] is True are outliers (lowbitc.outliers): kept in float as they stand when
    their column comes (after the updates so far), so they carry no error forward; the
    group scales are chosen with them zeroed."""
    w = weight.detach().to("cpu", torch.float32).numpy().copy()
    n, k = w.shape
    if tuple(hessian.shape) != (k, k):
        raise UserArgumentError(f"hessian: expected shape {(k, k)}, got {tuple(hessian.shape)}")
    h = hessian.detach().to("cpu", torch.float64).numpy()
    u = inverse_factor(h, damp, np.arange(h.shape[0])).astype(np.float32)
    w[:, np.diag(h) == 0] = 0
    g = group_size
    codes = np.zeros((n, k), np.uint8)
    scales = np.zeros((n, -(-k // g)), np.float32)
    zeros = np.zeros_like(scales) if zero_point else None
    s = z = None
    kept = np.zeros((n, k), np.float32)  # the outliers' float values, as GPTQ left them
    for b0 in range(0, k, block):
        b1 = min(b0 + block, k)
        wb = w[:, b0:b1].copy()
        err = np.zeros_like(wb)
        for i in range(b1 - b0):
            col = b0 + i
            if col % g == 0:  # a new group: its scale from the error-corrected weights
                width = min(g, k - col)
                piece = np.concatenate([wb[:, i:], w[:, b1:]], axis=1)[:, :width]
                if mask is not None:
                    piece = np.where(mask[:, col:col + width], np.float32(0), piece)
                qg = quantize(piece, fmt, g, zero_point=zero_point, scale_dtype=scale_dtype)
                s, z = qg.scales[:, 0], (qg.zeros[:, 0] if zero_point else None)
                scales[:, col // g] = s
                if zero_point:
                    zeros[:, col // g] = z
            y = wb[:, i] / s if z is None else wb[:, i] / s + z
            c = fmt.encode(y)
            codes[:, col] = c
            v = fmt.decode(c)
            q = v * s if z is None else (v - z) * s
            if mask is not None and mask[:, col].any():
                hit = mask[:, col]
                codes[hit, col] = fmt.encode(np.zeros(int(hit.sum()), np.float32)
                                             if z is None else z[hit])
                kept[hit, col] = wb[hit, i]
                q = np.where(hit, wb[:, i], q)
            e = (wb[:, i] - q) / u[col, col]
            wb[:, i:] -= np.outer(e, u[col, col:b1])
            err[:, i] = e
        w[:, b1:] -= err @ u[b0:b1, b1:]
    qt = QTensor(fmt, (n, k), g, codes, scales, zeros, scale_dtype)
    if mask is None:
        return qt
    return QTensor(fmt, (n, k), g, codes, scales, zeros, scale_dtype,
                   residual(kept, qt.dequantize(), mask, outlier_dtype))
