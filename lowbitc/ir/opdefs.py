"""Every tile-IR opcode: its attribute dataclass (from lowbitc.ir.attrs), how many regions it
has, and its type rule.

The type rule (`infer`) maps operand types and attributes to result types or raises
`VerifyError`; the builder uses it to type new ops and the verifier to re-check them. The
rules live in lowbitc.ir.type_rules (values) and lowbitc.ir.memory_rules (loads, stores).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from lowbitc.errors import VerifyError
from lowbitc.ir.attrs import (  # noqa: F401  (re-exported: lowbitc.ir.opdefs.FooAttrs)
    ArangeAttrs,
    AxisAttrs,
    CastAttrs,
    CodesAttrs,
    ConstAttrs,
    ForAttrs,
    FullAttrs,
    GatherAttrs,
    LayoutAttrs,
    LutAttrs,
    MemAttrs,
    PermAttrs,
    ReduceAttrs,
    ShapeAttrs,
    SharedAttrs,
    VecAttrs,
)
from lowbitc.ir.core import Attrs
from lowbitc.ir.memory_rules import MEMORY_RULES
from lowbitc.ir.type_rules import (  # noqa: F401  (re-exported from their old home)
    BINARY,
    BYTES,
    ELEMENTWISE,
    ROUNDED_MACHINE_TARGETS,
    VALUE_RULES,
    Infer,
    broadcast_shapes,
    fail,
    rounded_cast_problem,
)
from lowbitc.ir.types import TileType, Type


@dataclass(frozen=True, slots=True)
class OpDef:
    name: str
    attrs: type[Attrs]
    infer: Infer
    regions: int = 0


_ATTRS: dict[str, type[Attrs]] = {
    **{n: VecAttrs for n in VALUE_RULES if n in ELEMENTWISE},
    "const": ConstAttrs, "block_id": AxisAttrs, "full": FullAttrs, "arange": ArangeAttrs,
    "cast": CastAttrs, "bitcast": CastAttrs, "codes": CastAttrs, "where": VecAttrs,
    "reshape": ShapeAttrs, "broadcast": ShapeAttrs, "transpose": PermAttrs,
    "reduce": ReduceAttrs, "dot": Attrs, "load": MemAttrs, "load_codes": CodesAttrs,
    "gather": GatherAttrs, "store": MemAttrs, "lut": LutAttrs, "relayout": LayoutAttrs,
    "view": CastAttrs, "for": ForAttrs, "if": Attrs, "yield": Attrs,
    "alloc_shared": SharedAttrs, "load_shared": MemAttrs, "store_shared": MemAttrs,
    "sync": Attrs, "from_codes": CastAttrs, "philox": VecAttrs, "store_codes": CodesAttrs,
}  # fmt: skip
_REGIONS = {"for": 1, "if": 2}
_RULES = {**VALUE_RULES, **MEMORY_RULES}

OPS: dict[str, OpDef] = {
    n: OpDef(n, attrs, _RULES[n], _REGIONS.get(n, 0)) for n, attrs in _ATTRS.items()
}

# the only ops that take a shared tile (memory, not a value) as an operand: their first
SHARED_OPERAND = frozenset({"load_shared", "store_shared", "gather"})


def check_shared_operands(opcode: str, types: tuple[Type, ...]) -> None:
    """Raise unless shared tiles appear only where an op reads or writes them as memory."""
    for t in types[1:] if opcode in SHARED_OPERAND else types:
        if isinstance(t, TileType) and t.space == "shared":
            raise fail(opcode, f"an operand is a shared tile ({t}), which is memory, not a "
                       "value; read it with load(s[...]) first")


def attr_items(a: Attrs) -> list[tuple[str, object]]:
    """The attributes of an op, sorted by name (the printed order); late attributes only
    when set."""
    return sorted((f.name, getattr(a, f.name)) for f in fields(a)
                  if not (f.metadata.get("late") and getattr(a, f.name) == f.default))


def make_attrs(opcode: str, values: dict[str, object]) -> Attrs:
    cls = OPS[opcode].attrs
    names = {f.name for f in fields(cls)}
    if set(values) - names:
        raise VerifyError(f"{opcode}: unknown attributes {sorted(set(values) - names)}")
    return cls(**values)
