"""Weights decoded straight into B-fragment registers for `mma_dot`: the dot's weight operand
is `transpose` of an elementwise chain over one `load_codes` (the plan keeps it out of shared
memory, `plan.codes_leaf`); each register's two codes come from one word load, and for
formats whose value is affine in the code (u, i, b) the f16x2 register is one LOP3 (codes
into the mantissas of 1024, as Marlin/FasterTransformer) and one or two HFMA2.
"""

from __future__ import annotations

import numpy as np

from lowbitc.backends.numba_cuda.elements import reg_dtype
from lowbitc.backends.numba_cuda.halves import ONE_PAIR
from lowbitc.backends.numba_cuda.halves_plan import _code_values
from lowbitc.backends.numba_cuda.mma_decode import DESTS
from lowbitc.backends.numba_cuda.source import numba_type


def word_leaf(ctx, v, any_width: bool = False):
    """(leaf, tensor) when v is `transpose` of an elementwise chain over one load_codes
    (`plan.codes_leaf`, of any width with `any_width`) kept out of shared memory, else None."""
    from lowbitc.backends.numba_cuda.plan import codes_leaf

    op = ctx.lazy.get(v.id)
    if op is None or op.opcode != "transpose" or tuple(op.attrs.perm) != (1, 0):
        return None
    leaf = codes_leaf(op.operands[0], ctx.lazy, any_width, machine=any_width)
    if leaf is None or ctx.bufs.get(leaf.results[0].id) is not None:
        return None
    t = ctx.tensor(leaf.operands[0])
    sizes = leaf.attrs.sizes
    if not t.bits or len(sizes) != 2 or any(s <= 0 for s in sizes):
        return None
    return leaf, t


def inside_condition(ctx, v) -> str | None:
    """A block-uniform expression, true when v's whole codes tile lies inside the tensor: the
    steady state, whose loads need no bounds check
    (`codes_by_word(..., k0=...)`); None when v's codes are not read by word."""
    found = word_leaf(ctx, v)
    if found is None:
        return None
    leaf, t = found
    (bn, bk), src = leaf.attrs.sizes, ctx.src
    s0, s1 = (ctx.elem(x, ()) for x in leaf.operands[1:3])
    return src.tmp(f"0 <= {s0} and {s0} + {bn} <= {t.dims[0]} and 0 <= {s1} and "
                   f"{s1} + {bk} <= {t.dims[1]}", "full")


def codes_by_word(ctx, v, offs: list, idxs: list, k0: tuple | None = None,
                  ks: str = "") -> str | None:
    """Weights decoded in registers: when v is `transpose` of an elementwise chain over one
    load_codes (`plan.codes_leaf`) and a register's elements are consecutive along K, load
    the codes' word once (one bounds check; outside, the word reads 0: code 0, as an
    out-of-bounds load_codes; codes past K in a row's last word are the packing's zero
    padding). When the chain is affine in the code with f16-exact constants (u, i, b
    formats) the f16x2 register comes straight from the word: the two codes OR'ed into the
    mantissas of 1024 (`lop3`), one HFMA2 subtracting it, one more for `alpha * c + beta`;
    otherwise the codes are handed to the chain through the element memo (None returned).

    `k0`: (thread's K base name, constant offset), the register's K coordinate without the
    K step `ks` (a multiple of 16), when the
    caller knows the tile is inside (`inside_condition`): no bounds check, the row offset
    loop-invariant, and the bit offset from k0 alone when the K step moves whole words
    (loop-invariant too, hoisted by the compiler)."""
    found = word_leaf(ctx, v)
    if found is None:
        return None
    leaf, t = found
    op = ctx.lazy[v.id]
    b = t.bits
    k_first = offs[0][0]
    if (k_first % len(offs) or offs != [(k_first + h, offs[0][1]) for h in range(len(offs))]
            or b * len(offs) > 16 or (t.interleaved and b != 4)):
        return None
    src = ctx.src
    starts = [ctx.elem(x, ()) for x in leaf.operands[1:3]]
    k, n = idxs[0]
    gn, gk = src.tmp(f"{starts[0]} + {n}", "g"), src.tmp(f"{starts[1]} + {k}", "g")
    if t.interleaved:  # slot order of interleave.py: even codes, then odd (16 bits on)
        wi, per_word = f"{gk} >> 3", 8
        shifts = ["o", "(o + U32(16))"]
    else:
        wi, per_word = f"({gk} * {b}) >> 5", 32 // b
        shifts = [f"(o + U32({h * b}))" if h else "o" for h in range(len(offs))]
    at = (lambda g: f"U32((({g} & 7) >> 1) * 4)") if t.interleaved else \
        (lambda g: f"U32(({g} * {b}) & 31)")
    if k0 is None:
        word = src.tmp("U32(0)", "wd")
        with src.block(f"if 0 <= {gn} < {t.dims[0]} and 0 <= {gk} < {t.dims[1]}:"):
            # flat 64-bit element offset: no negative-index wrap code (`intrinsics.ld_at`)
            src.line(f"{word} = U32(ld_at({t.name}, U32(0), U32(0), U32(0), "
                     f"I64({gn}) * I64({t.name}.shape[1]) + I64({wi})))")
        off = at(gk)
    else:  # the row's offset is loop-invariant (hoisted), the word offset shared by every
        # row, the constant K offset (whole words) folded into the load's immediate; 64-bit
        # index arithmetic throughout (numba computes uint32 sums in 64 bits, and masking
        # them back costs more than it saves)
        kb, kc = k0
        row = src.tmp(f"I64({gn}) * I64({t.name}.shape[1])", "row")
        wk = src.tmp(f"I64({starts[1]} + {kb} + {ks})", "wk")
        if kc * b % 32 == 0 and 16 % per_word == 0:
            word_at = f"({wk} >> 3)" if t.interleaved else f"(({wk} * {b}) >> 5)"
            const = kc * b // 32
            off = at(f"({starts[1]} + {kb})")
        else:
            word_at = "(" + wi.replace(gk, f"({wk} + {kc})") + ")"
            const = 0
            off = at(f"({wk} + {kc})")
        word = src.tmp(f"U32(ld_at({t.name}, U32(0), U32(0), U32(0), {row} + {word_at}"
                       + (f" + {const}))" if const else "))"), "wd")
    o = src.tmp(off, "o")
    shifts = [x.replace("o", o, 1) for x in shifts]
    mask = (1 << b) - 1
    affine = _affine_values(ctx, leaf, op.operands[0]) if len(offs) == 2 else None
    if affine is not None:
        alpha, beta, flip = affine
        if t.interleaved:
            m = src.tmp(f"lop3({word} >> {o}, U32({mask | mask << 16:#x}), U32(0x64006400), "
                        "0xEA)", "m")
        else:
            lo = f"(({word} >> {shifts[0]}) & U32({mask}))"
            hi = f"((({word} >> {shifts[1]}) & U32({mask})) << U32(16))"
            m = src.tmp(f"{lo} | {hi} | U32(0x64006400)", "m")
        if flip:  # two's complement codes: c ^ sign bit, in both halves
            m = src.tmp(f"{m} ^ U32({flip | flip << 16:#x})", "m")
        r = src.tmp(f"hfma2({m}, U32({ONE_PAIR:#x}), U32(0xE400E400))", "h")  # - 1024
        if (alpha, beta) != (1.0, 0.0):
            r = src.tmp(f"hfma2({r}, U32({_f16x2(alpha):#x}), U32({_f16x2(beta):#x}))", "h")
        return r
    R = numba_type(reg_dtype(leaf.results[0].type.dtype))
    for (kk, nn), sh in zip(idxs, shifts, strict=True):
        code = src.tmp(f"{R}(({word} >> {sh}) & U32({mask}))", "v")
        ctx.memo[-1][(leaf.results[0].id, (nn, kk))] = code
    return None


def _f16x2(x: float) -> int:
    h = int(np.array(x, np.float16).view(np.uint16))
    return h | h << 16


def _affine_values(ctx, leaf, root, dtype: str = "f16") -> tuple[float, float, int] | None:
    """(alpha, beta, flip) when root's value (of `dtype`, f16 or bf16) is alpha * (code ^ flip)
    + beta for every code (flip 0, or the sign bit for two's complement codes), both constants
    and every value exact in `dtype`; else None."""
    if root.type.dtype != dtype:
        return None
    values = _code_values(ctx, leaf, root)
    exact = DESTS[dtype].exact
    codes = np.arange(values.size)
    for flip in (0, values.size // 2):
        flipped = (codes ^ flip).astype(np.float64)
        lo, hi = int(np.argmin(flipped)), int(np.argmax(flipped))
        beta = float(values[lo])
        alpha = float(values[hi] - values[lo]) / max(flipped[hi], 1.0)
        if (all(exact(x) for x in (alpha, beta, *values))
                and np.array_equal(values, alpha * flipped + beta)):
            return alpha, beta, flip
    return None
