"""The tensor-core weight packing: b-bit codes ordered for the B fragment of
mma.sync.m16n8k16 so that every lane fetches its codes with 128-bit loads (docs/packing.md,
"The mma packing").

Weights W [N, K] are the mma's B = W^T (K x N). A B fragment (n8 x k16) gives lane l the codes
i = 0..3 at n = l // 4, k = 2*(l % 4) + (i & 1) + 8*(i >> 1) (PTX ISA 9.7.14.5.8). N and K are
padded with code 0 to whole tiles of 64 x 64; a tile is 8 x 4 fragments (nf = 0..7 along N,
kf = 0..3 along K) and lane l holds 128 of its codes, code c = (kf*8 + nf)*4 + i: one k16 step
of 8 fragments after another. The codes are stored as bit planes of power-of-two widths p
(3 = 2+1, 5 = 4+1, 6 = 4+2, 7 = 4+2+1; the widest holds the low bits). Plane p of a tile is p
warp-wide 128-bit loads: load j gives lane l four words holding its codes c = j*128/p ..
(j+1)*128/p - 1, 32/p per word. Inside a word the codes sit in the order of
`backends/numba_cuda/interleave.order` (even codes, then odd) when `interleaved`, so codes 2m
and 2m+1 (one f16x2 register of the fragment) land 16 bits apart and one LOP3 (after a shift)
moves the pair into an f16x2 register; otherwise in order.
A row of words holds one N tile (64 output features) along all of K, plane by plane (plane
major: all K tiles of the widest plane, then the next plane), so that within a plane a lane's
words for K step `k16` sit at a fixed stride (2p words per code of K) from one base per lane:
one address increment per plane serves every K step. Inside a plane: K tiles, then loads,
lanes, words: see `mma_code_index`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from lowbitc.errors import UserArgumentError
from lowbitc.packing import pack, unpack

TILE_N = TILE_K = 64
WARP = 32
CODES_PER_LANE = TILE_N * TILE_K // WARP  # 128 codes of a tile per lane


def plane_widths(bits: int) -> tuple[int, ...]:
    """Power-of-two plane widths of a `bits`-bit code, widest (low bits) first."""
    return tuple(p for p in (8, 4, 2, 1) if bits & p)


def word_order(width: int, interleaved: bool) -> np.ndarray:
    """order[s] = the code (index in its word) at bit slot s of a plane word of `width`."""
    n = 32 // width
    if not interleaved:
        return np.arange(n)
    return np.concatenate([np.arange(0, n, 2), np.arange(1, n, 2)])


def _check_bits(bits) -> int:
    if not isinstance(bits, (int, np.integer)) or not 1 <= bits <= 8:
        raise UserArgumentError(f"mma packing: bits must be an int in 1..8, got {bits!r}")
    return int(bits)


def mma_code_index(n, k, k_total: int, bits: int, interleaved: bool = True):
    """Where code (n, k) of a [N, k_total] weight lives in the mma packing's flat uint32 words.

    Returns one (word, bit) pair of arrays per bit plane (widest plane first; plane q holds
    code bits shift_q .. shift_q + p_q - 1, shift_q = the sum of the wider planes' widths).
    The formula (tn, tk the tile, nf/kf the fragment in it, lane = 4*g + t):
      tn, nl = divmod(n, 64); tk, kl = divmod(k, 64); nf, g = divmod(nl, 8)
      kf, kk = divmod(kl, 16); t = (kk % 8) // 2; i = (kk & 1) + 2*(kk // 8)
      lane = 4*g + t; c = (kf*8 + nf)*4 + i
      per plane p: j, rest = divmod(c, 128/p); w, cw = divmod(rest, 32/p); s = slot of cw
      word = tn*KT*128*bits + KT*128*shift_p + tk*128*p + (j*32 + lane)*4 + w;  bit = s*p
    with KT = ceil(k_total / 64) and s the position of cw in `word_order(p, interleaved)`.
    """
    bits = _check_bits(bits)
    n, k = np.asarray(n, np.int64), np.asarray(k, np.int64)
    if np.any(n < 0) or np.any(k < 0) or np.any(k >= k_total):
        raise UserArgumentError(f"mma_code_index: need 0 <= n and 0 <= k < k_total={k_total}")
    k_tiles = -(-int(k_total) // TILE_K)
    tn, nl = np.divmod(n, TILE_N)
    tk, kl = np.divmod(k, TILE_K)
    nf, g = np.divmod(nl, 8)
    kf, kk = np.divmod(kl, 16)
    t, i = (kk % 8) // 2, (kk & 1) + 2 * (kk // 8)
    lane, c = 4 * g + t, (kf * 8 + nf) * 4 + i
    row = tn * k_tiles * (CODES_PER_LANE * bits)
    out, shift = [], 0
    for p in plane_widths(bits):
        per_word = 32 // p
        j, rest = np.divmod(c, CODES_PER_LANE // p)
        w, cw = np.divmod(rest, per_word)
        slot = np.argsort(word_order(p, interleaved))[cw]
        plane = row + k_tiles * CODES_PER_LANE * shift + tk * CODES_PER_LANE * p
        out.append((plane + (j * WARP + lane) * 4 + w, slot * p))
        shift += p
    return out


@dataclass(frozen=True)
class MmaPacking:
    """The mma packing of `bits`-bit codes (name "mma64x64", or "mma64x64n" not interleaved).

    Words are uint32 [ceil(N/64), ceil(K/64) * 128 * bits]: row r holds output features
    64r .. 64r+63 along all of K, plane after plane (each plane tile after tile).
    """

    bits: int
    interleaved: bool = True

    def __post_init__(self) -> None:
        _check_bits(self.bits)

    @property
    def name(self) -> str:
        return f"mma{TILE_N}x{TILE_K}" + ("" if self.interleaved else "n")

    @property
    def tile_words(self) -> int:
        return CODES_PER_LANE * self.bits

    @cached_property
    def planes(self) -> tuple[tuple[int, int], ...]:
        """(width, first code bit) per plane, widest first."""
        out, shift = [], 0
        for p in plane_widths(self.bits):
            out.append((p, shift))
            shift += p
        return tuple(out)

    def shape(self, rows: int, count: int) -> tuple[int, int]:
        """Shape of the words of a [rows, count] weight."""
        return -(-rows // TILE_N), -(-count // TILE_K) * self.tile_words

    def _lane_codes(self, codes: np.ndarray) -> np.ndarray:
        """uint8 [N, K] -> [NT, KT, 32 lanes, 128 codes c] (zero padded)."""
        n, k = codes.shape
        nt, kt = -(-n // TILE_N), -(-k // TILE_K)
        pad = np.zeros((nt * TILE_N, kt * TILE_K), np.uint8)
        pad[:n, :k] = codes
        # n = ((tn*8 + nf)*8 + g), k = (((tk*4 + kf)*2 + h)*4 + t)*2 + e, i = 2h + e
        x = pad.reshape(nt, 8, 8, kt, 4, 2, 4, 2)  # tn nf g tk kf h t e
        x = x.transpose(0, 3, 2, 6, 4, 1, 5, 7)  # tn tk g t | kf nf h e
        return x.reshape(nt, kt, WARP, CODES_PER_LANE)

    def from_codes(self, codes: np.ndarray) -> np.ndarray:
        """uint8 codes [N, K] (each < 2**bits) -> words (see `shape`)."""
        codes = np.asarray(codes)
        if codes.ndim != 2 or codes.dtype != np.uint8 or (codes.size and codes.max() >> self.bits):
            raise UserArgumentError(f"mma packing: codes must be uint8 [N, K] below 2**{self.bits}"
                                    f", got {codes.dtype} {codes.shape}")
        lanes = self._lane_codes(codes).astype(np.uint32)
        nt, kt = lanes.shape[:2]
        parts = []
        for p, shift in self.planes:
            per_word = 32 // p
            v = (lanes >> np.uint32(shift)) & np.uint32((1 << p) - 1)
            v = v.reshape(nt, kt, WARP, p, 4, per_word).transpose(0, 1, 3, 2, 4, 5)
            v = v[..., word_order(p, self.interleaved)]  # slot s holds code order[s]
            v = v << (np.arange(per_word, dtype=np.uint32) * np.uint32(p))
            parts.append(np.bitwise_or.reduce(v, axis=-1).reshape(nt, -1))
        return np.concatenate(parts, axis=1)

    def to_codes(self, words: np.ndarray, count: int, rows: int | None = None) -> np.ndarray:
        """Inverse of `from_codes`: words -> uint8 codes [rows, count] (rows defaults to the
        padded N, a multiple of 64)."""
        words = np.asarray(words, np.uint32)
        nt = words.shape[0]
        kt = -(-int(count) // TILE_K)
        if words.shape != (nt, kt * self.tile_words):
            raise UserArgumentError(f"mma packing: words of {count} codes per row must have shape"
                                    f" (N/64, {kt * self.tile_words}), got {words.shape}")
        lanes = np.zeros((nt, kt, WARP, CODES_PER_LANE), np.uint32)
        first = 0
        for p, shift in self.planes:
            per_word = 32 // p
            w = words[:, first : first + kt * CODES_PER_LANE * p].reshape(nt, kt, p, WARP, 4, 1)
            v = (w >> (np.arange(per_word, dtype=np.uint32) * np.uint32(p))) & np.uint32(
                (1 << p) - 1)
            codes = np.empty_like(v)
            codes[..., word_order(p, self.interleaved)] = v
            lanes |= codes.transpose(0, 1, 3, 2, 4, 5).reshape(lanes.shape) << np.uint32(shift)
            first += kt * CODES_PER_LANE * p
        x = lanes.reshape(nt, kt, 8, 4, 4, 8, 2, 2)  # tn tk g t kf nf h e
        x = x.transpose(0, 5, 2, 1, 4, 6, 3, 7).reshape(nt * TILE_N, kt * TILE_K)
        rows = nt * TILE_N if rows is None else int(rows)
        return x[:rows, :count].astype(np.uint8)

    def from_canonical(self, words: np.ndarray, count: int) -> np.ndarray:
        """Canonical words [N, ceil(count*bits/32)] -> this packing's words."""
        words = np.asarray(words, np.uint32)
        return self.from_codes(unpack(words, self.bits, count).reshape(words.shape[0], count))

    def to_canonical(self, words: np.ndarray, count: int, rows: int | None = None) -> np.ndarray:
        return pack(self.to_codes(words, count, rows), self.bits)


def pack_for_mma(codes: np.ndarray, bits: int, interleaved: bool = True) -> np.ndarray:
    """uint8 codes [N, K] -> the mma packing's uint32 words (`MmaPacking(bits).from_codes`)."""
    return MmaPacking(bits, interleaved).from_codes(codes)


def unpack_from_mma(words: np.ndarray, bits: int, n: int, k: int,
                    interleaved: bool = True) -> np.ndarray:
    """Inverse of `pack_for_mma`: words -> uint8 codes [n, k]."""
    return MmaPacking(bits, interleaved).to_codes(words, k, n)
