"""The CUDA backend's interleaved packing of 4-bit integer codes (u4, i4, b4).

Canonical words (DESIGN.md Storage) hold codes 0..7 of a word at nibbles 0..7. The GPU
reads pairs of consecutive codes into the two halves of an f16x2 register; with the even
codes in the low half-word and the odd ones in the high half-word (nibble order 0,2,4,6,
1,3,5,7, as FasterTransformer/Marlin), pair j of a word is one LOP3 on the word (j < 2) or
on the word shifted down 8 bits, with no byte permute. The order is generated from the width
(`order`); host arrays are transformed once and cached (`HostWords`), device arrays by a
small generated kernel on each call; `canonical_words` inverts it (tests check both ways).
"""

from __future__ import annotations

import hashlib
import threading
import weakref
from functools import cache

import numpy as np
from numba import cuda, uint32

from lowbitc.formats import lookup
from lowbitc.ir.core import Kernel, walk
from lowbitc.ir.types import TensorType, is_machine
from lowbitc.signature import format_bits

INTERLEAVED_KINDS = ("uint", "int", "bipolar")


def interleaves(dtype: str, bits: int) -> bool:
    """Whether the backend stores this packed format interleaved: 4-bit integer formats,
    whose pairs convert with the magic-number LOP3 (floats and code books use a table)."""
    return bits == 4 and getattr(lookup(dtype), "kind", None) in INTERLEAVED_KINDS


def interleaved_params(k: Kernel) -> dict[int, int]:
    """{param id: bits} of the packed tensor parameters stored interleaved: those of an
    interleaving format that the kernel reads only through `load_codes` (so every read
    knows the order)."""
    readers: dict[int, set[str]] = {}
    for op in walk(k.body.ops):
        for v in op.operands:
            readers.setdefault(v.id, set()).add(op.opcode)
    out = {}
    for p in k.params:
        t = p.type
        if not isinstance(t, TensorType) or is_machine(t.dtype):
            continue
        bits = format_bits(t.dtype)
        if interleaves(t.dtype, bits) and readers.get(p.id, set()) <= {"load_codes"}:
            out[p.id] = bits
    return out


@cache
def order(bits: int) -> tuple[int, ...]:
    """order[s] = the code (index in its word) held at slot s: even codes, then odd."""
    n = 32 // bits
    return tuple(range(0, n, 2)) + tuple(range(1, n, 2))


@cache
def slot_of(bits: int) -> tuple[int, ...]:
    """slot_of[c] = the slot of code c in its word (the inverse of `order`)."""
    out = [0] * (32 // bits)
    for s, c in enumerate(order(bits)):
        out[c] = s
    return tuple(out)


def code_bit(bits: int, col: int) -> int:
    """Bit position of code `col` in a row's interleaved word stream."""
    per = 32 // bits
    return (col // per) * 32 + slot_of(bits)[col % per] * bits


def _permute(words: np.ndarray, bits: int, to_slot: tuple[int, ...]) -> np.ndarray:
    w = np.asarray(words, dtype=np.uint32)
    mask = np.uint32((1 << bits) - 1)
    out = np.zeros_like(w)
    for src, dst in enumerate(to_slot):
        out |= ((w >> np.uint32(bits * src)) & mask) << np.uint32(bits * dst)
    return out


def interleaved_words(words: np.ndarray, bits: int = 4) -> np.ndarray:
    """Canonical words -> interleaved words (each word's codes moved to their slots)."""
    return _permute(words, bits, slot_of(bits))


def canonical_words(words: np.ndarray, bits: int = 4) -> np.ndarray:
    """Interleaved words -> canonical words."""
    return _permute(words, bits, order(bits))


class HostWords:
    """Interleaved copies of host arrays, cached per array while it lives and its contents
    (a 128-bit BLAKE2 digest, checked on every use) are unchanged."""

    def __init__(self):
        self._lock = threading.Lock()
        self._cache: dict[int, tuple[bytes, np.ndarray]] = {}

    def get(self, words: np.ndarray, bits: int) -> np.ndarray:
        words = np.ascontiguousarray(words)
        digest = hashlib.blake2b(words.view(np.uint8).data, digest_size=16).digest()
        key = id(words)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and hit[0] == digest and hit[1].shape == words.shape:
                return hit[1]
        out = interleaved_words(words, bits)
        with self._lock:
            if key not in self._cache:
                weakref.finalize(words, self._cache.pop, key, None)
            self._cache[key] = (digest, out)
        return out


HOST_WORDS = HostWords()


@cache
def device_kernel(bits: int):
    """A numba-cuda kernel writing the interleaved words of a device array (generated from
    `slot_of`)."""
    slots = slot_of(bits)
    mask = (1 << bits) - 1

    @cuda.jit
    def interleave(src, dst):
        i = cuda.grid(1)
        if i < src.size:
            w = uint32(src[i])
            out = uint32(0)
            for c in range(32 // bits):
                out |= ((w >> uint32(bits * c)) & uint32(mask)) << uint32(bits * slots[c])
            dst[i] = out

    return interleave


def device_words(words, bits: int):
    """Interleaved copy of a device array (one pass over the words)."""
    dst = cuda.device_array(words.shape, np.uint32)
    n = int(np.prod(words.shape))
    if n:
        device_kernel(bits)[(n + 255) // 256, 256](words.reshape(n), dst.reshape(n))
    return dst
