"""LLVM handlers for tiles of format codes going out: `from_codes`, `store_codes` (format tiles
into packed tensors) and `view` from a format tile.

The backend holds a format tile as one i32 code per element, so `from_codes` is free.
`store_codes` writes codes into the canonical LSB-first uint32 stream of each row. Aligned,
in-bounds windows of whole 32-code groups assemble their words in registers and store them
plainly; every other element updates only its own bits with two atomic operations on each
word it touches (`and` clears them, `or` sets them). Blocks that write disjoint elements of
a row may therefore share a word at their tiles' edges without racing; only two blocks
writing the same element race, as with any store.
"""

from __future__ import annotations

from lowbitc.backends.llvm import ops_tiles  # noqa: F401  (registers "view", wrapped below)
from lowbitc.backends.llvm.emitter import Buf
from lowbitc.backends.llvm.handlers import HANDLERS, Env, TensorArg, handles
from lowbitc.backends.llvm.ops_elementwise import broadcast_view
from lowbitc.backends.llvm.windows import element_offset, in_bounds, masked, window_index
from lowbitc.errors import BackendError
from lowbitc.ir.core import Op
from lowbitc.ir.types import is_machine
from lowbitc.signature import format_bits


@handles("from_codes")
def _from_codes(env: Env, op: Op) -> None:
    env.bind(op.results[0], env.get(op.operands[0]))  # already i32 codes


def _atomic_bits(em, ptr: str, mask: str, bits: str) -> None:
    """Set the `mask` bits of the word at ptr to `bits`, leaving the others to other threads."""
    em.emit(f"atomicrmw and ptr {ptr}, i32 {em.val(f'xor i32 {mask}, -1')} monotonic, align 4")
    em.emit(f"atomicrmw or ptr {ptr}, i32 {bits} monotonic, align 4")


def _put_code(env: Env, t: TensorArg, idx: list[str], code: str, bits: int) -> None:
    """Write one code (i32) at element idx (clamped, in bounds) of a packed tensor."""
    em = env.em
    bitpos = em.val(f"mul i64 {idx[-1]}, {bits}")
    row = element_offset(env, t, idx[:-1] + ["0"])
    word = em.val(f"add i64 {row}, {em.val(f'lshr i64 {bitpos}, 5')}")
    sh = em.val(f"and i64 {bitpos}, 31")
    c = em.val(f"zext i32 {em.val(f'and i32 {code}, {(1 << bits) - 1}')} to i64")
    val = em.val(f"shl i64 {c}, {sh}")
    mask = em.val(f"shl i64 {(1 << bits) - 1}, {sh}")
    p = em.val(f"getelementptr inbounds i32, ptr {t.ptr}, i64 {word}")
    _atomic_bits(em, p, em.val(f"trunc i64 {mask} to i32"), em.val(f"trunc i64 {val} to i32"))
    if 32 % bits:  # the code may straddle into the next word
        hi_mask = em.val(f"trunc i64 {em.val(f'lshr i64 {mask}, 32')} to i32")
        yes, done = em.label("hi"), em.label("hidone")
        em.emit(f"br i1 {em.val(f'icmp ne i32 {hi_mask}, 0')}, label %{yes}, label %{done}")
        em.start_block(yes)
        hp = em.val(f"getelementptr inbounds i32, ptr {p}, i64 1")
        _atomic_bits(em, hp, hi_mask, em.val(f"trunc i64 {em.val(f'lshr i64 {val}, 32')} to i32"))
        em.br(done)
        em.start_block(done)


@handles("store_codes")
def _store_codes(env: Env, op: Op) -> None:
    em = env.em
    t = env.get(op.operands[0])
    a = op.attrs
    if a.packing:  # the writes below follow the canonical bit stream
        raise BackendError(f"llvm: store_codes into a tensor in packing {a.packing}: stores "
                           "write the canonical packing only", op.loc)
    nst = len(op.operands) - 2 - a.masked
    starts = [env.get(v) for v in op.operands[1 : 1 + nst]]
    val = env.get(op.operands[1 + nst])
    shape = tuple(s for s in a.sizes if s > 0)

    def element(idx: list[str]) -> None:
        clamped, ok = window_index(env, op, t, starts, a.sizes, idx, True)
        ok = masked(env, op, ok, idx, shape)
        code = em.at(broadcast_view(val, shape), idx) if isinstance(val, Buf) else val
        yes, no = em.label("put"), em.label("skip")
        em.emit(f"br i1 {ok}, label %{yes}, label %{no}")
        em.start_block(yes)
        _put_code(env, t, clamped, code, a.bits)
        em.br(no)
        em.start_block(no)

    if not shape:
        element([])
    elif (
        not a.masked
        and a.sizes[-1] % 32 == 0
        and isinstance(val, Buf)
        and val.contiguous
        and val.shape == shape
    ):
        _aligned_fast_path(env, op, t, starts, val, lambda: em.nest(shape, element))
    else:
        em.nest(shape, element)


def _aligned_fast_path(env: Env, op: Op, t: TensorArg, starts: list, val: Buf, generic) -> None:
    """In-bounds windows starting on a 32-code boundary: every 32 codes are exactly `bits`
    whole words, built in registers and stored plainly."""
    em = env.em
    sizes, bits = op.attrs.sizes, op.attrs.bits
    aligned = em.val(f"icmp eq i64 {em.val(f'and i64 {starts[-1]}, 31')}, 0")
    ok = em.val(f"and i1 {aligned}, {in_bounds(em, t, starts, sizes)}")
    fast, slow, done = em.label("pfast"), em.label("pslow"), em.label("packed")
    em.emit(f"br i1 {ok}, label %{fast}, label %{slow}")
    em.start_block(fast)
    rows = val.shape[:-1]

    def row(idx: list[str]) -> None:
        it = iter(idx)
        tidx = [
            st if sz == 0 else em.val(f"add i64 {st}, {next(it)}")
            for st, sz in zip(starts[:-1], sizes[:-1])
        ]
        first = em.val(f"mul i64 {em.val(f'lshr i64 {starts[-1]}, 5')}, {bits}")
        base = em.val(f"add i64 {element_offset(env, t, tidx + ['0'])}, {first}")
        vbase = em.flat_index(list(idx) + ["0"], val.shape) if rows else "0"

        def group(g: str) -> None:
            c0 = em.val(f"add i64 {vbase}, {em.val(f'mul i64 {g}, 32')}")
            words = ["0"] * bits
            for j in range(32):
                code = em.val(
                    f"and i32 {em.load_elem(val, em.val(f'add i64 {c0}, {j}'))}, {(1 << bits) - 1}"
                )
                w, sh = divmod(j * bits, 32)
                words[w] = em.val(f"or i32 {words[w]}, {em.val(f'shl i32 {code}, {sh}')}")
                if sh + bits > 32:
                    words[w + 1] = em.val(
                        f"or i32 {words[w + 1]}, {em.val(f'lshr i32 {code}, {32 - sh}')}"
                    )
            w0 = em.val(f"add i64 {base}, {em.val(f'mul i64 {g}, {bits}')}")
            for w, x in enumerate(words):
                p = em.val(f"getelementptr inbounds i32, ptr {t.ptr}, i64 {w0}")
                p = em.val(f"getelementptr inbounds i32, ptr {p}, i64 {w}")
                em.emit(f"store i32 {x}, ptr {p}, align 4")

        em.loop("0", str(val.shape[-1] // 32), group)

    em.nest(rows, row)  # (no rows: one call)
    em.br(done)
    em.start_block(slow)
    generic()
    em.br(done)
    em.start_block(done)


# ---------------------------------------------------------------- view from a format tile


def view_from_codes(env: Env, op: Op) -> None:
    """`view` of a format tile: its rows' codes become LSB-first bit streams (bytes), read back
    as the machine type (the same bytes) or as another format's codes."""
    em = env.em
    src = env.get(op.operands[0])
    sbits = format_bits(op.operands[0].type.dtype)
    rt = op.results[0].type
    lead, n = src.shape[:-1], src.shape[-1]
    row_bytes = (n * sbits + 7) // 8
    if is_machine(rt.dtype):
        if rt.dtype == "bool":
            raise BackendError(f"llvm: view of {op.operands[0].type} as bool", op.loc)
        out = em.alloc(rt.dtype, rt.shape)
        stream = out.ptr
    else:
        stream = em.alloc("u8", lead + (row_bytes,)).ptr
    nrows = 1
    for d in lead:
        nrows *= d
    em.declare("declare void @llvm.memset.p0.i64(ptr, i8, i64, i1)")
    em.emit(
        f"call void @llvm.memset.p0.i64(ptr align 4 {stream}, i8 0, "
        f"i64 {nrows * row_bytes}, i1 false)"
    )

    def bit_of(idx: list[str], bits: int) -> tuple[str, str]:
        """(row index, position in the whole stream) of element idx of `bits`-bit values."""
        row = em.flat_index(idx[:-1], lead) if lead else "0"
        start = em.val(f"mul i64 {row}, {row_bytes * 8}")
        return row, em.val(f"add i64 {start}, {em.val(f'mul i64 {idx[-1]}, {bits}')}")

    def put(idx: list[str]) -> None:
        _, bitpos = bit_of(idx, sbits)
        sh = em.val(f"trunc i64 {em.val(f'and i64 {bitpos}, 7')} to i32")
        v = em.val(f"shl i32 {em.val(f'and i32 {em.at(src, idx)}, {(1 << sbits) - 1}')}, {sh}")
        byte = em.val(f"lshr i64 {bitpos}, 3")
        for k in range(2):  # a code of <= 8 bits spans at most two bytes
            part = em.val(f"trunc i32 {em.val(f'lshr i32 {v}, {8 * k}')} to i8")
            at = byte if k == 0 else em.val(f"add i64 {byte}, 1")
            yes, no = em.label("vb"), em.label("vbdone")
            em.emit(f"br i1 {em.val(f'icmp ne i8 {part}, 0')}, label %{yes}, label %{no}")
            em.start_block(yes)
            p = _byte(em, stream, at)
            old = em.val(f"load i8, ptr {p}")
            em.emit(f"store i8 {em.val(f'or i8 {old}, {part}')}, ptr {p}")
            em.br(no)
            em.start_block(no)

    em.nest(src.shape, put)
    if is_machine(rt.dtype):
        env.bind(op.results[0], out)
        return
    dbits = format_bits(rt.dtype)
    codes = em.alloc("i32", rt.shape)

    def get(idx: list[str]) -> None:
        row, bitpos = bit_of(idx, dbits)
        byte = em.val(f"lshr i64 {bitpos}, 3")
        last = em.val(f"add i64 {em.val(f'mul i64 {row}, {row_bytes}')}, {row_bytes - 1}")
        nxt = em.val(f"add i64 {byte}, 1")
        nxt = em.val(f"select i1 {em.val(f'icmp ule i64 {nxt}, {last}')}, i64 {nxt}, i64 {last}")
        lo, hi = (
            em.val(f"zext i8 {em.val(f'load i8, ptr {_byte(em, stream, i)}')} to i32")
            for i in (byte, nxt)
        )
        both = em.val(f"or i32 {lo}, {em.val(f'shl i32 {hi}, 8')}")
        sh = em.val(f"trunc i64 {em.val(f'and i64 {bitpos}, 7')} to i32")
        code = em.val(f"and i32 {em.val(f'lshr i32 {both}, {sh}')}, {(1 << dbits) - 1}")
        em.store_elem(codes, em.flat_index(idx, rt.shape), code)

    em.nest(rt.shape, get)
    env.bind(op.results[0], codes)


def _byte(em, base: str, index: str) -> str:
    return em.val(f"getelementptr inbounds i8, ptr {base}, i64 {index}")


_view_of_machine_tile = HANDLERS["view"]  # ops_tiles': views starting from machine types


@handles("view")
def _view(env: Env, op: Op) -> None:
    if is_machine(op.operands[0].type.dtype):
        _view_of_machine_tile(env, op)
    else:
        view_from_codes(env, op)
