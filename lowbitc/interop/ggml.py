"""llama.cpp's (ggml) block formats as exact lowbitc tensors, and back to block bytes.

Every supported type maps onto an (Offset)QTensor whose dequantization is bit-identical to
`gguf.quants.dequantize` (the same float32 operations in the same order):

| type | codes | group | scale | zero / offset |
|---|---|---|---|---|
| Q4_0, Q5_0 | i4, i5 (q - 8, q - 16) | 32 | d | - |
| Q4_1, Q5_1 | u4, u5 | 32 | d | offset -m |
| Q8_0 | i8 | 32 | d | - |
| Q2_K | u2 | 16 | d * sc | offset dmin * m |
| Q3_K | i3 | 16 | d * (sc - 32) | - |
| Q4_K, Q5_K | u4, u5 | 32 | d * sc | offset dmin * m |
| Q6_K | i6 | 16 | d * sc | - |
| IQ4_NL | code book of its 16 int8 values | 32 | d | - |
| MXFP4 | f4e2m1fn | 32 | 2^(e - 127) | - |

`d * sc` and `code * scale` are exact float32 products here (at most 22 significant bits),
so the only rounding is the one gguf does too. A tensor is `ggml_to_qtensor(type, raw)` with
`raw` the uint8 [rows, bytes] blocks; `qtensor_to_ggml` is the inverse for tensors whose
scales lie on the format's grid (what lowbitc's quantizers in `kquants` produce).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lowbitc.dtypes import codebook
from lowbitc.dtypes import dtype as get_dtype
from lowbitc.errors import UserArgumentError
from lowbitc.offset import OffsetQTensor
from lowbitc.quant import QTensor

IQ4NL_VALUES = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)
IQ4NL = codebook(IQ4NL_VALUES, name="iq4_nl")
QK_K = 256


@dataclass(frozen=True)
class BlockType:
    """A ggml block format: elements per block, bytes per block, lowbitc code format, group."""

    name: str
    block: int
    nbytes: int
    codes: str
    group: int
    f16_at: tuple[int, ...]  # byte offsets of the block's float16 fields (d, m / dmin)


BLOCK_TYPES = {t.name: t for t in (
    BlockType("Q4_0", 32, 18, "i4", 32, (0,)),
    BlockType("Q4_1", 32, 20, "u4", 32, (0, 2)),
    BlockType("Q5_0", 32, 22, "i5", 32, (0,)),
    BlockType("Q5_1", 32, 24, "u5", 32, (0, 2)),
    BlockType("Q8_0", 32, 34, "i8", 32, (0,)),
    BlockType("Q2_K", QK_K, 84, "u2", 16, (80, 82)),
    BlockType("Q3_K", QK_K, 110, "i3", 16, (108,)),
    BlockType("Q4_K", QK_K, 144, "u4", 32, (0, 2)),
    BlockType("Q5_K", QK_K, 176, "u5", 32, (0, 2)),
    BlockType("Q6_K", QK_K, 210, "i6", 16, (208,)),
    BlockType("IQ4_NL", 32, 18, "iq4_nl", 32, (0,)),
    BlockType("MXFP4", 32, 17, "f4e2m1fn", 32, ()),
)}
FLOAT_TYPES = ("F32", "F16", "BF16")


def code_format(t: BlockType):
    return IQ4NL if t.codes == "iq4_nl" else get_dtype(t.codes)


# ---------------------------------------------------------------- bit fields
def split_bits(b: np.ndarray, run: int, shifts, mask: int) -> np.ndarray:
    """Fields of bytes b [nb, L]: for each run of `run` bytes, the field at every shift, the
    shifts outer: [nb, L * len(shifts)] (how ggml lays out its nibbles and bit planes)."""
    nb, length = b.shape
    sh = np.asarray(shifts, np.uint8).reshape(1, 1, -1, 1)
    return ((b.reshape(nb, length // run, 1, run) >> sh) & np.uint8(mask)).reshape(nb, -1)


def join_bits(v: np.ndarray, run: int, shifts) -> np.ndarray:
    """Inverse of split_bits (fields already within their masks)."""
    nb = v.shape[0]
    sh = np.asarray(shifts, np.uint8).reshape(1, 1, -1, 1)
    parts = v.astype(np.uint8).reshape(nb, -1, len(sh.ravel()), run) << sh
    return np.bitwise_or.reduce(parts, axis=2).reshape(nb, -1)


def _f16(b: np.ndarray, at: int) -> np.ndarray:
    return np.ascontiguousarray(b[:, at:at + 2]).view(np.float16).astype(np.float32)


def _put_f16(b: np.ndarray, at: int, v: np.ndarray) -> None:
    b[:, at:at + 2] = np.asarray(v, np.float16).reshape(-1, 1).view(np.uint8)


def k_scale_min(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K's 12 bytes of 6-bit scales and mins -> (sc [nb, 8], m [nb, 8])."""
    d, m, md = b[:, 0:4], b[:, 4:8], b[:, 8:12]
    sc = np.concatenate([d & 63, (md & 15) | ((d >> 2) & 0x30)], axis=1)
    mn = np.concatenate([m & 63, (md >> 4) | ((m >> 2) & 0x30)], axis=1)
    return sc, mn


def k_scale_min_bytes(sc: np.ndarray, mn: np.ndarray) -> np.ndarray:
    sc, mn = sc.astype(np.uint8), mn.astype(np.uint8)
    d = sc[:, :4] | ((sc[:, 4:] >> 4) << 6)
    m = mn[:, :4] | ((mn[:, 4:] >> 4) << 6)
    md = (sc[:, 4:] & 15) | ((mn[:, 4:] & 15) << 4)
    return np.concatenate([d, m, md], axis=1)


def q3k_scales(b: np.ndarray) -> np.ndarray:
    """Q3_K's 12 bytes of 6-bit scales -> uint8 [nb, 16] (stored + 32)."""
    low = split_bits(b[:, :8], 8, (0, 4), 15)
    high = split_bits(b[:, 8:12], 4, (0, 2, 4, 6), 3)
    return low | (high << 4)


def q3k_scale_bytes(sc: np.ndarray) -> np.ndarray:
    sc = sc.astype(np.uint8)
    return np.concatenate([join_bits(sc & 15, 8, (0, 4)), join_bits(sc >> 4, 4, (0, 2, 4, 6))],
                          axis=1)


# ---------------------------------------------------------------- blocks -> fields
def decode_blocks(t: BlockType, b: np.ndarray):
    """Blocks uint8 [nb, nbytes] -> (codes [nb, block], scales [nb, block / group],
    zero (always None: every type's zero is in its codes or offsets), offsets or None)."""
    n = t.name
    if n in ("Q4_0", "Q4_1", "IQ4_NL"):
        at = 2 if n != "Q4_1" else 4
        codes = split_bits(b[:, at:], 16, (0, 4), 15)
        if n == "Q4_0":
            codes ^= np.uint8(8)  # the i4 code of q - 8
        return codes, _f16(b, 0), None, (-_f16(b, 2) if n == "Q4_1" else None)
    if n in ("Q5_0", "Q5_1"):
        at = 2 if n == "Q5_0" else 4
        high = split_bits(b[:, at:at + 4], 1, range(8), 1)
        codes = split_bits(b[:, at + 4:], 16, (0, 4), 15) | (high << 4)
        if n == "Q5_0":
            codes ^= np.uint8(16)  # the i5 code of q - 16
        return codes, _f16(b, 0), None, (-_f16(b, 2) if n == "Q5_1" else None)
    if n == "Q8_0":
        return b[:, 2:].copy(), _f16(b, 0), None, None
    if n == "MXFP4":
        e = b[:, :1].astype(np.uint32)
        if (e == 255).any():
            raise UserArgumentError("MXFP4 block exponent 255 (the NaN scale) is not supported")
        codes = split_bits(b[:, 1:], 16, (0, 4), 15)
        codes[codes == 8] = 0  # gguf reads -0 as +0
        bits = np.where(e == 0, np.uint32(0x00400000), e << np.uint32(23))
        return codes, bits.view(np.float32), None, None  # 2^(e - 127)
    if n == "Q2_K":
        sc = b[:, :16]
        codes = split_bits(b[:, 16:80], 32, (0, 2, 4, 6), 3)
        return (codes, _f16(b, 80) * (sc & 15).astype(np.float32), None,
                _f16(b, 82) * (sc >> 4).astype(np.float32))
    if n == "Q3_K":
        low = split_bits(b[:, 32:96], 32, (0, 2, 4, 6), 3)
        high = split_bits(b[:, :32], 32, range(8), 1)
        codes = low | ((high ^ 1) << 2)  # i3 code of low - 4 * (1 - high)
        sc = q3k_scales(b[:, 96:108]).astype(np.int8) - np.int8(32)
        return codes, _f16(b, 108) * sc.astype(np.float32), None, None
    if n in ("Q4_K", "Q5_K"):
        sc, mn = k_scale_min(b[:, 4:16])
        if n == "Q4_K":
            codes = split_bits(b[:, 16:], 32, (0, 4), 15)
        else:
            high = split_bits(b[:, 16:48], 32, range(8), 1)
            codes = split_bits(b[:, 48:], 32, (0, 4), 15) | (high << 4)
        return (codes, _f16(b, 0) * sc.astype(np.float32), None,
                _f16(b, 2) * mn.astype(np.float32))
    if n == "Q6_K":
        low = split_bits(b[:, :128], 64, (0, 4), 15)
        high = split_bits(b[:, 128:192], 32, (0, 2, 4, 6), 3)
        codes = (low | (high << 4)) ^ np.uint8(32)  # v - 32 as a 6-bit two's complement
        return codes, _f16(b, 208) * b[:, 192:208].view(np.int8).astype(np.float32), None, None
    raise AssertionError(n)


def ggml_to_qtensor(type_name: str, raw: np.ndarray, k: int) -> QTensor:
    """uint8 [N, K / block * nbytes] blocks of `type_name` -> an exact (Offset)QTensor [N, K]."""
    t = BLOCK_TYPES[type_name]
    n = raw.shape[0]
    codes, scales, zero, offsets = decode_blocks(t, raw.reshape(-1, t.nbytes))
    groups = (n, k // t.group)
    scales = np.ascontiguousarray(scales, np.float32).reshape(groups)
    zeros = None if zero is None else np.full(groups, zero, np.float32)
    codes = np.ascontiguousarray(codes, np.uint8).reshape(n, k)
    if offsets is None:
        return QTensor(code_format(t), (n, k), t.group, codes, scales, zeros)
    offsets = np.ascontiguousarray(offsets, np.float32).reshape(groups)
    return OffsetQTensor(code_format(t), (n, k), t.group, codes, scales, zeros,
                         offsets=offsets)


def encode_blocks(t: BlockType, codes: np.ndarray, d: np.ndarray, sc: np.ndarray | None = None,
                  dmin: np.ndarray | None = None, mn: np.ndarray | None = None) -> np.ndarray:
    """Block bytes [nb, nbytes] from lowbitc codes [nb, block] (as decode_blocks returns
    them) and the format's own scale fields: d (and dmin) per block, sc (and mn) per sub-block
    as the unsigned integers stored."""
    nb = codes.shape[0]
    b = np.zeros((nb, t.nbytes), np.uint8)
    n = t.name
    if n in ("Q4_0", "IQ4_NL"):
        _put_f16(b, 0, d)
        b[:, 2:] = join_bits(codes ^ np.uint8(8 if n == "Q4_0" else 0), 16, (0, 4))
    elif n == "Q8_0":
        _put_f16(b, 0, d)
        b[:, 2:] = codes
    elif n == "Q2_K":
        b[:, :16] = sc | (mn << 4)
        b[:, 16:80] = join_bits(codes, 32, (0, 2, 4, 6))
        _put_f16(b, 80, d)
        _put_f16(b, 82, dmin)
    elif n == "Q3_K":
        b[:, :32] = join_bits((codes >> 2) ^ 1, 32, range(8))
        b[:, 32:96] = join_bits(codes & 3, 32, (0, 2, 4, 6))
        b[:, 96:108] = q3k_scale_bytes(sc)
        _put_f16(b, 108, d)
    elif n in ("Q4_K", "Q5_K"):
        _put_f16(b, 0, d)
        _put_f16(b, 2, dmin)
        b[:, 4:16] = k_scale_min_bytes(sc, mn)
        if n == "Q4_K":
            b[:, 16:] = join_bits(codes, 32, (0, 4))
        else:
            b[:, 16:48] = join_bits(codes >> 4, 32, range(8))
            b[:, 48:] = join_bits(codes & 15, 32, (0, 4))
    elif n == "Q6_K":
        v = codes ^ np.uint8(32)
        b[:, :128] = join_bits(v & 15, 64, (0, 4))
        b[:, 128:192] = join_bits(v >> 4, 32, (0, 2, 4, 6))
        b[:, 192:208] = sc.astype(np.int8).view(np.uint8)
        _put_f16(b, 208, d)
    else:
        raise UserArgumentError(f"type: lowbitc writes {n} blocks through gguf.quants")
    return b
