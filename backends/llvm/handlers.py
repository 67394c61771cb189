"""The op -> handler table of the LLVM backend and the state handlers share (Env)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from lowbitc.backends.llvm.emitter import Buf, Emitter, float_literal, lltype
from lowbitc.errors import BackendError
from lowbitc.ir.core import Op, Value, walk
from lowbitc.ir.types import (
    TensorType,
    TileType,
    is_float,
    is_machine,
    is_signed_int,
    numpy_dtype,
)
from lowbitc.repack import Packing
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
    packing: Packing | None = None  # a layout-specific packing (lowbitc.repack), else canonical

    def bind_dims(self, dim_of: dict[str, str]) -> None:
        self.dims = [dim_of[d] if isinstance(d, str) else str(d) for d in self.type.shape]

    def ensure_strides(self, em: Emitter) -> None:
        """Compute strides (in elements, or words for packed rows) once, at first use."""
        if self.strides:
            return
        shape = list(self.dims)
        if self.packing is not None:  # whole steps per row
            steps = em.val(f"udiv i64 {em.val(f'add i64 {shape[-1]}, {self.packing.step - 1}')}, "
                           f"{self.packing.step}")
            self.words = em.val(f"mul i64 {steps}, {self.packing.step_words}", "wpr")
            shape[-1] = self.words
        elif self.packed:
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
        self.steps: dict[int, str] = {}  # a for loop's counter (value id) -> its step
        self.consts: dict[int, Op] = {}  # scalar constants of the regions emitted so far
        self.defs: dict[int, Op] = {}  # the op defining each value of the kernel (codegen)
        self.carries: dict = {}  # a loop's carried dot (result id) -> its partials (carry.py)
        self.col_tables: dict = {}  # a column dot (result id) -> its product table
        # carried fused dots whose rows run in a later dot's loop (carry.plan_joins): first
        # result id -> second's; waiting fast paths by the later dot; Rows being collected
        self.joins: dict[int, int] = {}
        self.joined: dict = {}
        self.collect: list | None = None
        self.loops = 0  # for loops being emitted around the current op
        # results to be built in place in a shared tile (ops_shared.plan_in_place): id -> Buf
        self.dest: dict[int, Buf] = {}

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

    def on_counter(self, v: Value) -> bool:
        """Whether v depends on a for loop's counter (its defining ops walked back through
        self.defs, an op with regions through every op inside them)."""
        stack, seen = [v], set()
        while stack:
            v = stack.pop()
            if v.id in self.steps:
                return True
            op = self.defs.get(v.id)
            if v.id in seen or op is None:
                continue
            seen.add(v.id)
            stack.extend(op.operands)
            for r in op.regions:
                stack.extend(u for inner in walk(r.ops) for u in inner.operands)
        return False

    def result_buf(self, op: Op) -> Buf:
        t = op.results[0].type
        assert isinstance(t, TileType)
        b = self.dest.pop(op.results[0].id, None) or self.em.alloc(t.dtype, t.shape)
        self.tiles[op.results[0].id] = b
        return b


def const_literal(em: Emitter, value, dtype: str) -> str:
    """An LLVM operand for a constant (f16 as an exact 0xH literal, bf16 as its 16 bits)."""
    if dtype == "bool":
        return "true" if value else "false"
    if dtype in ("f16", "bf16"):  # exact bit literals: no conversion code (or libcall)
        bits = int(np.asarray(value, numpy_dtype(dtype)).view(np.uint16))
        return f"0xH{bits:04X}" if dtype == "f16" else str(bits - 65536 * (bits >= 32768))
    if is_float(dtype):
        return float_literal(value, dtype)
    return str(int(value))


def vtype(dtype: str, width: int = 0) -> str:
    """The LLVM type of a `dtype` value, or of a <width x ...> vector of them."""
    t = lltype(dtype)
    return f"<{width} x {t}>" if width else t


def splat(literal: str, dtype: str, width: int = 0) -> str:
    """A constant operand: the literal itself, or `splat (T literal)` for a vector."""
    return f"splat ({lltype(dtype)} {literal})" if width else literal


QUANTIZING = {"i8": (-128, 127), "u8": (0, 255)}  # floats to these quantize (docs/dsl.md)


def _sfx(t: str) -> str:
    return {"half": "f16", "float": "f32", "double": "f64"}[t]


def convert(em: Emitter, v: str, src: str, dst: str, width: int = 0) -> str:
    """Convert a register value (or a vector of `width`) between machine dtypes (C semantics,
    except that floats to i8/u8 quantize: round to nearest even, saturating, NaN to 0).
    bf16 (held as its 16 bits) goes through f32 both ways, with no libcalls."""
    if src == dst:
        return v
    if src == "bf16":  # its bits are the top half of an f32
        i32 = vtype("i32", width)
        wide = em.val(f"shl {i32} {em.val(f'zext {vtype(src, width)} {v} to {i32}')}, "
                      f"{splat('16', 'i32', width)}")
        return convert(em, em.val(f"bitcast {i32} {wide} to {vtype('f32', width)}"), "f32",
                       dst, width)
    if dst == "bf16":
        if src == "bool" or not is_float(src) or src == "f64":
            v = convert(em, v, src, "f32", width)  # (f64 -> f32 -> bf16 rounds twice)
        elif src == "f16":
            v = convert(em, v, src, "f32", width)
        return _f32_to_bf16(em, v, width)
    ts, td = vtype(src, width), vtype(dst, width)
    zero = "zeroinitializer" if width else None
    if src == "bool":
        if is_float(dst):
            return em.val(f"uitofp {ts} {v} to {td}")
        return em.val(f"zext {ts} {v} to {td}")
    if dst == "bool":
        if is_float(src):
            return em.val(f"fcmp une {ts} {v}, {zero or '0.0'}")
        return em.val(f"icmp ne {ts} {v}, {zero or '0'}")
    fs, fd = is_float(src), is_float(dst)
    ls, ld = lltype(src), lltype(dst)
    if fs and fd:
        wide = {"half": 16, "float": 32, "double": 64}
        op = "fpext" if wide[ld] > wide[ls] else "fptrunc"
        return em.val(f"{op} {ts} {v} to {td}")
    if fs and dst in QUANTIZING:  # quantize: round to nearest even, saturate, NaN -> 0
        lo, hi = QUANTIZING[dst]
        sfx = f"v{width}" if width else ""
        f = f"{sfx}{_sfx(ls)}"
        for fn in ("roundeven", "maxnum", "minnum"):
            args = ", ".join([ts] * (1 if fn == "roundeven" else 2))
            em.declare(f"declare {ts} @llvm.{fn}.{f}({args})")
        # clamped in float, then converted exactly (vector min/max and vcvttps2dq: LLVM's
        # fptosi.sat of a vector is scalarised)
        r = em.val(f"call {ts} @llvm.roundeven.{f}({ts} {v})")
        for fn, bound in (("maxnum", lo), ("minnum", hi)):
            c = splat(float_literal(bound, src), src, width)
            r = em.val(f"call {ts} @llvm.{fn}.{f}({ts} {r}, {ts} {c})")
        ok = em.val(f"fcmp ord {ts} {v}, {zero or '0.0'}")
        r = em.val(f"select {vtype('bool', width)} {ok}, {ts} {r}, {ts} {zero or '0.0'}")
        i32 = vtype("i32", width)
        return em.val(f"trunc {i32} {em.val(f'fptosi {ts} {r} to {i32}')} to {td}")
    if fs:
        return em.val(f"{'fptosi' if is_signed_int(dst) else 'fptoui'} {ts} {v} to {td}")
    if fd:
        return em.val(f"{'sitofp' if is_signed_int(src) else 'uitofp'} {ts} {v} to {td}")
    ws, wd = int(ls[1:]), int(ld[1:])
    if ws == wd:
        return v
    if wd < ws:
        return em.val(f"trunc {ts} {v} to {td}")
    return em.val(f"{'sext' if is_signed_int(src) else 'zext'} {ts} {v} to {td}")


def _f32_to_bf16(em: Emitter, v: str, width: int = 0) -> str:
    """f32 -> bf16, round to nearest even, NaN kept quiet (what numpy/ml_dtypes do)."""
    i32, i16, b1 = vtype("i32", width), vtype("i16", width), vtype("bool", width)
    k16, k1 = splat("16", "i32", width), splat("1", "i32", width)
    kbias, kquiet = splat("32767", "i32", width), splat("64", "i32", width)
    zero = "zeroinitializer" if width else "0.0"
    bits = em.val(f"bitcast {vtype('f32', width)} {v} to {i32}")
    high = em.val(f"lshr {i32} {bits}, {k16}")
    odd = em.val(f"and {i32} {high}, {k1}")
    bias = em.val(f"add {i32} {odd}, {kbias}")
    rounded = em.val(f"lshr {i32} {em.val(f'add {i32} {bits}, {bias}')}, {k16}")
    quiet = em.val(f"or {i32} {high}, {kquiet}")
    isnan = em.val(f"fcmp uno {vtype('f32', width)} {v}, {zero}")
    pick = em.val(f"select {b1} {isnan}, {i32} {quiet}, {i32} {rounded}")
    return em.val(f"trunc {i32} {pick} to {i16}")
