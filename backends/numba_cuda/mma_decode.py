"""How the two codes of a B register become its f16x2 or bf16x2 bits in the mma packing's
steady state (`mma_packed.PackedB`), chosen from the value of every code through the kernel's
chain and checked for every code by running the chosen instructions' simulator twins
(`intrinsics`) here, at compile time:

- `affine` (u, i, b: v = alpha * (c ^ flip) + beta): the codes OR'ed into the mantissas of the
  magic number 2^mantissa (1024.0 in f16, 128.0 in bf16: Marlin's recipes), one FMA
  (`mma_packed.PackedB._affine_register`).
- `float` (sign, exponent and mantissa fields: fNeXmY, f8e4m3fn, f8e5m2, ...): the fields
  moved into the destination's sign / exponent / mantissa bits, one LOP3 per run of bits that
  keeps its distance (shifts shared between registers), then one multiply by
  2^(bias_dst - bias_src), none when the biases agree (f8e5m2 into f16 is its high byte). A
  subnormal code lands on a subnormal half which the product scales exactly (the conversion
  of FP6-LLM and of Marlin's fp8 path). Codes whose value is not finite (never produced by
  `quantize`, which saturates) are not checked.
- `table` (4-bit codes of any values: nf4, code books of 16): the lo and hi bytes of the 16
  values in 8 table registers; per 4 codes PRMT picks their bytes among entries 0-7 and 8-15
  (3-bit index nibbles), a third PRMT chooses by each code's top bit, for lo and hi bytes,
  and two more interleave them into the two registers. Needs the codes in order inside a
  word (`MmaPacking(4, interleaved=False)`, chosen by `mma_packed.mma_packings` through
  `wants_table`).
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np

from lowbitc.backends.numba_cuda.intrinsics import hfma2_bf16_py, hfma2_py, lop3_py, prmt_py

NEG_ZERO = 0x80008000  # (-0, -0): the addend of a product that keeps the sign of zero
OR_AND = 0xEA  # lop3 LUT of (a & b) | c
LO_HI = (0x5140, 0x7362)  # prmt selectors interleaving lo/hi bytes of codes (0, 1) / (2, 3)
TOP_SELECT = 0x32103210  # prmt selector base choosing per byte between two registers


@dataclass(frozen=True)
class Dest:
    """A 16-bit float the mma reads: its mantissa bits, exponent bias, numpy type and the FMA
    device helper (with its simulator twin)."""

    name: str
    mantissa: int
    bias: int
    np_type: type
    fma: str

    @property
    def magic(self) -> int:
        """Bits of 2^mantissa: a code c in its low mantissa bits reads 2^mantissa + c."""
        return (self.bias + self.mantissa) << self.mantissa

    def bits(self, x: float) -> int:
        return int(np.array(x, self.np_type).view(np.uint16))

    def pair(self, x: float) -> int:
        return self.bits(x) * 0x10001

    def exact(self, x: float) -> bool:
        with np.errstate(over="ignore"):
            y = float(np.array(x, self.np_type))
        return y == x and np.isfinite(y)

    def halves(self, word: int) -> np.ndarray:
        return np.array([int(word)], np.uint32).view(self.np_type).astype(np.float64)

    def fma_py(self, a: int, b: int, c: int) -> int:
        return int((hfma2_py if self.name == "f16" else hfma2_bf16_py)(a, b, c))


DESTS = {"f16": Dest("f16", 10, 15, np.float16, "hfma2"),
         "bf16": Dest("bf16", 7, 127, ml_dtypes.bfloat16, "hfma2_bf16")}


@dataclass(frozen=True)
class Float:
    """Code bits 0 .. man+exp-1 move to the destination's bit (mantissa - man), the sign bit
    (code bit man + exp) to bit 15; then a product by 2^scale (none when scale is 0)."""

    exp: int
    man: int
    scale: int

    def groups(self, dst: Dest) -> list[tuple[int, int, int]]:
        """(first code bit, bits, destination bit) of each run of bits."""
        n = self.exp + self.man
        return [(0, n, dst.mantissa - self.man), (n, 1, 15)]


@dataclass(frozen=True)
class Table:
    """The 16 values' bytes: lo[e] and hi[e] of entry e, four per uint32 (pools of PRMT)."""

    lo: tuple[int, int, int, int]
    hi: tuple[int, int, int, int]


def _same(got: float, want: float) -> bool:
    return got == want and np.signbit(got) == np.signbit(want)


def _float_checked(values: np.ndarray, dst: Dest, f: Float) -> bool:
    """Run the recipe's instructions (twins) on every code pair (c, c) against `values`."""
    mult = dst.pair(2.0**f.scale)
    for c, want in enumerate(values):
        if not np.isfinite(want):
            continue
        word = 0
        for lo, n, at in f.groups(dst):
            word |= ((c >> lo) & ((1 << n) - 1)) << at
        word |= word << 16
        if f.scale:
            word = dst.fma_py(word, mult, NEG_ZERO)
        if not all(_same(float(h), float(want)) for h in dst.halves(word)):
            return False
    return True


def float_recipe(values: np.ndarray, bits: int, dst: Dest) -> Float | None:
    """The Float recipe reproducing `values` (every code of a `bits`-bit format), or None."""
    for exp in range(1, bits - 1):
        man = bits - 1 - exp
        first = values[1 << man]  # exponent field 1, mantissa 0: 2^(1 - bias)
        if man > dst.mantissa or not np.isfinite(first) or first <= 0:
            continue
        scale = float(np.log2(first)) - (1 - dst.bias)
        if scale.is_integer() and dst.exact(2.0**scale):
            f = Float(exp, man, int(scale))
            if _float_checked(values, dst, f):
                return f
    return None


def table_recipe(values: np.ndarray, dst: Dest) -> Table | None:
    """Table of 16 values rounded once to `dst` (every value finite there), checked for every
    code by running the PRMT sequence of `table_registers` (twins)."""
    if values.size != 16:
        return None
    with np.errstate(over="ignore"):
        rounded = values.astype(dst.np_type)
    if not np.all(np.isfinite(rounded)):
        return None
    b = rounded.view(np.uint16).astype(np.int64)
    t = Table(tuple(int(sum((b[4 * r + e] & 0xFF) << 8 * e for e in range(4))) for r in range(4)),
              tuple(int(sum((b[4 * r + e] >> 8) << 8 * e for e in range(4))) for r in range(4)))
    for c0 in range(16):
        for c1 in range(16):
            word = c0 | c1 << 4 | c1 << 8 | c0 << 12
            regs = _table_py(t, word)
            want = [b[c0] | b[c1] << 16, b[c1] | b[c0] << 16]
            if [int(r) for r in regs] != want:
                return None
    return t


def _table_py(t: Table, word: int) -> tuple[int, int]:
    """The two registers of the 4 codes in the low 16 bits of `word` (twins of the PRMT
    sequence `table_registers` emits)."""
    sel = int(lop3_py(word, 0x77777777, 0, OR_AND))
    top = int(lop3_py(word >> 1, 0x44444444, TOP_SELECT, OR_AND))
    lo = prmt_py(prmt_py(t.lo[0], t.lo[1], sel), prmt_py(t.lo[2], t.lo[3], sel), top)
    hi = prmt_py(prmt_py(t.hi[0], t.hi[1], sel), prmt_py(t.hi[2], t.hi[3], sel), top)
    return prmt_py(lo, hi, LO_HI[0]), prmt_py(lo, hi, LO_HI[1])


def wants_table(values: np.ndarray, bits: int) -> bool:
    """Whether a format of these code values is decoded by `table` in f16 (so its mma packing
    keeps codes in order inside a word): 4 bits, neither affine nor a float layout."""
    values = np.asarray(values, np.float64)
    if bits != 4 or values.size != 16:
        return False
    codes = np.arange(16)
    for flip in (0, 8):
        g = values[codes ^ flip]
        if np.array_equal(values, (g[1] - g[0]) * (codes ^ flip) + g[0]):
            return False
    return float_recipe(values, bits, DESTS["f16"]) is None


class TableRegisters:
    """Source of the `table` recipe for one PackedB iteration: per word its selectors, per
    half-word the lo/hi byte lookups, per code pair its register (cached)."""

    def __init__(self, src, table: Table, dst: Dest, size: str):
        """Emits the 8 table registers (where the K loop starts). They are XOR'ed with a zero
        ptxas cannot see (`size`, a tensor's extent, shifted down 40 bits): as immediates it
        rematerialises them in the loop, one IMAD per use."""
        self.src, self.t, self.dst = src, table, dst
        zero = src.tmp(f"U32(({size}) >> 40)", "tz")
        self.pools = [[src.tmp(f"U32({x:#x}) ^ {zero}", "tr") for x in pool]
                      for pool in (table.lo, table.hi)]
        self.start()

    def start(self) -> None:
        """A new loop iteration: new words."""
        self.selectors: dict[str, tuple[str, str, str, str]] = {}
        self.regs: dict[tuple[str, int], str] = {}

    def register(self, word: str, nibble: int) -> str:
        """The register of the codes at nibbles `nibble`, `nibble` + 1 (nibble even)."""
        key = (word, nibble)
        if key not in self.regs:
            half, j = divmod(nibble, 4)
            lo, hi = self._lookup(word, half)
            for k in (0, 1):
                self.regs[(word, 4 * half + 2 * k)] = self.src.tmp(
                    f"prmt({lo}, {hi}, U32({LO_HI[k]:#x}))", "tb")
        return self.regs[key]

    def _lookup(self, word: str, half: int) -> tuple[str, str]:
        src = self.src
        if word not in self.selectors:
            sel = src.tmp(f"lop3({word}, U32(0x77777777), U32(0), {OR_AND:#x})", "ts")
            top = src.tmp(f"lop3({word} >> U32(1), U32(0x44444444), U32({TOP_SELECT:#x}), "
                          f"{OR_AND:#x})", "tt")
            self.selectors[word] = (sel, top, src.tmp(f"{sel} >> U32(16)", "ts"),
                                    src.tmp(f"{top} >> U32(16)", "tt"))
        sel, top = self.selectors[word][2 * half:2 * half + 2]
        out = []
        for pool in self.pools:
            a = src.tmp(f"prmt({pool[0]}, {pool[1]}, {sel})", "tp")
            b = src.tmp(f"prmt({pool[2]}, {pool[3]}, {sel})", "tp")
            out.append(src.tmp(f"prmt({a}, {b}, {top})", "tp"))
        return out[0], out[1]
