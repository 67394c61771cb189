"""HQQ state dicts (HQQLinear): `W_q` packed codes, float `scale` and `zero` per group, `shape`,
`nbits`, `group_size`, `axis`, `packing`.

The codes, reshaped to [N*K / g, g] (axis 1) or [g, N*K / g] (axis 0), are packed by splitting
the rows into 8/bits slices that share a byte (the first slice in the highest bits; 3-bit:
ten slices in an int32 from bit 27 down). w = (q - zero) * scale. Axis 1 groups run along K
(an exact QTensor, group g); axis-0 groups run across output rows, so each weight gets its own
scale and zero (an exact QTensor with group 1: correct, but 8 bytes of scales per weight).
"""

from __future__ import annotations

import numpy as np

from lowbitc.dtypes import dtype as get_dtype
from lowbitc.errors import UserArgumentError
from lowbitc.interop.base import Imported
from lowbitc.interop.stfile import state_codec
from lowbitc.quant import QTensor

PARTS = ("W_q", "scale", "zero", "shape", "nbits", "group_size", "axis", "packing",
         "compute_dtype", "unpack_view_dtype", "view_as_float", "quant_scale", "quant_zero",
         "offload_meta", "encoded_state_dict", "stores_quant_config", "channel_wise",
         "optimize", "round_zero", "bias")
SLICES = {"8bit_u8": (1, 8), "4bit_u8": (2, 4), "2bit_u8": (4, 2), "1bit_u8": (8, 1),
          "3bit_32": (10, 3)}


def _text(a) -> str:
    return bytes(np.asarray(a, np.uint8).reshape(-1)).decode()


def unpack_rows(packed: np.ndarray, packing: str, rows: int) -> np.ndarray:
    """HQQ's packed [R / slices, C] -> uint8 codes [rows, C]."""
    if packing not in SLICES:
        raise UserArgumentError(f"packing: expected one of {sorted(SLICES)}, got {packing!r}")
    slices, bits = SLICES[packing]
    p = np.asarray(packed).view(np.uint32 if packing == "3bit_32" else np.uint8)
    top = 30 if packing == "3bit_32" else 8
    parts = [(p >> np.uint32(top - bits * (i + 1))) & ((1 << bits) - 1) for i in range(slices)]
    return np.concatenate(parts, axis=0).astype(np.uint8)[:rows]


def hqq_tensor(name: str, parts: dict) -> Imported:
    if any(bool(np.asarray(parts.get(p, 0))) for p in ("quant_scale", "quant_zero")):
        raise UserArgumentError(f"tensor {name!r}: HQQ with quantized scale/zero (quant_scale"
                                "/quant_zero) is not supported")
    n, k = (int(v) for v in np.asarray(parts["shape"]).ravel())
    bits, g, axis = (int(np.asarray(parts[p])) for p in ("nbits", "group_size", "axis"))
    packing = _text(parts["packing"])
    if SLICES.get(packing, (0, 0))[1] != bits:
        raise UserArgumentError(f"tensor {name!r}: HQQ packing {packing!r} with nbits {bits}; "
                                f"supported: {sorted(SLICES)}")
    if (n * k) % g:
        raise UserArgumentError(f"tensor {name!r}: {n}x{k} weights do not split into groups "
                                f"of {g}")
    scale = np.asarray(parts["scale"], np.float32).reshape(-1)
    zero = np.asarray(parts["zero"], np.float32).reshape(-1)
    fmt = get_dtype(f"u{bits}")
    if axis == 1:
        if k % g:
            raise UserArgumentError(f"tensor {name!r}: axis-1 groups of {g} straddle rows of "
                                    f"{k}")
        codes = unpack_rows(parts["W_q"], packing, n * k // g).reshape(n, k)
        w = QTensor(fmt, (n, k), g, codes, scale.reshape(n, k // g), zero.reshape(n, k // g))
    else:
        codes = unpack_rows(parts["W_q"], packing, g).reshape(n, k)
        cols = n * k // g  # group of flat element e is e % cols
        gi = np.arange(n * k) % cols
        w = QTensor(fmt, (n, k), 1, codes, scale[gi].reshape(n, k), zero[gi].reshape(n, k))
    return Imported(name, f"hqq:axis{axis}", w, dict(parts), g)


CODEC = state_codec("hqq", ".W_q", hqq_tensor, PARTS)
