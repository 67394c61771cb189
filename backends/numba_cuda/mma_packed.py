"""Weights read in the mma packing (`lowbitc.repack_mma`, docs/packing.md "The mma packing"):
the B operand of an mma `dot` decoded from 128-bit loads straight into f16x2 registers.

The packing is chosen by `mma_packings` from the B fragment's thread-value layout composed
with the warp tiling (`mma_dot.Tiling.layouts`): when every warp's B values for one K step
are the 8 n8 fragments of one 64-column tile of the packing, in its code order (checked for
every thread and register, `fits`), and the tensor is read only by such dots, the param takes
the packing (the host transforms canonical words once, `backend.Executable`).

In the steady state (the window aligned and inside the padded words, `PackedB.condition`) a
K-loop iteration covers `unroll` K steps so that every plane of width p is p * unroll words
per lane, whole 16-byte chunks: one LDG.E.128 per chunk from a per-plane base that moves 2p
words per code of K. Each f16x2 register is, for formats affine in the code (u, i, b), one
LOP3 per plane (the codes' bits OR'ed into the mantissas of 1024, a two's complement sign bit
flipped by the same LOP3), a shift per plane only when its bits do not already sit where the
register wants them (shifts shared between registers), and one HFMA2 that removes 1024 and
applies `alpha * code + beta` with constants scaled by the code's bit offset T
(`_place`). Other formats get their codes from the same words and take the format's decode.
Edge windows read code by code through the packing's index formula, with bounds checks.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from lowbitc.backends.numba_cuda.elements import reg_dtype
from lowbitc.backends.numba_cuda.halves_plan import _code_values
from lowbitc.backends.numba_cuda.mma_decode import (
    DESTS,
    NEG_ZERO,
    OR_AND,
    TableRegisters,
    float_recipe,
    table_recipe,
    wants_table,
)
from lowbitc.backends.numba_cuda.mma_weights import _affine_values, word_leaf
from lowbitc.backends.numba_cuda.plan import BYTE_CODES, codes_leaf
from lowbitc.backends.numba_cuda.source import numba_type
from lowbitc.formats import lookup
from lowbitc.ir.core import Kernel, walk
from lowbitc.ir.types import TensorType, is_machine
from lowbitc.repack_mma import CODES_PER_LANE, TILE_N, WARP, MmaPacking
from lowbitc.signature import format_bits

XOR_AND = 0x6A  # lop3 LUT of (a & b) ^ c


def packed_leaf(v, defs: dict):
    """The `load_codes` (any width) under `transpose` of an elementwise chain, else None."""
    d = defs.get(v.id)
    if d is None or d.opcode != "transpose" or tuple(d.attrs.perm) != (1, 0):
        return None
    return codes_leaf(d.operands[0], defs, any_width=True, machine=True)


def fits(tiling, lb) -> bool:
    """Whether each warp's B values of one K step are the packing's 8 fragments of one 64-column
    tile, value v = 4 * nf + i of lane l at n = 8 nf + l // 4, k as the B fragment's i."""
    if tiling.kind.fn not in ("mma_f16", "mma_bf16") or tiling.TN * 8 != TILE_N:
        return False
    for tid in range(lb.num_threads):
        lane, n_first = tid % WARP, lb(tid, 0)[1]
        for v in range(lb.num_values):
            k, n = lb(tid, v)
            nl = n % TILE_N
            i = (k & 1) + 2 * (k // 8)
            if (k >= 16 or n // TILE_N != n_first // TILE_N or 4 * (nl % 8) + (k % 8) // 2 != lane
                    or v != 4 * (nl // 8) + i):
                return False
    return True


def mma_packings(k: Kernel, threads: int, mma_tiling) -> dict[int, MmaPacking]:
    """{param id: MmaPacking} of the packed params read only as the B operand of mma dots
    whose tiling (`mma_tiling(dot, threads)`, mma_dot's) `fits` the packing (module doc)."""
    defs, readers = {}, defaultdict(list)
    for op in walk(k.body.ops):
        for r in op.results:
            defs[r.id] = op
        for v in op.operands:
            readers[v.id].append(op)
    params = {p.id: p for p in k.params if isinstance(p.type, TensorType)
              and (not is_machine(p.type.dtype) or p.type.dtype in BYTE_CODES)}
    leaves = defaultdict(set)
    for op in walk(k.body.ops):
        if op.opcode != "dot":
            continue
        tiling = mma_tiling(op, threads)
        leaf = None if tiling is None else packed_leaf(op.operands[1], defs)
        if (leaf is None or leaf.operands[0].id not in params
                or getattr(leaf.attrs, "packing", None)):
            continue
        if tuple(leaf.attrs.sizes) == (tiling.N, tiling.K) and fits(tiling, tiling.layouts()[1]):
            leaves[leaf.operands[0].id].add(id(leaf))
    return {pid: _packing(params[pid].type.dtype)
            for pid, ok in leaves.items() if all(id(op) in ok for op in readers[pid])}


def _packing(dtype: str) -> MmaPacking:
    """Codes in order inside a word for the formats `mma_decode` reads by table, else
    interleaved (a register's two codes 16 bits apart)."""
    fmt = lookup(dtype)
    bits = format_bits(dtype)
    return MmaPacking(bits, not wants_table(np.asarray(fmt.values(), np.float64), bits))


def unroll(bits: int, k_window: int) -> int:
    """K steps per loop iteration: enough that the narrowest plane fills 16-byte chunks, at
    most half the window (the K loop stays a loop of at least two iterations: its body is the
    steady state that `lowbitc emit --format stats` counts)."""
    u = max(1, 4 // min(MmaPacking(bits).planes)[0])
    while u > 1 and (k_window // 16) % (2 * u):
        u //= 2
    return u


class PackedB:
    """The B operand `v` of an mma dot read from the mma packing (module docstring); `steady`:
    the aligned, inside version (128-bit loads), else code by code with bounds checks."""

    def __init__(self, ctx, v, tiling, steady: bool):
        self.ctx, self.src, self.steady = ctx, ctx.src, steady
        self.leaf, self.t = word_leaf(ctx, v, any_width=True)
        self.pk: MmaPacking = self.t.mma
        self.bn, self.bk = self.leaf.attrs.sizes
        self.unroll = unroll(self.pk.bits, tiling.K) if steady else 1
        self.s0, self.s1 = (ctx.elem(x, ()) for x in self.leaf.operands[1:3])
        self.dst = DESTS[tiling.kind.dtypes[0]]
        root = ctx.lazy[v.id].operands[0]
        self.affine = self.float = self.table = None
        self.wide = None
        if steady and self.pk.interleaved:
            self.affine = _affine_values(ctx, self.leaf, root, self.dst.name)
            if self.affine is not None and self.pk.bits > self.dst.mantissa:
                self.wide, self.affine = self.affine, None  # 8 bits into bf16: by f32
            if self.affine is None and self.wide is None:
                values = _code_values(ctx, self.leaf, root)
                self.float = float_recipe(values, self.pk.bits, self.dst)
        elif steady:
            values = _code_values(ctx, self.leaf, root)
            self.table = table_recipe(values, self.pk.bits, self.pk.planes, self.dst)
        self.words: list[list[str]] = []
        self.shifted: dict[tuple[str, int], str] = {}
        self.lookups = None

    def condition(self) -> str:
        """Block-uniform: the window is aligned to the packing's tiles and inside its words."""
        t, b = self.t, self.pk.bits
        return self.src.tmp(
            f"{self.s0} % {TILE_N} == 0 and {self.s1} % {16 * self.unroll} == 0 and "
            f"0 <= {self.s0} and {self.s0} + {self.bn} <= {t.name}.shape[0] * {TILE_N} and "
            f"0 <= {self.s1} and {self.s1} + {self.bk} <= {t.name}.shape[1] // {2 * b}", "full")

    def k_bound(self, k_window: int) -> str:
        """`k_window`, computed from the words' shape (equal in the steady state, where the
        window lies inside them) so that neither LLVM nor ptxas knows the trip count and
        the K loop stays rolled: its body is the steady state `emit --format stats` counts."""
        return self.src.tmp(f"min({k_window}, {self.t.name}.shape[1] // {2 * self.pk.bits} - "
                            f"{self.s1})", "kn")

    def setup(self, n_base: str) -> None:
        """Per-plane word bases of this thread (row of its 64-column tile, lane * 4)."""
        name, src = self.t.name, self.src
        row = src.tmp(f"I64(({self.s0} + {n_base}) >> 6) * I64({name}.shape[1]) + "
                      "I64((tid & 31) * 4)", "pr")
        self.bases = [row if shift == 0 else
                      src.tmp(f"{row} + I64({name}.shape[1] // {self.pk.bits} * {shift})", "pb")
                      for _, shift in self.pk.planes]
        if self.table is not None:  # table registers set once, before the K loop
            self.lookups = TableRegisters(src, self.table, f"{name}.shape[1]")

    def load(self, ks: str) -> None:
        """This iteration's words of every plane (`unroll` K steps from window offset ks)."""
        src, name, u = self.src, self.t.name, self.unroll
        kabs = src.tmp(f"I64({self.s1} + {ks})", "kq")
        self.words, self.shifted = [], {}
        if self.lookups is not None:
            self.lookups.start()
        for (p, _), base in zip(self.pk.planes, self.bases, strict=True):
            if u * p % 4 == 0:
                at = src.tmp(f"{base} + {kabs} * {2 * p}", "pa")
                words = []
                for m in range(u * p // 4):
                    off = f" + {CODES_PER_LANE * m}" if m else ""
                    vec = src.tmp(f"ld_at_u32x4({name}, U32(0), U32(0), U32(0), {at}{off})", "pv")
                    words += [f"{vec}[{e}]" for e in range(4)]
            else:  # fewer than 4 words per lane: the chunk's position from the K step
                q = src.tmp(f"({kabs} >> 4) * {p}", "pq")
                at = src.tmp(f"{base} + (({q} >> 2) << 7) + ({q} & 3)", "pa")
                words = [src.tmp(f"U32(ld_at({name}, U32(0), U32(0), U32(0), {at}"
                                 + (f" + {e}))" if e else "))"), "pw") for e in range(u * p)]
            self.words.append(words)

    def register(self, idxs, u: int, tile: int, reg: int) -> str | None:
        """f16x2 register `reg` of fragment `tile` at K step `u` of the iteration (affine
        formats), or None with its codes given to the format's decode (element memo)."""
        if not self.steady:
            for (k, n) in idxs:
                self._seed(n, k, self._edge_code(n, k))
            return None
        c = (u * 8 + tile) * 4 + 2 * reg  # the lane's code index in the iteration
        if self.affine is not None:
            return self._affine_register(c)
        if self.wide is not None:
            return self._wide_register(c)
        if self.float is not None:
            return self._float_register(c)
        if self.table is not None:  # 8 codes at a time, in order in each plane's word
            g = c - c % 8
            fields = [(p, shift, *self._source(q, g))
                      for q, (p, shift) in enumerate(self.pk.planes)]
            return self.lookups.register(fields, c % 8 // 2)
        for h, (k, n) in enumerate(idxs):
            self._seed(n, k, self._code(c, h))
        return None

    def _seed(self, n: str, k: str, code: str) -> None:
        R = numba_type(reg_dtype(self.leaf.results[0].type.dtype))
        self.ctx.memo[-1][(self.leaf.results[0].id, (n, k))] = self.src.tmp(f"{R}({code})", "v")

    def _source(self, q: int, c: int) -> tuple[str, int]:
        """(word, bit) of code c's plane q (interleaved: its pair partner sits 16 bits higher;
        else p bits higher)."""
        p = self.pk.planes[q][0]
        per_word = 32 // p
        cw = c % per_word
        slot = cw // 2 + (cw % 2) * (per_word // 2) if self.pk.interleaved else cw
        return self.words[q][c // per_word], slot * p

    def _shift(self, word: str, delta: int) -> str:
        if delta == 0:
            return word
        key = (word, delta)
        if key not in self.shifted:
            e = f"({word} >> U32({delta}))" if delta > 0 else f"({word} << U32({-delta}))"
            self.shifted[key] = self.src.tmp(e, "ps")
        return self.shifted[key]

    def _code(self, c: int, h: int) -> str:
        parts = []
        for q, (p, shift) in enumerate(self.pk.planes):
            if self.pk.interleaved:  # the partner 16 bits higher
                word, bit = self._source(q, c)
                bit += 16 * h
            else:
                word, bit = self._source(q, c + h)
            e = f"(({word} >> U32({bit})) & U32({(1 << p) - 1}))"
            parts.append(f"({e} << U32({shift}))" if shift else e)
        return " | ".join(parts)

    def _place(self, c: int, groups, m: str, first_lut: int = OR_AND) -> str:
        """LOP3s moving code c's bits (and its partner's, 16 bits higher) into `m`: per run
        (first code bit, bits, destination bit) and plane, one LOP3 after a shared shift."""
        lut = first_lut
        for q, (p, shift) in enumerate(self.pk.planes):
            word, bit = self._source(q, c)
            for lo, n, at in groups:
                a, b = max(lo, shift), min(lo + n, shift + p)
                if a >= b:
                    continue
                dest = at + a - lo
                mask = _pair(((1 << (b - a)) - 1) << dest)
                moved = self._shift(word, bit + a - shift - dest)
                m = self.src.tmp(f"lop3({moved}, U32({mask:#x}), {m}, {lut:#x})", "m")
                lut = OR_AND
        return m

    def _affine_register(self, c: int) -> str:
        alpha, beta, flip = self.affine
        b, dst = self.pk.bits, self.dst
        best = None
        for T in range(dst.mantissa - b + 1):
            consts = _constants(alpha, beta, T, dst)
            if consts is None:
                continue
            new = sum(1 for q, (_, shift) in enumerate(self.pk.planes)
                      if (d := self._source(q, c)[1] - T - shift) and
                      (self._source(q, c)[0], d) not in self.shifted)
            if best is None or new < best[0]:
                best = (new, T, consts)
        if best is None:  # no bit offset gives exact constants: code, then alpha * code + beta
            T, consts = 0, (1.0, -float(1 << dst.mantissa))
        else:
            _, T, consts = best
        magic = _pair(dst.magic)
        if self.pk.planes == ((8, 0),) and T == 0 and not flip and not dst.magic & 0xFF:
            # whole bytes under the magic's high byte: one PRMT (Marlin's 8-bit recipe)
            word, bit = self._source(0, c)
            sel = bit // 8 | 4 << 4 | (bit // 8 + 2) << 8 | 4 << 12
            m = self.src.tmp(f"prmt({word}, U32({(dst.magic >> 8) * 0x01010101:#x}), "
                             f"U32({sel:#x}))", "m")
        else:
            m = f"U32({magic ^ _pair(flip << T):#x})" if flip else f"U32({magic:#x})"
            m = self._place(c, [(0, b, T)], m, XOR_AND)
        a, k = consts
        h = self.src.tmp(f"{dst.fma}({m}, U32({dst.pair(a):#x}), U32({dst.pair(k):#x}))", "h")
        if best is None:
            h = self.src.tmp(f"{dst.fma}({h}, U32({dst.pair(alpha):#x}), "
                             f"U32({dst.pair(beta):#x}))", "h")
        return h

    def _wide_register(self, c: int) -> str:
        """8-bit affine codes into bf16 (7 mantissa bits): each code under the f32 magic 2^23
        by one PRMT, one FADD (or FFMA) each, and one F2FP packing the pair (Marlin's bf16
        path for 8 bits); two's complement codes flip their sign bits first (per word)."""
        alpha, beta, flip = self.wide
        word, bit = self._source(0, c)
        if flip:
            key = (word, "flip")
            if key not in self.shifted:
                self.shifted[key] = self.src.tmp(f"{word} ^ U32(0x80808080)", "pf")
            word = self.shifted[key]
        shift = float(np.float32(beta - 8388608.0 * alpha))
        halves = []
        for b in (bit // 8, bit // 8 + 2):
            f = self.src.tmp(f"f32_from_bits(prmt({word}, U32(0x4b000000), "
                             f"U32({b | 0x7540:#x})))", "f")
            if (alpha, beta) == (1.0, 0.0):
                halves.append(self.src.tmp(f"F32({f} - F32(8388608.0))", "f"))
            elif shift == beta - 8388608.0 * alpha:
                halves.append(self.src.tmp(f"F32({f} * F32({alpha!r}) + F32({shift!r}))", "f"))
            else:
                v = self.src.tmp(f"F32({f} - F32(8388608.0))", "f")
                halves.append(self.src.tmp(f"F32({v} * F32({alpha!r}) + F32({beta!r}))", "f"))
        return self.src.tmp(f"pack_bf16x2({halves[0]}, {halves[1]})", "h")

    def _float_register(self, c: int) -> str:
        """`mma_decode.Float`: sign / exponent / mantissa runs placed, then 2^scale."""
        f, dst = self.float, self.dst
        m = self._place(c, f.groups(dst), "U32(0)")
        if f.scale == 0:
            return m
        return self.src.tmp(f"{dst.fma}({m}, U32({dst.pair(2.0**f.scale):#x}), "
                            f"U32({NEG_ZERO:#x}))", "h")

    def _edge_code(self, n: str, k: str) -> str:
        """Code (n, k) of the window through the packing's index formula; 0 outside."""
        src, t, name = self.src, self.t, self.t.name
        gn, gk = src.tmp(f"{self.s0} + {n}", "g"), src.tmp(f"{self.s1} + {k}", "g")
        code = src.tmp("U32(0)", "pc")
        with src.block(f"if 0 <= {gn} < {t.dims[0]} and 0 <= {gk} < {t.dims[1]}:"):
            row = src.tmp(f"I64({gn} >> 6) * I64({name}.shape[1]) + "
                          f"I64((((({gn}) & 7) << 2) | (({gk} & 7) >> 1)) * 4)", "er")
            c = src.tmp(f"((({gk} & 63) >> 4) << 5) | ((({gn} & 63) >> 3) << 2) | ({gk} & 1) | "
                        f"(({gk} >> 2) & 2)", "ec")
            for p, shift in self.pk.planes:
                per_word = 32 // p
                cw = f"({c} & {per_word - 1})"
                slot = (f"(({cw} >> 1) + ({cw} & 1) * {per_word // 2})" if self.pk.interleaved
                        else cw)
                q = f"({c} >> {per_word.bit_length() - 1})"
                at = (f"{row} + I64({name}.shape[1] // {self.pk.bits} * {shift}) + "
                      f"I64(({gk} >> 6) * {CODES_PER_LANE * p} + (({q} >> 2) << 7) + ({q} & 3))")
                word = f"U32(ld_at({name}, U32(0), U32(0), U32(0), {at}))"
                bits = f"((({word}) >> U32({slot} * {p})) & U32({(1 << p) - 1}))"
                src.line(f"{code} = {code} | ({bits} << U32({shift}))" if shift else
                         f"{code} = {code} | {bits}")
        return code


def _pair(x: int) -> int:
    return x | x << 16


def _constants(alpha: float, beta: float, T: int, dst) -> tuple[float, float] | None:
    """(a, k) with a * (2^m + code * 2^T) + k == alpha * code + beta (m the mantissa bits of
    `dst`, a mma_decode.Dest), both exact in it."""
    a = alpha / 2.0**T
    k = beta - float(1 << dst.mantissa) * a
    return (a, k) if dst.exact(a) and dst.exact(k) else None

