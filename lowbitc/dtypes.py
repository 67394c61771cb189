"""Number formats of 1 to 8 bits (plus f16/bf16/f32): what each code means, exactly.

`dtype(name)` returns a frozen, hashable format object; `decode` maps codes to float32 and
`encode` maps floats to codes with round-to-nearest, ties-to-even (RNE). Rules shared by
every format:

- Ties go to the neighbour whose significand is even, i.e. whose code is even for integer,
  bipolar and code-book formats and for floats with mantissa bits. Floats without mantissa
  bits (m = 0, e.g. f8e8m0fnu) have significand 1 on every normal code, so a tie between two
  normal values rounds up in magnitude (as ml_dtypes does) and a tie with zero rounds to zero.
- Finite values beyond the range saturate to max (or min); +-inf also saturates in formats
  without infinities. Negative zero and negatives rounding to zero keep the sign where a
  -0 code exists.
- NaN becomes the format's NaN code (sign kept where NaN is signed), or raises ValueError.

One piece (just over 400 lines): the format classes, their code tables and the name registry
that builds them; the rounding machinery lives in lowbitc.encoding.
"""

from __future__ import annotations

import functools
import hashlib
import re
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
MACHINE = {"f32": (8, 23), "f16": (5, 10), "bf16": (8, 7)}
# name: (exp_bits, man_bits, bias, special), bit-exact with the ml_dtypes type of that name
_F8 = {
    "f8e4m3fn": (4, 3, 7, "fn"),
    "f8e4m3": (4, 3, 7, "ieee"),
    "f8e5m2": (5, 2, 15, "ieee"),
    "f8e4m3fnuz": (4, 3, 8, "fnuz"),
    "f8e5m2fnuz": (5, 2, 16, "fnuz"),
    "f8e3m4": (3, 4, 3, "ieee"),
    "f8e8m0fnu": (8, 0, 127, "e8m0"),
}
_FN_ALIASES = {"f4e2m1fn": "f4e2m1", "f6e2m3fn": "f6e2m3", "f6e3m2fn": "f6e3m2"}
NF4 = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)  # fmt: skip  # bitsandbytes' NF4 table (QLoRA), as float32 constants


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


_INT_RE = re.compile(r"([uib])(\d+)")
_FLOAT_RE = re.compile(r"f(\d+)e(\d+)m(\d+)")
_KIND = {"u": "uint", "i": "int", "b": "bipolar"}


@functools.cache
def _by_name(name: str) -> Format:
    if name in _F8:
        x, m, bias, special = _F8[name]
        return FloatFormat(name, 8, x, m, bias, special != "e8m0", special)
    if name in _FN_ALIASES:
        base = _by_name(_FN_ALIASES[name])
        return FloatFormat(name, base.bits, base.exp_bits, base.man_bits, base.bias, True, "finite")
    if name in MACHINE:
        x, m = MACHINE[name]
        return FloatFormat(name, 1 + x + m, x, m, (1 << (x - 1)) - 1, True, "ieee")
    if name == "nf4":
        return CodebookFormat("nf4", tuple(float(np.float32(v)) for v in NF4))
    if mt := _INT_RE.fullmatch(name):
        bits = int(mt.group(2))
        if not 1 <= bits <= 8:
            raise UserArgumentError(f"dtype: width of {name!r} must be 1..8, got {bits}")
        return IntFormat(name, bits, _KIND[mt.group(1)])
    if mt := _FLOAT_RE.fullmatch(name):
        n, x, m = (int(g) for g in mt.groups())
        if n <= 7 and x >= 1 and 1 + x + m == n:
            return FloatFormat(name, n, x, m, (1 << (x - 1)) - 1, True, "finite")
        raise UserArgumentError(
            f"dtype: {name!r} is not a format: fNeXmY needs N <= 7, X >= 1 and 1+X+Y == N "
            f"(8-bit floats: {', '.join(_F8)})"
        )
    raise UserArgumentError(
        f"dtype: unknown format {name!r}; expected one of uN/iN/bN (N = 1..8), fNeXmY "
        f"(N <= 7), {', '.join(_F8)}, {', '.join(_FN_ALIASES)}, nf4, f16, bf16, f32"
    )


def dtype(name: str | Format) -> Format:
    """The format called `name` (a format object is returned unchanged)."""
    if isinstance(name, IntFormat | FloatFormat | CodebookFormat):
        return name
    if not isinstance(name, str):
        raise TypeError(f"dtype: expected a format name (str), got {type(name).__name__}")
    return _by_name(name)


def dtypes() -> list[str]:
    """Names of every built-in 1-8-bit format (f16/bf16/f32 are accepted but not listed)."""
    names = [f"{k}{n}" for k in "uib" for n in range(1, 9)]
    names += [f"f{n}e{x}m{n - 1 - x}" for n in range(2, 8) for x in range(1, n)]
    return names + list(_FN_ALIASES) + list(_F8) + ["nf4"]


def codebook(values, name: str | None = None) -> CodebookFormat:
    """A code-book format over 2..256 strictly increasing finite float32 `values` (-0.0 may
    precede 0.0: both zeros keep their sign, as bitsandbytes' FP4 has them)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    f = v.astype(np.float32)
    if not 2 <= f.size <= 256:
        raise UserArgumentError(f"values: expected 2..256 values, got {f.size}")
    if not np.isfinite(f).all() or (f.astype(np.float64) != v).any():
        raise UserArgumentError("values: expected finite values exactly representable in float32")
    step = np.diff(f)
    signed_zeros = (step == 0) & (f[:-1] == 0) & np.signbit(f[:-1]) & ~np.signbit(f[1:])
    if not ((step > 0) | signed_zeros).all():
        raise UserArgumentError("values: expected strictly increasing values, got " + str(f))
    if name is None:
        name = f"cb{f.size}_" + hashlib.sha1(f.tobytes()).hexdigest()[:8]
    elif not isinstance(name, str) or not name:
        raise TypeError(f"name: expected a non-empty str, got {name!r}")
    return CodebookFormat(name, tuple(float(t) for t in f))
