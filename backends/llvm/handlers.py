"""The op -> handler table of the LLVM backend and the state handlers share (Env)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from lowbitc.errors import BackendError
from lowbitc.ir.core import Op, Value
from lowbitc.ir.types import TensorType, TileType, is_float, is_machine, is_signed_int
from lowbitc.backends.llvm.emitter import Buf, Emitter, float_literal, lltype
from lowbitc.signature import format_bits

HANDLERS: dict[str, Callable[[Env, Op], None]] = {}


def handles(*opcodes: str) -> Callable:
    def deco(fn: Callable[[Env, Op], None]) -> Callable[[Env, Op], None]:
        for o in opcodes:
            HANDLERS[o] = fn
        return fn
    return deco


@dataclass
class TensorArg:
    """A global tensor: data pointer, type, per-dim extents and row-major strides (LLVM
    operands). Packed formats are addressed in uint32 words; `words` is words per row."""

    ptr: str
    type: TensorType
    dims: list[str] = field(default_factory=list)
    strides: list[str] = field(default_factory=list)
    words: str = ""

    def bind_dims(self, dim_of: dict[str, str]) -> None:
        self.dims = [dim_of[d] if isinstance(d, str) else str(d) for d in self.type.shape]

    def ensure_strides(self, em: Emitter) -> None:
        """Compute strides (in elements, or words for packed rows) once, at first use."""
        if self.strides:
            return
        shape = list(self.dims)
        if self.packed:
            bits = format_bits(self.type.dtype)
            t = em.val(f"mul i64 {shape[-1]}, {bits}")
            t = em.val(f"add i64 {t}, 31")
            self.words = em.val(f"lshr i64 {t}, 5", "wpr")
            shape[-1] = self.words
        strides = ["1"] * len(shape)
        for d in range(len(shape) - 2, -1, -1):
            strides[d] = em.val(f"mul i64 {strides[d + 1]}, {shape[d + 1]}", "st")
        self.strides = strides

    @property
    def packed(self) -> bool:
        return not is_machine(self.type.dtype)


class Env:
    """Values visible while emitting: scalars (LLVM operands), tiles (buffers), tensors."""

    def __init__(self, em: Emitter):
        self.em = em
        self.scalars: dict[int, str] = {}
        self.tiles: dict[int, Buf] = {}
        self.tensors: dict[int, TensorArg] = {}
        self.block: tuple[str, str, str] = ("0", "0", "0")

    def get(self, v: Value):
        for table in (self.scalars, self.tiles, self.tensors):
            if v.id in table:
                return table[v.id]
        raise BackendError(f"llvm: value {v} has no code (a compiler bug)")

    def bind(self, v: Value, x) -> None:
        if isinstance(x, Buf):
            self.tiles[v.id] = x
        else:
            self.scalars[v.id] = x

    def result_buf(self, op: Op) -> Buf:
        t = op.results[0].type
        assert isinstance(t, TileType)
        b = self.em.alloc(t.dtype, t.shape)
        self.tiles[op.results[0].id] = b
        return b


def const_literal(em: Emitter, value, dtype: str) -> str:
    """An LLVM operand for a constant (half/bfloat go through a float and a truncation)."""
    if dtype == "bool":
        return "true" if value else "false"
    if is_float(dtype):
        if dtype in ("f16", "bf16"):
            return em.val(f"fptrunc float {float_literal(value, 'f32')} to {lltype(dtype)}")
        return float_literal(value, dtype)
    return str(int(value))


def convert(em: Emitter, v: str, src: str, dst: str) -> str:
    """Convert a register value between machine dtypes (C semantics)."""
    if src == dst:
        return v
    ts, td = lltype(src), lltype(dst)
    if src == "bool":
        if is_float(dst):
            return em.val(f"uitofp i1 {v} to {td}")
        return em.val(f"zext i1 {v} to {td}")
    if dst == "bool":
        if is_float(src):
            return em.val(f"fcmp une {ts} {v}, 0.0")
        return em.val(f"icmp ne {ts} {v}, 0")
    fs, fd = is_float(src), is_float(dst)
    if fs and fd:
        if ts == td:
            return v
        wide = {"half": 16, "bfloat": 16, "float": 32, "double": 64}
        if {ts, td} == {"half", "bfloat"}:
            v = em.val(f"fpext {ts} {v} to float")
            return em.val(f"fptrunc float {v} to {td}")
        op = "fpext" if wide[td] > wide[ts] else "fptrunc"
        return em.val(f"{op} {ts} {v} to {td}")
    if fs:
        return em.val(f"{'fptosi' if is_signed_int(dst) else 'fptoui'} {ts} {v} to {td}")
    if fd:
        return em.val(f"{'sitofp' if is_signed_int(src) else 'uitofp'} {ts} {v} to {td}")
    ws, wd = int(ts[1:]), int(td[1:])
    if ws == wd:
        return v
    if wd < ws:
        return em.val(f"trunc {ts} {v} to {td}")
    return em.val(f"{'sext' if is_signed_int(src) else 'zext'} {ts} {v} to {td}")
