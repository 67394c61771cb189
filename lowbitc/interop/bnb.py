"""bitsandbytes 4-bit state dicts (Linear4bit / Params4bit): NF4 and FP4.

Per weight: the packed codes (uint8, two per byte, the first in the high nibble, over the
row-major flattened [N, K]), `absmax` per block of `blocksize` values (float32, or with double
quantization uint8 codes into `nested_quant_map` times `nested_absmax` per 256 blocks plus
`nested_offset`), `quant_map` (the 16 values) and the JSON `quant_state.bitsandbytes__<type>`.
w = quant_map[q] * absmax[block]: a code-book QTensor with group = blocksize (K must be a
multiple of it, so blocks do not straddle rows).
"""

from __future__ import annotations

import json

import numpy as np

from lowbitc.dtypes import codebook
from lowbitc.dtypes import dtype as get_dtype
from lowbitc.errors import UserArgumentError
from lowbitc.interop.base import Imported
from lowbitc.interop.stfile import state_codec
from lowbitc.quant import QTensor

STATE = "quant_state.bitsandbytes__"
PARTS = ("", "absmax", "quant_map", "nested_absmax", "nested_quant_map", STATE + "nf4",
         STATE + "fp4")


def _state(name: str, parts: dict) -> dict:
    for qt in ("nf4", "fp4"):
        if STATE + qt in parts:
            return json.loads(bytes(np.asarray(parts[STATE + qt], np.uint8)).decode())
    raise UserArgumentError(f"tensor {name!r}: no {STATE}nf4/fp4 entry")


def absmax_values(parts: dict, state: dict) -> np.ndarray:
    """float32 absmax per block, undoing double quantization as bitsandbytes does (in f32)."""
    a = np.asarray(parts["absmax"])
    if a.dtype == np.float32:
        return a
    nested = np.asarray(parts["nested_absmax"], np.float32)
    code = np.asarray(parts["nested_quant_map"], np.float32)
    blocks = np.repeat(nested, state.get("nested_blocksize", 256))[: a.size]
    return code[a.astype(np.int64)] * blocks + np.float32(state["nested_offset"])


def code_format(quant_map: np.ndarray):
    """(lowbitc format, code -> lowbitc code) for bitsandbytes' 16 values: nf4 itself when it
    matches, else a code book of the distinct values (FP4's -0 and +0 stay two codes)."""
    nf4 = get_dtype("nf4")
    table = np.asarray(quant_map, np.float32)
    if np.array_equal(nf4.decode(np.arange(16, dtype=np.uint8)), table):
        return nf4, np.arange(16, dtype=np.uint8)
    values = np.unique(table.view(np.uint32)).view(np.float32)  # distinct bit patterns
    values = values[np.lexsort((~np.signbit(values), values))]  # ascending, -0 before +0
    index = {int(b): i for i, b in enumerate(values.view(np.uint32))}
    return codebook(values), np.array([index[int(b)] for b in table.view(np.uint32)], np.uint8)


def bnb_tensor(name: str, parts: dict) -> Imported:
    state = _state(name, parts)
    n, k = (int(v) for v in state["shape"])
    bs = int(state["blocksize"])
    if k % bs:
        raise UserArgumentError(f"tensor {name!r}: blocks of {bs} straddle rows of {k} "
                                "values; lowbitc reads bitsandbytes weights whose row length "
                                "is a multiple of the block size")
    packed = np.asarray(parts[""], np.uint8).reshape(-1)
    codes = np.stack([packed >> 4, packed & 15], axis=1).reshape(-1)[: n * k]
    fmt, remap = code_format(parts["quant_map"])
    scales = absmax_values(parts, state).reshape(n, k // bs)
    w = QTensor(fmt, (n, k), bs, remap[codes].reshape(n, k), np.ascontiguousarray(scales))
    return Imported(name, f"bnb:{state['quant_type']}", w, dict(parts), bs)


CODEC = state_codec("bitsandbytes", STATE, bnb_tensor, PARTS, suffix=".absmax")
