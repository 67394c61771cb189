"""The LLVM text emitter: SSA names, basic blocks, loop nests and tile buffers.

Scalars live in LLVM registers; every tile is a stack buffer (hoisted to the entry block) of
its element type laid out row-major. Loops are emitted as head/body/exit blocks with phis so
LLVM's vectorisers see canonical counted loops.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from lowbitc.errors import BackendError

LLTYPE = {
    "bool": "i1",
    "i8": "i8",
    "i16": "i16",
    "i32": "i32",
    "i64": "i64",
    "u8": "i8",
    "u16": "i16",
    "u32": "i32",
    "u64": "i64",
    "f16": "half",
    "bf16": "i16",  # bf16 values live as their 16 bits (see convert)
    "f32": "float",
    "f64": "double",
}
MEMTYPE = dict(LLTYPE, bool="i8")  # how an element is stored in a buffer


def lltype(dtype: str) -> str:
    try:
        return LLTYPE[dtype]
    except KeyError:
        raise BackendError(f"llvm: no register type for {dtype!r}") from None


def float_literal(v: float, dtype: str) -> str:
    """An exact LLVM literal for a float constant of `dtype`."""
    if dtype == "f64":
        d = float(v)
    elif dtype in ("f32", "f16", "bf16"):
        d = float(np.float32(v)) if dtype == "f32" else float(v)
    else:
        raise BackendError(f"llvm: {dtype} is not a float type")
    return f"0x{struct.unpack('<Q', struct.pack('<d', d))[0]:016X}"


def row_major(shape: Sequence[int]) -> tuple[int, ...]:
    strides, acc = [], 1
    for d in reversed(shape):
        strides.append(acc)
        acc *= d
    return tuple(reversed(strides))


@dataclass(frozen=True)
class Buf:
    """A tile in memory: pointer name, element dtype, static shape and element strides.
    Transposes, reshapes of contiguous tiles and broadcasts are views (no copy)."""

    ptr: str
    dtype: str
    shape: tuple[int, ...]
    strides: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.strides is None:
            object.__setattr__(self, "strides", row_major(self.shape))

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def contiguous(self) -> bool:
        return all(st == rm or d == 1 for d, st, rm in
                   zip(self.shape, self.strides, row_major(self.shape)))


class Emitter:
    """Accumulates one function's instructions; `tmp()` hands out fresh SSA names."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.entry: list[str] = []  # allocas, hoisted to the entry block
        self.globals: list[str] = []
        self.declares: set[str] = set()
        self._n = 0
        self.block = "entry"

    def tmp(self, hint: str = "t") -> str:
        self._n += 1
        return f"%{hint}{self._n}"

    def label(self, hint: str) -> str:
        self._n += 1
        return f"{hint}{self._n}"

    def emit(self, line: str) -> None:
        self.lines.append("  " + line)

    def val(self, rhs: str, hint: str = "t") -> str:
        name = self.tmp(hint)
        self.emit(f"{name} = {rhs}")
        return name

    def start_block(self, name: str) -> None:
        self.lines.append(f"{name}:")
        self.block = name

    def br(self, target: str) -> None:
        self.emit(f"br label %{target}")

    def alloc(self, dtype: str, shape: Sequence[int]) -> Buf:
        n = 1
        for d in shape:
            n *= d
        name = self.tmp("buf")
        self.entry.append(f"  {name} = alloca [{max(n, 1)} x {MEMTYPE[dtype]}], align 64")
        return Buf(name, dtype, tuple(shape))

    def declare(self, decl: str) -> None:
        self.declares.add(decl)

    # ---------------------------------------------------------------- buffers
    def gep(self, buf: Buf, index: str) -> str:
        return self.val(
            f"getelementptr inbounds {MEMTYPE[buf.dtype]}, ptr {buf.ptr}, i64 {index}", "p"
        )

    # ---------------------------------------------------------------- vector parts
    def part(self, v: str, ty: str, first: int, n: int) -> str:
        """Lanes first .. first + n - 1 of vector `v` of type `ty` ("<N x T>"), as <n x T>."""
        idx = "<" + ", ".join(f"i32 {first + i}" for i in range(n)) + ">"
        return self.val(f"shufflevector {ty} {v}, {ty} poison, <{n} x i32> {idx}")

    def halves(self, v: str, ty: str) -> list[str]:
        """The low and high halves of vector `v` of type `ty` ("<2n x T>")."""
        n = int(ty[1:-1].split(" x ")[0]) // 2
        return [self.part(v, ty, h * n, n) for h in (0, 1)]

    def concat(self, parts: list[str], ty: str) -> str:
        """Vectors of type `ty` ("<n x T>"), a power of two of them, as one vector in order
        (the inverse of `part`: 8-lane halves of AVX2 back into 16 or 32 lanes)."""
        n, elem = ty[1:-1].split(" x ")
        width = int(n)
        while len(parts) > 1:
            idx = "<" + ", ".join(f"i32 {i}" for i in range(2 * width)) + ">"
            parts = [self.val(f"shufflevector <{width} x {elem}> {parts[i]}, <{width} x {elem}> "
                              f"{parts[i + 1]}, <{2 * width} x i32> {idx}")
                     for i in range(0, len(parts), 2)]
            width *= 2
        return parts[0]

    def prefetch(self, ptr: str, locality: int) -> None:
        """A software prefetch for reading of the line at `ptr` (llvm.prefetch's locality:
        3 = every cache level, 2 = L2 and below; target.prefetch_locality picks it)."""
        self.declare("declare void @llvm.prefetch.p0(ptr, i32, i32, i32)")
        self.emit(f"call void @llvm.prefetch.p0(ptr {ptr}, i32 0, i32 {locality}, i32 1)")

    def keep_in_memory(self, buf: Buf) -> None:
        """Escape `buf` into an empty asm barrier: LLVM keeps it in memory and does not
        forward its stores into the loads after this point (which stay loads, and become
        instructions' memory operands: broadcasts from memory, not register shuffles)."""
        self.emit(f'call void asm sideeffect "", "r,~{{memory}}"(ptr {buf.ptr})')

    def load_elem(self, buf: Buf, index: str) -> str:
        p = self.gep(buf, index)
        v = self.val(f"load {MEMTYPE[buf.dtype]}, ptr {p}")
        return self.val(f"trunc i8 {v} to i1") if buf.dtype == "bool" else v

    def store_elem(self, buf: Buf, index: str, value: str) -> None:
        p = self.gep(buf, index)
        if buf.dtype == "bool":
            value = self.val(f"zext i1 {value} to i8")
        self.emit(f"store {MEMTYPE[buf.dtype]} {value}, ptr {p}")

    # ---------------------------------------------------------------- loops
    def loop(
        self,
        lo: str,
        hi: str,
        body: Callable[[str], None],
        step: str = "1",
        carried: Sequence[tuple[str, str]] = (),
        body_carried: Callable[[str, list[str]], list[str]] | None = None,
    ) -> list[str]:
        """A counted loop i = lo; i < hi; i += step. With `carried` ((type, init) pairs) the
        body is `body_carried(i, values) -> next values` and the final values are returned."""
        head, bodyl, exit_ = self.label("head"), self.label("body"), self.label("exit")
        pre = self.block
        self.br(head)
        self.start_block(head)
        i = self.tmp("i")
        phis = [self.tmp("c") for _ in carried]
        latch_marker = len(self.lines)
        self.lines.append("")  # placeholder for the phis, filled once the latch is known
        cond = self.val(f"icmp slt i64 {i}, {hi}")
        self.emit(f"br i1 {cond}, label %{bodyl}, label %{exit_}")
        self.start_block(bodyl)
        if body_carried is not None:
            nxt = body_carried(i, phis)
        else:
            body(i)
            nxt = []
        inc = self.val(f"add i64 {i}, {step}")
        latch = self.block
        self.br(head)
        phi_lines = [f"  {i} = phi i64 [ {lo}, %{pre} ], [ {inc}, %{latch} ]"]
        for (t, init), p, n in zip(carried, phis, nxt):
            phi_lines.append(f"  {p} = phi {t} [ {init}, %{pre} ], [ {n}, %{latch} ]")
        self.lines[latch_marker] = "\n".join(phi_lines)
        self.start_block(exit_)
        return phis

    def nest(self, shape: Sequence[int], body: Callable[[list[str]], None]) -> None:
        """Loops over every index of `shape` (row-major; the last dim innermost)."""
        idx: list[str] = []

        def level(d: int) -> None:
            if d == len(shape):
                body(list(idx))
                return

            def inner(i: str) -> None:
                idx.append(i)
                level(d + 1)
                idx.pop()

            self.loop("0", str(shape[d]), inner)

        level(0)

    def flat_index(self, idx: Sequence[str], shape: Sequence[int]) -> str:
        """Row-major linear index of `idx` in `shape` (broadcast dims of size 1 read 0)."""
        return self.offset(idx, shape, row_major(shape))

    def offset(self, idx: Sequence[str], shape: Sequence[int], strides: Sequence[int]) -> str:
        """Element offset of `idx` given strides (size-1 and stride-0 dims contribute 0)."""
        acc = None
        for i, d, st in zip(idx, shape, strides):
            if d == 1 or st == 0:
                continue
            term = i if st == 1 else self.val(f"mul i64 {i}, {st}")
            acc = term if acc is None else self.val(f"add i64 {acc}, {term}")
        return acc or "0"

    def at(self, buf: Buf, idx: Sequence[str]) -> str:
        """Load element `idx` of a (possibly strided or broadcast) tile."""
        return self.load_elem(buf, self.offset(idx, buf.shape, buf.strides))

    def copy(self, src: Buf, dst: Buf) -> None:
        if src.ptr == dst.ptr and src.strides == dst.strides:
            return
        if not src.contiguous or src.shape != dst.shape:
            self.nest(dst.shape, lambda idx: self.store_elem(
                dst, self.flat_index(idx, dst.shape), self.at(src, idx)))
            return
        self.memcpy(dst.ptr, src.ptr, src.size * _bytes(src.dtype), 64)

    def memcpy(self, dst: str, src: str, nbytes: int, align: int) -> None:
        """Copy `nbytes` (a constant); small copies inline (vector moves: no call, no spills
        of the vector registers around it)."""
        fn = "memcpy.inline" if nbytes <= INLINE_COPY else "memcpy"
        self.declare(f"declare void @llvm.{fn}.p0.p0.i64(ptr, ptr, i64, i1)")
        self.emit(f"call void @llvm.{fn}.p0.p0.i64(ptr align {align} {dst}, ptr align {align} "
                  f"{src}, i64 {nbytes}, i1 false)")


INLINE_COPY = 2048  # bytes up to which a copy is expanded inline


def _bytes(dtype: str) -> int:
    return {
        "i1": 1,
        "i8": 1,
        "i16": 2,
        "i32": 4,
        "i64": 8,
        "half": 2,
        "bfloat": 2,
        "float": 4,
        "double": 8,
    }[MEMTYPE[dtype]]
