"""lowbitc's own quantizers for the ggml block formats `gguf` can only read (the K-quants,
IQ4_NL), and the entry point that writes any supported type's blocks.

Each sub-block's scale (and offset) comes from `lowbitc.quantize`'s error-minimising search;
the sub-block scales are then put on the format's grid (a float16 super-block scale times a
4-, 6- or 8-bit integer) and the codes re-chosen for the stored scales, so the bytes decode
(by gguf or by lowbitc) to exactly the weights the codes were chosen for.
"""

from __future__ import annotations

import numpy as np

from lowbitc.errors import UserArgumentError
from lowbitc.interop.ggml import BLOCK_TYPES, IQ4NL, IQ4NL_VALUES, encode_blocks
from lowbitc.quant import quantize

# K-quants with offsets: (code format, max code, sub-block scale/min bits)
_AFFINE = {"Q2_K": ("u2", 3, 4), "Q4_K": ("u4", 15, 6), "Q5_K": ("u5", 31, 6)}
# symmetric K-quants: (code format, lowest code, highest code, scale levels)
_SYMMETRIC = {"Q3_K": ("i3", -4, 3, 31), "Q6_K": ("i6", -32, 31, 127)}
# what llama.cpp writes instead when a row length is not a multiple of a type's block
# (llama-quant.cpp, llama_tensor_get_type's fallback for ne[0] % 256 != 0)
FALLBACK = {"Q2_K": "IQ4_NL", "Q3_K": "IQ4_NL", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}
GGUF_QUANTIZES = ("F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "MXFP4")
LOWBITC_QUANTIZES = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL")


def _f16(v: np.ndarray) -> np.ndarray:
    """v rounded to float16, read back as float32 (the stored value)."""
    return np.asarray(v, np.float32).astype(np.float16).astype(np.float32)


def _grid(values: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """Per block (rows): a float16 step d and integers in 0..levels with d * int ~ values."""
    d = _f16(values.max(axis=1, keepdims=True) / levels)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(d > 0, np.rint(values / d), 0)
    return d, np.clip(q, 0, levels).astype(np.uint8)


def _divide(w: np.ndarray, s: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(s != 0, w / s, 0.0)


def _quantize_affine(name: str, w: np.ndarray) -> np.ndarray:
    fmt, top, bits = _AFFINE[name]
    t = BLOCK_TYPES[name]
    g = t.group
    qt = quantize(w, fmt, g, zero_point=True)
    s = qt.scales.reshape(-1, 256 // g)
    o = np.maximum(qt.zeros * qt.scales, 0).reshape(-1, 256 // g)  # w ~ q * s - o, o >= 0
    d, sc = _grid(s, (1 << bits) - 1)
    dmin, mn = _grid(o, (1 << bits) - 1)
    s_eff = (d * sc).repeat(g, axis=1)
    o_eff = (dmin * mn).repeat(g, axis=1)
    x = w.reshape(-1, 256).astype(np.float32)
    codes = np.clip(np.rint(_divide(x + o_eff, s_eff)), 0, top).astype(np.uint8)
    return encode_blocks(t, codes, d, sc, dmin, mn)


def _quantize_symmetric(name: str, w: np.ndarray) -> np.ndarray:
    fmt, lo, hi, levels = _SYMMETRIC[name]
    t = BLOCK_TYPES[name]
    g = t.group
    s = quantize(w, fmt, g).scales.reshape(-1, 256 // g)
    d, sc = _grid(s, levels)
    x = w.reshape(-1, 256).astype(np.float32)
    q = np.clip(np.rint(_divide(x, (d * sc).repeat(g, axis=1))), lo, hi).astype(np.int8)
    codes = q.view(np.uint8) & np.uint8((1 << int(fmt[1:])) - 1)
    stored = sc + np.uint8(32) if name == "Q3_K" else sc  # Q3_K keeps scale + 32
    return encode_blocks(t, codes, d, stored)


def _quantize_iq4nl(w: np.ndarray) -> np.ndarray:
    d = _f16(quantize(w, IQ4NL, 32).scales.reshape(-1, 1))
    x = w.reshape(-1, 32).astype(np.float32)
    table = np.asarray(IQ4NL_VALUES, np.float32)
    err = np.abs(x[:, :, None] - d[:, :, None] * table)  # nearest stored value
    return encode_blocks(BLOCK_TYPES["IQ4_NL"], err.argmin(axis=2).astype(np.uint8), d)


def type_for(type_name: str, row_length: int) -> str:
    """`type_name`, or llama.cpp's fallback type when rows do not split into its blocks."""
    t = BLOCK_TYPES.get(type_name)
    if t is not None and row_length % t.block:
        return FALLBACK.get(type_name, type_name)
    return type_name


def quantize_blocks(w, type_name: str) -> np.ndarray:
    """float weight [N, K] -> uint8 [N, K / block * nbytes] blocks of `type_name` (gguf's own
    quantizer for the types it has, lowbitc's for the K-quants and IQ4_NL)."""
    import gguf.quants  # the test/interop extra; imported here so lowbitc works without it

    w = np.asarray(w, np.float32)
    if w.ndim != 2 or not np.isfinite(w).all():
        raise UserArgumentError(f"w: expected a finite 2-D float array, got shape {w.shape}")
    if type_name in GGUF_QUANTIZES:
        return gguf.quants.quantize(w, gguf.GGMLQuantizationType[type_name])
    if type_name not in LOWBITC_QUANTIZES:
        raise UserArgumentError(f"type: expected one of {GGUF_QUANTIZES + LOWBITC_QUANTIZES}, "
                                f"got {type_name!r}")
    t = BLOCK_TYPES[type_name]
    if w.shape[1] % t.block:
        raise UserArgumentError(f"w: {type_name} needs rows of a multiple of {t.block} values, "
                                f"got shape {w.shape}")
    n = w.shape[0]
    flat = w.reshape(-1, t.block)
    if type_name == "IQ4_NL":
        blocks = _quantize_iq4nl(flat)
    elif type_name in _AFFINE:
        blocks = _quantize_affine(type_name, flat)
    else:
        blocks = _quantize_symmetric(type_name, flat)
    return blocks.reshape(n, -1)
