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


if SIMULATOR:
    f32_from_bits, i32_from_f32, u32_from_f32 = f32_from_bits_py, i32_from_f32_py, u32_from_f32_py
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
