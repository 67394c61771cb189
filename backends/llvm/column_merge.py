"""Narrow column loads of one tensor read as one row window.

Loads `load(t[r :+ R, s :+ w])` of one region that read the same tensor and rows, whose
column starts differ by compile-time constants (a block header's fields: `o`, `o + 2`,
`o + 4 + j`, `o + 8 + j`, ...) and together span at most SPAN_BYTES of a row, with no write,
loop or branch between them: the first reads each row's span once (one vector load per row,
masked to the span) and every one of them takes its columns from those rows with one
shuffle (vpermb / vpermt2b with AVX-512 VBMI), instead of a copy per row and load (one byte
insert per row for a one-byte column). Windows at the tensor's edges read element by element
(zeros outside it), as each load alone would.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lowbitc.backends.llvm.emitter import MEMTYPE, _bytes
from lowbitc.backends.llvm.handlers import Env
from lowbitc.backends.llvm.windows import _linear, _origin, in_bounds, read_element, row_start
from lowbitc.explain import note, subject_of
from lowbitc.ir.core import Op, Region, Value
from lowbitc.ir.types import ScalarType, TileType
from lowbitc.passes.simplify import EFFECTS

SPAN_BYTES = 64  # a row's window: at most one 64-byte vector
WINDOW_BYTES = 1024  # all rows' windows: at most 16 vector registers


@dataclass
class Window:
    """One read of `rows` x `lanes` elements (`span` of them used) shared by its members."""

    first: Op  # the member emitted first: the rows are read there
    lo: int  # the window's first column, relative to the members' common non-constant part
    span: int
    lanes: int  # span rounded up to a power of two (the row vectors' width)
    vec: str | None = None  # <rows * lanes x T>, row r at lanes r * lanes .., once read
    members: list[Op] = field(default_factory=list)


@dataclass(frozen=True)
class Member:
    window: Window
    offset: int  # the load's first column within the window


def _affine(v: Value, defs: dict) -> tuple[tuple, int]:
    """An i64 scalar as (its non-constant terms with their coefficients, a constant), through
    the adds, subs and constants that define it."""
    terms: dict[int, int] = {}
    const, stack = 0, [(v, 1)]
    while stack:
        x, k = stack.pop()
        op = defs.get(x.id)
        if op is not None and op.opcode == "const" and isinstance(op.attrs.value, int):
            const += k * op.attrs.value
        elif (op is not None and op.opcode in ("add", "sub")
              and isinstance(x.type, ScalarType) and x.type.dtype == "i64"):
            a, b = op.operands
            stack += [(a, k), (b, k if op.opcode == "add" else -k)]
        else:
            terms[x.id] = terms.get(x.id, 0) + k
    return tuple(sorted((i, c) for i, c in terms.items() if c)), const


def _candidate(env: Env, op: Op) -> bool:
    if op.opcode != "load" or op.attrs.masked or len(op.attrs.sizes) != 2:
        return False
    rows, cols = op.attrs.sizes
    t = env.tensors.get(op.operands[0].id)
    return (rows >= 2 and cols >= 1 and isinstance(op.results[0].type, TileType)
            and t is not None and not t.packed and t.packing is None
            and t.type.dtype != "bool" and cols * _bytes(t.type.dtype) <= SPAN_BYTES)


def plan_windows(env: Env, r: Region, skip: set[int]) -> dict[int, Member]:
    """The loads of `r` (by id(op), those in `skip` excepted) read through a shared window."""
    groups: dict[tuple, list[tuple[int, Op, int]]] = {}
    for i, op in enumerate(r.ops):
        if id(op) in skip or not _candidate(env, op):
            continue
        terms, c = _affine(op.operands[2], env.defs)
        linear = tuple(v.id for v in op.operands[4:]) if op.attrs.linear else ()
        key = (op.operands[0].id, op.operands[1].id, op.attrs.sizes[0], terms, linear)
        groups.setdefault(key, []).append((i, op, c))
    barriers = [i for i, op in enumerate(r.ops) if op.opcode in EFFECTS or op.regions]
    out: dict[int, Member] = {}
    for members in groups.values():
        size = _bytes(env.tensors[members[0][1].operands[0].id].type.dtype)
        limit = min(SPAN_BYTES, WINDOW_BYTES // members[0][1].attrs.sizes[0]) // size
        for run in _runs(members, barriers):
            for part in _spans(run, limit):
                if len(part) < 2:
                    continue
                part.sort(key=lambda m: m[0])  # (region order: the first reads the rows)
                lo = min(c for _, _, c in part)
                span = max(c + op.attrs.sizes[1] for _, op, c in part) - lo
                w = Window(part[0][1], lo, span, 1 << (span - 1).bit_length(),
                           members=[op for _, op, _ in part])
                out.update((id(op), Member(w, c - lo)) for _, op, c in part)
    return out


def _spans(run: list, limit: int) -> list[list]:
    """Members grouped by column, each group within `limit` elements once rounded up to a
    power of two."""
    parts: list[list] = []
    for m in sorted(run, key=lambda m: m[2]):
        if parts:
            lo = parts[-1][0][2]
            span = max(c + op.attrs.sizes[1] for _, op, c in parts[-1] + [m]) - lo
            if 1 << (span - 1).bit_length() <= limit:
                parts[-1].append(m)
                continue
        parts.append([m])
    return parts


def _runs(members: list[tuple[int, Op, int]], barriers: list[int]) -> list[list]:
    """Members split where a write, loop or branch lies between two of them."""
    runs: list[list] = []
    for m in members:
        if runs and not any(runs[-1][-1][0] < b < m[0] for b in barriers):
            runs[-1].append(m)
        else:
            runs.append([m])
    return runs


def emit_member(env: Env, op: Op, m: Member) -> None:
    """The load `op` from its window (read here if `op` is the window's first member)."""
    em = env.em
    w = m.window
    t = _linear(env, op, env.get(op.operands[0]))
    rows, cols = op.attrs.sizes
    et = MEMTYPE[t.type.dtype]
    note("load", subject_of(op.operands[0]), f"one row window for {len(w.members)} column "
         "loads (a vector load per row, columns taken by a shuffle)",
         "windows at the edges read element by element", loc=op.loc)
    if w.vec is None:
        w.vec = _read_rows(env, op, t, w, m.offset)
    out = env.result_buf(op)
    idx = ", ".join(f"i32 {r * w.lanes + m.offset + c}" for r in range(rows) for c in range(cols))
    v = em.val(f"shufflevector <{rows * w.lanes} x {et}> {w.vec}, <{rows * w.lanes} x {et}> "
               f"poison, <{rows * cols} x i32> <{idx}>")
    em.emit(f"store <{rows * cols} x {et}> {v}, ptr {out.ptr}, align 1")


def _read_rows(env: Env, op: Op, t, w: Window, offset: int) -> str:
    """Every row's span as one <rows * lanes x T> vector (lanes past the span undefined)."""
    em = env.em
    rows = op.attrs.sizes[0]
    et = MEMTYPE[t.type.dtype]
    vt = f"<{w.lanes} x {et}>"
    starts = [env.get(op.operands[1]), em.val(f"sub i64 {env.get(op.operands[2])}, {offset}")]
    origin = _origin(env, op)
    if origin is not None:
        origin = em.val(f"sub i64 {origin}, {offset}")
    sizes = (rows, w.span)
    fast, slow, done = em.label("winb"), em.label("wedge"), em.label("wread")
    em.emit(f"br i1 {in_bounds(em, t, starts, sizes)}, label %{fast}, label %{slow}")
    em.start_block(fast)
    vecs = []
    for r in range(rows):
        p = row_start(env, t, starts, sizes, [str(r)], origin)
        if w.span == w.lanes:
            vecs.append(em.val(f"load {vt}, ptr {p}, align 1"))
        else:
            mask = ", ".join("i1 true" if i < w.span else "i1 false" for i in range(w.lanes))
            name = f"llvm.masked.load.v{w.lanes}{_suffix(et)}.p0"
            em.declare(f"declare {vt} @{name}(ptr, i32, <{w.lanes} x i1>, {vt})")
            vecs.append(em.val(f"call {vt} @{name}(ptr {p}, i32 1, <{w.lanes} x i1> <{mask}>, "
                               f"{vt} poison)"))
    whole = _concat(em, vecs, w.lanes, et, rows * w.lanes)
    fast_end = em.block
    em.br(done)
    em.start_block(slow)  # rows or columns past the tensor's end: element by element, zeros
    buf = em.alloc(t.type.dtype, (rows, w.lanes))

    def element(idx: list[str]) -> None:
        r, c = idx
        x = [em.val(f"add i64 {starts[0]}, {r}"), em.val(f"add i64 {starts[1]}, {c}")]
        ok = em.val(f"and i1 {em.val(f'icmp ult i64 {x[0]}, {t.dims[0]}')}, "
                    f"{em.val(f'icmp ult i64 {x[1]}, {t.dims[1]}')}")
        safe = [em.val(f"select i1 {ok}, i64 {v}, i64 0") for v in x]
        zero = "0.0" if et in ("half", "bfloat", "float", "double") else "0"
        v = em.val(f"select i1 {ok}, {et} {read_element(env, t, safe)}, {et} {zero}")
        em.store_elem(buf, em.flat_index([r, c], buf.shape), v)

    em.nest((rows, w.span), element)
    edge = em.val(f"load <{rows * w.lanes} x {et}>, ptr {buf.ptr}, align 64")
    slow_end = em.block
    em.br(done)
    em.start_block(done)
    return em.val(f"phi <{rows * w.lanes} x {et}> [{whole}, %{fast_end}], [{edge}, %{slow_end}]")


def _suffix(et: str) -> str:
    return {"half": "f16", "bfloat": "bf16", "float": "f32", "double": "f64"}.get(et, et)


def _concat(em, vecs: list[str], lanes: int, et: str, total: int) -> str:
    """The row vectors side by side, one vector of `total` lanes (two-input shuffles)."""
    n = lanes
    while len(vecs) > 1:
        if len(vecs) % 2:
            vecs.append("zeroinitializer")
        idx = ", ".join(f"i32 {i}" for i in range(2 * n))
        vecs = [em.val(f"shufflevector <{n} x {et}> {a}, <{n} x {et}> {b}, <{2 * n} x i32> <{idx}>")
                for a, b in zip(vecs[::2], vecs[1::2])]
        n *= 2
    if n == total:
        return vecs[0]
    idx = ", ".join(f"i32 {i}" for i in range(total))
    return em.val(f"shufflevector <{n} x {et}> {vecs[0]}, <{n} x {et}> poison, "
                  f"<{total} x i32> <{idx}>")
