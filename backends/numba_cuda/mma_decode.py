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
    """The 2^bits values' bytes: lo[e] and hi[e] of entry e, four per uint32 (PRMT pools;
    entries past 2^bits are 0)."""

    bits: int
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


def table_recipe(values: np.ndarray, bits: int, planes, dst: Dest) -> Table | None:
    """Table of the values (one per code, at most 16) rounded once to `dst` (every value
    finite there), checked for every code at every position of 8 codes and every field
    offset of `planes` ((width, first code bit) per plane) by running `table_registers` on
    the twins."""
    if values.size != 1 << bits or bits > 4:
        return None
    with np.errstate(over="ignore"):
        rounded = values.astype(dst.np_type)
    if not np.all(np.isfinite(rounded)):
        return None
    b = np.zeros(16, np.int64)
    b[:values.size] = rounded.view(np.uint16)
    t = Table(bits, tuple(int(sum((b[4 * r + e] & 0xFF) << 8 * e for e in range(4)))
                          for r in range(4)),
              tuple(int(sum((b[4 * r + e] >> 8) << 8 * e for e in range(4))) for r in range(4)))
    run = _Run()
    for v in range(1 << bits):
        codes = [(v + j) % (1 << bits) for j in range(8)]
        for g in range(4):  # the group of 8 codes in its words: every bit offset of a plane
            fields = []
            for p, shift in planes:
                at = 8 * g * p % 32
                word = sum(((c >> shift) & ((1 << p) - 1)) << (at + j * p)
                           for j, c in enumerate(codes))
                fields.append((p, shift, word, at))
            regs = table_registers(run, t, dict(enumerate(t.lo + t.hi)), fields)
            if regs != [int(b[codes[k]] | b[codes[k + 1]] << 16) for k in range(0, 8, 2)]:
                return None
    return t


class _Run:
    """The twins of the instructions `table_registers` uses (ints in, ints out)."""

    def prmt(self, a, b, sel):
        return int(prmt_py(a, b, sel))

    def lop3(self, a, b, c, lut):
        return int(lop3_py(a, b, c, lut))

    def shr(self, a, n):
        return (a & 0xFFFFFFFF) >> n

    def shl(self, a, n):
        return (a << n) & 0xFFFFFFFF


class _Emit:
    """The same instructions as source lines (names in, names out)."""

    def __init__(self, src):
        self.src = src

    @staticmethod
    def _v(x) -> str:
        return f"U32({x:#x})" if isinstance(x, int) else x

    def prmt(self, a, b, sel):
        return self.src.tmp(f"prmt({self._v(a)}, {self._v(b)}, {self._v(sel)})", "tp")

    def lop3(self, a, b, c, lut):
        return self.src.tmp(f"lop3({self._v(a)}, {self._v(b)}, {self._v(c)}, {lut:#x})", "tl")

    def shr(self, a, n):
        return self.src.tmp(f"{self._v(a)} >> U32({n})", "ts")

    def shl(self, a, n):
        return self.src.tmp(f"{self._v(a)} << U32({n})", "ts")


OR_THEN_AND = 0xA8  # lop3 LUT of (a | b) & c


def _spread(B, p: int, word, at: int, shift: int):
    """The 8 p-bit fields at bit `at` of `word` (p = 1 or 2) spread to nibbles 0..7, their bits
    at `shift` of each nibble (bit moves, then masks: PRMT for bytes, LOP3 for the rest)."""
    x = B.prmt(word, 0, at // 8 | 4 << 4 | (at // 8 + 1) << 8 | 4 << 12 if p == 2
               else at // 8 | 0x4440)
    if p == 2:  # 8 codes in 2 bytes -> 2 codes per byte -> 1 per nibble
        x = B.lop3(x, B.shl(x, 4), 0x0F0F0F0F, OR_THEN_AND)
        steps = [(2, 0x33333333)]
    else:  # 8 bits -> two nibbles of 4 -> 2 bits per byte -> 1 per nibble
        x = B.lop3(x, B.shl(x, 12), 0x000F000F, OR_THEN_AND)
        x = B.lop3(x, B.shl(x, 6), 0x03030303, OR_THEN_AND)
        steps = [(3, 0x11111111)]
    for n, mask in steps:
        lo = B.shl(x, shift) if shift else x
        x = B.lop3(lo, B.shl(x, n + shift), mask << shift, OR_THEN_AND)
    return x


def table_registers(B, t: Table, pools, fields) -> list:
    """The 4 registers of 8 codes (nibble order) from their `fields` ((width, first code
    bit, word, bit of the first code) per plane), through builder B (`_Run` or `_Emit`):
    index nibbles (the 4-bit plane masked, narrower planes spread), then per 4 codes PRMT
    from the pools (entries 0-7, and 8-15 chosen by the top bit for 4 bits) and two PRMT
    interleaving lo and hi bytes."""
    top = None
    if t.bits == 4:
        _, _, word, _ = fields[0]
        sel = B.lop3(word, 0x77777777, 0, OR_AND)
        top = B.lop3(B.shr(word, 1), 0x44444444, TOP_SELECT, OR_AND)
    else:
        sel = None
        for p, shift, word, at in fields:
            x = _spread(B, p, word, at, shift)
            sel = x if sel is None else B.lop3(x, 0x77777777, sel, OR_AND)
    out = []
    for half in (0, 1):
        s = sel if half == 0 else B.shr(sel, 16)
        tp = None if top is None else (top if half == 0 else B.shr(top, 16))
        lh = []
        for r in (0, 4):  # lo bytes, hi bytes
            x = B.prmt(pools[r], pools[r + 1], s)
            if tp is not None:
                x = B.prmt(x, B.prmt(pools[r + 2], pools[r + 3], s), tp)
            lh.append(x)
        out += [B.prmt(lh[0], lh[1], LO_HI[k]) for k in (0, 1)]
    return out


def wants_table(values: np.ndarray, bits: int) -> bool:
    """Whether a format of these code values is decoded by `table` in f16 (so its mma packing
    keeps codes in order inside a word): at most 4 bits, neither affine nor a float layout."""
    values = np.asarray(values, np.float64)
    if bits > 4 or values.size != 1 << bits:
        return False
    codes = np.arange(values.size)
    for flip in (0, values.size // 2):
        g = values[codes ^ flip]
        if np.array_equal(values, (g[1] - g[0]) * (codes ^ flip) + g[0]):
            return False
    return float_recipe(values, bits, DESTS["f16"]) is None


class TableRegisters:
    """The `table` recipe's source for PackedB: the table registers once before the K loop,
    then per iteration and group of 8 codes their 4 registers (`table_registers`, cached)."""

    def __init__(self, src, table: Table, size: str):
        """Emits the 8 table registers. They are XOR'ed with a zero ptxas cannot see (`size`,
        a tensor's extent, shifted down 40 bits): as immediates it rematerialises them in
        the loop, one IMAD per use."""
        self.src, self.t = src, table
        zero = src.tmp(f"U32(({size}) >> 40)", "tz")
        used = range(4) if table.bits == 4 else range(2)
        self.pools = {r + 4 * h: src.tmp(f"U32({pool[r]:#x}) ^ {zero}", "tr")
                      for h, pool in enumerate((table.lo, table.hi)) for r in used}
        self.start()

    def start(self) -> None:
        """A new loop iteration: new words."""
        self.groups: dict[tuple, list[str]] = {}

    def register(self, fields: list[tuple[int, int, str, int]], k: int) -> str:
        """Register k (0..3) of the 8 codes in `fields` (see `table_registers`)."""
        key = tuple(fields)
        if key not in self.groups:
            self.groups[key] = table_registers(_Emit(self.src), self.t, self.pools, fields)
        return self.groups[key][k]
