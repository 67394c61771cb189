"""`view` in the CUDA renderer: a tile's rows reread as LSB-first bit streams of another type.

Element j of the result holds bits [j*db, (j+1)*db) of its row (db, sb: the bits of a result
and of a source value). They come from the source values that overlap that span, each turned
into a uint64 bit pattern, shifted to its place and `or`-ed; how many values can overlap, and
which shifts need a guard, follow from sb and db alone (their gcd is the smallest possible
offset), so one generator serves every pair of widths: words viewed as u3 codes, codes
packed back into words, u5 as u7, i8 as u32.
"""

from __future__ import annotations

from math import gcd

from lowbitc.backends.numba_cuda.elements import ELEMENT, fail
from lowbitc.backends.numba_cuda.source import numba_type
from lowbitc.formats import lookup as format_of
from lowbitc.ir.core import Op
from lowbitc.ir.types import is_machine, is_signed_int

# machine types a view reads or writes on the GPU: bits, and for floats the bit-cast helpers
# (bitcast.py) to and from an unsigned integer of their width
_MACHINE_BITS = {"i8": 8, "u8": 8, "i16": 16, "u16": 16, "i32": 32, "u32": 32, "i64": 64,
                 "u64": 64, "f16": 16, "bf16": 16, "f32": 32, "f64": 64}  # fmt: skip
_FLOAT_BITS = {"f16": ("u16_from_f16", "f16_from_bits", "U16"),
               "f32": ("u32_from_f32", "f32_from_bits", "U32"),
               "f64": ("u64_from_f64", "f64_from_bits", "U64")}  # fmt: skip


def _bits(op: Op, dtype: str) -> int:
    if not is_machine(dtype):
        return format_of(dtype).bits
    if dtype not in _MACHINE_BITS:
        raise fail(
            op, f"view to {op.attrs.dtype}: the GPU views formats, integers and floats, not {dtype}"
        )
    return _MACHINE_BITS[dtype]


def _pattern(x: str, dtype: str, bits: int) -> str:
    """The uint64 bit pattern of value x (only its low `bits` bits set)."""
    if dtype in _FLOAT_BITS:
        return f"U64({_FLOAT_BITS[dtype][0]}({x}))"
    if is_machine(dtype) and not is_signed_int(dtype):
        return f"U64({x})"
    if bits == 64:
        return f"U64({x})"
    return f"(U64({x}) & U64({(1 << bits) - 1:#x}))"  # sign bits of ints; stray code bits


def _value(bits_expr: str, dtype: str) -> str:
    """A value of `dtype` from the uint64 holding its bits."""
    if dtype in _FLOAT_BITS:
        _, from_bits, width = _FLOAT_BITS[dtype]
        return f"{from_bits}({width}({bits_expr}))"
    return f"{numba_type(dtype if is_machine(dtype) else 'u8')}({bits_expr})"


def _view(ctx, op: Op, idx) -> str:
    v = op.operands[0]
    sdt, ddt = v.type.dtype, op.attrs.dtype
    sb, db = _bits(op, sdt), _bits(op, ddt)
    lead, j = tuple(idx[:-1]), idx[-1]
    src = ctx.src

    def source(k: int, first: str) -> str:
        col = first if k == 0 else src.tmp(f"{first} + {k}", "c")
        return _pattern(ctx.elem(v, (*lead, col)), sdt, sb)

    if db % sb == 0:  # whole source values, at constant offsets
        first = src.tmp(f"{j} * {db // sb}" if db > sb else j, "c")
        acc = src.tmp(source(0, first), "vb")
        for k in range(1, db // sb):
            src.line(f"{acc} = {acc} | ({source(k, first)} << U64({k * sb}))")
    else:
        bit = src.tmp(f"{j} * {db}", "b")
        first = src.tmp(f"{bit} // {sb}", "c")
        off = src.tmp(f"U64({bit} - {first} * {sb})", "o")
        acc = src.tmp(f"{source(0, first)} >> {off}", "vb")
        # offsets are multiples of g in [0, sb - g]: at most `count` values overlap a result
        g = gcd(sb, db)
        count = (sb - g + db - 1) // sb + 1
        for k in range(1, count):
            pos = src.tmp(f"U64({k * sb}) - {off}", "o")
            if k * sb < db:  # always inside the result
                src.line(f"{acc} = {acc} | ({source(k, first)} << {pos})")
                continue
            with src.block(f"if {pos} < U64({db}):"), ctx.scope():  # only for small offsets
                src.line(f"{acc} = {acc} | ({source(k, first)} << {pos})")
    if db < 64:
        acc = src.tmp(f"{acc} & U64({(1 << db) - 1:#x})", "vb")
    return src.tmp(_value(acc, ddt))


ELEMENT["view"] = _view
