"""Layout-specific packings of b-bit codes, and the host-side transforms to and from the
canonical packing (DESIGN.md "Storage and quantization"; described in docs/packing.md).

`Packing(bits, step)`, "lanes" packing: each row is cut into steps of `step` codes (the last
step padded with code 0), and every step stores its codes as bit planes of power-of-two
widths (3 = 2+1, 5 = 4+1, 6 = 4+2, 7 = 4+2+1; the first plane holds the low bits), one after
the other. A plane of width p keeps code i = 16*t + l of the step (t = i // 16 the sub-vector,
l = i % 16 the lane) in a word chosen so that one vector load of the plane's words feeds lane
l of every sub-vector with a shift and a mask, never a cross-lane shuffle:
- when a lane's codes of the step fit in one word (T*p <= 32, T = step // 16), the plane has
  n = T*p/2 words; lane l uses word l % n, slot (l // n)*T + t (bit slot*p);
- otherwise lane l's codes fill whole words: word 16*(t // s) + l, slot t % s (s = 32 // p).

`Packing(bits, step, tile)` with `tile` > 0 stores the same steps block by block: within a
block of `tile` consecutive rows (the last block of a tensor may have fewer, L), step s of
row r is at word block*tile*wpr + (s*L + r % tile)*step_words, so a window of a block's rows
is one contiguous run of memory (one stream for the hardware prefetchers, not a stream per
row).

`RowsPacking(bits)`, "rows" packing ("rows16"): 16 consecutive rows share every vector, one
row per lane, so a dot with few activation rows accumulates 16 outputs per vector with no
horizontal sums. Rows are cut into steps of 32 codes (the last padded with code 0); a step
of one row is `bits` words: per bit plane of width p (as above), p words, word w holding codes
w*(32/p) .. of the step, code at bit slot*p. Within a block of 16 rows (the last block of a
tensor may have fewer, L), word j of step s of row r is stored at
block*16*wpr + (s*bits + j)*L + r % 16 (wpr: words per row), so the block's words for one step
are `bits` consecutive 64-byte vectors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from lowbitc.errors import UserArgumentError
from lowbitc.packing import pack, unpack

LANES = 16  # i32 lanes of a 512-bit vector
_NAME = re.compile(r"lanes(\d+)x(\d+)(?:t(\d+))?")


def planes(bits: int) -> tuple[int, ...]:
    """Power-of-two plane widths of a `bits`-bit code, widest (low bits) first."""
    return tuple(p for p in (8, 4, 2, 1) if bits & p)


@dataclass(frozen=True)
class Plane:
    """One bit plane of a step: its width, its first code bit, its first word in the step and
    `slots[w, s]`, the index in the step of the code held at slot s of word w."""

    width: int
    shift: int
    offset: int
    slots: np.ndarray

    @property
    def words(self) -> int:
        return self.slots.shape[0]


def _slots(width: int, step: int) -> np.ndarray:
    t_count = step // LANES
    per_word = 32 // width
    if t_count * width <= 32:
        n = t_count * width // 2
        w, s = np.meshgrid(np.arange(n), np.arange(per_word), indexing="ij")
        lane = (s // t_count) * n + w
        return (s % t_count) * LANES + lane
    w, s = np.meshgrid(np.arange(step * width // 32), np.arange(per_word), indexing="ij")
    return ((w // LANES) * per_word + s) * LANES + w % LANES


@dataclass(frozen=True)
class Packing:
    """The lanes packing of `bits`-bit codes in steps of `step` codes (a multiple of 32)."""

    bits: int
    step: int = 128
    tile: int = 0  # rows a block whose steps interleave (0: each row's steps in turn)

    def __post_init__(self) -> None:
        if not 1 <= self.bits <= 8 or self.step % 32 or not 32 <= self.step <= 512:
            raise UserArgumentError(
                f"packing: expected bits in 1..8 and a step multiple of 32 "
                f"in 32..512, got bits={self.bits}, step={self.step}"
            )
        if self.tile < 0 or self.tile & (self.tile - 1):
            raise UserArgumentError(
                f"packing: expected a tile of 0 or a power of two rows, got {self.tile}")

    @property
    def name(self) -> str:
        """The packing's name as the IR records it (`load_codes {packing=...}`)."""
        return f"lanes{LANES}x{self.step}" + (f"t{self.tile}" if self.tile else "")

    @cached_property
    def planes(self) -> tuple[Plane, ...]:
        out, shift, offset = [], 0, 0
        for p in planes(self.bits):
            out.append(Plane(p, shift, offset, _slots(p, self.step)))
            shift += p
            offset += self.step * p // 32
        return tuple(out)

    @property
    def step_words(self) -> int:
        return self.step * self.bits // 32

    def words_per_row(self, count: int) -> int:
        """uint32 words of a row of `count` codes (whole steps)."""
        return -(-count // self.step) * self.step_words

    def from_codes(self, codes: np.ndarray) -> np.ndarray:
        """uint8 codes [N, K] -> words [N, words_per_row(K)]."""
        n, k = codes.shape
        steps = -(-k // self.step)
        c = np.zeros((n, steps, self.step), np.uint32)
        c.reshape(n, steps * self.step)[:, :k] = codes
        # the words start on a 64-byte line, as the other packings' do (a step of 16 words one
        # line, not two; Zen 4 ran the mixture and u5 GEMVs alike either way, interleaved)
        out = _aligned_words(n * steps * self.step_words).reshape(n, steps, self.step_words)
        out[...] = 0
        for pl in self.planes:
            v = (c >> np.uint32(pl.shift)) & np.uint32((1 << pl.width) - 1)
            dst = out[:, :, pl.offset : pl.offset + pl.words]
            for s in range(pl.slots.shape[1]):
                dst |= v[:, :, pl.slots[:, s]] << np.uint32(s * pl.width)
        return self._tiled(out, n, steps, inverse=False)

    def _tiled(self, words: np.ndarray, n: int, steps: int, inverse: bool) -> np.ndarray:
        """Words [N, steps, step_words] (row by row) -> [N, words_per_row] in this packing's
        order; `inverse`: the other way."""
        sw = self.step_words
        if not self.tile:
            return words.reshape(n, steps, sw) if inverse else words.reshape(n, steps * sw)
        out = np.empty((n, steps * sw), np.uint32) if inverse else \
            _aligned_words(n * steps * sw).reshape(n, steps * sw)
        for b in range(0, n, self.tile):
            rows = min(self.tile, n - b)
            if inverse:
                src = words[b:b + rows].reshape(steps, rows, sw)
                out[b:b + rows] = src.transpose(1, 0, 2).reshape(rows, steps * sw)
            else:
                out[b:b + rows] = words[b:b + rows].transpose(1, 0, 2).reshape(rows, steps * sw)
        return out if not inverse else out.reshape(n, steps, sw)

    def to_codes(self, words: np.ndarray, count: int) -> np.ndarray:
        """Inverse of `from_codes`: words [N, words_per_row(count)] -> uint8 codes [N, count]."""
        n = words.shape[0]
        steps = -(-count // self.step)
        w = self._tiled(np.asarray(words, np.uint32), n, steps, inverse=True)
        c = np.zeros((n, steps, self.step), np.uint32)
        for pl in self.planes:
            src = w[:, :, pl.offset : pl.offset + pl.words]
            mask = np.uint32((1 << pl.width) - 1)
            for s in range(pl.slots.shape[1]):
                c[:, :, pl.slots[:, s]] |= ((src >> np.uint32(s * pl.width)) & mask) << np.uint32(
                    pl.shift
                )
        return c.reshape(n, steps * self.step)[:, :count].astype(np.uint8)

    def from_canonical(self, words: np.ndarray, count: int) -> np.ndarray:
        """Canonical words [N, ceil(count*bits/32)] -> this packing's words."""
        return self.from_codes(unpack(words, self.bits, count).reshape(-1, count))

    def to_canonical(self, words: np.ndarray, count: int) -> np.ndarray:
        return pack(self.to_codes(words, count), self.bits)


@dataclass(frozen=True)
class RowsPacking:
    """The rows packing of `bits`-bit codes: 16 rows interleaved per vector, steps of 32."""

    bits: int
    step = 32  # codes per step of a row: `bits` words

    def __post_init__(self) -> None:
        if not 1 <= self.bits <= 8:
            raise UserArgumentError(f"packing: expected bits in 1..8, got bits={self.bits}")

    @property
    def name(self) -> str:
        return f"rows{LANES}"

    @cached_property
    def planes(self) -> tuple[tuple[int, int, int], ...]:
        """(width, first code bit, first word in the step) per bit plane, low bits first."""
        out, shift = [], 0
        for p in planes(self.bits):
            out.append((p, shift, shift))  # a plane of width p has p words per step
            shift += p
        return tuple(out)

    @property
    def step_words(self) -> int:
        return self.bits

    def words_per_row(self, count: int) -> int:
        return -(-count // self.step) * self.bits

    def _step_words(self, codes: np.ndarray) -> np.ndarray:
        """uint8 codes [N, K] -> per-row words [N, steps * bits] (rows not interleaved)."""
        n, k = codes.shape
        steps = -(-k // self.step)
        c = np.zeros((n, steps, self.step), np.uint32)
        c.reshape(n, steps * self.step)[:, :k] = codes
        out = np.zeros((n, steps, self.bits), np.uint32)
        for p, shift, first in self.planes:
            v = (c >> np.uint32(shift)) & np.uint32((1 << p) - 1)
            per = 32 // p
            v = v.reshape(n, steps, p, per) << (np.arange(per, dtype=np.uint32) * np.uint32(p))
            out[:, :, first : first + p] = np.bitwise_or.reduce(v, axis=3)
        return out.reshape(n, steps * self.bits)

    def _blocks(self, n: int):
        """(first row, rows) of every block of up to 16 rows."""
        return ((r, min(LANES, n - r)) for r in range(0, n, LANES))

    def from_codes(self, codes: np.ndarray) -> np.ndarray:
        """uint8 codes [N, K] -> words [N, words_per_row(K)], 64-byte aligned."""
        rows = self._step_words(codes)
        n, wpr = rows.shape
        out = _aligned_words(n * wpr)
        for r, cnt in self._blocks(n):
            out[r * wpr : (r + cnt) * wpr] = rows[r : r + cnt].T.reshape(-1)
        return out.reshape(n, wpr)

    def to_codes(self, words: np.ndarray, count: int) -> np.ndarray:
        n = words.shape[0]
        wpr = self.words_per_row(count)
        flat = np.asarray(words, np.uint32).reshape(-1)
        rows = np.empty((n, wpr), np.uint32)
        for r, cnt in self._blocks(n):
            rows[r : r + cnt] = flat[r * wpr : (r + cnt) * wpr].reshape(wpr, cnt).T
        steps = wpr // self.bits
        w = rows.reshape(n, steps, self.bits)
        c = np.zeros((n, steps, self.step), np.uint32)
        for p, shift, first in self.planes:
            per = 32 // p
            sh = np.arange(per, dtype=np.uint32) * np.uint32(p)
            v = (w[:, :, first : first + p, None] >> sh) & np.uint32((1 << p) - 1)
            c |= v.reshape(n, steps, self.step) << np.uint32(shift)
        return c.reshape(n, steps * self.step)[:, :count].astype(np.uint8)

    def from_canonical(self, words: np.ndarray, count: int) -> np.ndarray:
        return self.from_codes(unpack(words, self.bits, count).reshape(-1, count))

    def to_canonical(self, words: np.ndarray, count: int) -> np.ndarray:
        return pack(self.to_codes(words, count), self.bits)


def _aligned_words(count: int) -> np.ndarray:
    """An uninitialised uint32 array of `count` words starting on a 64-byte line."""
    raw = np.empty(count * 4 + 64, np.uint8)
    first = -raw.ctypes.data % 64
    return raw[first : first + count * 4].view(np.uint32)


def aligned_copy(a: np.ndarray) -> np.ndarray:
    """A copy of array `a` (any shape and dtype) starting on a 64-byte line, as the packings
    make their words: a plain numpy copy of a large array starts 16 bytes past one (glibc's
    mmap'd chunks), so every 64-byte vector load of it would straddle two lines."""
    raw = np.empty(a.nbytes + 64, np.uint8)
    first = -raw.ctypes.data % 64
    out = raw[first : first + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


@dataclass(frozen=True)
class PlanesPacking(RowsPacking):
    """The rows packing with every code bit in a plane of its own ("planes16"): bit j of the
    32 codes of a step is word j of the step, so four consecutive codes' bit j form one
    nibble (a dot looks up the nibble in a 16-entry table of partial activation sums)."""

    @property
    def name(self) -> str:
        return f"planes{LANES}"

    @cached_property
    def planes(self) -> tuple[tuple[int, int, int], ...]:
        return tuple((1, j, j) for j in range(self.bits))


# up to this width, a weight affine in the code bits (integer formats) goes bit plane by bit
# plane: one table permute and add per plane and 4 codes, against one per code above
PLANES_MAX_BITS = 3


def planes_format(values, bits: int) -> bool:
    """Whether a weight of these code values (every code's, in order) takes the planes
    packing in a GEMV: at most PLANES_MAX_BITS bits and affine in the code bits. Here, not
    in passes/bitpack_lanes.py, so that ops.py's cache-hit path imports no compiler pass."""
    return bits <= PLANES_MAX_BITS and affine_bits(values, bits) is not None


def affine_bits(values: np.ndarray, bits: int) -> tuple[float, list[float]] | None:
    """(a, [c_j]) with value(q) = a + sum_j c_j * bit_j(q) exactly for every code q (the
    integer formats: unsigned, two's complement, bipolar), or None."""
    v = np.asarray(values, np.float64)
    if len(v) != 1 << bits or not np.all(np.isfinite(v)):
        return None
    a, c = v[0], [v[1 << j] - v[0] for j in range(bits)]
    q = np.arange(1 << bits)
    rebuilt = a + sum(cj * ((q >> j) & 1) for j, cj in enumerate(c))
    return (float(a), [float(x) for x in c]) if np.array_equal(rebuilt, v) else None


PACKINGS = (Packing, RowsPacking, PlanesPacking)  # the layout-specific packings


def parse(name: str, bits: int) -> Packing | RowsPacking | None:
    """The packing an IR `packing` attribute names ("" is the canonical packing: None)."""
    if not name:
        return None
    if name == f"rows{LANES}":
        return RowsPacking(bits)
    if name == f"planes{LANES}":
        return PlanesPacking(bits)
    m = _NAME.fullmatch(name)
    if m is None or int(m.group(1)) != LANES:
        raise UserArgumentError(
            f"packing: expected '', 'rows{LANES}', 'planes{LANES}' or 'lanes{LANES}xSTEP[tROWS]', "
            f"got {name!r}")
    return Packing(bits, int(m.group(2)), int(m.group(3) or 0))


@dataclass(frozen=True, eq=False)
class PackedWords:
    """Codes already in a kernel's packing: what a kernel's packed parameter takes to skip
    the transform from canonical words (QTensor.packed_as returns one, cached)."""

    words: np.ndarray
    packing: Packing
    count: int
    rows: int | None = None  # rows of the weight (packings whose words do not keep them)


def cached_packing(holder, codes: np.ndarray, packing: Packing) -> PackedWords:
    """`codes` [N, K] in `packing`, transformed once and cached on `holder` (a QTensor or
    TableQTensor: in its `_repacked` dict, never saved in its file)."""
    cache = holder.__dict__.setdefault("_repacked", {})
    words = cache.get(packing)
    if words is None:
        words = cache[packing] = PackedWords(packing.from_codes(codes), packing, codes.shape[1],
                                             codes.shape[0])
    return words
