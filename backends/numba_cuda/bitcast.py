"""Bit casts between 32-bit integers and f32 for generated kernels, with simulator twins.

numba has no scalar bitcast; on the GPU each helper is one LLVM `bitcast` (no instruction
after register allocation). Under NUMBA_ENABLE_CUDASIM=1 the same names reinterpret through
numpy, so one generated source runs in both. (libdevice.int_as_float returns None in the
simulator.)
"""

from __future__ import annotations

import numpy as np
from numba.cuda import config

SIMULATOR = bool(config.ENABLE_CUDASIM)


def f32_from_bits_py(x: int) -> np.float32:
    """The f32 whose bit pattern is the low 32 bits of x."""
    return np.array([int(x) & 0xFFFFFFFF], dtype=np.uint32).view(np.float32)[0]


def i32_from_f32_py(x: float) -> np.int32:
    """The bit pattern of f32 x as a signed 32-bit integer."""
    return np.array([x], dtype=np.float32).view(np.int32)[0]


def u32_from_f32_py(x: float) -> np.uint32:
    """The bit pattern of f32 x as an unsigned 32-bit integer."""
    return np.array([x], dtype=np.float32).view(np.uint32)[0]


def _float_bits_py(x: float, fdt, udt) -> np.integer:
    return np.array([x], dtype=fdt).view(udt)[0]


def _float_from_bits_py(x: int, fdt, udt) -> np.floating:
    return np.array([int(x) & int(np.iinfo(udt).max)], dtype=udt).view(fdt)[0]


def u16_from_f16_py(x: float) -> np.uint16:
    """The bit pattern of f16 x."""
    return _float_bits_py(x, np.float16, np.uint16)


def f16_from_bits_py(x: int) -> np.float16:
    """The f16 whose bit pattern is the low 16 bits of x."""
    return _float_from_bits_py(x, np.float16, np.uint16)


def u64_from_f64_py(x: float) -> np.uint64:
    """The bit pattern of f64 x."""
    return _float_bits_py(x, np.float64, np.uint64)


def f64_from_bits_py(x: int) -> np.float64:
    """The f64 whose bit pattern is x."""
    return _float_from_bits_py(x, np.float64, np.uint64)


def _bf16_rne(u: int) -> int:
    """f32 bits -> bf16 bits (the high half), round to nearest even; NaN stays NaN (quiet)."""
    u = int(u) & 0xFFFFFFFF
    if u & 0x7FFFFFFF > 0x7F800000:
        return (u >> 16) | 0x40
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) & 0xFFFF


def bf16_round_py(x: float) -> np.float32:
    """x rounded to bf16 (nearest even), as the f32 holding it: bf16 values live in f32
    registers in generated kernels (every bf16 is an f32), stored as their 16 bits."""
    return bf16_from_bits_py(_bf16_rne(u32_from_f32_py(np.float32(x))))


def bf16_from_bits_py(x: int) -> np.float32:
    """The bf16 whose bit pattern is the low 16 bits of x, as an f32."""
    return f32_from_bits_py((int(x) & 0xFFFF) << 16)


def u16_from_bf16_py(x: float) -> np.uint16:
    """The bit pattern of bf16 x (an f32 holding a bf16 value: its high half)."""
    return np.uint16(int(u32_from_f32_py(x)) >> 16)


if SIMULATOR:
    f32_from_bits, i32_from_f32, u32_from_f32 = f32_from_bits_py, i32_from_f32_py, u32_from_f32_py
    u16_from_f16, f16_from_bits = u16_from_f16_py, f16_from_bits_py
    u64_from_f64, f64_from_bits = u64_from_f64_py, f64_from_bits_py
    bf16_round, bf16_from_bits, u16_from_bf16 = bf16_round_py, bf16_from_bits_py, u16_from_bf16_py
else:
    from llvmlite import ir
    from numba.cuda import types
    from numba.cuda.extending import intrinsic

    @intrinsic
    def f32_from_bits(typingctx, x):  # noqa: ARG001
        if not (isinstance(x, types.Integer) and x.bitwidth == 32):
            return None

        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], ir.FloatType())

        return types.float32(x), codegen

    def _to_bits(result):
        def impl(typingctx, x):  # noqa: ARG001
            if x != types.float32:
                return None

            def codegen(context, builder, signature, args):
                return builder.bitcast(args[0], ir.IntType(32))

            return result(x), codegen

        impl.__name__ = f"{result}_from_f32"
        return impl

    i32_from_f32 = intrinsic(_to_bits(types.int32))
    u32_from_f32 = intrinsic(_to_bits(types.uint32))

    def _cast(builder, value, to):
        """A bit cast, or nothing where numba already holds the float as an integer (f16)."""
        return value if value.type == to else builder.bitcast(value, to)

    def _float_bits(ftype, utype):
        """u<w>_from_f<w> and f<w>_from_bits for one float type: one LLVM bitcast each."""

        def to_bits(typingctx, x):  # noqa: ARG001
            if x != ftype:
                return None

            def codegen(context, builder, signature, args):
                return _cast(builder, args[0], ir.IntType(utype.bitwidth))

            return utype(x), codegen

        def from_bits(typingctx, x):  # noqa: ARG001
            if not (isinstance(x, types.Integer) and x.bitwidth == utype.bitwidth):
                return None

            def codegen(context, builder, signature, args):
                return _cast(builder, args[0], context.get_value_type(ftype))

            return ftype(x), codegen

        to_bits.__name__ = f"{utype}_from_{ftype}"
        from_bits.__name__ = f"{ftype}_from_bits"
        return intrinsic(to_bits), intrinsic(from_bits)

    u16_from_f16, f16_from_bits = _float_bits(types.float16, types.uint16)
    u64_from_f64, f64_from_bits = _float_bits(types.float64, types.uint64)

    @intrinsic
    def bf16_round(typingctx, x):  # noqa: ARG001
        """x (any number) rounded to bf16, nearest even, as an f32 (see bf16_round_py)."""
        if not isinstance(x, (types.Integer, types.Float)):
            return None

        def codegen(context, builder, signature, args):
            i32 = ir.IntType(32)
            f = context.cast(builder, args[0], x, types.float32)
            u = builder.bitcast(f, i32)
            lsb = builder.and_(builder.lshr(u, i32(16)), i32(1))
            rne = builder.and_(builder.add(u, builder.add(lsb, i32(0x7FFF))), i32(0xFFFF0000))
            nan = builder.icmp_unsigned(">", builder.and_(u, i32(0x7FFFFFFF)), i32(0x7F800000))
            quiet = builder.and_(builder.or_(u, i32(0x400000)), i32(0xFFFF0000))
            return builder.bitcast(builder.select(nan, quiet, rne), ir.FloatType())

        return types.float32(x), codegen

    @intrinsic
    def bf16_from_bits(typingctx, x):  # noqa: ARG001
        if not isinstance(x, types.Integer):
            return None

        def codegen(context, builder, signature, args):
            i32 = ir.IntType(32)
            u = context.cast(builder, args[0], x, types.uint32)
            u = builder.shl(builder.and_(u, i32(0xFFFF)), i32(16))
            return builder.bitcast(u, ir.FloatType())

        return types.float32(x), codegen

    @intrinsic
    def u16_from_bf16(typingctx, x):  # noqa: ARG001
        if x != types.float32:
            return None

        def codegen(context, builder, signature, args):
            u = builder.lshr(builder.bitcast(args[0], ir.IntType(32)), ir.IntType(32)(16))
            return builder.trunc(u, ir.IntType(16))

        return types.uint16(x), codegen
