"""Facts about the host CPU that passes take as options (the vectorize pass's vector bits)."""

from __future__ import annotations

from functools import cache

import llvmlite.binding as llvm


@cache
def host_vector_bits() -> int:
    """Bits of the host's widest vector registers: 512 with AVX-512, 256 with AVX, else 128."""
    features = llvm.get_host_cpu_features()
    if features.get("avx512f", False):
        return 512
    return 256 if features.get("avx", False) else 128
