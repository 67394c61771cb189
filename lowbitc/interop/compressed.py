"""compressed-tensors' `pack_quantized` layout (llm-compressor / vLLM checkpoints).

Per layer: `weight_packed` int32 [N, ceil(K * bits / 32)], codes along K as one dense LSB-first
bit stream per row (lowbitc's canonical packing) stored as q + 2^(bits-1); `weight_scale`
[N, G] (float16/bfloat16/float32); `weight_zero_point` (asymmetric) packed the same way along
N (int32 [ceil(N * bits / 32), G]); `weight_shape` [2]. w = (q - zero) * scale.
"""

from __future__ import annotations

import numpy as np

from lowbitc.dtypes import dtype as get_dtype
from lowbitc.errors import UserArgumentError
from lowbitc.interop.base import Imported
from lowbitc.interop.stfile import state_codec, words_u32
from lowbitc.packing import pack, unpack
from lowbitc.quant import QTensor

PARTS = ("weight_packed", "weight_scale", "weight_zero_point", "weight_shape", "weight_g_idx")


def _bits(name: str, k: int, words: int) -> int:
    fits = [b for b in range(1, 9) if -(-k * b // 32) == words]
    if len(fits) != 1:
        raise UserArgumentError(f"tensor {name!r}: {words} int32 words per row of {k} codes "
                                f"fit bit widths {fits}; expected exactly one of 1..8")
    return fits[0]


def group_size(name: str, k: int, groups: int) -> int:
    """The group of G groups over K columns (the state dict does not record it): the power
    of two that gives G groups (the last may be partial), else K / G when that divides."""
    for g in (1 << e for e in range(0, 17)):
        if -(-k // g) == groups:
            return g
    if groups and k % groups == 0:
        return k // groups
    raise UserArgumentError(f"tensor {name!r}: no group size splits {k} columns into "
                            f"{groups} groups")


def packed_tensor(name: str, parts: dict) -> Imported:
    missing = [p for p in PARTS[:2] + ("weight_shape",) if p not in parts]
    if missing:
        raise UserArgumentError(f"tensor {name!r}: pack_quantized layer without {missing}")
    if "weight_g_idx" in parts:
        raise UserArgumentError(f"tensor {name!r}: pack_quantized with weight_g_idx "
                                "(act-order) is not supported")
    n, k = (int(v) for v in np.asarray(parts["weight_shape"]).ravel())
    packed, scale = parts["weight_packed"], parts["weight_scale"]
    bits = _bits(name, k, packed.shape[1])
    groups = scale.shape[1]
    group = group_size(name, k, groups)
    codes = unpack(words_u32(packed), bits, k)
    offset = float(1 << (bits - 1))
    zp = parts.get("weight_zero_point")
    if zp is None:
        zeros = np.full((n, groups), offset, np.float32)
    else:  # signed zero points, packed along N like the codes (as q + 2^(bits-1))
        z = unpack(np.ascontiguousarray(words_u32(zp).T), bits, n).T
        zeros = np.ascontiguousarray(z, np.float32)  # (z_signed + offset)
    w = QTensor(get_dtype(f"u{bits}"), (n, k), group, codes, scale.astype(np.float32), zeros)
    return Imported(name, "compressed-tensors", w, dict(parts), group)


def packed_parts(qw: QTensor, scale_dtype=np.float16) -> dict:
    """weight_packed / weight_scale / weight_zero_point / weight_shape of a u{b} QTensor with
    integer zero points (symmetric when every zero is 2^(b-1))."""
    bits, (n, k) = qw.dtype.bits, qw.shape
    z = qw.zeros
    if qw.dtype.name != f"u{bits}" or z is None or (z != np.rint(z)).any():
        raise UserArgumentError("qw: pack_quantized stores u{b} codes with integer zeros")
    parts = {"weight_packed": pack(qw.codes, bits).view(np.int32),
             "weight_scale": qw.scales.astype(scale_dtype),
             "weight_shape": np.array([n, k], np.int64)}
    if (z != 1 << (bits - 1)).any():
        zt = np.ascontiguousarray(z.T).astype(np.uint8)
        parts["weight_zero_point"] = np.ascontiguousarray(pack(zt, bits).T).view(np.int32)
    return parts


CODEC = state_codec("compressed-tensors", ".weight_packed", packed_tensor, PARTS)
