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

This module is the name registry (`dtype`, `dtypes`, `codebook`); the format classes and
their code tables are in lowbitc.format_types, the rounding machinery in lowbitc.encoding.
"""

from __future__ import annotations

import functools
import hashlib
import re

import numpy as np

from lowbitc.encoding import TABLE_MIN_SIZE  # noqa: F401  (re-exported)
from lowbitc.errors import UserArgumentError
from lowbitc.format_types import (  # noqa: F401  (re-exported: lowbitc.dtypes.FloatFormat, ...)
    INT_KINDS,
    SPECIALS,
    CodebookFormat,
    FloatFormat,
    Format,
    IntFormat,
)

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
