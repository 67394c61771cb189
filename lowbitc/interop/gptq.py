"""GPTQ checkpoints (AutoGPTQ / GPTQModel safetensors): `qweight`, `qzeros`, `scales`, `g_idx`.

Layout: `qweight` int32 [K * bits / 32, N] holds each output column's codes along K as one
LSB-first bit stream (3-bit codes straddle words; this is lowbitc's canonical packing,
transposed); `qzeros` int32 [G, N * bits / 32] the zero points the same way along N; `scales`
float16 [G, N]; `g_idx` int32 [K] the group of each input column (act-order when it is not
k // group). w[n, k] = (q - z) * s with z = stored + 1 in the v1 format (AutoGPTQ's offset)
and z = stored in v2 (GPTQModel's `gptq_v2`). Act-order becomes an OffsetQTensor column order.
"""

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
from lowbitc.offset import OffsetQTensor
from lowbitc.packing import pack, unpack
from lowbitc.quant import QTensor, quantize

GPTQ_BITS = (2, 3, 4, 8)
PARTS = ("qweight", "qzeros", "scales", "g_idx")


def bits_of(name: str, total_bits: int, count: int, allowed) -> int:
    bits = total_bits // count if count and total_bits % count == 0 else 0
    if bits not in allowed:
        raise UserArgumentError(f"tensor {name!r}: packed width works out to "
                                f"{total_bits}/{count} bits; supported: {allowed}")
    return bits


def act_order(name: str, g_idx: np.ndarray, group: int) -> np.ndarray | None:
    """The stored column order for a g_idx (None when it is the plain k // group)."""
    k = g_idx.shape[0]
    if np.array_equal(g_idx, np.arange(k) // group):
        return None
    perm = np.argsort(g_idx, kind="stable").astype(np.int64)
    if not np.array_equal(g_idx[perm], np.arange(k) // group):
        raise UserArgumentError(f"tensor {name!r}: g_idx does not give every group "
                                f"{group} columns; lowbitc needs equal groups")
    return perm


def gptq_tensor(name: str, parts: dict, version: int = 1) -> Imported:
    missing = [p for p in PARTS[:3] if p not in parts]
    if missing:
        raise UserArgumentError(f"tensor {name!r}: GPTQ layer without {missing}")
    qweight, qzeros, scales = parts["qweight"], parts["qzeros"], parts["scales"]
    groups, n = scales.shape
    bits = bits_of(name + ".qzeros", qzeros.shape[1] * 32, n, GPTQ_BITS)
    k = qweight.shape[0] * 32 // bits
    group = k // groups if groups and k % groups == 0 else 0
    if not group:
        raise UserArgumentError(f"tensor {name!r}: {k} input columns do not split into "
                                f"{groups} groups")
    codes = unpack(np.ascontiguousarray(words_u32(qweight).T), bits, k)
    zeros = unpack(words_u32(qzeros), bits, n).T.astype(np.float32) + (version == 1)
    s = np.ascontiguousarray(scales.T, np.float32)
    g_idx = parts.get("g_idx")
    perm = None if g_idx is None else act_order(name, g_idx.astype(np.int64), group)
    fmt = get_dtype(f"u{bits}")
    zeros = np.ascontiguousarray(zeros)
    if perm is None:
        w = QTensor(fmt, (n, k), group, codes, s, zeros)
    else:
        w = OffsetQTensor(fmt, (n, k), group, np.ascontiguousarray(codes[:, perm]), s, zeros,
                          perm=perm)
    fmt_name = "gptq" if version == 1 else "gptq_v2"
    return Imported(name, fmt_name, w, dict(parts), group)


def sniff(source) -> bool:
    if not is_safetensors(source):
        return False
    shapes = shapes_of(source)
    for key, shape in shapes.items():  # GPTQ's qweight is [K * bits / 32, N], scales [G, N]
        if key.endswith(".qweight"):
            scales = shapes.get(key[: -len("qweight")] + "scales")
            return len(shape) == 2 and scales is not None and shape[1] == scales[-1]
    return False


def read(source, version: int = 1) -> dict[str, Imported]:
    return read_state(source, lambda n, p: gptq_tensor(n, p, version), ".qweight", PARTS)


# ---------------------------------------------------------------- writing lowbitc weights
def gptq_quantize(w, bits: int = 4, group_size: int = 128, version: int = 1) -> QTensor:
    """An asymmetric u{bits} QTensor whose zero points are integers and scales float16: what
    the GPTQ layout can store (lowbitc's scale search, zeros then rounded, codes re-chosen).
    Version 1 stores zero - 1, so its zeros start at 1."""
    if bits not in GPTQ_BITS:
        raise UserArgumentError(f"bits: GPTQ stores {GPTQ_BITS} bits, got {bits}")
    w = np.asarray(w, np.float32)
    qt = quantize(w, f"u{bits}", group_size, zero_point=True, scale_dtype="f16")
    top = (1 << bits) - 1
    z = np.clip(np.rint(qt.zeros), int(version == 1), top).astype(np.float32)
    s = qt.scales
    k = w.shape[1]
    sr, zr = (np.repeat(a, group_size, axis=1)[:, :k] for a in (s, z))
    with np.errstate(divide="ignore", invalid="ignore"):
        codes = np.clip(np.rint(np.where(sr != 0, w / sr, 0) + zr), 0, top).astype(np.uint8)
    return QTensor(qt.dtype, qt.shape, group_size, codes, s, z, "f16")


def gptq_parts(qw: QTensor, version: int = 1) -> dict:
    """qweight, qzeros, scales, g_idx of a QTensor with integer zeros and float16 scales."""
    bits, (n, k), g = qw.dtype.bits, qw.shape, qw.group_size
    if qw.dtype.name != f"u{bits}" or bits not in GPTQ_BITS or qw.zeros is None:
        raise UserArgumentError(f"qw: GPTQ stores u2/u3/u4/u8 codes with zero points, got "
                                f"{qw.dtype.name} (zero points: {qw.zeros is not None})")
    z = qw.zeros - (version == 1)
    problems = [what for what, bad in (
        (f"K = {k} a multiple of the group {g}", k % g),
        ("K and N multiples of 32 / gcd(32, bits)", (k * bits) % 32 or (n * bits) % 32),
        ("integer zero points", (z != np.rint(z)).any()),
        (f"stored zeros (v{version}) in 0..{(1 << bits) - 1}",
         (z < 0).any() or (z > (1 << bits) - 1).any()),
        ("float16 scales", (qw.scales.astype(np.float16).astype(np.float32) != qw.scales).any()),
    ) if bad]
    if problems:
        raise UserArgumentError(f"qw: the GPTQ layout needs {', '.join(problems)}")
    qweight = np.ascontiguousarray(pack(qw.codes, bits).T).view(np.int32)
    qzeros = pack(np.ascontiguousarray(z.T).astype(np.uint8), bits).view(np.int32)
    # contiguous: safetensors' numpy writer stores a strided array's memory, not its values
    return {"qweight": qweight, "qzeros": qzeros,
            "scales": np.ascontiguousarray(qw.scales.T, np.float16),
            "g_idx": (np.arange(k) // g).astype(np.int32)}


CODEC = register(Codec("gptq", sniff, read, write_state))
CODEC_V2 = register(Codec("gptq_v2", lambda s: False, lambda s: read(s, 2), write_state))
