"""AWQ checkpoints (AutoAWQ's GEMM layout): 4-bit `qweight` int32 [K, N / 8], `qzeros` int32
[G, N / 8], `scales` float16 [G, N]; w[n, k] = (q - z) * s.

Each int32 holds 8 output columns, nibble i holding column 8c + ORDER[i] (AutoAWQ packs
columns interleaved for its dequantization kernel)."""

from __future__ import annotations

import numpy as np

from lowbitc.dtypes import dtype as get_dtype
from lowbitc.errors import UserArgumentError
from lowbitc.interop.base import Codec, Imported, register
from lowbitc.interop.stfile import (
    is_safetensors,
    read_state,
    shapes_of,
    words_u32,
    write_state,
)
from lowbitc.quant import QTensor

ORDER = np.array([0, 2, 4, 6, 1, 3, 5, 7])  # nibble i holds column ORDER[i] of its 8
PARTS = ("qweight", "qzeros", "scales")


def unpack_awq(words: np.ndarray) -> np.ndarray:
    """int32 [R, C] -> uint8 [R, 8 C] in column order."""
    w = words_u32(words)
    nib = ((w[:, :, None] >> (4 * np.arange(8, dtype=np.uint32))) & 15).astype(np.uint8)
    out = np.empty_like(nib)
    out[:, :, ORDER] = nib
    return out.reshape(w.shape[0], -1)


def pack_awq(codes: np.ndarray) -> np.ndarray:
    """uint8 [R, 8 C] in column order -> int32 [R, C]."""
    nib = codes.reshape(codes.shape[0], -1, 8)[:, :, ORDER].astype(np.uint32)
    return (nib << (4 * np.arange(8, dtype=np.uint32))).sum(axis=2, dtype=np.uint32) \
        .view(np.int32)


def awq_tensor(name: str, parts: dict) -> Imported:
    missing = [p for p in PARTS if p not in parts]
    if missing:
        raise UserArgumentError(f"tensor {name!r}: AWQ layer without {missing}")
    qweight, qzeros, scales = parts["qweight"], parts["qzeros"], parts["scales"]
    groups, n = scales.shape
    k = qweight.shape[0]
    if qweight.shape[1] * 8 != n or qzeros.shape != (groups, n // 8) or k % groups:
        raise UserArgumentError(f"tensor {name!r}: AWQ shapes qweight {qweight.shape}, qzeros "
                                f"{qzeros.shape}, scales {scales.shape} do not fit 4-bit GEMM "
                                "packing (the only AWQ layout lowbitc reads)")
    codes = np.ascontiguousarray(unpack_awq(qweight).T)
    zeros = np.ascontiguousarray(unpack_awq(qzeros).T, np.float32)
    w = QTensor(get_dtype("u4"), (n, k), k // groups, codes,
                np.ascontiguousarray(scales.T, np.float32), zeros)
    return Imported(name, "awq", w, dict(parts), k // groups)


def awq_parts(qw: QTensor) -> dict:
    """qweight, qzeros, scales of a u4 QTensor with integer zeros and float16 scales."""
    z = qw.zeros
    if qw.dtype.name != "u4" or z is None or (z != np.rint(z)).any() or qw.shape[0] % 8:
        raise UserArgumentError("qw: AWQ stores u4 codes with integer zero points and N a "
                                "multiple of 8")
    return {"qweight": pack_awq(np.ascontiguousarray(qw.codes.T)),
            "qzeros": pack_awq(np.ascontiguousarray(z.T).astype(np.uint8)),
            "scales": np.ascontiguousarray(qw.scales.T, np.float16)}


def sniff(source) -> bool:
    """AWQ's qweight is [K, N / 8] beside scales [G, N] (GPTQ's is [K * bits / 32, N])."""
    if not is_safetensors(source):
        return False
    shapes = shapes_of(source)
    for key, shape in shapes.items():
        if key.endswith(".qweight"):
            scales = shapes.get(key[: -len("qweight")] + "scales")
            return len(shape) == 2 and scales is not None and shape[1] * 8 == scales[-1]
    return False


def read(source) -> dict[str, Imported]:
    return read_state(source, awq_tensor, ".qweight", PARTS)


CODEC = register(Codec("awq", sniff, read, write_state))
