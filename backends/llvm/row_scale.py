"""The register dot's row scale and offset (fusion.py `_fused`): a weight E = core * S + T
with S and T f32 leaves constant along K (a row's scale and offset: a block's d, or d * sc
and dmin * mn of GGUF K-quants, an absmax looked up from its 8-bit code) sums core * a only;
each row's sum is scaled by S once per window and T times the sum of the activations added,
instead of a multiply (and an add) per weight.

A step scale is the same for a scale constant along each step of 32 codes but not along the
window (a window of several GGUF blocks of 32, each with its d): each step's products are
summed into one vector of lanes, then multiplied by the step's S into the row's sums (one FMA
a step instead of a multiply per 16 weights)."""

from __future__ import annotations

from lowbitc.backends.llvm.byte_window import W
from lowbitc.backends.llvm.fused_leaves import word_invariant
from lowbitc.ir.core import Op, Value
from lowbitc.ir.types import TileType


def find(plan, defs: dict[int, Op]) -> tuple:
    """(core, S, T, sign) when E = core * S + sign * T (either order of the product; T absent:
    None) with S and T f32 leaves of E constant along K (one per row, or scalars) and
    core * S used by nothing else in E, else (None, None, None, 1.0)."""
    none = (None, None, None, 1.0)
    op = defs.get(plan.root.id)
    if (op is None or plan.root.type.dtype != "f32" or plan.root.id in plan.tables
            or plan.root.id in plan.row_tables.wanted):
        return none
    inside = {o.results[0].id: o for o in plan.tree}

    def row_leaf(v: Value) -> bool:
        return (v.id not in inside and v.type.dtype == "f32"
                and (not isinstance(v.type, TileType) or v.type.shape[-1] == 1))

    offset, sign = None, 1.0
    if op.opcode in ("add", "sub"):
        p, t = op.operands
        if op.opcode == "add" and row_leaf(p):
            p, t = t, p
        used = sum(u.id == p.id for o in plan.tree for u in o.operands)
        if not row_leaf(t) or p.id not in inside or used != 1:
            return none
        op, offset, sign = inside[p.id], t, -1.0 if op.opcode == "sub" else 1.0
    if op.opcode != "mul" or op.results[0].type.shape != plan.root.type.shape:
        return none
    for core, s in (op.operands, op.operands[::-1]):
        if row_leaf(s):
            return core, s, offset, sign
    return none


def step(plan, defs: dict[int, Op], spaces: dict[int, tuple[int, ...]] | str) -> tuple:
    """(core, S, space) when E is, through reshapes (row regroupings), core * S (either order)
    with S an f32 leaf constant along every step of W codes in the product's shape `space`
    (`spaces`: fusion_plan.row_spaces) and core used by nothing else in E; else
    (None, None, ())."""
    none = (None, None, ())
    inside = {o.results[0].id: o for o in plan.tree}
    op = defs.get(plan.root.id)
    while op is not None and op.opcode == "reshape" and op.operands[0].id in inside:
        op = inside[op.operands[0].id]
    if (op is None or op.opcode != "mul" or isinstance(spaces, str)
            or op.results[0].type.dtype != "f32" or plan.root.id in plan.tables):
        return none
    space = spaces[op.results[0].id]
    for core, s in (op.operands, op.operands[::-1]):
        used = sum(u.id == core.id for o in plan.tree for u in o.operands)
        if (core.id in inside and used == 1 and s.id not in inside and s.type.dtype == "f32"
                and word_invariant(s, space, W)):
            return core, s, space
    return none


def note(plan) -> str:
    """What explain adds to the register dot's path when E = core * S (Plan.scale, or
    Plan.step_scale)."""
    if plan.step_scale is not None:
        return ", each step's sum scaled once by its step scale"
    if plan.scale is None:
        return ""
    return ", each row's sum scaled once by its row scale" + (
        " and its row offset times the activations' sum added" if plan.offset is not None
        else "")

