"""Render a lowered tile-IR kernel as numba-cuda Python source (pure: no compilation).

One CUDA block runs one grid block of the kernel; its threads share every tile op. A tile
is lazy (computed per element where consumed, see `elements`) or a buffer in shared memory
(see `plan`). Each consumer is a loop over its elements strided by the thread count
(`e = tid; while e < size: ...; e += nthr`), with `cuda.syncthreads()` around every loop that
writes shared memory. Scalars are plain locals, uniform across the block. The launch grid is
evaluated on the host (the grid region is not rendered). The parameters, shared arrays and
constant tables around the body are `assemble`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

from lowbitc.backends.numba_cuda import (
    encode,  # noqa: F401  (from_codes, store_codes)
    random,  # noqa: F401  (philox)
    reinterpret,  # noqa: F401  (view)
)
from lowbitc.backends.numba_cuda.assemble import (  # noqa: F401  (re-exported)
    MAX_DYNAMIC,
    MAX_SHARED,
    SCALAR_PARAMS,
    KernelAssembly,
)
from lowbitc.backends.numba_cuda.buffers import Buf, TensorRef
from lowbitc.backends.numba_cuda.elements import ELEMENT, fail, reg_dtype, shape_of
from lowbitc.backends.numba_cuda.mma_banks import accumulator_layouts
from lowbitc.backends.numba_cuda.mma_dot import mma_tiling
from lowbitc.backends.numba_cuda.mma_packed import mma_packings
from lowbitc.backends.numba_cuda.mma_registers import Frag, register_carried
from lowbitc.backends.numba_cuda.plan import make_plan
from lowbitc.backends.numba_cuda.shared import check_shared_memory, swizzled
from lowbitc.backends.numba_cuda.source import (
    SHARED_TYPE,
    Rendered,
    Source,
    numba_type,
    size_of,
)
from lowbitc.backends.numba_cuda.statements import STATEMENTS
from lowbitc.backends.numba_cuda.units import (
    Unit,
    packed_bits,
    unit_edge_mask,
    unit_loop,
    unit_width,
    vector_store,
)
from lowbitc.errors import BackendError
from lowbitc.ir.core import Kernel, Op, Region, Value, walk
from lowbitc.ir.types import ScalarType


class Renderer(KernelAssembly):
    """State while rendering one kernel; handlers in `elements`/`statements` call into it."""

    def __init__(self, k: Kernel, threads: int):
        self.k = k
        self.threads = threads
        self.hoist: tuple[int, int, frozenset[str], dict] | None = None
        self.unit: Unit | None = None
        self.mma_packed = mma_packings(k, threads, mma_tiling)
        self.plan = make_plan(k, threads, frozenset(self.mma_packed))
        self.src = Source()
        self.scalars: dict[int, str] = {}
        self.bufs: dict[int, Buf] = {}
        self.lazy: dict[int, Op] = {}
        self.tensors: dict[int, TensorRef] = {}
        self.memo: list[dict] = [{}]
        self.reads: list[tuple[str, tuple[str, ...]]] = []
        self.shared: list[tuple[str, int, str]] = []
        self.luts: dict[tuple[float, ...], str] = {}
        self.word_tables: dict[tuple[int, ...], str] = {}
        self.uses_mma = False
        self.acc_layouts = accumulator_layouts(k, threads)  # mma accumulators' (row, swizzle)
        self.defs = {r.id: op for op in walk(k.body.ops) for r in op.results}
        self.staged: dict[int, Buf] = {}  # load -> its pipeline stage this iteration (pipeline)
        self.register_carried = register_carried(k, threads)  # for -> tiles kept in registers
        self.frag_dots: dict = {}  # id(dot) -> the Frag its result stays in (mma_registers)

    # ------------------------------------------------------------ values

    def elem(self, v: Value, idx: tuple[str, ...]) -> str:
        """The value of element `idx` of v (a scalar's name for scalars)."""
        if v.id in self.scalars:
            return self.scalars[v.id]
        key = (v.id, tuple(idx))
        for scope in reversed(self.memo):
            if key in scope:
                return scope[key]
        buf = self.bufs.get(v.id)
        if buf is not None:
            self.reads.append((buf.name, tuple(idx)))
            at = self.addr(buf, idx)
            name = self.src.tmp(f"({at} != 0)" if buf.dtype == "bool" else at, "x")
            self.memo[-1][key] = name
            return name
        op = self.lazy.get(v.id)
        if op is None:
            raise BackendError(f"cuda: value {v} has no code (a compiler bug)")
        if self.hoist is not None and all(i in self.hoist[2] for i in idx):
            return self._hoisted(op, key)
        if self.unit is not None:
            mask = unit_edge_mask(self, op, tuple(idx))
            if mask is not None:
                self.memo[-1][key] = mask
                return mask
        name = ELEMENT[op.opcode](self, op, tuple(idx))
        self.memo[-1][key] = name
        return name

    def _hoisted(self, op: Op, key) -> str:
        """Compute an element that depends only on outer loop indices before the inner loop."""
        pos, depth, outer, scope = self.hoist
        self.hoist = None
        lines, saved_depth = self.src.lines, self.src.depth
        self.src.lines, self.src.depth = [], depth
        try:
            name = ELEMENT[op.opcode](self, op, key[1])
        finally:
            new, self.src.lines, self.src.depth = self.src.lines, lines, saved_depth
        lines[pos:pos] = new
        scope[key] = name
        self.hoist = (pos + len(new), depth, outer, scope)
        return name

    def operand(self, op: Op, i: int, idx: tuple[str, ...]) -> str:
        v = op.operands[i]
        return self.elem(v, self.bcast(idx, shape_of(op.results[0].type), shape_of(v.type)))

    def tensor(self, v: Value) -> TensorRef:
        return self.tensors[v.id]

    @staticmethod
    def bcast(idx: tuple[str, ...], shape: tuple[int, ...], to: tuple[int, ...]):
        """Index into a tile of shape `to` broadcast (numpy rules) to `shape`."""
        if not to:
            return ()
        tail = idx[len(shape) - len(to):]
        return tuple("0" if d == 1 else i for i, d in zip(tail, to, strict=False))

    def addr(self, buf: Buf, idx: tuple[str, ...]) -> str:
        """`name[offset]` of element idx of a shared buffer."""
        return f"{buf.name}[{self.offset(buf, idx)}]"

    def offset(self, buf: Buf, idx: tuple[str, ...]) -> str:
        """The element offset of idx in buf's flat array (its base and swizzle applied)."""
        terms = [i if st == 1 else f"{i} * {st}"
                 for i, d, st in zip(idx, buf.shape, buf.strides(), strict=True)
                 if d != 1 and i != "0"]
        off = ' + '.join(terms) or '0'
        if buf.swizzle is not None:
            off = swizzled(self, off, buf.swizzle)
        return f"{buf.base} + {off}" if buf.base else off

    def linear(self, idx: tuple[str, ...], shape: tuple[int, ...]) -> str:
        terms, stride = [], 1
        for i, d in zip(reversed(idx), reversed(shape), strict=False):
            if d != 1 and i != "0":
                terms.append(i if stride == 1 else f"{i} * {stride}")
            stride *= d
        return " + ".join(reversed(terms)) or "0"

    def unravel(self, lin: str, shape: tuple[int, ...]) -> tuple[str, ...]:
        if len(shape) <= 1:
            return (lin,) * len(shape)
        out, rest = [], lin if lin.isidentifier() or lin.isdigit() else f"({lin})"
        for d in reversed(shape[1:]):
            if d == 1:
                out.append("0")
                continue
            q = self.src.tmp(f"{rest} // {d}", "q")  # rest: a name or parenthesised
            out.append(self.src.tmp(f"{rest} - {q} * {d}", "i"))
            rest = q
        out.append(rest if shape[0] != 1 else "0")
        return tuple(reversed(out))

    def window(self, starts, sizes, idx, dims):
        """Global indices of a load/store window element and the in-bounds conditions."""
        it = iter(idx)
        where, conds = [], []
        for s, size, n in zip(starts, sizes, dims, strict=False):
            g = self.src.tmp(f"{s} + {next(it)}", "g") if size > 0 else s
            where.append(g)
            conds.append(f"0 <= {g} < {n}")
        return where, conds

    def lut_table(self, values: tuple[float, ...]) -> str:
        name = self.luts.get(values)
        if name is None:
            name = self.luts[values] = f"lut{len(self.luts)}"
        return name

    def word_table(self, words: tuple[int, ...]) -> str:
        """A constant-memory uint32 table (f16x2 pairs of a code book)."""
        name = self.word_tables.get(words)
        if name is None:
            name = self.word_tables[words] = f"wt{len(self.word_tables)}"
        return name

    # ------------------------------------------------------------ shared buffers and loops

    def alloc(self, dtype: str, shape: tuple[int, ...]) -> Buf:
        dtype = reg_dtype(dtype)
        row = 0
        if len(shape) >= 2 and shape[-1] % 32 == 0:
            # f16 rows stay 16-byte aligned for ldmatrix: 8 halves of padding (rows 4 banks
            # apart, so ldmatrix's 8 rows hit all 32 banks); others one element
            row = shape[-1] + (8 if dtype in ("f16", "bf16") else 1)
        row, swizzle = self.acc_layouts.get((dtype, tuple(shape)), (row, None))
        buf = Buf(self.src.fresh("sb"), dtype, tuple(shape), row, swizzle)
        self.shared.append((buf.name, buf.size, SHARED_TYPE[dtype] if dtype in SHARED_TYPE
                            else numba_type(dtype)))
        return buf

    @contextmanager
    def scope(self):
        self.memo.append({})
        try:
            yield
        finally:
            self.memo.pop()

    def each(self, shape: tuple[int, ...], body: Callable[[tuple[str, ...], str], None],
             values: tuple[Value, ...] = ()):
        """A loop over the elements of `shape`, strided by the thread count.

        When `values` (what the body computes) read packed codes along the last dim, the loop
        runs over word-aligned units of columns (see `units`). Otherwise, when the last dim is
        a multiple of the block size, rows are an outer loop and each thread strides along
        the row; elements that depend only on the row (a group's scale, row bounds) are
        computed once per row, before the inner loop.
        """
        size = 1
        for d in shape:
            size *= d
        p = unit_width(packed_bits(self, list(values))) if values and self.unit is None else 0
        while p and p < 32 and shape[-1] % (2 * p) == 0 and size // (2 * p) >= self.threads:
            p *= 2  # wider units amortise their checks, while every thread still has one
        if p and shape[-1] % p == 0 and self.hoist is None:
            unit_loop(self, shape, p, body)
            return
        if len(shape) >= 2 and shape[-1] % self.threads == 0 and self.hoist is None:
            self._rows_then_columns(shape, body)
            return
        e = self.src.fresh("e")
        self.src.line(f"{e} = tid")
        with self.src.block(f"while {e} < {size}:"), self.scope():
            body(self.unravel(e, shape), e)
            self.src.line(f"{e} += nthr")

    def _rows_then_columns(self, shape, body) -> None:
        rows, cols = size_of(shape[:-1]), shape[-1]
        r, c = self.src.fresh("r"), self.src.fresh("c")
        self.src.line(f"{r} = 0")
        with self.src.block(f"while {r} < {rows}:"), self.scope():
            lead = self.unravel(r, shape[:-1])
            self.src.line(f"{c} = tid")
            with self.src.block(f"while {c} < {cols}:"), self.scope():
                outer = frozenset(("0", *lead))
                self.hoist = (len(self.src.lines) - 1, self.src.depth - 1, outer, self.memo[-2])
                try:
                    body((*lead, c), f"{r} * {cols} + {c}")
                finally:
                    self.hoist = None
                self.src.line(f"{c} += nthr")
            self.src.line(f"{r} += 1")

    def write(self, buf: Buf, v: Value) -> tuple[set[str], bool]:
        """Store every element of v into buf (barriers around). Returns the buffers it read
        and whether every read of buf itself was of the element being written."""
        self.src.sync()
        read: set[str] = set()
        own = [True]

        def body(idx, e):
            start = len(self.reads)
            x = self.elem(v, self.bcast(idx, buf.shape, shape_of(v.type)))
            for name, at in self.reads[start:]:
                read.add(name)
                own[0] = own[0] and (name != buf.name or at == tuple(idx))
            if vector_store(self, buf, idx, x):
                return
            self.src.line(f"{self.addr(buf, idx)} = {SHARED_TYPE.get(buf.dtype, 'F32')}({x})")

        self.each(buf.shape, body, (v,))
        self.src.sync()
        return read, own[0]

    def materialize(self, op: Op) -> None:
        v = op.results[0]
        self.lazy[v.id] = op
        buf = self.alloc(v.type.dtype, v.type.shape)
        self.write(buf, v)
        del self.lazy[v.id]
        self.bufs[v.id] = buf

    def bind(self, v: Value, x) -> None:
        if isinstance(x, Frag):
            x.bind(self, v)
        elif isinstance(x, Buf):
            self.bufs[v.id] = x
        else:
            self.scalars[v.id] = x

    # ------------------------------------------------------------ regions

    def region(self, r: Region, args: tuple = ()) -> list[Value]:
        """Render a region's ops; returns the values it yields."""
        for a, x in zip(r.args, args, strict=False):
            self.bind(a, x)
        for op in r.ops:
            if op.opcode == "yield":
                return list(op.operands)
            self.op(op)
        return []

    def op(self, op: Op) -> None:
        stmt = STATEMENTS.get(op.opcode)
        if stmt is not None:
            stmt(self, op)
            return
        if op.opcode not in ELEMENT:
            raise fail(op, "no handler for this op")
        res = op.results[0]
        if isinstance(res.type, ScalarType):
            with self.scope():
                self.scalars[res.id] = self.src.tmp(ELEMENT[op.opcode](self, op, ()), "s")
        elif res.id in self.staged:  # copied by the loop's pipeline (pipeline.py)
            self.bufs[res.id] = self.staged[res.id]
        elif res.id in self.plan.materialize:
            self.materialize(op)
        else:
            self.lazy[res.id] = op

def render(k: Kernel, threads: int = 128) -> Rendered:
    """numba-cuda source of the kernel for blocks of `threads` threads (see the module
    docstring)."""
    check_shared_memory(k)
    return Renderer(k, threads).render()


