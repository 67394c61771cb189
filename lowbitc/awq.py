"""Activation-aware input scaling (AWQ, Lin et al., 2023) before round-to-nearest: input
column k of a layer's weight is multiplied by s_k = mean|x_k|^alpha (normalised by
sqrt(max s * min s)) before quantization, and the layer divides its input by s at run time:
y = (x / s) @ Q(W * s)^T. Columns that meet large activations get finer steps, at the cost of
the columns that meet small ones.

`alpha` is searched per layer over ALPHAS by the layer's output error on the calibration
inputs, tr(D H D^T) with D = W - Q(W s) / s and H = mean x^T x (as AWQ searches its grid);
alpha = 0 (no scaling) is in the grid, so the search never does worse than plain RTN on
those inputs.
"""

from __future__ import annotations

import numpy as np

from lowbitc import quant
from lowbitc.codebook_fit import RowCodebooks
from lowbitc.dtypes import Format
from lowbitc.errors import UserArgumentError

ALPHAS = (0.0, 0.25, 0.5, 0.75)


def check(calibrate, dtype, outliers) -> dict:
    """quantize_'s arguments for method="awq" checked; an empty dict for the mean |x| per
    layer that the calibration run fills."""
    if calibrate is None:
        raise UserArgumentError("calibrate: method='awq' needs calibration inputs (a "
                                "function that runs the model), got None")
    if outliers is not None or isinstance(dtype, list | tuple | RowCodebooks) \
            or callable(dtype) and not isinstance(dtype, Format | str):
        raise UserArgumentError(f"method: 'awq' takes one format and no outliers, got "
                                f"dtype={dtype!r}, outliers={outliers!r}")
    return {}


def column_scales(abs_mean: np.ndarray, alpha: float) -> np.ndarray:
    """s = mean|x|^alpha over sqrt(max * min) (float32 [K], > 0)."""
    s = np.maximum(np.asarray(abs_mean, np.float64), 1e-5) ** alpha
    return (s / np.sqrt(s.max() * s.min())).astype(np.float32)


def output_error(w: np.ndarray, w_hat: np.ndarray, hessian: np.ndarray) -> float:
    """mean over inputs x of |x (W - W_hat)^T|^2 = tr(D H D^T), H = mean x^T x."""
    d = (w.astype(np.float64) - w_hat.astype(np.float64))
    return float(np.einsum("nk,nk->", d @ hessian, d))


def scaled_quantize(w: np.ndarray, abs_mean: np.ndarray, hessian: np.ndarray, dtype,
                    group_size: int, zero_point: bool, scale_dtype: str = "f32",
                    alphas=ALPHAS) -> tuple[quant.QTensor, np.ndarray, float]:
    """(Q(W * s), s, alpha) with the alpha of `alphas` whose layer output error on the
    calibration statistics is least (ties: the first)."""
    w = np.asarray(w, np.float32)
    k = w.shape[1]
    if np.shape(abs_mean) != (k,) or np.shape(hessian) != (k, k):
        raise UserArgumentError(f"abs_mean, hessian: expected [{k}] and [{k}, {k}], got "
                                f"{np.shape(abs_mean)} and {np.shape(hessian)}")
    h = np.asarray(hessian, np.float64)
    best = None
    for alpha in alphas:
        s = column_scales(abs_mean, alpha)
        qw = quant.quantize(w * s, dtype, group_size, zero_point, scale_dtype)
        err = output_error(w, qw.dequantize() / s, h)
        if best is None or err < best[0]:
            best = (err, qw, s, float(alpha))
    return best[1], best[2], best[3]
