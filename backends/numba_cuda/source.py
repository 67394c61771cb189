"""Writing numba-cuda Python source: indented lines, fresh names, typed literals, barriers, and
the rendered result (`Rendered`).

Every name in generated code comes from a counter (`t12`, `sb3`, `a0`) and every literal from
a validated number, so no user text reaches the source.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lowbitc.errors import BackendError
from lowbitc.ir.types import is_float

if TYPE_CHECKING:
    from lowbitc.ir.core import Kernel

# machine dtype -> the numba type name the generated module imports (see HEADER)
NUMBA_TYPE = {
    "bool": "B1", "i8": "I8", "i16": "I16", "i32": "I32", "i64": "I64",
    "u8": "U8", "u16": "U16", "u32": "U32", "u64": "U64",
    "f16": "F16", "f32": "F32", "f64": "F64",
    "bf16": "U16",  # carried as its bits: loads, stores, casts, bitcasts and views only
}
# numba type names for kernel signatures (arrays and scalars)
SIG_TYPE = {
    "bool": "boolean", "i8": "int8", "i16": "int16", "i32": "int32", "i64": "int64",
    "u8": "uint8", "u16": "uint16", "u32": "uint32", "u64": "uint64",
    "f16": "float16", "f32": "float32", "f64": "float64", "bf16": "uint16",
}
# shared-memory element type of a tile dtype (bool tiles are stored as bytes)
SHARED_TYPE = {**NUMBA_TYPE, "bool": "U8"}
SHARED_BYTES = {"bool": 1, "i8": 1, "u8": 1, "i16": 2, "u16": 2, "f16": 2, "bf16": 2, "i32": 4,
                "u32": 4,
                "f32": 4, "i64": 8, "u64": 8, "f64": 8}

HEADER = """\
import math

import numpy as np
from numba import cuda
from numba.cuda.types import boolean as B1, int8 as I8, int16 as I16, int32 as I32, int64 as I64
from numba.cuda.types import uint8 as U8, uint16 as U16, uint32 as U32, uint64 as U64
from numba.cuda.types import float16 as F16, float32 as F32, float64 as F64
from lowbitc.backends.numba_cuda.bitcast import f32_from_bits, i32_from_f32, u32_from_f32
from lowbitc.backends.numba_cuda.bitcast import f16_from_bits, f64_from_bits, u16_from_f16
from lowbitc.backends.numba_cuda.bitcast import u64_from_f64
from lowbitc.backends.numba_cuda.intrinsics import hfma2, ld_row_u32x4, lop3, pack_f16x2, prmt
from lowbitc.backends.numba_cuda.intrinsics import hfma2_bf16, opaque, pack_bf16x2
from lowbitc.backends.numba_cuda.intrinsics import ld_at, ld_at_u32x4, st_at_f16x8, st_row_f16x8
"""


def numba_type(dtype: str) -> str:
    t = NUMBA_TYPE.get(dtype)
    if t is None:
        raise BackendError(f"cuda: values of type {dtype} are not supported")
    return t


def literal(value: int | float | bool, dtype: str) -> str:
    """A typed literal: `F32(1.5)`, `I32(-3)`, `True`; exact for every finite float."""
    if dtype == "bool":
        return "True" if value else "False"
    if dtype == "bf16":  # its bits: the f32's top half, rounded to nearest even
        v = float(value)
        if math.isnan(v):
            return "U16(0x7FC0)"
        b = struct.unpack("<I", struct.pack("<f", v))[0]
        return f"U16({(b + 0x7FFF + ((b >> 16) & 1)) >> 16:#x})"
    t = numba_type(dtype)
    if is_float(dtype):
        v = float(value)
        if math.isnan(v):
            return f"{t}(math.nan)"
        if math.isinf(v):
            return f"{t}({'-' if v < 0 else ''}math.inf)"
        return f"{t}({v!r})"
    if isinstance(value, float) and not value.is_integer():
        raise BackendError(f"cuda: integer constant of {dtype} is not an integer: {value!r}")
    return f"{t}({int(value)})"


def f32_bits(values: tuple[float, ...]) -> list[int]:
    """The f32 bit patterns of a table's values (NaN kept as the quiet NaN)."""
    return [struct.unpack("<I", struct.pack("<f", v))[0] for v in values]


class Source:
    """Lines of Python with an indentation level, fresh names and deduplicated barriers."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.depth = 1
        self.counter = 0
        self.synced = True  # nothing to order at kernel entry

    def fresh(self, prefix: str = "t") -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def line(self, text: str) -> None:
        self.lines.append("    " * self.depth + text)
        self.synced = False

    def tmp(self, expr: str, prefix: str = "t") -> str:
        """Assign `expr` to a fresh local and return its name."""
        name = self.fresh(prefix)
        self.line(f"{name} = {expr}")
        return name

    def sync(self) -> None:
        """`cuda.syncthreads()` unless the previous statement already was one."""
        if not self.synced:
            self.line("cuda.syncthreads()")
            self.synced = True

    @contextmanager
    def block(self, head: str) -> Iterator[None]:
        """An indented block under `head` (`while ...:`, `if ...:`)."""
        self.line(head)
        self.depth += 1
        start = len(self.lines)
        try:
            yield
        finally:
            if len(self.lines) == start:
                self.line("pass")
            self.depth -= 1
            self.synced = False


@dataclass(frozen=True)
class Rendered:
    """Generated source, its function name, the numba signature for offline compilation,
    the shared memory the kernel uses, and how much of it is dynamic (launch-time: 0 when
    every tile is a static array, else all of it, `shared.DYNAMIC_SHARED_LIMIT`)."""

    name: str
    source: str
    signature: str
    shared_bytes: int
    dynamic_bytes: int = 0


def kernel_name(k: Kernel) -> str:
    name = f"lbk_{k.name}"
    if not (name.isascii() and name.isidentifier()):
        raise BackendError(f"cuda: kernel name {k.name!r} is not an ASCII identifier", k.loc)
    return name


def _dtype_of(numba_name: str) -> str:
    return next((d for d, n in SHARED_TYPE.items() if n == numba_name and d != "bool"), "f32")


def size_of(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
