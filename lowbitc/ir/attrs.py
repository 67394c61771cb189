"""The attribute dataclasses of the tile-IR opcodes (one per kind of op; lowbitc.ir.opdefs
pairs each opcode with one and its type rule)."""

from __future__ import annotations

from dataclasses import dataclass, field

from lowbitc.ir.core import Attrs

# ---------------------------------------------------------------- attribute dataclasses

# An attribute that later passes add (e.g. `vec` from the vectorize pass): printed only when it
# differs from its default, so the text of ops that never got one stays as it was.
LATE = {"late": True}


def late(default: object) -> object:
    """A dataclass field for a late attribute with this default."""
    return field(default=default, metadata=LATE)


@dataclass(frozen=True, slots=True)
class VecAttrs(Attrs):
    """Elementwise ops and `where`: `vec` is the vector width a backend emits (0 = undecided),
    set by the vectorize pass."""

    vec: int = late(0)


@dataclass(frozen=True, slots=True)
class ConstAttrs(Attrs):
    dtype: str
    value: int | float | bool


@dataclass(frozen=True, slots=True)
class AxisAttrs(Attrs):
    axis: int


@dataclass(frozen=True, slots=True)
class FullAttrs(Attrs):
    dtype: str
    shape: tuple[int, ...]
    value: int | float


@dataclass(frozen=True, slots=True)
class ArangeAttrs(Attrs):
    dtype: str
    n: int


@dataclass(frozen=True, slots=True)
class CastAttrs(Attrs):
    """`rounding` (cast to a format only; printed when not the default) is a mode of
    `lowbitc.rounding`; "stochastic" casts take two more operands: the seed (i64 scalar) and
    each element's flat index (i64, broadcast to the value's shape)."""

    dtype: str
    vec: int = late(0)  # cast, bitcast: vector width (the vectorize pass)
    rounding: str = late("nearest_even")


@dataclass(frozen=True, slots=True)
class ShapeAttrs(Attrs):
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class PermAttrs(Attrs):
    perm: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ReduceAttrs(Attrs):
    axis: int
    kind: str


@dataclass(frozen=True, slots=True)
class MemAttrs(Attrs):
    """`load`/`store` window: one size per tensor dim; size 0 indexes a single element
    and drops that dim from the tile. `layout` is an explicit register layout ("" = inferred)."""

    sizes: tuple[int, ...]
    layout: str = ""
    masked: bool = False  # a last operand, a bool tile: False lanes read 0 / are not written
    linear: bool = late(False)  # offset and row strides follow the starts (linearize pass)


@dataclass(frozen=True, slots=True)
class GatherAttrs(Attrs):
    """`gather`: a `load` whose index along `axis` is an integer tile (operand 1) rather than
    a start: `sizes` as a load's, with sizes[axis] the index tile's length. Rows whose index is
    outside the tensor read 0, as every window past an edge does."""

    axis: int
    sizes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class CodesAttrs(Attrs):
    """`load_codes`: a window of a packed tensor, unpacked to integer codes of `bits` each."""

    bits: int
    dtype: str
    sizes: tuple[int, ...]
    masked: bool = False
    packing: str = ""  # "" = canonical; else a layout-specific packing (lowbitc.repack)
    linear: bool = late(False)  # offset and row strides follow the starts (linearize pass)


@dataclass(frozen=True, slots=True)
class ForAttrs(Attrs):
    """`stages`: the software pipeline depth `range(..., stages=S)` asks of a backend that
    stages the loop's loads (the CUDA backend's cp.async pipeline), 0 for its default."""

    unroll: bool = False
    stages: int = late(0)


@dataclass(frozen=True, slots=True)
class LayoutAttrs(Attrs):
    """`relayout`: the thread-value layout a tile must have from here on (printed form)."""

    layout: str


@dataclass(frozen=True, slots=True)
class LutAttrs(Attrs):
    dtype: str
    values: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class SharedAttrs(Attrs):
    """`alloc_shared`: a per-block shared tile; `layout` is its memory layout ("" row-major,
    or a swizzle such as "Sw<3,2,3>" applied to the row-major offset)."""

    dtype: str
    shape: tuple[int, ...]
    layout: str = ""
