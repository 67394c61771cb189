"""IR types: scalars, register/shared tiles and global tensors. `str(t)` is the printed syntax.

Element types are dtype names. Machine dtypes (`f32`, `i32`, ...) are what registers hold;
every other name is a lowbitc number format (`u4`, `f6e3m2`, `nf4`, ...) whose codes live in
memory in the canonical packing (DESIGN.md) and are turned into machine values by `cast`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

# machine dtype -> (kind, bits); kind is "b" bool, "i" signed, "u" unsigned, "f" float
MACHINE: dict[str, tuple[str, int]] = {
    "bool": ("b", 1),
    "i8": ("i", 8), "i16": ("i", 16), "i32": ("i", 32), "i64": ("i", 64),
    "u8": ("u", 8), "u16": ("u", 16), "u32": ("u", 32), "u64": ("u", 64),
    "f16": ("f", 16), "bf16": ("f", 16), "f32": ("f", 32), "f64": ("f", 64),
}

_NUMPY = {
    "bool": np.bool_, "i8": np.int8, "i16": np.int16, "i32": np.int32, "i64": np.int64,
    "u8": np.uint8, "u16": np.uint16, "u32": np.uint32, "u64": np.uint64,
    "f16": np.float16, "f32": np.float32, "f64": np.float64,
}


def is_machine(dtype: str) -> bool:
    return dtype in MACHINE


def is_float(dtype: str) -> bool:
    return MACHINE.get(dtype, ("", 0))[0] == "f"


def is_int(dtype: str) -> bool:
    return MACHINE.get(dtype, ("", 0))[0] in ("i", "u")


def is_signed_int(dtype: str) -> bool:
    return MACHINE.get(dtype, ("", 0))[0] == "i"


def bit_width(dtype: str) -> int:
    return MACHINE[dtype][1]


def is_bfloat16(dt: np.dtype) -> bool:
    """Whether a numpy dtype is ml_dtypes' bfloat16, decided without importing ml_dtypes (its
    import costs ~0.5 s in some versions; an array of it means it is loaded already)."""
    return dt.name == "bfloat16" and dt.itemsize == 2 and dt.kind == "V"


def numpy_dtype(dtype: str) -> np.dtype:
    """The numpy dtype holding values of a machine dtype (bf16 via ml_dtypes, imported only
    when asked for bf16: keep it off every path that does not pass bf16 arrays)."""
    if dtype == "bf16":
        import ml_dtypes  # loads on first use: most kernels never pass bf16 arrays

        return np.dtype(ml_dtypes.bfloat16)
    try:
        return np.dtype(_NUMPY[dtype])
    except KeyError:
        raise ValueError(f"{dtype!r} is not a machine dtype") from None


@dataclass(frozen=True, slots=True)
class ScalarType:
    """A single machine value: loop indices, sizes, scalar parameters."""

    dtype: str

    def __str__(self) -> str:
        return self.dtype


@dataclass(frozen=True, slots=True)
class TileType:
    """A statically shaped block of values, in registers ("reg") or shared memory ("shared").

    `layout` is the printed form of an explicit layout, or "" when the compiler infers it.
    """

    dtype: str
    shape: tuple[int, ...]
    space: str = "reg"
    layout: str = ""

    def __str__(self) -> str:
        dims = ",".join(str(d) for d in self.shape)
        extra = "" if self.space == "reg" else f", {self.space}"
        extra += f", layout={json.dumps(self.layout)}" if self.layout else ""
        return f"tile<{self.dtype}[{dims}]{extra}>"

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def with_dtype(self, dtype: str) -> TileType:
        return TileType(dtype, self.shape, self.space, self.layout)


@dataclass(frozen=True, slots=True)
class TensorType:
    """A kernel's global tensor: element format and dims (ints or symbolic names)."""

    dtype: str
    shape: tuple[int | str, ...]

    def __str__(self) -> str:
        return f"tensor<{self.dtype}[{','.join(str(d) for d in self.shape)}]>"


Type = ScalarType | TileType | TensorType


def strip_layout(t: Type) -> Type:
    """A type without its layout (a layout refines a tile type; it never changes its values)."""
    return TileType(t.dtype, t.shape, t.space) if isinstance(t, TileType) else t


def element_dtype(t: Type) -> str:
    return t.dtype


def same_shape(a: Type, b: Type) -> bool:
    return getattr(a, "shape", ()) == getattr(b, "shape", ())
