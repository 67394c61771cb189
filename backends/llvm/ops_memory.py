"""LLVM handlers for global memory: load, load_codes, store (masked windows, packed codes and
their fast paths); lookup tables are ops_lut's, tile ops ops_tiles'."""

from __future__ import annotations

from lowbitc.backends.llvm import prefetch
from lowbitc.backends.llvm.emitter import MEMTYPE, Buf, lltype
from lowbitc.backends.llvm.handlers import Env, TensorArg, const_literal, handles
from lowbitc.backends.llvm.ops_elementwise import broadcast_view
from lowbitc.backends.llvm.windows import (
    _apply_mask,
    _byte_codes_fast_path,
    _each_row,
    _linear,
    _origin,
    _read_packed,
    _row_offset,
    element_offset,
    in_bounds,
    masked,
    read_element,
    row_edges,
    row_start,
    unpack32,
    window_index,
)
from lowbitc.errors import BackendError
from lowbitc.explain import note, subject_of
from lowbitc.ir.core import Op
from lowbitc.ir.types import TileType, is_float


@handles("load")
def _load(env: Env, op: Op) -> None:
    t = env.get(op.operands[0])
    if t.packed:
        raise BackendError(f"llvm: load of {t.type.dtype} codes must be lowered by the bitpack "
                           "pass (cast them to a machine type)", op.loc)
    _load_common(env, op, t)


@handles("load_codes")
def _load_codes(env: Env, op: Op) -> None:
    _load_common(env, op, env.get(op.operands[0]))


def _load_common(env: Env, op: Op, t: TensorArg) -> None:
    em = env.em
    nst = len(op.attrs.sizes)
    starts = [env.get(v) for v in op.operands[1:1 + nst]]
    t = _linear(env, op, t)
    rt = op.results[0].type
    shape = rt.shape if isinstance(rt, TileType) else ()
    dt = rt.dtype
    zero = const_literal(em, 0, dt) if dt != "bool" else "false"

    def element(idx: list[str]) -> str:
        clamped, ok = window_index(env, op, t, starts, op.attrs.sizes, idx, t.packed)
        ok = masked(env, op, ok, idx, shape)
        v = _read_packed(env, t, clamped, op.attrs.bits, dt) if t.packed else \
            read_element(env, t, clamped)
        return em.val(f"select i1 {ok}, {lltype(dt)} {v}, {lltype(dt)} {zero}")

    if not shape:
        env.bind(op.results[0], element([]))
        return
    out = env.result_buf(op)

    def generic() -> None:
        em.nest(shape, lambda idx: em.store_elem(out, em.flat_index(idx, shape), element(idx)))

    name = subject_of(op.operands[0])
    if t.packing is not None:  # read code by code (the fused dot decodes aligned windows)
        note("load", name, "per-element reads", f"{t.packing.name} words outside a fused dot",
             fallback=True, loc=op.loc)
        generic()
    elif t.packed and op.attrs.sizes[-1] % 32 == 0:
        note("load", name, "vectorized unpack (32 codes from whole words)",
             "unaligned windows or windows at the edges read element by element", loc=op.loc)
        _packed_fast_path(env, op, t, starts, out, generic)
    elif t.packed and op.attrs.bits == 8 and not op.attrs.masked:
        note("load", name, "byte reads (8-bit codes are the words' bytes in order)",
             "windows at the edges read element by element", loc=op.loc)
        _byte_codes_fast_path(env, op, t, starts, out, generic)
    elif not t.packed and t.type.dtype != "bool":
        note("load", name, "row copies" if op.attrs.sizes[-1] else "strided reads",
             "rows past the tensor's end zeros; other windows at the edges read element by "
             "element" if len(op.attrs.sizes) == 2 and all(op.attrs.sizes) else
             "windows at the edges read element by element", loc=op.loc)
        _dense_fast_path(env, op, t, starts, out, generic)
    else:
        note("load", name, "per-element reads", "bool tensor" if not t.packed else
             f"{op.attrs.sizes[-1]} codes per row, not a multiple of 32", fallback=True,
             loc=op.loc)
        generic()


def _rows_or_block(env: Env, n: int, nbytes: int, row, start, dst: str) -> None:
    """n window rows of `nbytes` each: one copy when they lie back to back in the tensor (a
    window over whole rows, e.g. a [tokens, 1] run of per-token scales), else row by row."""
    em = env.em
    first, second = start("0"), start("1")
    gap = em.val(f"sub i64 {em.val(f'ptrtoint ptr {second} to i64')}, "
                 f"{em.val(f'ptrtoint ptr {first} to i64')}")
    block, each, joined = em.label("block"), em.label("rows"), em.label("copied")
    em.emit(f"br i1 {em.val(f'icmp eq i64 {gap}, {nbytes}')}, label %{block}, label %{each}")
    em.start_block(block)
    em.memcpy(dst, first, n * nbytes, 4)
    em.br(joined)
    em.start_block(each)
    em.loop("0", str(n), lambda i: row([i]))
    em.br(joined)
    em.start_block(joined)


def _dense_fast_path(env: Env, op: Op, t: TensorArg, starts: list, out: Buf, generic) -> None:
    """In-bounds windows: each tile row is one contiguous copy; a mask is one select pass."""
    em = env.em
    sizes = op.attrs.sizes
    fast, slow, done = em.label("inb"), em.label("edge"), em.label("loaded")
    em.emit(f"br i1 {in_bounds(em, t, starts, sizes)}, label %{fast}, label %{slow}")
    em.start_block(fast)
    rows, ncols = out.shape[:-1], out.shape[-1]
    nbytes = ncols * {"i8": 1, "i16": 2, "i32": 4, "i64": 8, "half": 2, "bfloat": 2,
                      "float": 4, "double": 8}[MEMTYPE[out.dtype]]

    _prefetch_rows_ahead(env, op, t, starts, nbytes)

    def row(idx: list[str]) -> None:
        src = row_start(env, t, starts, sizes, idx, _origin(env, op))
        dst = em.gep(out, em.flat_index(list(idx) + ["0"], out.shape) if rows else "0")
        em.memcpy(dst, src, nbytes, 4)

    def element(idx: list[str]) -> None:  # a strided window (last dim indexed): no clamps
        it = iter(idx)
        tidx = [st if sz == 0 else em.val(f"add i64 {st}, {next(it)}")
                for st, sz in zip(starts, sizes)]
        em.store_elem(out, em.flat_index(idx, out.shape), read_element(env, t, tidx))

    sliced = [d for d, sz in enumerate(sizes) if sz]
    if (sizes[-1] == 0 and len(sliced) == 1 and out.size >= LANES_GATHER
            and MEMTYPE[out.dtype] in ("float", "i32")):
        _gather_column(env, t, starts, sliced[0], out)
    elif sizes[-1] == 0:
        em.nest(out.shape, element)
    elif len(rows) == 1 and rows[0] > 1:
        _rows_or_block(env, rows[0], nbytes, row, lambda i: row_start(
            env, t, starts, sizes, [i], _origin(env, op)), em.gep(out, "0"))
    elif rows:
        em.nest(rows, row)
    else:
        row([])
    if op.attrs.masked:
        _apply_mask(env, op, out)
    em.br(done)
    em.start_block(slow)
    if len(sizes) == 2 and all(sizes) and len(out.shape) == 2:
        row_edges(env, op, t, starts, out, nbytes, generic)  # rows past the end: zeros
    else:
        generic()
    em.br(done)
    em.start_block(done)


ROWS_AHEAD = 2  # loop iterations ahead whose row a row window prefetches (0: none)
PREFETCH_LINES = 16  # at most this many 64-byte lines (1 KiB) per row window
# bytes past its start that a row window read in a loop, its row not the loop's counter,
# prefetches (0: none): matmul TM's tile-major scale/zero-point run, one sequential stream
# per program that the hardware prefetchers pick up too late (u4 GEMV streamed, 2 threads,
# 0.86x the time; 2-8 KB within noise of each other, docs/performance.md)
RUN_AHEAD = 4096


def _prefetch_rows_ahead(env: Env, op: Op, t: TensorArg, starts: list, nbytes: int) -> None:
    """A window of one row of a 2-D tensor whose row is an enclosing for loop's counter (the
    GEMV's per-group scales and zero points, read group-major): prefetch the row that
    iteration counter + ROWS_AHEAD * step will read. Consecutive rows are a whole row apart
    (pages, for N of thousands), which the hardware prefetchers do not follow, so each
    iteration's first read would otherwise wait for memory. Another row of a line or more
    that moves with a loop's counter is taken as a run read in memory order (tile-major
    scales): RUN_AHEAD bytes past it. A prefetch never faults."""
    sizes = op.attrs.sizes
    step = env.steps.get(op.operands[1].id)
    if len(sizes) != 2 or sizes[0] != 0 or not sizes[1] or not env.loops:
        return
    em = env.em
    src = row_start(env, t, starts, sizes, [], _origin(env, op))
    if step is None and RUN_AHEAD and nbytes >= 64 and env.on_counter(op.operands[1]):
        ahead = str(RUN_AHEAD)
    elif step is not None and ROWS_AHEAD:
        ahead = em.val(f"mul i64 {em.val(f'mul i64 {step}, {t.strides[0]}')}, "
                       f"{ROWS_AHEAD * (nbytes // sizes[1])}")
    else:
        return
    first = em.val(f"getelementptr i8, ptr {src}, i64 {ahead}")
    prefetch.run_ahead(em, first, min(nbytes, 64 * PREFETCH_LINES))


LANES_GATHER = 16  # elements per gather of a strided 1-D window


def _gather_column(env: Env, t: TensorArg, starts: list, dim: int, out: Buf) -> None:
    """A window sliced along one dim that is not the last (a column, e.g. one group's scales
    of a block of rows): 16-lane gathers at the dim's stride, then the remaining elements."""
    em = env.em
    n = out.size
    et = MEMTYPE[out.dtype]
    v = f"<{LANES_GATHER} x {et}>"
    base = element_offset(env, t, list(starts))
    stride = t.strides[dim]
    lanes = "<" + ", ".join(f"i64 {i}" for i in range(LANES_GATHER)) + ">"
    ins = em.val(f"insertelement <{LANES_GATHER} x i64> poison, i64 {stride}, i64 0")
    step = em.val(f"shufflevector <{LANES_GATHER} x i64> {ins}, <{LANES_GATHER} x i64> poison, "
                  f"<{LANES_GATHER} x i32> zeroinitializer")
    offs = em.val(f"mul <{LANES_GATHER} x i64> {lanes}, {step}")
    sfx = "f32" if et == "float" else "i32"
    em.declare(f"declare {v} @llvm.masked.gather.v{LANES_GATHER}{sfx}.v{LANES_GATHER}p0"
               f"(<{LANES_GATHER} x ptr>, i32, <{LANES_GATHER} x i1>, {v})")
    true = "<" + ", ".join(["i1 true"] * LANES_GATHER) + ">"
    for i in range(0, n - n % LANES_GATHER, LANES_GATHER):
        first = em.val(f"add i64 {base}, {em.val(f'mul i64 {i}, {stride}')}")
        p = em.val(f"getelementptr inbounds {et}, ptr {t.ptr}, i64 {first}")
        ptrs = em.val(f"getelementptr inbounds {et}, ptr {p}, <{LANES_GATHER} x i64> {offs}")
        g = em.val(f"call {v} @llvm.masked.gather.v{LANES_GATHER}{sfx}.v{LANES_GATHER}p0("
                   f"<{LANES_GATHER} x ptr> {ptrs}, i32 4, <{LANES_GATHER} x i1> {true}, "
                   f"{v} poison)")
        em.emit(f"store {v} {g}, ptr {em.gep(out, str(i))}, align 4")
    for i in range(n - n % LANES_GATHER, n):
        off = em.val(f"add i64 {base}, {em.val(f'mul i64 {i}, {stride}')}")
        p = em.val(f"getelementptr inbounds {et}, ptr {t.ptr}, i64 {off}")
        em.store_elem(out, str(i), em.val(f"load {et}, ptr {p}"))


def _packed_fast_path(env: Env, op: Op, t: TensorArg, starts: list, out: Buf, generic) -> None:
    """Aligned, in-bounds windows of packed codes: every 32 codes of a row are exactly `bits`
    words, so each code's word and shift are constants; LLVM vectorises the straight-line
    extraction. Windows at the edges (or unaligned) take the generic path."""
    em = env.em
    sizes, bits = op.attrs.sizes, op.attrs.bits
    aligned = em.val(f"icmp eq i64 {em.val(f'and i64 {starts[-1]}, 31')}, 0")
    ok = em.val(f"and i1 {aligned}, {in_bounds(em, t, starts, sizes)}")
    fast, slow, done = em.label("fast"), em.label("slow"), em.label("unpacked")
    em.emit(f"br i1 {ok}, label %{fast}, label %{slow}")
    em.start_block(fast)
    rows = out.shape[:-1]
    ncols = out.shape[-1]
    dt = out.dtype

    def row(idx: list[str]) -> None:
        first = em.val(f"mul i64 {em.val(f'lshr i64 {starts[-1]}, 5')}, {bits}")
        row0 = _row_offset(env, t, starts, sizes, idx, _origin(env, op), "0")
        base = em.val(f"add i64 {row0}, {first}")
        obase = em.flat_index(list(idx) + ["0"], out.shape) if rows else "0"

        def group(g: str) -> None:
            wbase = em.val(f"add i64 {base}, {em.val(f'mul i64 {g}, {bits}')}")
            p = em.val(f"getelementptr inbounds i32, ptr {t.ptr}, i64 {wbase}")
            o0 = em.val(f"add i64 {obase}, {em.val(f'mul i64 {g}, 32')}")
            codes = unpack32(em, p, bits)
            if dt in ("i32", "u32"):
                vec, vt = codes, "i32"
            else:
                vt = lltype(dt)
                op_ = "uitofp" if is_float(dt) else "trunc"
                vec = em.val(f"{op_} <32 x i32> {codes} to <32 x {vt}>")
            q = em.gep(out, o0)
            em.emit(f"store <32 x {vt}> {vec}, ptr {q}, align 4")
        em.loop("0", str(ncols // 32), group)

    if rows:
        em.nest(rows, row)
    else:
        row([])
    if op.attrs.masked:
        m = env.get(op.operands[-1])
        if isinstance(m, Buf):
            mv = broadcast_view(m, out.shape)
            zero = const_literal(em, 0, dt)
            em.nest(out.shape, lambda idx: em.store_elem(
                out, em.flat_index(idx, out.shape),
                em.val(f"select i1 {em.at(mv, idx)}, {lltype(dt)} "
                       f"{em.load_elem(out, em.flat_index(idx, out.shape))}, {lltype(dt)} {zero}")))
    em.br(done)
    em.start_block(slow)
    generic()
    em.br(done)
    em.start_block(done)


@handles("store")
def _store(env: Env, op: Op) -> None:
    em = env.em
    t = env.get(op.operands[0])
    if t.packed:
        raise BackendError(f"llvm: storing {t.type.dtype} codes is not supported yet", op.loc)
    nst = len(op.attrs.sizes)
    starts = [env.get(v) for v in op.operands[1:1 + nst]]
    val = env.get(op.operands[-1 - op.attrs.masked])
    t = _linear(env, op, t)
    shape = tuple(s for s in op.attrs.sizes if s > 0)

    def body(idx: list[str]) -> None:
        clamped, ok = window_index(env, op, t, starts, op.attrs.sizes, idx, False)
        ok = masked(env, op, ok, idx, shape)
        if isinstance(val, Buf):
            v = em.at(broadcast_view(val, shape), idx)
        else:
            v = val
        yes, no = em.label("st"), em.label("skip")
        em.emit(f"br i1 {ok}, label %{yes}, label %{no}")
        em.start_block(yes)
        p = em.val(f"getelementptr inbounds {MEMTYPE[t.type.dtype]}, ptr {t.ptr}, "
                   f"i64 {element_offset(env, t, clamped)}", "p")
        if t.type.dtype == "bool":
            v = em.val(f"zext i1 {v} to i8")
        em.emit(f"store {MEMTYPE[t.type.dtype]} {v}, ptr {p}")
        em.br(no)
        em.start_block(no)

    name = subject_of(op.operands[0])
    if (shape and op.attrs.sizes[-1] > 0 and isinstance(val, Buf) and val.contiguous
            and val.shape == shape and t.type.dtype != "bool"):
        note("store", name, "row copies" + (" (masked vector stores)" if op.attrs.masked else ""),
             "windows at the edges store element by element", loc=op.loc)
        _store_rows_fast_path(env, op, t, starts, val, shape, body)
    elif shape:
        note("store", name, "per-element stores",
             "a bool tensor" if t.type.dtype == "bool" else "a broadcast value" if not (
                 isinstance(val, Buf) and val.shape == shape) else "a window of single indices"
             if op.attrs.sizes[-1] == 0 else "a value that is not contiguous",
             fallback=True, loc=op.loc)
        em.nest(shape, body)
    else:
        body([])


def _store_rows_fast_path(env: Env, op: Op, t: TensorArg, starts: list, val: Buf,
                          shape: tuple[int, ...], generic_body) -> None:
    """In-bounds windows: each tile row is one contiguous copy into the tensor, or, under a
    mask, one llvm.masked.store (masked lanes are never written, so blocks that share a row
    stay independent). Other windows take the per-element path."""
    em = env.em
    sizes = op.attrs.sizes
    fast, slow, done = em.label("stinb"), em.label("stedge"), em.label("stored")
    em.emit(f"br i1 {in_bounds(em, t, starts, sizes)}, label %{fast}, label %{slow}")
    em.start_block(fast)
    rows, ncols = shape[:-1], shape[-1]
    # rows move as bits: 16-bit floats as i16 (vectors of half would be legalised through
    # conversion calls that MCJIT cannot resolve)
    et = {"half": "i16", "bfloat": "i16"}.get(MEMTYPE[t.type.dtype], MEMTYPE[t.type.dtype])
    vt = f"<{ncols} x {et}>"
    mask = None
    if op.attrs.masked:
        m = env.get(op.operands[-1])
        mask = broadcast_view(m, shape) if isinstance(m, Buf) else m
        if isinstance(mask, Buf) and mask.strides[-1] not in (0, 1):
            em.br(slow)
            mask = "unusable"
    if mask != "unusable":
        def row(idx: list[str]) -> None:
            dst = row_start(env, t, starts, sizes, idx, _origin(env, op))
            src = em.gep(val, em.flat_index(list(idx) + ["0"], shape) if rows else "0")
            v = em.val(f"load {vt}, ptr {src}, align 4")
            if mask is None:
                em.emit(f"store {vt} {v}, ptr {dst}, align 4")
                return
            if isinstance(mask, Buf):
                mrow = em.offset(list(idx) + ["0"], shape, mask.strides)
                if mask.strides[-1] == 1:
                    raw = em.val(f"load <{ncols} x i8>, ptr {em.gep(mask, mrow)}, align 1")
                    mv = em.val(f"trunc <{ncols} x i8> {raw} to <{ncols} x i1>")
                else:  # one flag for the whole row
                    one = em.load_elem(mask, mrow)
                    ins = em.val(f"insertelement <{ncols} x i1> poison, i1 {one}, i64 0")
                    mv = em.val(f"shufflevector <{ncols} x i1> {ins}, <{ncols} x i1> poison, "
                                f"<{ncols} x i32> zeroinitializer")
            else:
                ins = em.val(f"insertelement <{ncols} x i1> poison, i1 {mask}, i64 0")
                mv = em.val(f"shufflevector <{ncols} x i1> {ins}, <{ncols} x i1> poison, "
                            f"<{ncols} x i32> zeroinitializer")
            fn = f"llvm.masked.store.v{ncols}{_vsfx(et)}.p0"
            em.declare(f"declare void @{fn}({vt}, ptr, i32, <{ncols} x i1>)")
            em.emit(f"call void @{fn}({vt} {v}, ptr {dst}, i32 4, <{ncols} x i1> {mv})")

        _each_row(em, rows, row)
        em.br(done)
    em.start_block(slow)
    em.nest(shape, generic_body)
    em.br(done)
    em.start_block(done)


def _vsfx(et: str) -> str:
    return {"float": "f32", "double": "f64", "half": "f16", "bfloat": "bf16"}.get(et, et)
