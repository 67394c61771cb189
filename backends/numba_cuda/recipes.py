"""How a format's codes become f16x2 pairs, chosen from the decoded value of every code.

The f16 store path (`halves`) evaluates a format's decode (the lowered code -> value ops) for
all 2^b codes and picks the first recipe that reproduces every value exactly:
- `magic`: v = alpha * (c ^ flip) + beta (u, i, b formats). One `prmt` brings the bytes
  holding a pair's two codes into the two halves, one LOP3 masks them and ORs (XORs) the
  magic exponent and the sign flip: a code at bit o of a half reads as 2^(10-o) + (c ^ flip)
  in f16 (Marlin/FasterTransformer's conversion, without their shifts);
- `shift` (8-bit floats whose bits are the top byte of an f16, f8e5m2): one `prmt` puts
  each code in the high byte of its half; v = that half times 2^k;
- `table` (any format of at most 4 bits): one constant-bank load per pair from a 2^(2b)-entry
  table of f16x2 (v[c_lo], v[c_hi]), indexed by the pair's 2b bits;
- None: the per-element f32 path.
Pair expressions are generated per 32-code group from the format's width and the canonical
LSB-first packing (DESIGN.md Storage), never written per format.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

F16_MAX = 65504.0


@dataclass(frozen=True)
class Recipe:
    """kind "magic": v = alpha * (c ^ flip) + beta; "shift": v = f16(c << 8) * factor;
    "table": f16x2 bits of (v[i & mask], v[i >> bits]) for every 2b-bit index i."""

    kind: str
    bits: int
    flip: int = 0
    alpha: float = 1.0
    beta: float = 0.0
    factor: float = 1.0
    table: tuple[int, ...] = ()


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal values, NaNs in the same places, and the same sign of zero."""
    num = ~np.isnan(a)
    return bool(
        np.array_equal(a, b, equal_nan=True)
        and np.array_equal(np.signbit(a[num]), np.signbit(b[num]))
    )


def _magic(values: np.ndarray, bits: int) -> Recipe | None:
    codes = np.arange(1 << bits)
    if not np.all(np.isfinite(values)):
        return None
    for flip in (0, 1 << (bits - 1)) if bits > 1 else (0,):
        g = values[codes ^ flip]
        alpha, beta = float(g[1] - g[0]), float(g[0])
        if alpha != 0 and _same(g, alpha * codes + beta) and abs(beta) < F16_MAX:
            return Recipe("magic", bits, flip=flip, alpha=alpha, beta=beta)
    return None


def _shift(values: np.ndarray, bits: int) -> Recipe | None:
    if bits != 8:
        return None
    halves = (np.arange(256, dtype=np.uint16) << np.uint16(8)).view(np.float16)
    h = halves.astype(np.float64)
    ok = np.isfinite(h) & (h != 0)
    with np.errstate(all="ignore"):
        ratios = values[ok] / h[ok]
    if ratios.size == 0 or not np.all(ratios == ratios[0]):
        return None
    factor = float(ratios[0])
    if factor <= 0 or np.log2(factor) != np.round(np.log2(factor)):
        return None
    with np.errstate(all="ignore"):
        return Recipe("shift", 8, factor=factor) if _same(values, h * factor) else None


def _table(values: np.ndarray, bits: int) -> Recipe | None:
    if bits > 4:
        return None
    with np.errstate(over="ignore"):
        v16 = values.astype(np.float16)
    if np.any(np.isfinite(values) & ~np.isfinite(v16)):
        return None
    b16 = v16.view(np.uint16).astype(np.uint32)
    i = np.arange(1 << (2 * bits))
    pairs = b16[i & ((1 << bits) - 1)] | b16[i >> bits] << np.uint32(16)
    return Recipe("table", bits, table=tuple(int(x) for x in pairs))


def recipe_for(values: np.ndarray, bits: int) -> Recipe | None:
    """The cheapest recipe reproducing `values` (the decoded value of codes 0..2^bits-1)."""
    values = np.asarray(values, np.float64)
    for make in (_magic, _shift, _table):
        r = make(values, bits)
        if r is not None:
            return r
    return None


# ---------------------------------------------------------------- pair expressions


def byte_window(pos: int, bits: int, stream: str) -> tuple[list[tuple[str, int]], int] | None:
    """Bytes (register, byte) holding the code at `pos` of `stream`, and its bit offset."""
    if pos < 0 or pos % 8 + bits > 10:
        return None
    first = pos // 8
    needed = [first] if pos % 8 + bits <= 8 else [first, first + 1]
    return [(f"{stream}{i // 4}", i % 4) for i in needed], pos % 8


def prmt_pair(p_lo: int, p_hi: int, bits: int, streams: tuple[str, ...]):
    """(prmt expression, mask, offsets) bringing codes at p_lo / p_hi into the two halves,
    from at most two registers of `streams` ("w" words, "v" = words shifted down 4 bits)."""
    shift = {"w": 0, "v": 4}
    for s_lo in streams:
        for s_hi in streams:
            lo = byte_window(p_lo - shift[s_lo], bits, s_lo)
            hi = byte_window(p_hi - shift[s_hi], bits, s_hi)
            if lo is None or hi is None:
                continue
            regs = list(dict.fromkeys(reg for reg, _ in lo[0] + hi[0]))
            if len(regs) > 2:
                continue
            slot = {reg: 4 * k for k, reg in enumerate(regs)}
            lo_n = [slot[r] + j for r, j in lo[0]]
            hi_n = [slot[r] + j for r, j in hi[0]]
            sel = sum(n << 4 * k for k, n in enumerate([lo_n[0], lo_n[-1], hi_n[0], hi_n[-1]]))
            mask = (1 << bits) - 1
            m = mask << lo[1] | mask << (16 + hi[1])
            return f"prmt({regs[0]}, {regs[-1]}, U32({sel:#x}))", m, (lo[1], hi[1]), regs
    return None


def _funnel(p: int, bits: int) -> str:
    i, o, mask = p // 32, p % 32, (1 << bits) - 1
    if o + bits <= 32:
        return f"((w{i} >> U32({o})) & U32({mask:#x}))"
    return f"(((w{i} >> U32({o})) | (w{i + 1} << U32({32 - o}))) & U32({mask:#x}))"


def magic_pairs(
    bits: int, flip: int, interleaved: bool = False
) -> tuple[list[tuple[str, tuple[int, int]]], bool]:
    """The 16 f16x2 pairs of 32 codes in words w0..w{bits-1} as (expression, offsets): each
    half reads 2^(10-o) + (c ^ flip). Second item: whether the expressions use v0..v{b-1},
    the words shifted down 4 bits (funnel shifts, only where a code sits too high), or for
    interleaved 4-bit words, down 8 bits."""
    if interleaved:  # pair j of a word: slots j and j + 4 (interleave.py)
        out = []
        for i in range(bits):
            for j in range(4):
                o = 4 * (j % 2)
                k_bits = ((25 - o) << 10 | flip << o) * 0x10001
                src = f"w{i}" if j < 2 else f"v{i}"
                out.append(
                    (f"lop3({src}, U32({(0xF << o) * 0x10001:#x}), U32({k_bits:#x}), 0x6A)", (o, o))
                )
        return out, True
    out, uses_v = [], False
    for k in range(0, 32, 2):
        p_lo, p_hi = k * bits, (k + 1) * bits
        if bits == 8:  # whole bytes: the magic bytes come from the prmt's second source
            i, b_lo, b_hi = p_lo // 32, (p_lo // 8) % 4, (p_hi // 8) % 4
            sel = b_lo | 4 << 4 | b_hi << 8 | 4 << 12
            x = f"prmt(w{i}, U32(0x64646464), U32({sel:#x}))"
            out.append((x if not flip else f"({x} ^ U32({flip * 0x10001:#x}))", (0, 0)))
            continue
        found = prmt_pair(p_lo, p_hi, bits, ("w",)) or prmt_pair(p_lo, p_hi, bits, ("w", "v"))
        if found is None:  # rare: shift both codes to bit 0
            x = f"({_funnel(p_lo, bits)} | ({_funnel(p_hi, bits)} << U32(16)))"
            k_bits = (25 << 10 | flip) * 0x10001
            out.append((f"({x} ^ U32({k_bits:#x}))", (0, 0)))
            continue
        x, m, (o_lo, o_hi), regs = found
        uses_v = uses_v or any(r.startswith("v") for r in regs)
        k_bits = ((25 - o_lo) << 10 | flip << o_lo) | ((25 - o_hi) << 10 | flip << o_hi) << 16
        out.append((f"lop3({x}, U32({m:#x}), U32({k_bits:#x}), 0x6A)", (o_lo, o_hi)))
    return out, uses_v


def shift_pairs() -> list[str]:
    """The 16 pairs of 32 8-bit codes in w0..w7, each code in the high byte of its half."""
    out = []
    for k in range(16):
        i, b = k // 2, 2 * (k % 2)
        sel = 4 | b << 4 | 4 << 8 | (b + 1) << 12
        out.append(f"prmt(w{i}, U32(0), U32({sel:#x}))")
    return out


def table_indices(bits: int) -> list[str]:
    """The 16 table indices (two consecutive codes, 2b bits) of 32 codes in w0..w{b-1}."""
    width, out = 2 * bits, []
    mask = (1 << width) - 1
    for k in range(16):
        p = k * width
        i, o = p // 32, p % 32
        if bits == 4:
            out.append(f"prmt(w{i}, U32(0), U32({0x4440 | (o // 8):#x}))")
        elif o + width <= 32:
            out.append(f"((w{i} >> U32({o})) & U32({mask:#x}))")
        else:
            out.append(f"(((w{i} >> U32({o})) | (w{i + 1} << U32({32 - o}))) & U32({mask:#x}))")
    return out
