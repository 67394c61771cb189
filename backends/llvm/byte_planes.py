"""Codes of several bit planes in the rows packing (u3 = 2 + 1, u5 = 4 + 1, u6 = 4 + 2,
u7 = 4 + 2 + 1) put together in the widest plane's bytes for the fused byte dot (bytedot.py):
each extraction of the widest plane holds four codes per row in the bytes of an i32 lane,
and one vpmultishiftqb per other plane gathers the same codes' bits from that plane's word
to their place in each byte (an arbitrary bit offset per byte within a 64-bit pair of rows'
words), so one vpdpbusd multiplies whole codes where one per plane would add each plane's
products on its own. Needs AVX-512 VBMI.
"""

from __future__ import annotations

import functools

from lowbitc.backends.llvm.emitter import Emitter
from lowbitc.backends.llvm.target import cpu_features
from lowbitc.repack import RowsPacking

V16 = "<16 x i32>"
B64 = "<64 x i8>"


def merges(packing: RowsPacking) -> bool:
    """Whether the planes of several (u3 = 2 + 1, u5-u7) are gathered into the widest one's
    bytes (`merge_planes`): one vpdpbusd per four codes of every plane, where one per plane
    would add each plane's products on its own (u3: 16 vpdpbusd per step instead of 8, and
    a second permutation of the activations). Needs AVX-512 VBMI (vpmultishiftqb)."""
    widths = [p for p, _, _ in packing.planes]
    return len(widths) > 1 and widths[0] == max(widths) and _vbmi()


@functools.cache
def _vbmi() -> bool:
    return bool(cpu_features().get("avx512vbmi", False))


def merge_source(p0: int, w: int, e: int, p: int, shift: int) -> tuple[int, list[int]]:
    """For extraction `e` of word `w` of the widest plane (width p0; byte j of each i32 lane
    then holds code (32/p0) w + (8/p0) j + e), the word of the plane of width `p` holding
    those codes' bits, and the vpmultishiftqb control (one byte per byte of a 64-bit pair
    of lanes) that lands each code's bits at bit `shift` of its byte."""
    words = set()
    ctl = []
    for b in range(8):
        half, j = divmod(b, 4)
        c = (32 // p0) * w + (8 // p0) * j + e
        word, at = divmod(c, 32 // p)
        words.add(word)
        ctl.append((32 * half + p * at - shift) % 64)
    (word,) = words
    return word, ctl


def merge_planes(em: Emitter, packing: RowsPacking, v: str, w: int, e: int, load) -> str:
    """v (codes of the widest plane, extraction e of its word w) with the bits of the same
    codes in every other plane or-ed in at their place: one vpmultishiftqb and mask each."""
    p0 = packing.planes[0][0]
    name = "llvm.x86.avx512.pmultishift.qb.512"
    em.declare(f"declare {B64} @{name}({B64}, {B64})")
    for plane, (p, shift, _) in enumerate(packing.planes[1:], 1):
        word, ctl = merge_source(p0, w, e, p, shift)
        ctl_v = "<" + ", ".join(f"i8 {c}" for c in ctl * 8) + ">"
        src = em.val(f"bitcast {V16} {load(plane, word)} to {B64}")
        got = em.val(f"call {B64} @{name}({B64} {ctl_v}, {B64} {src})")
        got = em.val(f"and {V16} {em.val(f'bitcast {B64} {got} to {V16}')}, "
                     f"{rep_byte(((1 << p) - 1) << shift)}")
        v = em.val(f"or {V16} {v}, {got}")
    return v


def i32(v: int) -> int:
    """A 32-bit pattern as the signed literal LLVM prints."""
    return v - (1 << 32) if v >= 1 << 31 else v


def rep_byte(byte: int) -> str:
    """A <16 x i32> constant with `byte` in each of its 64 bytes."""
    return f"splat (i32 {i32(byte * 0x01010101)})"
