"""Linearization: the address arithmetic of global tensor windows as IR values.

Every `load`/`store` of a machine-typed tensor and every canonical-packing `load_codes` gets
two more kinds of i64 operands after its starts (and `{linear=true}`): the linear offset of
the window's origin, then the tensor's row strides (one per dim but the last). Strides are
computed once at the top of the body from the dims, row-major: in elements, or for packed
tensors in uint32 words (a row of C codes of b bits is ceil(C * b / 32) words). The offset is
sum(start[d] * stride[d]) over the leading dims, plus the last start for machine types (a
packed row's column start stays a code index: `load_codes` turns it into a word and a shift).
Backends address these windows from the operands instead of computing strides themselves;
the starts stay, for the bounds checks at the edges. Loads in a layout-specific packing
(`bitpack-lanes`) keep the packing's own addressing.
"""

from __future__ import annotations

from dataclasses import replace

from lowbitc.ir.builder import Builder
from lowbitc.ir.core import Kernel, Op, Region, Value, walk
from lowbitc.ir.types import TensorType, is_machine
from lowbitc.passes.base import max_id, register, rewrite
from lowbitc.signature import format_bits


def linearizable(op: Op) -> bool:
    """Whether linearize gives this op linear operands."""
    if op.opcode not in ("load", "store", "load_codes") or op.attrs.linear:
        return False
    t = op.operands[0].type
    if not isinstance(t, TensorType):
        return False
    if op.opcode == "load_codes":
        return not op.attrs.packing
    return is_machine(t.dtype)


def _strides(k: Kernel, t: TensorType, b: Builder) -> list[Value]:
    """Row-major strides of the leading dims of `t` (elements, or words for packed codes)."""
    if len(t.shape) < 2:
        return []
    dims = [k.param(d) if isinstance(d, str) else b.i64(d) for d in t.shape]
    row = dims[-1]
    if not is_machine(t.dtype):  # whole uint32 words per row
        bits = b.emit("mul", row, b.i64(format_bits(t.dtype)))
        row = b.emit("shr", b.emit("add", bits, b.i64(31)), b.i64(5))
    out = [row]
    for d in reversed(dims[1:-1]):
        out.insert(0, b.emit("mul", out[0], d))
    return out[: len(t.shape) - 1]


def _offset(b: Builder, starts: tuple[Value, ...], strides: list[Value], machine: bool) -> Value:
    terms = [b.emit("mul", s, st) for s, st in zip(starts, strides)]
    if machine:
        terms.append(starts[-1])
    acc = terms[0] if terms else b.i64(0)
    for x in terms[1:]:
        acc = b.emit("add", acc, x)
    return acc


@register("linearize")
def linearize(k: Kernel) -> Kernel:
    """Global tensor windows get their linear offset and row strides as i64 operands."""
    tensors = {
        op.operands[0].id: op.operands[0].type for op in walk(k.body.ops) if linearizable(op)
    }
    if not tensors:
        return k
    b = Builder(first_id=max_id(k) + 1)
    b.loc = k.loc
    by_shape: dict[tuple, list[Value]] = {}  # tensors of one shape and element size share
    strides = {}
    for pid, t in tensors.items():
        # machine types share element strides; packed ones by width (a 1-bit format's key
        # must not equal a machine type's: True == 1)
        key = (0 if is_machine(t.dtype) else format_bits(t.dtype), t.shape)
        if key not in by_shape:
            by_shape[key] = _strides(k, t, b)
        strides[pid] = by_shape[key]
    k = replace(k, body=Region(k.body.args, b.take() + k.body.ops))

    def rule(op: Op, b: Builder, defs):
        if not linearizable(op) or op.operands[0].id not in strides:
            return None
        t = op.operands[0].type
        rank = len(t.shape)
        starts = op.operands[1 : 1 + rank]
        st = strides[op.operands[0].id]
        off = _offset(b, starts, st, is_machine(t.dtype))
        operands = op.operands[: 1 + rank] + (off, *st) + op.operands[1 + rank :]
        types = [r.type for r in op.results]
        return b.op(op.opcode, operands, replace(op.attrs, linear=True), result_types=types).results

    return rewrite(k, rule)
