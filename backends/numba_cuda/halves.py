"""The f16 store path: decoded codes stored to an f16 tensor, two weights per instruction
(which stores qualify, and their plan: halves_plan.py; the rendering: here).

A store qualifies when its value is affine in one format's decoded codes, per row:
`y = A * v(code) + B` where `v` reads only the codes (and constants) and A, B only values
that are constant along the row (a group's scale and zero point), e.g. `(v - z) * s` =
`s * v + (-z * s)`. `recipes.recipe_for` picks the conversion from `v` evaluated for every
code. The store then runs over units of 32-128 columns: when a unit is inside both tensors,
16-byte aligned and its scale in f16's normal range, its words come in with 16-byte loads,
each f16x2 pair is the recipe's prmt/lop3 (or table load) plus one or two HFMA2, and 8 halves
go out per 16-byte store; other units take the per-element path.

Rounding: A and B are rounded to f16 once per unit and each pair is one fused f16 multiply-add,
so an output is within 2^-10 * (|A v| + |B|) + half an f16 ulp of the f32 result (exact
f16(A v) when B is statically zero and the format is a magic one with beta = 0).
"""

from __future__ import annotations

import re
from math import gcd

import numpy as np

from lowbitc.backends.numba_cuda.elements import shape_of
from lowbitc.backends.numba_cuda.flat import Flat, row_load
from lowbitc.backends.numba_cuda.halves_plan import PairPlan, plan_pairs
from lowbitc.backends.numba_cuda.recipes import (
    magic_pairs,
    shift_pairs,
    table_indices,
)
from lowbitc.ir.core import Op, Value

F16_MIN_NORMAL = 2.0**-14
ONE_PAIR = 0x3C003C00  # f16x2 (1.0, 1.0)
FALLBACK = "# per-element fallback"  # marks the else branch `steady_state` cuts
UNITS = "# weights per unit: "  # marks a unit loop (steady_state_stats)


# ---------------------------------------------------------------- rendering


def _row_value(ctx, e: tuple, idx: tuple[str, ...], shape, flat: Flat) -> str:
    """f32 source of a row expression for the unit's row (planned flat loads unguarded)."""
    if e[0] == "k":
        return f"F32({float(np.float32(e[1]))!r})"
    if e[0] == "v":
        if e[1].id in flat.loads:
            return ctx.src.tmp(f"F32({flat.loads[e[1].id]})", "r")
        return f"F32({ctx.elem(e[1], ctx.bcast(idx, shape, shape_of(e[1].type)))})"
    args = [_row_value(ctx, x, idx, shape, flat) for x in e[1:]]
    if e[0] == "neg":
        return ctx.src.tmp(f"F32(-{args[0]})", "r")
    sym = {"add": "+", "sub": "-", "mul": "*", "div": "/"}[e[0]]
    return ctx.src.tmp(f"F32({args[0]} {sym} {args[1]})", "r")


def _rename(expr: str, names: dict[str, str]) -> str:
    return re.sub(r"\b([wv]\d+)\b", lambda m: names[m.group(1)], expr)


class _Emit:
    """Source of one unit's fast path: words in, pairs converted, halves out."""

    def __init__(self, ctx, plan: PairPlan, p: int, interleaved: bool):
        self.ctx, self.plan, self.p = ctx, plan, p
        self.r = plan.recipe
        self.b = self.r.bits
        self.interleaved = interleaved

    def scale_factor(self) -> float:
        r = self.r
        if r.kind == "magic":
            return 1.0 if self.three_op() else r.alpha
        return r.factor if r.kind == "shift" else 1.0

    def one_op(self) -> bool:
        """(M + c) * A + (-M * A): exact when B is statically 0, beta 0, alpha 2^k."""
        r = self.r
        return (
            r.kind == "magic"
            and self.plan.b == ("k", 0.0)
            and r.beta == 0.0
            and _power_of_two(r.alpha)
        )

    def three_op(self) -> bool:
        """v = (c - M) * alpha + beta first (exact), when A * beta + B would round."""
        r = self.r
        return (
            r.kind == "magic"
            and r.beta != 0.0
            and not (_power_of_two(r.beta) and self.plan.b == ("k", 0.0))
        )

    def limit(self) -> float:
        return 63.0 if self.one_op() else 65504.0

    def words(self, w, wr: str, wc: str, machine: bool) -> list[str]:
        """Load the unit's words (flat 32-bit offsets, `flat.py`); returns their names."""
        src, n = self.ctx.src, self.p * self.b // 32
        names = [src.fresh("w") for _ in range(n)]
        if machine:
            row, base, step = f"U32({w.dims[1]})", wc, 16
        else:
            row = src.tmp(f"U32(({w.dims[1]} * {self.b} + 31) >> 5)", "wn")
            base, step = src.tmp(f"U32(({wc} * U32({self.b})) >> U32(5))", "wb"), 4
        if machine or n % 4 == 0:
            for t in range(0, n, 4):
                src.line(
                    f"{', '.join(names[t : t + 4])} = ld_at_u32x4({w.name}, {wr}, {row}, "
                    f"{base}, {step * t // 4})"
                )
        else:
            for t in range(n):
                src.line(f"{names[t]} = U32(ld_at({w.name}, {wr}, {row}, {base}, {t}))")
        return names

    def group(self, words: list[str], consts: dict) -> list[str]:
        """The 16 converted pairs of 32 codes in `words`."""
        src, r, b = self.ctx.src, self.r, self.b
        names = {f"w{i}": x for i, x in enumerate(words)}
        if r.kind == "magic":
            exprs, uses_v = magic_pairs(b, r.flip, self.interleaved)
            if uses_v:
                for i in range(b):
                    names[f"v{i}"] = v = src.fresh("v")
                    if self.interleaved:
                        src.line(f"{v} = U32({words[i]} >> U32(8))")
                        continue
                    nxt = f" | ({words[i + 1]} << U32(28))" if i + 1 < b else ""
                    src.line(f"{v} = U32(({words[i]} >> U32(4)){nxt})")
            out = []
            for e, key in exprs:
                m = _rename(e, names)
                if self.one_op():
                    out.append(src.tmp(f"hfma2({m}, {consts['s']}, {consts[key]})", "h"))
                else:
                    t = src.tmp(f"hfma2({m}, U32({ONE_PAIR:#x}), U32({_neg_magic(key):#x}))")
                    if self.three_op():
                        t = src.tmp(
                            f"hfma2({t}, U32({_pair(r.alpha):#x}), U32({_pair(r.beta):#x}))"
                        )
                    out.append(src.tmp(f"hfma2({t}, {consts['s']}, {consts['b']})", "h"))
            return out
        if r.kind == "shift":
            exprs = [_rename(e, names) for e in shift_pairs()]
        else:
            exprs = [f"{consts['t']}[{_rename(e, names)}]" for e in table_indices(b)]
        return [src.tmp(f"hfma2(U32({e}), {consts['s']}, {consts['b']})", "h") for e in exprs]

    def constants(self, af: str, bf: str) -> dict:
        src, r = self.ctx.src, self.r
        out = {"s": src.tmp(f"pack_f16x2({af}, {af})", "s")}
        if self.one_op():
            for _, key in magic_pairs(self.b, r.flip, self.interleaved)[0]:
                if key not in out:  # -2^(10-o) * A, exact in f16
                    out[key] = src.tmp(f"hfma2({out['s']}, U32({_neg_magic(key):#x}), U32(0))", "m")
        else:
            out["b"] = src.tmp(f"pack_f16x2({bf}, {bf})", "s")
        if r.kind == "table":
            out["t"] = self.ctx.word_table(r.table)
        return out


def _power_of_two(x: float) -> bool:
    return x != 0 and float(np.log2(abs(x))).is_integer()


def _pair(x: float) -> int:
    """f16x2 bits of (x, x)."""
    return int(np.array(x, np.float16).view(np.uint16)) * 0x10001


def _neg_magic(key: tuple[int, int]) -> int:
    lo, hi = (int(np.array(-(2.0 ** (10 - o)), np.float16).view(np.uint16)) for o in key)
    return lo | hi << 16


def store_pairs(ctx, op: Op, starts: list[str], body) -> bool:
    """Render the store through the pair path if it qualifies (else False, nothing emitted);
    `body(idx, e)` renders one element on the generic path (for units that fail a check)."""
    plan = plan_pairs(ctx, op)
    if plan is None or (
        ctx.tensor(plan.leaf.operands[0]).interleaved and plan.recipe.kind != "magic"
    ):
        return False
    rows, cols = shape = tuple(op.attrs.sizes)
    p = next(w for w in (128, 64, 32) if cols % w == 0)
    u = _Unit(ctx, plan, op, starts, p)
    src, per_row, flat = ctx.src, cols // p, Flat()
    pre = src.fresh("pre")
    at, depth = len(src.lines), src.depth

    def units(note: str = ""):  # the unit loop; yields each unit's (row, column) index
        e = src.fresh("e")
        src.line(f"{e} = U32(tid)")
        with src.block(f"while {e} < U32({rows * per_row}):{note}"), ctx.scope():
            if per_row == 1:
                yield e, "0"
            else:
                q = src.tmp(f"U32({e} // U32({per_row}))", "q")
                yield q, src.tmp(f"U32(({e} - {q} * U32({per_row})) * U32({p}))", "c")
            src.line(f"{e} = U32({e} + U32(nthr))")

    def fallback(q: str, c0: str, head: str) -> None:
        with src.block(f"{head} 0 <= {starts[0]} + {q} < {u.y.dims[0]}:  {FALLBACK}"):
            j = src.fresh("j")
            src.line(f"{j} = 0")
            with src.block(f"while {j} < {p}:"), ctx.scope():
                body((q, src.tmp(f"{c0} + {j}", "c")), "")
                src.line(f"{j} += 1")

    # 32-bit units when `pre` holds (`flat.py`), else every unit element by element
    with src.block(f"if {pre}:"):
        for q, c0 in units(f"  {UNITS}{p}"):
            _unit(ctx, u, flat, (q, c0), shape, fallback)
    with src.block("else:"):
        for q, c0 in units():
            fallback(q, c0, "if")
    conds = " and ".join(dict.fromkeys(flat.pre + u.pre))
    src.lines[at:at] = ["    " * depth + x for x in [*u.defs, f"{pre} = {conds}"]]
    return True


def _unit(ctx, u: _Unit, flat: Flat, idx: tuple[str, str], shape, fallback) -> None:
    """One unit: checks, row values, then the pair path or `fallback`."""
    src, plan, em = ctx.src, u.plan, u.em
    q, c0 = idx
    conds = u.conditions(flat, q, c0)
    for leaf in _leaves(plan.a) + _leaves(plan.b):
        row = (u.starts[0], u.y.dims[0], q, u.yr)
        row_load(ctx, flat, leaf, ctx.bcast(idx, shape, shape_of(leaf.type)), row)
    ok, af, bf = src.fresh("ok"), src.fresh("af"), src.fresh("bf")
    src.line(f"{ok} = {' and '.join([*flat.unit, *conds])}")
    src.line(f"{af} = F32(0)")
    src.line(f"{bf} = F32(0)")
    # row values (scale, zero) only for units in bounds, which makes their own bounds
    # checks redundant; a scale outside f16's normal range (or 0) takes the fallback
    with src.block(f"if {ok}:"), ctx.scope():
        a_row = _row_value(ctx, plan.a, idx, shape, flat)
        src.line(f"{af} = F32({a_row} * F32({em.scale_factor()!r}))")
        r = plan.recipe
        b_row = _row_value(ctx, plan.b, idx, shape, flat)
        if r.kind == "magic" and r.beta != 0.0 and not em.three_op():
            b_row = f"F32({a_row} * F32({r.beta!r}) + {b_row})"
        src.line(f"{bf} = F32({b_row})")
        src.line(f"{ok} = {F16_MIN_NORMAL!r} <= abs({af}) < {em.limit()!r}")
    with src.block(f"if {ok}:"):
        u.fast(em.constants(af, bf))
    fallback(q, c0, "elif")


def _leaves(e: tuple) -> list[Value]:
    """The values ("v", Value) of a row expression."""
    if e[0] == "v":
        return [e[1]]
    return [] if e[0] == "k" else [v for x in e[1:] for v in _leaves(x)]


class _Unit:
    """One unit's indices (uint32) and checks: rows and columns of the output `y` and the
    codes `w`; the block-uniform part of the checks goes to `pre`."""

    def __init__(self, ctx, plan: PairPlan, op: Op, starts: list[str], p: int):
        self.ctx, self.plan, self.p, self.starts = ctx, plan, p, starts
        self.y, self.w = ctx.tensor(op.operands[0]), ctx.tensor(plan.leaf.operands[0])
        self.wstarts = [ctx.elem(v, ()) for v in plan.leaf.operands[1:]]
        self.machine = plan.leaf.opcode == "load"
        self.em = _Emit(ctx, plan, p, self.w.interleaved)
        self.sizes = tuple(op.attrs.sizes)
        self.pre: list[str] = []
        self.defs: list[str] = []  # uniform values, computed before the unit loop
        self.yr = self.yc = self.wr = self.wc = self.key = ""

    def conditions(self, flat: Flat, q: str, c0: str) -> list[str]:
        """Per-unit conditions (uint32 compares); fills `pre` and `flat.pre` once."""
        src, y, w, p, b = self.ctx.src, self.y, self.w, self.p, self.em.b
        first = not self.pre
        if first:
            flat.fits(y.dims)
            flat.fits(w.dims)
            for s in dict.fromkeys(zip(self.starts + self.wstarts, self.sizes * 2)):
                flat.window(*s)
        self.yr = src.tmp(f"U32({self.starts[0]} + {q})", "g")
        self.yc = src.tmp(f"U32({self.starts[1]} + {c0})", "g")
        same_r, same_c = self.wstarts[0] == self.starts[0], self.wstarts[1] == self.starts[1]
        self.wr = self.yr if same_r else src.tmp(f"U32({self.wstarts[0]} + {q})", "g")
        self.wc = self.yc if same_c else src.tmp(f"U32({self.wstarts[1]} + {c0})", "g")
        # rows: q below the rows left in the tensor (uniform), so the loop keeps one counter
        unit = [f"{q} < {self._rows_left(self.starts[0], y.dims[0])}"]
        if not same_r:
            unit.append(f"{q} < {self._rows_left(self.wstarts[0], w.dims[0])}")
        # word alignment: 16-byte loads (or whole words) and 16-byte stores
        wstep = 16 if self.machine else (128 if p * b // 32 % 4 == 0 else 32) // gcd(b, 128)
        yc, wc = (  # uniform columns are checked once, before the unit loop
            (f"U32({self.starts[1]})", f"U32({self.wstarts[1]})")
            if c0 == "0"
            else (self.yc, self.wc)
        )
        cols = [f"U32({yc} + U32({p})) <= U32({y.dims[1]})"]
        if not same_c:
            cols.append(f"({yc} & U32(7)) == 0")
        if not same_c or w.dims[1] != y.dims[1]:
            cols.append(f"U32({wc} + U32({p})) <= U32({w.dims[1]})")
        mask = max(wstep, 8) - 1 if same_c else wstep - 1
        cols.append(f"({wc} & U32({mask})) == 0")
        uniform = [f"({y.dims[1]} & 7) == 0"]
        self.key = (
            "16"
            if self.machine
            else ("128" if wstep * b % 128 == 0 and p * b // 32 % 4 == 0 else "")
        )
        if self.key:
            uniform.append(
                f"({w.dims[1] if self.machine else f'({w.dims[1]} * {b})'} & "
                f"{15 if self.machine else 127}) == 0"
            )
        if first:
            self.pre = uniform + (cols if c0 == "0" else ["True"])
        return unit + ([] if c0 == "0" else cols)

    def _rows_left(self, start: str, n: str) -> str:
        name = self.ctx.src.fresh("nq")
        self.defs.append(f"{name} = U32(max(min({n} - {start}, {self.sizes[0]}), 0))")
        return name

    def fast(self, consts: dict) -> None:
        """The unit's word loads, converted pairs and 16-byte stores."""
        src, em, y = self.ctx.src, self.em, self.y
        words = em.words(self.w, self.wr, self.wc, self.machine)
        for g in range(self.p // 32):
            pairs = em.group(words[g * em.b : (g + 1) * em.b], consts)
            for s in range(4):
                src.line(
                    f"st_at_f16x8({y.name}, {self.yr}, U32({y.dims[1]}), {self.yc}, "
                    f"{32 * g + 8 * s}, {', '.join(pairs[4 * s : 4 * s + 4])})"
                )


def steady_state(source: str) -> str:
    """What runs when every chunk is a full one and every unit passes its checks: the source
    with each pair loop's per-element fallback, and the `else` branch of each `if` whose
    then-branch holds a pair loop (the masked partial chunk), replaced by `pass`. For
    counting the steady-state SASS only."""
    lines = source.splitlines()
    cut = set()
    for i, line in enumerate(lines):
        if line.rstrip().endswith(FALLBACK):
            cut.add(i)
            depth = _depth(line)
            for j in range(i - 1, -1, -1):  # the enclosing `if` blocks' else branches
                if lines[j].strip() and _depth(lines[j]) < depth:
                    depth = _depth(lines[j])
                    if lines[j].lstrip().startswith("if "):
                        cut.update(_else_of(lines, j))
    out, skip = [], None
    for i, line in enumerate(lines):
        if skip is not None:
            if line.strip() and _depth(line) <= skip:
                skip = None
            else:
                continue
        out.append(line)
        if i in cut:
            out.append(" " * (_depth(line) + 4) + "pass")
            skip = _depth(line)
    return "\n".join(out) + "\n"


def _depth(line: str) -> int:
    return len(line) - len(line.lstrip())


def _else_of(lines: list[str], i: int) -> list[int]:
    """Index of the `else:` line closing the `if` at line i (empty when it has none)."""
    d = _depth(lines[i])
    for j in range(i + 1, len(lines)):
        if lines[j].strip() and _depth(lines[j]) <= d:
            return [j] if _depth(lines[j]) == d and lines[j].strip().startswith("else:") else []
    return []
