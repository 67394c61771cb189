"""Decode tables: the code-only part of a fused decode tree, looked up in registers.

In a fused tree (see fusion.py) every op whose inputs are only the codes of one `load_codes`
(at most MAX_BITS bits) and scalar constants is a function of the code, so it is evaluated at
compile time by the reference interpreter, for every code, into a table. Such a table is
looked up with vector permutes -- one `vpermd` per 16 lanes for up to 16 entries, one
`vpermi2d` for 32, two and a select for 64 -- so decoding any small float, code book or
integer format costs about one instruction per 16 codes, whatever arithmetic its lowering
spelled. With AVX2 alone a constant table is looked up the same way 8 lanes at a time: one
`vpermd` per 8 entries and a select per further code bit (`avx2_words`), and a table of
code + b (an integer format) is the code converted; without AVX2 the lookup is a gather from
a constant table (same values).
"""

from __future__ import annotations

from functools import cache

import numpy as np

from lowbitc.backends.llvm import byte_window
from lowbitc.backends.llvm.emitter import Emitter, float_literal
from lowbitc.backends.llvm.target import cpu_features
from lowbitc.interp import evaluate
from lowbitc.ir.core import Op, Value
from lowbitc.ir.types import TileType, numpy_dtype

MAX_BITS = 6  # tables of up to 64 entries (four 16-lane registers)
W = 32  # lanes of a fused step (fusion.W)
# ops whose numpy (interpreter) and LLVM results agree bit for bit: integer and bit
# arithmetic, compares, selects, conversions and correctly rounded f32 add/sub/mul/div
EXACT = frozenset(
    {
        "add",
        "sub",
        "mul",
        "div",
        "min",
        "max",
        "neg",
        "abs",
        "and",
        "or",
        "xor",
        "bnot",
        "shl",
        "shr",
        "eq",
        "ne",
        "lt",
        "le",
        "gt",
        "ge",
        "cast",
        "bitcast",
        "where",
        "lut",
    }
)
WORD = {"f32": np.float32, "i32": np.int32, "u32": np.uint32}  # dtypes a table may hold


def avx2() -> bool:
    """Whether the target has AVX2 (vpermd/vpermps on 8 lanes). Not cached, as `permutes`
    is: tests swap `cpu_features` to build the AVX2 forms on an AVX-512 host."""
    return bool(cpu_features().get("avx2", False))


def table_permutes() -> bool:
    """Whether tables can be looked up by register permutes at all: 16 lanes (AVX-512) or
    8 (AVX2); else gathers."""
    return permutes() or avx2()


@cache
def permutes() -> bool:
    """Whether the host has AVX-512 (vpermd/vpermi2d on 16 lanes)."""
    return bool(cpu_features().get("avx512f", False))


def code_tables(
    tree: list[Op], codes: Op, root: Value, defs: dict[int, Op]
) -> dict[int, np.ndarray]:
    """Tables (uint32 bit patterns, one per code) for the values of `tree` (program order)
    that depend only on `codes` and constants and are used by the rest of the tree or are
    its root; {} when the codes are too wide or nothing is code-only."""
    src = codes.results[0]
    bits = (codes.attrs.bits if codes.opcode == "load_codes"  # or a byte window's, or bytes
            else byte_window.bits(codes) if codes.opcode == "codes" else 8)
    if bits > MAX_BITS:
        return {}
    pure: dict[int, Op] = {}
    consts: dict[int, Op] = {}

    def known(v: Value) -> bool:
        if v.id == src.id or v.id in pure:
            return True
        d = defs.get(v.id)
        if isinstance(v.type, TileType) or d is None or d.opcode != "const":
            return False
        consts[v.id] = d
        return True

    moved: dict[int, int] = {}  # a byte window's lanes regrouped or permuted: the same values
    for op in tree:
        if (codes.opcode == "codes" and op.opcode in ("reshape", "transpose")
                and known(op.operands[0])):
            moved[op.results[0].id] = op.operands[0].id
            pure[op.results[0].id] = op
        elif op.opcode in EXACT and len(op.results) == 1 and all(known(v) for v in op.operands):
            pure[op.results[0].id] = op
    used = {v.id for op in tree if op.results[0].id not in pure for v in op.operands}
    wanted = [
        rid
        for rid, op in pure.items()
        if (rid in used or rid == root.id) and op.results[0].type.dtype in WORD
        and rid not in moved
    ]
    if bits > 5:
        # a 64-entry lookup (two vpermi2d and a select) costs more than converting the code
        # itself (one vcvtdq2ps; u6 GEMV 0.75x the time); 32 entries cost one permute, as much
        wanted = [rid for rid in wanted if not _converts(pure[rid], src)]
    if not wanted:
        return {}
    env = {src.id: np.arange(1 << bits).astype(numpy_dtype(src.type.dtype))}
    evaluate(list(consts.values()), env)
    for rid, op in pure.items():
        if rid in moved:
            env[rid] = env[moved[rid]]
        else:
            evaluate([op], env)
    return {
        rid: np.asarray(env[rid])
        .astype(WORD[pure[rid].results[0].type.dtype])
        .reshape(-1)
        .view(np.uint32)
        for rid in wanted
    }


def _converts(op: Op, src: Value) -> bool:
    """Whether op is one int -> float conversion of the codes themselves."""
    return op.opcode == "cast" and op.operands[0].id == src.id


def lookup(em: Emitter, codes: str, table: np.ndarray, dtype: str) -> str:
    """table[codes] for a <W x i32> vector of codes in range, as a <W x dtype> vector."""
    affine = None if permutes() or dtype != "f32" else integers(table)
    if affine is not None:  # an integer format's values: the codes converted (vcvtdq2ps)
        flip, offset = affine
        if flip:
            codes = em.val(f"xor <{W} x i32> {codes}, splat (i32 {flip})")
        vals = em.val(f"sitofp <{W} x i32> {codes} to <{W} x float>")
        if offset:
            vals = em.val(f"fadd <{W} x float> {vals}, splat (float "
                          f"{float_literal(offset, 'f32')})")
        return vals
    if permutes():
        words = lookup_words(em, codes, table)
    elif avx2():
        words = avx2_words(em, codes, table)
    else:
        words = gather_words(em, codes, table)
    if dtype == "f32":
        return em.val(f"bitcast <{W} x i32> {words} to <{W} x float>")
    return words


def reads_low_bits(table: np.ndarray, dtype: str) -> bool:
    """Whether `lookup` reads only each code's own low bits, so the codes may carry other
    bits above theirs (no mask first): AVX-512 tables of up to 16 entries (one permute); with
    AVX2 alone, lookups by permutes and blends (avx2_permute, a sign-split table's shifted
    sign), not the integer conversion nor a gather."""
    if permutes():
        return len(table) <= 16
    if not avx2() or not BLEND_SELECTS:
        return False
    return dtype != "f32" or integers(table) is None


def integers(table: np.ndarray) -> tuple[int, float] | None:
    """(x, b) when the f32 table (bit patterns) holds (code ^ x) + b for every code, exactly
    (unsigned integers x = 0, two's complement x = 2^(bits-1)); else None. Without AVX-512
    permutes converting the code is one instruction per 8 lanes where the lookup takes a
    vpermd per 8 entries and a select per further code bit."""
    vals = table.view(np.float32)
    codes = np.arange(len(vals))
    for x in (0, len(vals) // 2):
        b = vals[x]  # the value of code x, whose (code ^ x) is 0
        want = (codes ^ x).astype(np.float32) + b
        if np.array_equal(want.view(np.uint32), table):
            return x, float(b)
    return None


def const_words(words) -> str:
    return "<" + ", ".join(f"i32 {int(np.int32(np.uint32(w)))}" for w in words) + ">"


SIGN = np.uint32(0x80000000)


def sign_split(table: np.ndarray) -> bool:
    """Whether the table's upper half is its lower half with the sign bit set (a sign-magnitude
    code whose top bit is the value's sign, as every (e, m) float)."""
    lo, hi = np.split(table.astype(np.uint32), 2)
    return not (lo & SIGN).any() and np.array_equal(hi, lo | SIGN)


def lookup_words(em: Emitter, codes: str, table: np.ndarray) -> str:
    """The permute lookup (AVX-512): tables of <= 16 entries repeat to 16 (the permute reads
    each index's low 4 bits); 32 entries take two registers, 64 a select on bit 5, or (a
    sign-split table, 6-bit floats) a 32-entry lookup with the code's bit 5 moved to bit 31."""
    if len(table) == 64 and sign_split(table):
        mag = lookup_words(em, codes, table[:32])
        sign = em.val(f"shl <{W} x i32> {codes}, {const_words([26] * W)}")
        sign = em.val(f"and <{W} x i32> {sign}, {const_words([SIGN] * W)}")
        return em.val(f"or <{W} x i32> {mag}, {sign}")
    n = max(16, len(table))
    t = np.resize(table, n)
    return permute_words(em, codes, [const_words(t[i : i + 16]) for i in range(0, n, 16)])


def avx2_words(em: Emitter, codes: str, table: np.ndarray) -> str:
    """The AVX2 lookup of codes in range: per 8 lanes one `vpermd` per 8 entries (it reads each
    index's low 3 bits), then the code's bits 3, 4, .. choose among them (selects); a
    sign-split table of 16 or more entries (every (e, m) float) looks up its magnitudes and
    moves the code's top bit to the sign, as lookup_words does for 64."""
    if len(table) >= 16 and sign_split(table):
        mag = avx2_words(em, codes, table[:len(table) // 2])
        top = 33 - len(table).bit_length()  # the code's top bit to bit 31
        sign = em.val(f"shl <{W} x i32> {codes}, {const_words([top] * W)}")
        sign = em.val(f"and <{W} x i32> {sign}, {const_words([SIGN] * W)}")
        return em.val(f"or <{W} x i32> {mag}, {sign}")
    t = np.resize(table, max(8, len(table)))
    return avx2_permute(em, codes, [const_words(t[i:i + 8]) for i in range(0, len(t), 8)])


BLEND_SELECTS = True  # avx2_permute's selects as vblendvps on the index shifted (below)


def avx2_permute(em: Emitter, codes: str, parts: list[str], n: int = W) -> str:
    """parts[codes >> 3][codes & 7] for a <n x i32> vector of codes, `parts` 1, 2, 4 or 8
    <8 x i32> tables of 8 entries: per 8 lanes one `vpermd` per part (it reads each index's
    low 3 bits), then the code's bits 3, 4, .. choose among them, each a `vblendvps` reading
    the index shifted left to put that bit at bit 31 (bits above the code's shift out: the
    codes may carry other bits above theirs); a mask, compare and select where
    BLEND_SELECTS is off (codes in range)."""
    v8, f8 = "<8 x i32>", "<8 x float>"
    em.declare(f"declare {v8} @llvm.x86.avx2.permd({v8}, {v8})")
    if len(parts) > 1 and BLEND_SELECTS:
        em.declare(f"declare {f8} @llvm.x86.avx.blendv.ps.256({f8}, {f8}, {f8})")
    out = []
    for h in range(0, n, 8):
        idx = em.part(codes, f"<{n} x i32>", h, 8)
        level = [em.val(f"call {v8} @llvm.x86.avx2.permd({v8} {part}, {v8} {idx})")
                 for part in parts]
        bit = 3
        while len(level) > 1:
            if BLEND_SELECTS:
                top = em.val(f"shl {v8} {idx}, {const_words([31 - bit] * 8)}")
                mask = em.val(f"bitcast {v8} {top} to {f8}")
                pairs = [[em.val(f"bitcast {v8} {v} to {f8}") for v in level[i:i + 2]]
                         for i in range(0, len(level), 2)]
                level = [em.val(f"bitcast {f8} " + em.val(
                    f"call {f8} @llvm.x86.avx.blendv.ps.256({f8} {lo}, {f8} {hi}, {f8} {mask})")
                    + f" to {v8}") for lo, hi in pairs]
            else:
                on = em.val(f"and {v8} {idx}, {const_words([1 << bit] * 8)}")
                on = em.val(f"icmp ne {v8} {on}, zeroinitializer")
                level = [em.val(f"select <8 x i1> {on}, {v8} {level[i + 1]}, {v8} {level[i]}")
                         for i in range(0, len(level), 2)]
            bit += 1
        out.append(level[0])
    return em.concat(out, v8)  # the 8-lane parts back into n lanes


def permute_words(em: Emitter, codes: str, regs: list[str]) -> str:
    """regs[codes] for a <W x i32> vector of codes: 1, 2 or 4 <16 x i32> table registers
    (constants, or a table made at run time: row_tables.py), one permute per 16 codes and
    register pair; with AVX2 alone (codes in range) each register's two 8-entry halves
    (`avx2_permute`)."""
    v16 = "<16 x i32>"
    if not permutes():
        return avx2_permute(em, codes, [h for r in regs for h in em.halves(r, v16)])
    em.declare(f"declare {v16} @llvm.x86.avx512.permvar.si.512({v16}, {v16})")
    em.declare(f"declare {v16} @llvm.x86.avx512.vpermi2var.d.512({v16}, {v16}, {v16})")

    def half(idx: str) -> str:
        if len(regs) == 1:
            return em.val(
                f"call {v16} @llvm.x86.avx512.permvar.si.512({v16} {regs[0]}, {v16} {idx})"
            )
        parts = [
            em.val(
                f"call {v16} @llvm.x86.avx512.vpermi2var.d.512({v16} {regs[i]}, "
                f"{v16} {idx}, {v16} {regs[i + 1]})"
            )
            for i in range(0, len(regs), 2)
        ]
        if len(parts) == 1:
            return parts[0]
        high = em.val(f"icmp ugt {v16} {idx}, <{', '.join(['i32 31'] * 16)}>")
        return em.val(f"select <16 x i1> {high}, {v16} {parts[1]}, {v16} {parts[0]}")

    return em.concat([half(idx) for idx in em.halves(codes, f"<{W} x i32>")], v16)


def gather_words(em: Emitter, codes: str, table: np.ndarray) -> str:
    """The portable lookup: a masked gather from a private constant table."""
    name = f"@dtab{len(em.globals)}"
    items = ", ".join(f"i32 {int(np.int32(w))}" for w in table.view(np.int32))
    em.globals.append(
        f"{name} = private unnamed_addr constant [{len(table)} x i32] [{items}], align 64"
    )
    return gather(em, name, "i32", em.val(f"zext <{W} x i32> {codes} to <{W} x i64>"))


def gather(em: Emitter, name: str, et: str, idx: str, width: int = W) -> str:
    """<width x et> loaded from table `name` at the <width x i64> indices `idx`."""
    sfx = {"float": "f32", "double": "f64", "half": "f16"}.get(et, et)
    vt = f"<{width} x {et}>"
    ptrs = em.val(f"getelementptr inbounds {et}, ptr {name}, <{width} x i64> {idx}")
    em.declare(
        f"declare {vt} @llvm.masked.gather.v{width}{sfx}.v{width}p0"
        f"(<{width} x ptr>, i32, <{width} x i1>, {vt})"
    )
    true = "<" + ", ".join(["i1 true"] * width) + ">"
    return em.val(
        f"call {vt} @llvm.masked.gather.v{width}{sfx}.v{width}p0(<{width} x ptr> "
        f"{ptrs}, i32 4, <{width} x i1> {true}, {vt} poison)"
    )
