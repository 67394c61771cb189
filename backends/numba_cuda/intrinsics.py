"""Single-instruction device helpers for generated kernels, each with a simulator twin.

On the GPU target each helper is a numba intrinsic emitting one PTX instruction (inline
asm) or one vector memory access; under NUMBA_ENABLE_CUDASIM=1 the same name is a plain
Python function with the PTX semantics, so generated source runs unchanged in both.
Values travel as uint32 bit patterns (an f16x2 pair is one uint32).
"""

from __future__ import annotations

import numpy as np
from numba.cuda import config

SIMULATOR = bool(config.ENABLE_CUDASIM)

_U32 = 0xFFFFFFFF


def prmt_py(a: int, b: int, sel: int) -> np.uint32:
    """PTX prmt.b32 (default mode): byte k of the result is byte sel[k] of b:a (msb-replicate
    when bit 3 of the selector nibble is set)."""
    pool = (int(b) & _U32) << 32 | (int(a) & _U32)
    out = 0
    for k in range(4):
        nib = (int(sel) >> (4 * k)) & 0xF
        byte = (pool >> (8 * (nib & 7))) & 0xFF
        if nib & 8:
            byte = 0xFF if byte & 0x80 else 0
        out |= byte << (8 * k)
    return np.uint32(out)


def lop3_py(a: int, b: int, c: int, lut: int) -> np.uint32:
    """PTX lop3.b32: each result bit is bit (a<<2 | b<<1 | c) of lut, as in the F0/CC/AA rule."""
    a, b, c = int(a) & _U32, int(b) & _U32, int(c) & _U32
    out = 0
    for k in range(8):
        if int(lut) >> k & 1:
            ta = a if k & 4 else ~a
            tb = b if k & 2 else ~b
            tc = c if k & 1 else ~c
            out |= ta & tb & tc
    return np.uint32(out & _U32)


def _halves(x: int) -> np.ndarray:
    return np.array([int(x) & _U32], dtype=np.uint32).view(np.float16).astype(np.float64)


def hfma2_py(a: int, b: int, c: int) -> np.uint32:
    """PTX fma.rn.f16x2: a*b+c per 16-bit half, one rounding (exact in float64 first)."""
    with np.errstate(over="ignore"):  # overflow to inf, as on the GPU
        res = (_halves(a) * _halves(b) + _halves(c)).astype(np.float16)
    return np.uint32(res.view(np.uint32)[0])


def hfma2_bf16_py(a: int, b: int, c: int) -> np.uint32:
    """PTX fma.rn.bf16x2: a*b+c per 16-bit half (bf16), one rounding (exact in float64 first;
    subnormals kept, as the PTX instruction keeps them)."""
    import ml_dtypes

    def halves(x):
        return np.array([int(x) & _U32], np.uint32).view(ml_dtypes.bfloat16).astype(np.float64)

    with np.errstate(over="ignore"):
        res = (halves(a) * halves(b) + halves(c)).astype(ml_dtypes.bfloat16)
    return np.uint32(res.view(np.uint32)[0])


def ld_u32x4_py(words: np.ndarray, i: int) -> tuple[np.uint32, ...]:
    """Four consecutive uint32 from index i (a multiple of 4): one 128-bit load on the GPU."""
    i = int(i)
    return (words[i], words[i + 1], words[i + 2], words[i + 3])


def st_u32x4_py(words: np.ndarray, i: int, a: int, b: int, c: int, d: int) -> None:
    """Store four uint32 at index i (a multiple of 4): one 128-bit store on the GPU."""
    i = int(i)
    words[i], words[i + 1], words[i + 2], words[i + 3] = a, b, c, d


def ld_row_u32x4_py(a: np.ndarray, i: int, j: int) -> tuple[np.uint32, ...]:
    """16 bytes of row i of a 2-D uint32 or uint8 array from element j (16-byte aligned),
    as four uint32: one 128-bit load on the GPU."""
    row = np.ascontiguousarray(a[int(i)])
    size = row.dtype.itemsize
    words = row[int(j) : int(j) + 16 // size].view(np.uint32)
    return tuple(np.uint32(w) for w in words)


def st_row_f16x8_py(a: np.ndarray, i: int, j: int, p: int, q: int, r: int, s: int) -> None:
    """Store four f16x2 pairs (uint32 bits) as halves j..j+7 of row i of a 2-D f16 array."""
    pairs = np.array([int(p), int(q), int(r), int(s)], dtype=np.uint32).view(np.float16)
    a[int(i), int(j) : int(j) + 8] = pairs


def _flat(a: np.ndarray, i: int, n: int, j: int, k: int) -> tuple[int, ...]:
    return tuple(int(x) for x in np.unravel_index(int(i) * int(n) + int(j) + int(k), a.shape))


def ld_at_py(a: np.ndarray, i: int, n: int, j: int, k: int):
    """Flat element i * n + j + k of a C-contiguous array (i * n + j below 2^32)."""
    return a[_flat(a, i, n, j, k)]


def ld_at_u32x4_py(a: np.ndarray, i: int, n: int, j: int, k: int) -> tuple[np.uint32, ...]:
    """16 bytes from flat element i * n + j + k (16-byte aligned, in one row), four uint32."""
    *row, c = _flat(a, i, n, j, k)
    words = np.ascontiguousarray(a[tuple(row)])[c : c + 16 // a.dtype.itemsize].view(np.uint32)
    return tuple(np.uint32(w) for w in words)


def st_at_f16x8_py(a, i: int, n: int, j: int, k: int, p: int, q: int, r: int, s: int) -> None:
    """Store four f16x2 pairs as halves from flat element i * n + j + k (in one row) of an f16
    array (or uint16: bf16 bits)."""
    *row, c = _flat(a, i, n, j, k)
    a[(*row, slice(c, c + 8))] = np.array([p, q, r, s], np.uint32).view(a.dtype)


def pack_f16x2_py(lo: float, hi: float) -> np.uint32:
    """PTX cvt.rn.f16x2.f32: two f32 rounded to f16, `lo` in the low half."""
    with np.errstate(over="ignore"):
        halves = np.array([lo, hi], dtype=np.float32).astype(np.float16)
    return np.uint32(halves.view(np.uint32)[0])


def pack_bf16x2_py(lo: float, hi: float) -> np.uint32:
    """PTX cvt.rn.bf16x2.f32: two f32 rounded to bf16, `lo` in the low half."""
    import ml_dtypes

    with np.errstate(over="ignore"):
        halves = np.array([lo, hi], dtype=np.float32).astype(ml_dtypes.bfloat16)
    return np.uint32(halves.view(np.uint32)[0])


def opaque_py(x: int) -> np.uint32:
    return np.uint32(x)


def one_atomic_lock() -> None:
    """Make the simulator's atomics atomic with respect to each other. numba-cuda's simulator
    (numba/cuda/simulator/kernelapi.py) guards each kind of atomic with a lock of its own
    (`andlock`, `orlock`, ...), so an `atomic.and_` and an `atomic.or_` on one word can
    interleave and lose an update; a GPU's cannot. The kernels store sub-word codes as an
    and_ clearing their bits, then an or_ setting them (encode.py's packed stores), so two
    threads writing neighbouring codes could leave a stale bit (seen as a flipped sign bit
    of an f8 code, about one simulator run in ten). One lock for every kind restores it."""
    from numba.cuda.simulator import kernelapi

    shared = kernelapi.addlock  # (each atomic takes its lock once and calls no other)
    for name in ATOMIC_LOCKS:
        if hasattr(kernelapi, name):
            setattr(kernelapi, name, shared)


ATOMIC_LOCKS = ("addlock", "sublock", "andlock", "orlock", "xorlock", "maxlock", "minlock",
                "compare_and_swaplock", "caslock", "inclock", "declock", "exchlock")


if SIMULATOR:
    one_atomic_lock()
    opaque = opaque_py
    pack_f16x2, pack_bf16x2 = pack_f16x2_py, pack_bf16x2_py
    prmt, hfma2, hfma2_bf16, lop3 = prmt_py, hfma2_py, hfma2_bf16_py, lop3_py
    ld_u32x4, st_u32x4 = ld_u32x4_py, st_u32x4_py
    ld_row_u32x4, st_row_f16x8 = ld_row_u32x4_py, st_row_f16x8_py
    ld_at, ld_at_u32x4, st_at_f16x8 = ld_at_py, ld_at_u32x4_py, st_at_f16x8_py
else:
    from llvmlite import ir
    from numba.cuda import cgutils, types
    from numba.cuda.extending import intrinsic

    _I32 = ir.IntType(32)
    _V4 = ir.VectorType(_I32, 4)

    def _asm(builder: ir.IRBuilder, text: str, args: list) -> ir.Value:
        fnty = ir.FunctionType(_I32, [_I32] * len(args))
        constraint = "=r," + ",".join("r" for _ in args)
        return builder.call(ir.InlineAsm(fnty, text, constraint), args)

    def _asm3(name: str, text: str):
        """An intrinsic u32 f(u32, u32, u32) that is the one PTX instruction `text`."""

        def impl(typingctx, a, b, c):  # noqa: ARG001
            sig = types.uint32(types.uint32, types.uint32, types.uint32)

            def codegen(context, builder, signature, args):
                return _asm(builder, text, list(args))

            return sig, codegen

        impl.__name__ = name
        return intrinsic(impl)

    def _pack2(name: str, ty: str):
        """One F2FP: two f32 rounded to a `ty`x2 pair (`lo` in the low half)."""

        def impl(typingctx, lo, hi):  # noqa: ARG001
            sig = types.uint32(types.float32, types.float32)

            def codegen(context, builder, signature, args):
                f32 = ir.FloatType()
                fnty = ir.FunctionType(_I32, [f32, f32])
                asm = ir.InlineAsm(fnty, f"cvt.rn.{ty}x2.f32 $0, $1, $2;", "=r,f,f")
                return builder.call(asm, [args[1], args[0]])

            return sig, codegen

        impl.__name__ = name
        return intrinsic(impl)

    pack_f16x2 = _pack2("pack_f16x2", "f16")
    pack_bf16x2 = _pack2("pack_bf16x2", "bf16")
    prmt = _asm3("prmt", "prmt.b32 $0, $1, $2, $3;")

    @intrinsic
    def opaque(typingctx, x):  # noqa: ARG001
        """x unchanged, hidden from LLVM (one MOV, usually folded by ptxas): a loop bound that
        keeps a loop rolled (the mma K loop, whose per-iteration count `emit --format stats`
        reports)."""
        sig = types.uint32(types.uint32)

        def codegen(context, builder, signature, args):
            return _asm(builder, "mov.b32 $0, $1;", list(args))

        return sig, codegen
    hfma2 = _asm3("hfma2", "fma.rn.f16x2 $0, $1, $2, $3;")
    hfma2_bf16 = _asm3("hfma2_bf16", "fma.rn.bf16x2 $0, $1, $2, $3;")

    @intrinsic
    def lop3(typingctx, a, b, c, lut):  # noqa: ARG001
        """One LOP3: keeps two constants in one instruction (ptxas splits `(a & m) | k`)."""
        if not isinstance(lut, types.IntegerLiteral):
            return None
        u32 = types.uint32
        sig = u32(u32, u32, u32, lut)
        text = f"lop3.b32 $0, $1, $2, $3, {int(lut.literal_value) & 0xFF};"

        def codegen(context, builder, signature, args):
            return _asm(builder, text, list(args[:3]))

        return sig, codegen

    def _load_v4(context, builder, ptr, ret):
        """One 128-bit load through `ptr` (<4 x i32>*), as a tuple of four uint32."""
        vec = builder.load(ptr, align=16)
        items = [builder.extract_element(vec, ir.Constant(_I32, k)) for k in range(4)]
        return context.make_tuple(builder, ret, items)

    def _store_v4(context, builder, ptr, values):
        """One 128-bit store of four uint32 through `ptr` (<4 x i32>*)."""
        vec = ir.Constant(_V4, None)
        for k, value in enumerate(values):
            vec = builder.insert_element(vec, value, ir.Constant(_I32, k))
        builder.store(vec, ptr, align=16)
        return context.get_dummy_value()

    def _vec_ptr(context, builder, aryty, ary, index):
        data = context.make_array(aryty)(context, builder, ary).data
        ptr = builder.gep(data, [index])
        return builder.bitcast(ptr, _V4.as_pointer())

    @intrinsic
    def ld_u32x4(typingctx, words, i):  # noqa: ARG001
        if not (isinstance(words, types.Array) and words.dtype == types.uint32):
            return None
        ret = types.UniTuple(types.uint32, 4)
        sig = ret(words, types.uint64)

        def codegen(context, builder, signature, args):
            ptr = _vec_ptr(context, builder, signature.args[0], args[0], args[1])
            return _load_v4(context, builder, ptr, ret)

        return sig, codegen

    @intrinsic
    def st_u32x4(typingctx, words, i, a, b, c, d):  # noqa: ARG001
        if not (isinstance(words, types.Array) and words.dtype == types.uint32):
            return None
        u32 = types.uint32
        sig = types.void(words, types.uint64, u32, u32, u32, u32)

        def codegen(context, builder, signature, args):
            ptr = _vec_ptr(context, builder, signature.args[0], args[0], args[1])
            return _store_v4(context, builder, ptr, args[2:])

        return sig, codegen

    def _row_ptr(context, builder, aryty, ary, i, j):
        """Pointer to element [i, j] of a C-contiguous 2-D array, as <4 x i32>*."""
        intp = context.get_value_type(types.intp)
        idx = [
            builder.zext(i, intp) if i.type.width < intp.width else i,
            builder.zext(j, intp) if j.type.width < intp.width else j,
        ]
        arr = context.make_array(aryty)(context, builder, ary)
        ptr = cgutils.get_item_pointer(context, builder, aryty, arr, idx)
        return builder.bitcast(ptr, _V4.as_pointer())

    def _is_2d(a, dtypes) -> bool:
        return (
            isinstance(a, types.Array) and a.ndim == 2 and a.layout == "C" and (a.dtype in dtypes)
        )

    @intrinsic
    def ld_row_u32x4(typingctx, a, i, j):  # noqa: ARG001
        """16 bytes of a row from element j, 16-byte aligned (one LDG.E.128)."""
        if not _is_2d(a, (types.uint32, types.uint8, types.int8)):
            return None
        ret = types.UniTuple(types.uint32, 4)
        sig = ret(a, types.uint64, types.uint64)

        def codegen(context, builder, signature, args):
            ptr = _row_ptr(context, builder, signature.args[0], args[0], args[1], args[2])
            return _load_v4(context, builder, ptr, ret)

        return sig, codegen

    @intrinsic
    def st_row_f16x8(typingctx, a, i, j, p, q, r, s):  # noqa: ARG001
        """Store 8 halves (four f16x2 pairs) at row i from element j (one STG.E.128)."""
        if not _is_2d(a, (types.float16,)):
            return None
        u32, u64 = types.uint32, types.uint64
        sig = types.void(a, u64, u64, u32, u32, u32, u32)

        def codegen(context, builder, signature, args):
            ptr = _row_ptr(context, builder, signature.args[0], args[0], args[1], args[2])
            return _store_v4(context, builder, ptr, args[3:])

        return sig, codegen

    def _at_ptr(context, builder, aryty, args, as_vec: bool):
        """Pointer to flat element i * n + j + k of a C-contiguous array (args: the array,
        uint32 i, n, j, int64 k): i * n + j in 32 bits (IMAD), zero-extended into the
        address (IMAD.WIDE.U32), `k` folded into the instruction's offset."""
        ary, i, n, j, k = args
        data = context.make_array(aryty)(context, builder, ary).data
        off = builder.add(builder.mul(i, n, flags=["nuw"]), j, flags=["nuw"])
        ptr = builder.gep(builder.gep(data, [builder.zext(off, ir.IntType(64))]), [k])
        return builder.bitcast(ptr, _V4.as_pointer()) if as_vec else ptr

    def _is_flat(a, dtypes=None) -> bool:
        return (
            isinstance(a, types.Array) and a.layout == "C" and (dtypes is None or a.dtype in dtypes)
        )

    _AT = (types.uint32, types.uint32, types.uint32, types.int64)

    @intrinsic
    def ld_at(typingctx, a, i, n, j, k):  # noqa: ARG001
        """Flat element i * n + j + k of a C-contiguous array (one LDG)."""
        if not _is_flat(a):
            return None
        sig = a.dtype(a, *_AT)

        def codegen(context, builder, signature, args):
            return builder.load(_at_ptr(context, builder, signature.args[0], args, False))

        return sig, codegen

    @intrinsic
    def ld_at_u32x4(typingctx, a, i, n, j, k):  # noqa: ARG001
        """16 bytes from flat element i * n + j + k, 16-byte aligned (one LDG.E.128)."""
        if not _is_flat(a, (types.uint32, types.uint8, types.int8)):
            return None
        ret = types.UniTuple(types.uint32, 4)
        sig = ret(a, *_AT)

        def codegen(context, builder, signature, args):
            return _load_v4(
                context, builder, _at_ptr(context, builder, signature.args[0], args, True), ret
            )

        return sig, codegen

    @intrinsic
    def st_at_f16x8(typingctx, a, i, n, j, k, p, q, r, s):  # noqa: ARG001
        """Store 8 halves (four f16x2 pairs) from flat element i * n + j + k (one STG.E.128,
        or STS.128 into shared memory); uint16 arrays hold bf16 bits."""
        if not _is_flat(a, (types.float16, types.uint16)):
            return None
        u32 = types.uint32
        sig = types.void(a, *_AT, u32, u32, u32, u32)

        def codegen(context, builder, signature, args):
            ptr = _at_ptr(context, builder, signature.args[0], args[:5], True)
            return _store_v4(context, builder, ptr, args[5:])

        return sig, codegen
