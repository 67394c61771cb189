"""Index arithmetic of global-memory windows: element indices, offsets, bounds and masks,
element reads (packed codes included) and the 32-code word unpacking the fast paths share."""

from __future__ import annotations

from dataclasses import replace

from lowbitc.backends.llvm.emitter import MEMTYPE, Buf, lltype
from lowbitc.backends.llvm.handlers import Env, TensorArg, const_literal, convert
from lowbitc.backends.llvm.lanes import read_lanes
from lowbitc.backends.llvm.ops_elementwise import broadcast_view
from lowbitc.backends.llvm.rows import read as rows_read
from lowbitc.ir.core import Op
from lowbitc.ir.types import is_float
from lowbitc.repack import RowsPacking


def window_index(env: Env, op: Op, t: TensorArg, starts: list, sizes, idx: list[str],
                 packed_last: bool):
    """Per tensor dim: the index of this tile element, clamped, plus the all-in-bounds flag."""
    em = env.em
    it = iter(idx)
    clamped, ok = [], None
    for d, (st, sz) in enumerate(zip(starts, sizes)):
        x = st if sz == 0 else em.val(f"add i64 {st}, {next(it)}")
        inb = em.val(f"icmp ult i64 {x}, {t.dims[d]}")
        ok = inb if ok is None else em.val(f"and i1 {ok}, {inb}")
        clamped.append(em.val(f"select i1 {inb}, i64 {x}, i64 0"))
    return clamped, ok


def element_offset(env: Env, t: TensorArg, idx: list[str]) -> str:
    """The flat element offset of tensor index `idx` (its strides applied)."""
    em = env.em
    off = None
    for x, s in zip(idx, t.strides):
        term = x if s == "1" else em.val(f"mul i64 {x}, {s}")
        off = term if off is None else em.val(f"add i64 {off}, {term}")
    return off or "0"


def masked(env: Env, op: Op, ok: str, idx: list[str], shape) -> str:
    """`ok` and, when the op is masked, its mask's element `idx`."""
    if not op.attrs.masked:
        return ok
    m = env.get(op.operands[-1])
    em = env.em
    if isinstance(m, Buf):
        mv = em.at(broadcast_view(m, tuple(shape)), idx)
    else:
        mv = m
    return em.val(f"and i1 {ok}, {mv}")


def in_bounds(em, t: TensorArg, starts: list, sizes) -> str:
    """An i1: the whole window (`starts`, `sizes`) lies inside the tensor."""
    ok = "true"
    for st, sz, dim in zip(starts, sizes, t.dims):
        end = em.val(f"add i64 {st}, {max(sz, 1)}")
        inb = em.val(f"and i1 {em.val(f'icmp sle i64 {end}, {dim}')}, "
                     f"{em.val(f'icmp sge i64 {st}, 0')}")
        ok = inb if ok == "true" else em.val(f"and i1 {ok}, {inb}")
    return ok


def _linear(env: Env, op: Op, t: TensorArg) -> TensorArg:
    """The tensor as a linearized op addresses it: with the row strides of its operands (the
    linearize pass) in place of the backend's own."""
    if not getattr(op.attrs, "linear", False):
        return t
    n = len(op.attrs.sizes)
    strides = [env.get(v) for v in op.operands[2 + n : 1 + 2 * n]]
    return replace(t, strides=[*strides, "1"])


def _origin(env: Env, op: Op) -> str | None:
    """A linearized op's window offset (elements, or words of the first row), else None."""
    if not getattr(op.attrs, "linear", False):
        return None
    return env.get(op.operands[1 + len(op.attrs.sizes)])


def _row_offset(env: Env, t: TensorArg, starts: list, sizes, idx: list[str],
                origin: str | None, last: str) -> str:
    """Offset of tile row `idx` (leading tile indices): from the window's `origin` when the op
    is linearized, else from the starts (with `last` as the last dim's index)."""
    em = env.em
    it = iter(idx)
    if origin is not None:
        off = origin
        for sz, st in zip(sizes[:-1], t.strides):
            if sz:
                off = em.val(f"add i64 {off}, {em.val(f'mul i64 {next(it)}, {st}')}")
        return off
    tidx = [st if sz == 0 else em.val(f"add i64 {st}, {next(it)}")
            for st, sz in zip(starts[:-1], sizes[:-1])] + [last]
    return element_offset(env, t, tidx)


def row_start(env: Env, t: TensorArg, starts: list, sizes, idx: list[str],
              origin: str | None = None) -> str:
    """Address of the first element of tile row `idx` (leading tile indices) in the tensor."""
    off = _row_offset(env, t, starts, sizes, idx, origin, starts[-1])
    return env.em.val(f"getelementptr inbounds {MEMTYPE[t.type.dtype]}, ptr {t.ptr}, i64 {off}")


def _apply_mask(env: Env, op: Op, out: Buf) -> None:
    """out = where(mask, out, 0), the mask being the op's last operand (broadcast)."""
    em = env.em
    m = env.get(op.operands[-1])
    zero = const_literal(em, 0, out.dtype)
    t_ = lltype(out.dtype)
    mv = broadcast_view(m, out.shape) if isinstance(m, Buf) else None

    def apply(i: str, c: str) -> None:
        em.store_elem(out, i, em.val(f"select i1 {c}, {t_} {em.load_elem(out, i)}, {t_} {zero}"))

    if mv is None or mv.contiguous:
        em.loop("0", str(out.size), lambda i: apply(i, em.load_elem(mv, i) if mv else m))
    else:
        em.nest(out.shape, lambda idx: apply(em.flat_index(idx, out.shape), em.at(mv, idx)))


def _vec(items) -> str:
    return "<" + ", ".join(f"i32 {v}" for v in items) + ">"


def unpack32(em, ptr: str, bits: int, align: int = 4) -> str:
    """32 codes of `bits` each from the `bits` words at ptr, as a <32 x i32> vector: one
    vector load, two constant shuffles and a funnel shift (codes may straddle words); 8-bit
    codes are bytes in order: a byte load widened (`vpmovzxbd`, or narrower lanes when LLVM
    sees that the decode needs no more)."""
    if bits == 8:
        return unpack_words(em, em.val(f"load <32 x i8>, ptr {ptr}, align {align}"), bits)
    return unpack_words(em, em.val(f"load <{bits} x i32>, ptr {ptr}, align {align}"), bits)


def unpack_words(em, words: str, bits: int) -> str:
    """unpack32 of words already in registers (<bits x i32>; for 8 bits <32 x i8>)."""
    if bits == 8:
        return em.val(f"zext <32 x i8> {words} to <32 x i32>")
    lo_idx = [(j * bits) >> 5 for j in range(32)]
    hi_idx = [min(i + 1, bits - 1) for i in lo_idx]
    shifts = [(j * bits) & 31 for j in range(32)]
    lo = em.val(f"shufflevector <{bits} x i32> {words}, <{bits} x i32> poison, "
                f"<32 x i32> {_vec(lo_idx)}")
    if 32 % bits == 0:  # no code straddles two words: one shift
        v = em.val(f"lshr <32 x i32> {lo}, {_vec(shifts)}")
    else:
        hi = em.val(f"shufflevector <{bits} x i32> {words}, <{bits} x i32> poison, "
                    f"<32 x i32> {_vec(hi_idx)}")
        em.declare("declare <32 x i32> @llvm.fshr.v32i32(<32 x i32>, <32 x i32>, <32 x i32>)")
        v = em.val(f"call <32 x i32> @llvm.fshr.v32i32(<32 x i32> {hi}, <32 x i32> {lo}, "
                   f"<32 x i32> {_vec(shifts)})")
    return em.val(f"and <32 x i32> {v}, {_vec([(1 << bits) - 1] * 32)}")


def read_element(env: Env, t: TensorArg, idx: list[str]) -> str:
    """Element `idx` of an unpacked tensor (bool as i1)."""
    em = env.em
    p = em.val(f"getelementptr inbounds {MEMTYPE[t.type.dtype]}, ptr {t.ptr}, "
               f"i64 {element_offset(env, t, idx)}", "p")
    v = em.val(f"load {MEMTYPE[t.type.dtype]}, ptr {p}")
    return em.val(f"trunc i8 {v} to i1") if t.type.dtype == "bool" else v


def _read_packed(env: Env, t: TensorArg, idx: list[str], bits: int, dt: str) -> str:
    """Code idx[-1] of row idx[:-1] from the LSB-first uint32 stream (may straddle words),
    or from the tensor's lanes packing."""
    em = env.em
    if t.packing is not None:
        code = rows_read(em, t, idx, t.packing) if isinstance(t.packing, RowsPacking) else \
            read_lanes(em, t, idx, t.packing)
        return convert(em, code, "u32", dt) if dt not in ("i32", "u32") else code
    bitpos = em.val(f"mul i64 {idx[-1]}, {bits}")
    word = em.val(f"lshr i64 {bitpos}, 5")
    sh = em.val(f"and i64 {bitpos}, 31")
    base = element_offset(env, t, idx[:-1] + ["0"])
    wi = em.val(f"add i64 {base}, {word}")
    lo = em.val(f"load i32, ptr {em.val(f'getelementptr inbounds i32, ptr {t.ptr}, i64 {wi}')}")
    mask = (1 << bits) - 1
    if 32 % bits == 0:
        s32 = em.val(f"trunc i64 {sh} to i32")
        code = em.val(f"and i32 {em.val(f'lshr i32 {lo}, {s32}')}, {mask}")
    else:
        last = em.val(f"sub i64 {t.words}, 1")
        nxt = em.val(f"add i64 {word}, 1")
        c = em.val(f"icmp ult i64 {nxt}, {t.words}")
        nxt = em.val(f"select i1 {c}, i64 {nxt}, i64 {last}")
        hi_i = em.val(f"add i64 {base}, {nxt}")
        hp = em.val(f"getelementptr inbounds i32, ptr {t.ptr}, i64 {hi_i}")
        hi = em.val(f"load i32, ptr {hp}")
        hi64 = em.val(f"shl i64 {em.val(f'zext i32 {hi} to i64')}, 32")
        both = em.val(f"or i64 {hi64}, {em.val(f'zext i32 {lo} to i64')}")
        shifted = em.val(f"lshr i64 {both}, {sh}")
        code = em.val(f"trunc i64 {em.val(f'and i64 {shifted}, {mask}')} to i32")
    return convert(em, code, "u32", dt) if dt not in ("i32", "u32") else code


def _byte_codes_fast_path(env: Env, op: Op, t: TensorArg, starts: list, out: Buf,
                          generic) -> None:
    """In-bounds windows of 8-bit codes in canonical words (a code book's per-block scale
    codes, any window width): code k of a row is byte k of its words, so each tile row is
    one short byte load, widened."""
    em = env.em
    sizes = op.attrs.sizes
    fast, slow, done = em.label("bytes"), em.label("slow"), em.label("read")
    em.emit(f"br i1 {in_bounds(em, t, starts, sizes)}, label %{fast}, label %{slow}")
    em.start_block(fast)
    rows, ncols, dt = out.shape[:-1], out.shape[-1], out.dtype
    vt = lltype(dt)

    def row(idx: list[str]) -> None:
        row0 = _row_offset(env, t, starts, sizes, idx, _origin(env, op), "0")
        at = em.val(f"add i64 {em.val(f'mul i64 {row0}, 4')}, {starts[-1]}")
        p = em.val(f"getelementptr inbounds i8, ptr {t.ptr}, i64 {at}")
        b = em.val(f"load <{ncols} x i8>, ptr {p}, align 1")
        widen = "uitofp" if is_float(dt) else "zext" if vt != "i8" else None
        v = em.val(f"{widen} <{ncols} x i8> {b} to <{ncols} x {vt}>") if widen else b
        q = em.gep(out, em.flat_index(list(idx) + ["0"], out.shape) if rows else "0")
        em.emit(f"store <{ncols} x {vt}> {v}, ptr {q}, align 4")

    _each_row(em, rows, row)
    em.br(done)
    em.start_block(slow)
    generic()
    em.br(done)
    em.start_block(done)


def _each_row(em, rows: tuple[int, ...], row) -> None:
    """`row(idx)` for every tile row (idx the leading indices; [] for a 1-D tile)."""
    if rows:
        em.nest(rows, row)
    else:
        row([])


def row_edges(env: Env, op: Op, t: TensorArg, starts: list, out, nbytes: int, generic) -> None:
    """A 2-D window whose columns lie inside the tensor and whose rows start inside it but may
    run past its last row (a tile of groups past G, of rows past M): the rows inside are one
    copy each, the others zeros (then the mask, if any); any other window `generic()`."""
    em = env.em
    sizes = op.attrs.sizes
    end = em.val(f"add i64 {starts[1]}, {sizes[1]}")
    ok = em.val(f"and i1 {em.val(f'icmp sge i64 {starts[1]}, 0')}, "
                f"{em.val(f'icmp sle i64 {end}, {t.dims[1]}')}")
    ok = em.val(f"and i1 {ok}, {em.val(f'icmp sge i64 {starts[0]}, 0')}")
    rows, other, done = em.label("rowedge"), em.label("edgeel"), em.label("edged")
    em.emit(f"br i1 {ok}, label %{rows}, label %{other}")
    em.start_block(rows)
    em.declare("declare void @llvm.memset.p0.i64(ptr, i8, i64, i1)")
    origin = _origin(env, op)

    def row(i: str) -> None:
        copy, zero, joined = em.label("rowin"), em.label("rowout"), em.label("rowdone")
        inside = em.val(f"icmp slt i64 {em.val(f'add i64 {starts[0]}, {i}')}, {t.dims[0]}")
        dst = em.gep(out, em.val(f"mul i64 {i}, {out.shape[1]}"))
        em.emit(f"br i1 {inside}, label %{copy}, label %{zero}")
        em.start_block(copy)
        em.memcpy(dst, row_start(env, t, starts, sizes, [i], origin), nbytes, 1)
        em.br(joined)
        em.start_block(zero)
        em.emit(f"call void @llvm.memset.p0.i64(ptr {dst}, i8 0, i64 {nbytes}, i1 false)")
        em.br(joined)
        em.start_block(joined)

    em.loop("0", str(out.shape[0]), row)
    if op.attrs.masked:
        _apply_mask(env, op, out)
    em.br(done)
    em.start_block(other)
    generic()
    em.br(done)
    em.start_block(done)

