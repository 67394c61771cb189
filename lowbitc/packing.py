"""Canonical bit packing: along the last axis, b-bit codes form one LSB-first bit stream
(code k occupies bits k*b .. k*b+b-1) stored in little-endian uint32 words; each row starts
on a new word, so a row of K codes takes ceil(K*b/32) words.

Both directions work one "period" at a time: P = 32/gcd(b, 32) codes fill exactly
b/gcd(b, 32) words, so each of the P code positions has a fixed word and shift.
"""

from __future__ import annotations

import math

import numpy as np

from lowbitc.errors import UserArgumentError

WORD_BITS = 32


def words_per_row(count: int, bits: int) -> int:
    """Number of uint32 words holding `count` codes of `bits` bits."""
    return -(-count * bits // WORD_BITS)


def _check_bits(bits) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int | np.integer) or not 1 <= bits <= 8:
        raise UserArgumentError(f"bits: expected an int in 1..8, got {bits!r}")
    return int(bits)


def _period(bits: int) -> tuple[int, int]:
    """(codes, words) of one period of the bit stream."""
    g = math.gcd(bits, WORD_BITS)
    return WORD_BITS // g, bits // g


def pack(codes, bits: int) -> np.ndarray:
    """Pack integer `codes` [..., K] (each < 2**bits) into uint32 words [..., ceil(K*bits/32)]."""
    bits = _check_bits(bits)
    c = np.asarray(codes)
    if c.dtype.kind not in "iu":
        raise TypeError(f"codes: expected an integer array, got dtype {c.dtype}")
    if c.ndim == 0:
        raise UserArgumentError("codes: expected at least one dimension, got a scalar")
    if c.size and (int(c.min()) < 0 or int(c.max()) >= 1 << bits):
        raise UserArgumentError(
            f"codes: expected values in 0..{(1 << bits) - 1} for {bits}-bit packing, got "
            f"min {int(c.min())}, max {int(c.max())}"
        )
    lead, k = c.shape[:-1], c.shape[-1]
    rows = math.prod(lead)
    p, wp = _period(bits)
    groups = -(-k // p)
    src = np.zeros((rows, groups * p), np.uint32)
    src[:, :k] = c.reshape(rows, k)
    src = src.reshape(rows, groups, p)
    out = np.zeros((src.shape[0], groups, wp), np.uint32)
    for j in range(p):
        word, shift = divmod(j * bits, WORD_BITS)
        v = src[:, :, j]
        out[:, :, word] |= v << np.uint32(shift)
        if shift + bits > WORD_BITS:  # the code straddles two words
            out[:, :, word + 1] |= v >> np.uint32(WORD_BITS - shift)
    need = words_per_row(k, bits)
    words = out.reshape(rows, groups * wp)[:, :need]
    return np.ascontiguousarray(words, dtype="<u4").reshape(*lead, need)


def unpack(words, bits: int, count: int) -> np.ndarray:
    """Inverse of `pack`: uint32 `words` [..., W] -> uint8 codes [..., count]."""
    bits = _check_bits(bits)
    if isinstance(count, bool) or not isinstance(count, int | np.integer) or count < 0:
        raise UserArgumentError(f"count: expected an int >= 0, got {count!r}")
    w = np.asarray(words)
    if w.dtype.kind not in "iu" or w.dtype.itemsize != 4:
        raise TypeError(f"words: expected a uint32 array, got dtype {w.dtype}")
    need = words_per_row(int(count), bits)
    if w.ndim == 0 or w.shape[-1] != need:
        raise UserArgumentError(
            f"words: expected last axis {need} (= ceil({count}*{bits}/32)), got shape {w.shape}"
        )
    lead = w.shape[:-1]
    rows = math.prod(lead)
    p, wp = _period(bits)
    groups = -(-need // wp)
    src = np.zeros((rows, groups * wp), np.uint32)
    src[:, :need] = w.reshape(rows, need).view(np.uint32)
    mask = np.uint32((1 << bits) - 1)
    out = np.empty((rows, groups, p), np.uint8)
    body = src.reshape(rows, groups, wp)
    for j in range(p):
        word, shift = divmod(j * bits, WORD_BITS)
        v = body[:, :, word] >> np.uint32(shift)
        if shift + bits > WORD_BITS:
            v |= body[:, :, word + 1] << np.uint32(WORD_BITS - shift)
        out[:, :, j] = v & mask
    return out.reshape(rows, groups * p)[:, :count].reshape(*lead, count)
