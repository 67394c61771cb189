"""The format classes behind `lowbitc.dtype`: integer, float and code-book formats, each a
frozen dataclass that decodes codes through its value table and encodes floats to codes
(RNE, saturating; the rounding rules are in lowbitc.dtypes' docstring and lowbitc.encoding).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from lowbitc.encoding import (
    TABLE_MIN_SIZE,
    _as_float,
    _encode_by_cast,
    _encode_by_table,
    _float_table,
    _reject_nan,
    _round_float,
)
from lowbitc.errors import UserArgumentError
from lowbitc.rounding import check_rounding, check_seed, encode_rounded

INT_KINDS = ("uint", "int", "bipolar")
SPECIALS = ("finite", "fn", "fnuz", "ieee", "e8m0")


class _Format:
    """Behaviour shared by every format; subclasses define name, bits, kind and the table."""

    __slots__ = ()

    def __str__(self) -> str:
        return self.name

    @property
    def num_codes(self) -> int:
        return 1 << self.bits

    def values(self) -> np.ndarray:
        """float32 value of every code 0..num_codes-1 (NaN where the code is NaN or unused)."""
        if self.bits > 16:
            raise UserArgumentError(f"values(): {self.name} has 2**{self.bits} codes; too many")
        return _table(self).copy()

    def decode(self, codes) -> np.ndarray:
        """float32 values of `codes` (an integer array of codes of this format)."""
        return np.asarray(_table(self)[_check_codes(self, codes)])

    def encode(self, x, rounding: str = "nearest_even", seed: int | None = None) -> np.ndarray:
        """Codes of the float array `x`: RNE, saturating, NaN to the NaN code (else ValueError).

        `rounding` picks another mode of `lowbitc.rounding` (stochastic draws its bits from
        `seed` and each element's flat index). Returns an array of x's shape: uint8
        (uint16/uint32 for f16, bf16 and f32)."""
        x = _as_float(x, "x")
        if not self.has_nan:
            _reject_nan(self, x)
        if check_rounding(rounding) != "nearest_even":
            seed = check_seed(seed) if rounding == "stochastic" else 0
            return encode_rounded(self, np.ascontiguousarray(x), rounding, seed)
        flat = x.reshape(-1)
        if self.bits <= 8 and x.size >= TABLE_MIN_SIZE:
            return _encode_by_table(self, flat).reshape(x.shape)
        return np.asarray(self._encode_exact(flat)).reshape(x.shape)

    def _finite(self) -> np.ndarray:
        t = _table(self)
        return t[np.isfinite(t)]

    @property
    def max(self) -> float:
        return float(self._finite().max())

    @property
    def min(self) -> float:
        """The lowest representable value (0 for unsigned integers)."""
        return float(self._finite().min())

    @property
    def min_subnormal(self) -> float:
        """The smallest positive magnitude (for integers: 1)."""
        f = np.abs(self._finite())
        return float(f[f > 0].min())

    @property
    def min_normal(self) -> float:
        return self.min_subnormal

    @property
    def is_signed(self) -> bool:
        return self.min < 0

    @property
    def has_inf(self) -> bool:
        return False

    @property
    def has_nan(self) -> bool:
        return False


@dataclass(frozen=True, slots=True)
class IntFormat(_Format):
    """Unsigned (`uN`), two's complement (`iN`) or bipolar odd-level (`bN`) integers."""

    name: str
    bits: int
    kind: str

    def int_value(self, codes) -> np.ndarray:
        """int32 value of each code: uint c; int two's complement; bipolar 2c - (2^n - 1)."""
        c = _check_codes(self, codes).astype(np.int32)
        if self.kind == "int":
            return np.where(c >= (1 << (self.bits - 1)), c - (1 << self.bits), c)
        if self.kind == "bipolar":
            return 2 * c - ((1 << self.bits) - 1)
        return c

    def _encode_exact(self, x: np.ndarray) -> np.ndarray:
        n = self.bits
        if self.kind == "bipolar":  # nearest odd value 2k+1 with k = floor(x/2); x == 2k ties
            x = np.clip(x, -(1 << n), 1 << n)
            k = np.floor(x / 2)
            k = np.where(2 * k > x, k - 1, k)  # x/2 can underflow to -0 for tiny negatives
            lo, hi = k + (1 << (n - 1)) - 1, k + (1 << (n - 1))  # codes of 2k-1 and 2k+1
            c = np.where((x == 2 * k) & (hi % 2 == 1), lo, hi)
            return np.clip(c, 0, (1 << n) - 1).astype(np.uint8)
        r = np.rint(x)
        if self.kind == "uint":
            return np.clip(r, 0, (1 << n) - 1).astype(np.uint8)
        r = np.clip(r, -(1 << (n - 1)), (1 << (n - 1)) - 1).astype(np.int16)
        return (r & ((1 << n) - 1)).astype(np.uint8)


@dataclass(frozen=True, slots=True)
class FloatFormat(_Format):
    """Sign/exponent/mantissa floats; `special` says which codes are inf/NaN (see SPECIALS)."""

    name: str
    bits: int
    exp_bits: int
    man_bits: int
    bias: int
    signed: bool
    special: str

    @property
    def kind(self) -> str:
        return "float"

    @property
    def emin(self) -> int:
        """Exponent of the smallest normal value."""
        return -self.bias if self.special == "e8m0" else 1 - self.bias

    @property
    def max_code(self) -> int:
        """Code (magnitude bits) of the largest finite value."""
        mag_bits = self.bits - 1 if self.signed else self.bits
        m = self.man_bits
        return {
            "finite": (1 << mag_bits) - 1,
            "fnuz": (1 << mag_bits) - 1,
            "fn": (1 << mag_bits) - 2,
            "ieee": (((1 << self.exp_bits) - 1) << m) - 1,
            "e8m0": (1 << mag_bits) - 2,
        }[self.special]

    @property
    def max(self) -> float:
        top, m = self.max_code >> self.man_bits, self.max_code & ((1 << self.man_bits) - 1)
        return float(np.ldexp(1 + m / (1 << self.man_bits), top - self.bias))

    @property
    def min(self) -> float:
        return -self.max if self.signed else self.min_normal

    @property
    def min_normal(self) -> float:
        return float(np.ldexp(1.0, self.emin))

    @property
    def min_subnormal(self) -> float:
        return float(np.ldexp(1.0, self.emin - self.man_bits))

    @property
    def is_signed(self) -> bool:
        return self.signed

    @property
    def has_inf(self) -> bool:
        return self.special == "ieee"

    @property
    def has_nan(self) -> bool:
        return self.special != "finite"

    def decode(self, codes) -> np.ndarray:
        if self.bits == 32:
            return _check_codes(self, codes).astype(np.uint32).view(np.float32)
        return np.asarray(_table(self)[_check_codes(self, codes)])

    def _encode_exact(self, x: np.ndarray) -> np.ndarray:
        """Codes (uint8; uint16/uint32 for the 16/32-bit formats) of NaN-checked `x`."""
        if self.bits == 32 or self.name == "f16":
            return _encode_by_cast(self, x)
        if self.name == "bf16" and x.dtype == np.float32:
            return self._encode_bf16(x)
        nan = np.isnan(x)
        inf = np.isinf(x)
        bad = nan | inf
        code = _round_float(self, np.where(bad, 0, x) if bad.any() else x)
        sign = np.signbit(x)
        if self.signed:
            if self.special == "fnuz":
                sign &= code != 0
            code |= sign.astype(code.dtype) << (self.bits - 1)
        if bad.any():
            code = np.where(inf, self._inf_code(sign), code)
            if nan.any():
                code = np.where(nan, self._nan_code(sign), code)
        return code.astype(_code_dtype(self.bits))

    def _encode_bf16(self, x: np.ndarray) -> np.ndarray:
        """float32 -> bf16 by rounding the low 16 bits away (RNE), then saturating."""
        u = np.ascontiguousarray(x).view(np.uint32)
        with np.errstate(over="ignore"):  # only NaN bit patterns wrap
            r = (u + np.uint32(0x7FFF) + ((u >> 16) & 1)) >> 16
        over = ((r & 0x7FFF) == 0x7F80) & np.isfinite(x)
        r = np.where(over, (r & 0x8000) | 0x7F7F, r)
        nan = np.isnan(x)
        if nan.any():
            r = np.where(nan, self._nan_code(np.signbit(x)), r)
        return r.astype(np.uint16)

    def _inf_code(self, sign: np.ndarray) -> np.ndarray:
        """Code of +-inf: the inf code, else saturated to +-max (unsigned: max or min)."""
        mag = ((1 << self.exp_bits) - 1) << self.man_bits if self.has_inf else self.max_code
        if not self.signed:
            return np.where(sign, 0, mag)
        return np.where(sign, (1 << (self.bits - 1)) | mag, mag)

    def _nan_code(self, sign: np.ndarray) -> np.ndarray:
        top = 1 << (self.bits - 1)
        if self.special in ("fnuz", "e8m0"):
            return np.full(sign.shape, top if self.special == "fnuz" else 0xFF)
        quiet = (((1 << self.exp_bits) - 1) << self.man_bits) | (1 << (self.man_bits - 1))
        mag = (top - 1) if self.special == "fn" else quiet
        return np.where(sign, top | mag, mag)


@dataclass(frozen=True, slots=True)
class CodebookFormat(_Format):
    """A table of 2..256 sorted float32 values; code i means table[i]; ties go to the even code."""

    name: str
    table: tuple[float, ...]

    @property
    def kind(self) -> str:
        return "codebook"

    @property
    def bits(self) -> int:
        return max(1, (len(self.table) - 1).bit_length())

    @property
    def min_normal(self) -> float:
        return self.min_subnormal

    def _encode_exact(self, x: np.ndarray) -> np.ndarray:
        t = np.asarray(self.table, dtype=np.float64)
        mid = (t[:-1] + t[1:]) / 2  # exact in float64 for float32 entries
        i = np.searchsorted(mid, x, side="left")
        tie = x == mid[np.minimum(i, len(mid) - 1)]
        code = np.where(tie & (i % 2 == 1), i + 1, i)
        z = np.flatnonzero((t[:-1] == 0) & (t[1:] == 0))  # -0.0, 0.0: the sign of x picks
        if z.size:
            code = np.where(x == 0, z[0] + ~np.signbit(x), code)
        return code.astype(np.uint8)


Format = IntFormat | FloatFormat | CodebookFormat


def _code_dtype(bits: int) -> type:
    return np.uint8 if bits <= 8 else np.uint16 if bits <= 16 else np.uint32


@functools.cache
def _table(fmt: Format) -> np.ndarray:
    """Read-only float32 value of every code."""
    if isinstance(fmt, IntFormat):
        t = fmt.int_value(np.arange(fmt.num_codes)).astype(np.float32)
    elif isinstance(fmt, CodebookFormat):
        t = np.full(fmt.num_codes, np.nan, np.float32)
        t[: len(fmt.table)] = fmt.table
    else:
        t = _float_table(fmt)
    t.flags.writeable = False
    return t


def _check_codes(fmt: Format, codes) -> np.ndarray:
    """`codes` as an integer array whose every entry is a valid code of `fmt`."""
    c = np.asarray(codes)
    if c.dtype.kind not in "iu":
        raise TypeError(f"codes: expected an integer array, got dtype {c.dtype}")
    limit = len(fmt.table) if isinstance(fmt, CodebookFormat) else fmt.num_codes
    if c.size and (int(c.min()) < 0 or int(c.max()) >= limit):
        raise UserArgumentError(
            f"codes: expected values in 0..{limit - 1} for {fmt.name}, got "
            f"min {int(c.min())}, max {int(c.max())}"
        )
    if c.dtype.itemsize > 4 or c.dtype == np.uint32:
        c = c.astype(np.int64)
    return c
