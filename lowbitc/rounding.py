"""Rounding modes of `encode` and `cast`, and the Philox 4x32-10 counter-based generator.

Modes: "nearest_even" (the default), "nearest_away" (ties away from zero), "toward_zero",
"up" (toward +inf), "down" (toward -inf) and "stochastic" (round up with probability
(x - lower) / (upper - lower), the distance to the lower neighbour over the gap). Every mode
saturates to the format's finite range; +-inf and NaN map as with the default.

Each deterministic mode is a table of thresholds between neighbouring values (x >= t[j]
means x rounds above value j), so the host (`searchsorted`) and the kernels (a branch-free
binary search, `lowbitc.passes.lower_encode`) use the same numbers. Stochastic rounding takes
the "down" neighbour, then rounds up when `u * gap < x - lower` in the compared type, with
u = (philox(seed, index)[0] >> 8) * 2^-24 (computed as (bits >> 8) * (gap * 2^-24)): the
random bits depend only on the seed and the element's flat index, never on tiling, threads or
backend.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from lowbitc.errors import UserArgumentError

ROUNDINGS = ("nearest_even", "nearest_away", "toward_zero", "up", "down", "stochastic")
DIRECTED = ("toward_zero", "up", "down")

# Philox 4x32-10 (Salmon et al., SC'11; Random123): multipliers and Weyl key increments
PHILOX_M = (0xD2511F53, 0xCD9E8D57)
PHILOX_W = (0x9E3779B9, 0xBB67AE85)
PHILOX_ROUNDS = 10
U24_SCALE = 2.0**-24  # u = (bits >> 8) * 2^-24: 24 random bits, exact in f32


def check_rounding(rounding: object, arg: str = "rounding") -> str:
    """`rounding` if it names a mode, else a UserArgumentError naming the argument."""
    if rounding not in ROUNDINGS:
        raise UserArgumentError(
            f"{arg}: expected one of {', '.join(map(repr, ROUNDINGS))}, got {rounding!r}")
    return rounding


def check_seed(seed: object, arg: str = "seed") -> int:
    """A seed as an int in [0, 2^64); None draws a fresh one (not reproducible)."""
    if seed is None:
        return int(np.random.default_rng().integers(0, 2**63))
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise UserArgumentError(f"{arg}: expected an int in [0, 2**64), got {seed!r}")
    if not 0 <= int(seed) < 2**64:
        raise UserArgumentError(f"{arg}: expected an int in [0, 2**64), got {seed}")
    return int(seed)


def philox4x32(counter: np.ndarray, key: tuple[int, int]) -> np.ndarray:
    """Philox 4x32-10 of uint32 counters `[..., 4]` under a 2-word key: uint32 `[..., 4]`."""
    c = [np.asarray(counter[..., i], np.uint64) for i in range(4)]
    k0, k1 = np.uint64(key[0]), np.uint64(key[1])
    m0, m1 = np.uint64(PHILOX_M[0]), np.uint64(PHILOX_M[1])
    lo32, sh = np.uint64(0xFFFFFFFF), np.uint64(32)
    for r in range(PHILOX_ROUNDS):
        if r:
            k0 = (k0 + np.uint64(PHILOX_W[0])) & lo32
            k1 = (k1 + np.uint64(PHILOX_W[1])) & lo32
        p0, p1 = c[0] * m0, c[2] * m1  # exact: both factors < 2^32
        c = [(p1 >> sh) ^ c[1] ^ k0, p1 & lo32, (p0 >> sh) ^ c[3] ^ k1, p0 & lo32]
    return np.stack(c, axis=-1).astype(np.uint32)


def random_bits(seed: int, index: np.ndarray) -> np.ndarray:
    """uint32 word 0 of Philox 4x32-10 with counter (index, 0) and key seed (low word first)."""
    i = np.asarray(index, np.uint64)
    ctr = np.zeros(i.shape + (4,), np.uint64)
    ctr[..., 0], ctr[..., 1] = i & np.uint64(0xFFFFFFFF), i >> np.uint64(32)
    return philox4x32(ctr, (seed & 0xFFFFFFFF, seed >> 32))[..., 0]


def uniform(seed: int, index: np.ndarray, dtype: type = np.float32) -> np.ndarray:
    """Uniform numbers in [0, 1) on a 2^-24 grid (exact in f32) for each element index."""
    return ((random_bits(seed, index) >> np.uint32(8)).astype(dtype) * dtype(U24_SCALE))


# ------------------------------------------------------------------ threshold tables


@dataclass(frozen=True)
class Plan:
    """A format's distinct finite values in order, their codes and one mode's thresholds, in
    the compared type (f32 or f64)."""

    values: np.ndarray  # sorted distinct finite values (-0 merged into 0)
    codes: np.ndarray  # int64 code of each value
    thresholds: np.ndarray  # len(values) - 1: x >= thresholds[j] rounds above values[j]
    gaps: np.ndarray  # (values[j + 1] - values[j]) * 2^-24 in the compared type; NaN last


def _smallest_at_least(mid: np.ndarray, ft: type, strict: np.ndarray) -> np.ndarray:
    """The smallest `ft` number >= mid (> mid where `strict`)."""
    t = mid.astype(ft)
    t64 = t.astype(np.float64)
    bump = (t64 < mid) | (strict & (t64 == mid))
    return np.where(bump, np.nextafter(t, ft(np.inf)), t)


def mode_thresholds(values: np.ndarray, mode: str, ft: type) -> np.ndarray:
    """Thresholds between neighbouring `values` (float64, sorted) for a non-RNE mode."""
    a, b = values[:-1], values[1:]
    up = np.nextafter(a.astype(ft), ft(np.inf))  # x > a
    down = b.astype(ft)  # x >= b
    if mode in ("down", "stochastic"):
        return down
    if mode == "up":
        return up
    if mode == "toward_zero":  # a pair around zero (no zero value): the sign decides
        return np.where(a >= 0, down, np.where(b <= 0, up, ft(0)))
    if mode == "nearest_away":  # ties go to the larger magnitude
        mid = (a + b) / 2  # exact in float64 for float32 values
        return _smallest_at_least(mid, ft, mid < 0)
    raise UserArgumentError(f"rounding: no threshold table for {mode!r}")


@functools.cache
def plan(fmt, mode: str, compare: str) -> Plan:
    """The tables for rounding into `fmt` in `mode` with values compared as `compare`."""
    ft = np.float32 if compare == "f32" else np.float64
    table = fmt.values().astype(np.float64)
    finite = table[np.isfinite(table)]
    values = np.unique(np.where(finite == 0, 0.0, finite))
    codes = np.asarray(fmt.encode(values), np.int64)  # RNE of an exact value: its own code
    if mode == "nearest_even":
        raise UserArgumentError("rounding: nearest_even uses the format's own encoder")
    t = mode_thresholds(values, mode, ft)
    gaps = (values[1:].astype(ft) - values[:-1].astype(ft)).astype(ft) * ft(U24_SCALE)
    gaps = np.append(gaps, ft(np.nan)).astype(ft)  # the top value never rounds up
    for arr in (values, codes, t, gaps):
        arr.flags.writeable = False
    return Plan(values, codes, t, gaps)


# ------------------------------------------------------------------ host encoding


def encode_rounded(fmt, x: np.ndarray, mode: str, seed: int = 0,
                   index: np.ndarray | None = None) -> np.ndarray:
    """Codes of NaN-checked float32/float64 `x` in a mode other than nearest_even.

    `index` (default: the flat C-order position) numbers the elements for stochastic rounding.
    """
    if fmt.bits == 32:
        return _encode_f32(fmt, x, mode, seed, index)
    if fmt.name == "bf16" and mode == "stochastic" and x.dtype == np.float32:
        return _stochastic_bf16(fmt, x, seed, index)
    # kernels compare f32 inputs as f32 (<= 8-bit formats only); the 16-bit formats, whose
    # gaps * 2^-24 can fall below f32's range, always compare in f64 (exact for f32 inputs)
    compare = "f32" if x.dtype == np.float32 and fmt.bits <= 8 else "f64"
    p = plan(fmt, mode, compare)
    ft = np.float32 if compare == "f32" else np.float64
    flat = x.reshape(-1)
    finite = np.isfinite(flat)
    xs = np.where(finite, flat, 0).astype(ft)
    idx = np.searchsorted(p.thresholds, xs, side="right")
    if mode == "stochastic":
        idx = _stochastic_step(p, xs, idx, seed, _index(index, flat.size), ft)
    code = p.codes[idx]
    code = np.where(finite, code, _special_codes(fmt, flat))
    zero = np.flatnonzero(p.values == 0)
    if zero.size and finite.any():  # negatives rounding to zero keep the sign where -0 exists
        neg = np.signbit(flat) & (idx == zero[0]) & finite
        if neg.any():
            code = np.where(neg, fmt.encode(np.array([-0.0]))[0], code)
    dt = np.uint8 if fmt.bits <= 8 else np.uint16
    return code.astype(dt).reshape(x.shape)


def _index(index, size: int) -> np.ndarray:
    if index is None:
        return np.arange(size, dtype=np.uint64)
    return np.broadcast_to(np.asarray(index, np.int64), (size,)).astype(np.uint64)


def _stochastic_step(p: Plan, xs, idx, seed: int, index, ft) -> np.ndarray:
    """Round the "down" neighbour up with probability (x - lower) / gap, as kernels do:
    up where (bits >> 8) * (gap * 2^-24) < x - lower (= u * gap, both exact scalings)."""
    d = (xs - p.values[idx].astype(ft)).astype(ft)
    u24 = (random_bits(seed, index) >> np.uint32(8)).astype(ft)
    with np.errstate(invalid="ignore"):
        go = (u24 * p.gaps[idx]).astype(ft) < d
    return idx + go


def _stochastic_bf16(fmt, x: np.ndarray, seed: int, index) -> np.ndarray:
    """float32 -> bf16 codes on the bits, exactly the table rule: the low 16 bits are the
    distance to the truncated neighbour in units of gap * 2^-16, so a positive x rounds up
    (magnitude + 1) where (bits >> 16) < low and a negative one down where bits + low carries;
    overflow past max saturates, NaN and infinities keep their codes."""
    u = np.ascontiguousarray(x).reshape(-1).view(np.uint32)
    low, trunc = u & np.uint32(0xFFFF), (u >> np.uint32(16)).astype(np.uint32)
    r16 = random_bits(seed, _index(index, u.size)) >> np.uint32(16)
    neg = (u >> np.uint32(31)).astype(bool)
    inc = np.where(neg, r16 + low >= np.uint32(1 << 16), r16 < low) & np.isfinite(x.reshape(-1))
    code = trunc + inc
    over = (code & np.uint32(0x7FFF)) == np.uint32(0x7F80)
    code = np.where(over & inc, (code & np.uint32(0x8000)) | np.uint32(0x7F7F), code)
    code = code.astype(np.uint16)
    nan = np.isnan(x.reshape(-1))
    if nan.any():
        code[nan] = fmt.encode(x.reshape(-1)[nan])
    return code.reshape(x.shape)


def _special_codes(fmt, x: np.ndarray) -> np.ndarray:
    """Codes of +-inf and NaN entries of `x` (as the format's default encoder gives them)."""
    safe = np.where(np.isfinite(x), 0, x)
    return np.asarray(fmt.encode(safe), np.int64)


def _encode_f32(fmt, x: np.ndarray, mode: str, seed: int, index) -> np.ndarray:
    """Rounding float64 to float32 (float32 input is already exact)."""
    if x.dtype == np.float32:
        return np.ascontiguousarray(x).view(np.uint32)
    flat = x.reshape(-1)
    with np.errstate(over="ignore"):
        r = np.clip(flat, -fmt.max, fmt.max).astype(np.float32)
    r64 = r.astype(np.float64)
    c = np.clip(flat, -fmt.max, fmt.max)
    lower = np.where(r64 > c, np.nextafter(r, np.float32(-np.inf)), r)
    upper = np.where(r64 < c, np.nextafter(r, np.float32(np.inf)), r)
    if mode == "down":
        r = lower
    elif mode == "up":
        r = upper
    elif mode == "toward_zero":
        r = np.where(c >= 0, lower, upper)
    elif mode == "nearest_away":
        lo, hi = lower.astype(np.float64), upper.astype(np.float64)
        tie = (c - lo) == (hi - c)
        r = np.where(tie & (lo != hi), np.where(c >= 0, upper, lower), r)
    else:
        lo, hi = lower.astype(np.float64), upper.astype(np.float64)
        u = uniform(seed, _index(index, flat.size), np.float64)
        r = np.where(u * (hi - lo) < c - lo, upper, lower)
    r = np.where(np.isfinite(flat), r, flat.astype(np.float32))
    return np.ascontiguousarray(r, np.float32).view(np.uint32).reshape(x.shape)
