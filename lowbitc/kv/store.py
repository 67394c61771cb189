"""Packed pages of a quantized KV cache: one (key format, value format) pair.

Head-major pages `[heads, tokens, ...]`, each (head, token) row of head_dim codes one LSB-first
bit stream in uint32 words (u8/i8: plain bytes), written in place by the `kv_quantize.lbk`
kernels: attention reads one head's run of tokens as one contiguous stream. Keys carry a
scale (and zero point) per channel and group of `group` tokens (KIVI), values one per token and
group of `group_v` channels. Zero points exist for formats without negative values (unsigned
integers: min-max scaling); the others scale symmetrically by max |x|.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lowbitc import formats
from lowbitc.errors import UserArgumentError
from lowbitc.ir.types import is_machine, numpy_dtype
from lowbitc.kernels import get_kernel
from lowbitc.packing import unpack
from lowbitc.signature import words_for

_NONE = np.zeros((1, 1, 1), np.float32)  # the kernels' stand-in for absent zero points


def has_zero_point(fmt) -> bool:
    """Formats without negative values take min-max scales with zero points."""
    return bool(fmt.min >= 0)


def quantize_params(fmt) -> dict:
    """The kv_quantize kernels' format parameters."""
    zp = has_zero_point(fmt)
    return {"W": fmt, "ZP": zp, "ROUND": is_machine(fmt.name),
            "QMIN": float(fmt.min), "QMAX": float(fmt.max)}


def code_array(fmt, heads: int, tokens: int, dim: int) -> np.ndarray:
    """Zeroed storage for `tokens` rows of codes of `fmt` per head."""
    if is_machine(fmt.name):
        return np.zeros((heads, tokens, dim), numpy_dtype(fmt.name))
    return np.zeros((heads, tokens, words_for(dim, fmt.bits)), np.uint32)


def decode_codes(fmt, words: np.ndarray, dim: int) -> np.ndarray:
    """f32 values of stored codes [H, T, *] (before scales)."""
    h, t = words.shape[:2]
    if is_machine(fmt.name):
        return words.astype(np.float32)
    codes = unpack(words.reshape(h * t, -1), fmt.bits, dim)
    return fmt.decode(codes).reshape(h, t, dim)


@dataclass
class PackedStore:
    """Quantized tokens of one format pair; `n` tokens, pages for `cap` (a multiple of group)."""

    fmt_k: object
    fmt_v: object
    heads: int
    dim: int
    group: int
    group_v: int
    backend: str = "llvm"
    n: int = 0
    sealed: bool = False  # its last key group was padded (flush): it takes no more tokens
    arrays: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.arrays = self._allocate(0)

    def _allocate(self, cap: int) -> dict:
        h, d = self.heads, self.dim
        kzp, vzp = has_zero_point(self.fmt_k), has_zero_point(self.fmt_v)
        return {  # all head-major: a head's run of tokens (or groups) is contiguous
            "k": code_array(self.fmt_k, h, cap, d),
            "ks": np.zeros((h, cap // self.group, d), np.float32),
            "kz": np.zeros((h, cap // self.group, d), np.float32) if kzp else None,
            "v": code_array(self.fmt_v, h, cap, d),
            "vs": np.zeros((h, cap, d // self.group_v), np.float32),
            "vz": np.zeros((h, cap, d // self.group_v), np.float32) if vzp else None,
        }

    @property
    def cap(self) -> int:
        return self.arrays["k"].shape[1]

    def _reserve(self, tokens: int) -> None:
        """Pages for `tokens` tokens, growing by doubling (amortised copies)."""
        if tokens <= self.cap:
            return
        want = max(tokens, 2 * self.cap, 4 * self.group)
        grown = self._allocate(-(-want // self.group) * self.group)
        for name, a in self.arrays.items():
            if a is not None:
                grown[name][:, :a.shape[1]] = a
        self.arrays = grown

    def append(self, k: np.ndarray, v: np.ndarray) -> None:
        """Quantize f32 tokens [heads, t, dim] into the pages (t a multiple of `group`, or any
        t with the last key group padded by repeating the last token: the store is sealed)."""
        t = k.shape[1]
        if t == 0:
            return
        pad = -t % self.group
        if pad:
            k = np.concatenate([k, np.repeat(k[:, -1:], pad, axis=1)], axis=1)
            self.sealed = True
        self._reserve(self.n + t + pad)
        a = self.arrays
        qk = get_kernel("kv_quantize", self.backend, kernel="quantize_keys", G=self.group,
                        D=self.dim, **quantize_params(self.fmt_k))
        qk(np.ascontiguousarray(k, np.float32), a["k"], a["ks"],
           _NONE if a["kz"] is None else a["kz"], self.n)
        qv = get_kernel("kv_quantize", self.backend, kernel="quantize_values", VG=self.group_v,
                        D=self.dim, **quantize_params(self.fmt_v))
        qv(np.ascontiguousarray(v, np.float32), a["v"], a["vs"],
           _NONE if a["vz"] is None else a["vz"], self.n)
        self.n += t

    def dequantize(self) -> tuple[np.ndarray, np.ndarray]:
        """The stored tokens' f32 keys and values [heads, n, dim] (exactly what attention
        reads)."""
        a, n, g = self.arrays, self.n, self.group
        k = decode_codes(self.fmt_k, a["k"][:, :n], self.dim)
        groups = np.arange(n) // g
        if a["kz"] is not None:
            k = k - a["kz"][:, groups]
        k = k * a["ks"][:, groups]
        v = decode_codes(self.fmt_v, a["v"][:, :n], self.dim).reshape(self.heads, n, -1,
                                                                      self.group_v)
        if a["vz"] is not None:
            v = v - a["vz"][:, :n, :, None]
        v = v * a["vs"][:, :n, :, None]
        return k.astype(np.float32), v.reshape(self.heads, n, self.dim).astype(np.float32)

    def nbytes(self) -> int:
        """Bytes of the stored tokens: codes (whole words per row) and scales, zero points."""
        a, n = self.arrays, self.n
        groups = -(-n // self.group)
        per_token = sum(a[x][:, :1].nbytes for x in ("k", "v", "vs", "vz") if a[x] is not None)
        per_group = sum(a[x][:, :1].nbytes for x in ("ks", "kz") if a[x] is not None)
        return n * per_token + groups * per_group

    def allocated(self) -> int:
        """Bytes of every page, used or not."""
        return sum(a.nbytes for a in self.arrays.values() if a is not None)

    def attention_args(self) -> list:
        """The attention_split kernel's cache arguments (k, ks, kz, v, vs, vz)."""
        a = self.arrays
        return [a["k"], a["ks"], _NONE if a["kz"] is None else a["kz"],
                a["v"], a["vs"], _NONE if a["vz"] is None else a["vz"]]

    def attention_params(self) -> dict:
        return {"WK": self.fmt_k, "WV": self.fmt_v, "QUANT": True,
                "KZP": self.arrays["kz"] is not None, "VZP": self.arrays["vz"] is not None,
                "G": self.group, "VG": self.group_v}


def lookup(fmt, arg: str):
    """A format object from a name or format (errors name the argument)."""
    try:
        f = formats.lookup(fmt if isinstance(fmt, str) else formats.register(fmt))
        if not 1 <= f.bits <= 8:
            raise ValueError(f"{f.bits} bits")
    except (ValueError, AttributeError) as e:
        raise UserArgumentError(f"{arg}: expected a 1..8-bit lowbitc format name, got "
                                f"{fmt!r} ({e})") from None
    return f
