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


if SIMULATOR:
    f32_from_bits, i32_from_f32, u32_from_f32 = f32_from_bits_py, i32_from_f32_py, u32_from_f32_py
    u16_from_f16, f16_from_bits = u16_from_f16_py, f16_from_bits_py
    u64_from_f64, f64_from_bits = u64_from_f64_py, f64_from_bits_py
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
