"""Facts about the CPU the backend compiles for (the host, or the one LOWBITC_TARGET_CPU
names: lowbitc.cache.host.llvm_host) that passes take as options (the vectorize pass's vector
bits) and the emitters read (features, per-CPU tables)."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from types import MappingProxyType

from lowbitc.cache.host import llvm_host


def cpu_name() -> str:
    """LLVM's name of the target CPU ("znver4")."""
    return llvm_host().cpu


def cpu_feature_string() -> str:
    """The target's features as LLVM's target machines take them ("+avx2,-avx512f,...")."""
    return llvm_host().features


@cache
def cpu_features() -> Mapping[str, bool]:
    """The target's features, name -> on (as llvmlite's FeatureMap)."""
    return MappingProxyType({f[1:]: f[0] == "+" for f in cpu_feature_string().split(",") if f})


@cache
def host_vector_bits() -> int:
    """Bits of the target's widest vector registers: 512 with AVX-512, 256 with AVX, else 128."""
    features = cpu_features()
    if features.get("avx512f", False):
        return 512
    return 256 if features.get("avx", False) else 128


# Software prefetch locality (llvm.prefetch's third operand: 3 = prefetcht0, into every level;
# 2 = prefetcht1, into L2 and below), per kind of stream and by LLVM's host CPU name:
#   "rows"  windows of the rows packing (rows.prefetch_windows: the f32 GEMV, and the int8 dot's
#           inline GEMV packing),
#   "bytes" rows of bytes in memory order (bytedot's byte-row dot),
#   "runs"  byte runs of other layouts (prefetch.py: user kernels' columns, byte windows).
# Zen 5's distances were tuned with prefetcht0 (prefetcht1 was 1.09x slower there); on Zen 4
# prefetcht1 made the streamed GEMVs 15-30% faster (docs/performance.md, session 11).
PREFETCH_LOCALITY_BY_CPU: dict[str, dict[str, int]] = {
    "znver4": {"rows": 2, "bytes": 2, "runs": 2}}
PREFETCH_LOCALITY: dict[str, int] = {}  # overrides the host's, per stream (experiments)


@cache
def _host_prefetch_locality() -> dict[str, int]:
    return PREFETCH_LOCALITY_BY_CPU.get(cpu_name(), {})


def prefetch_locality(stream: str) -> int:
    """The locality operand of this host's software prefetches of `stream` (above)."""
    if stream in PREFETCH_LOCALITY:
        return PREFETCH_LOCALITY[stream]
    return _host_prefetch_locality().get(stream, 3)


# Whether the int8 dot's inline GEMV (one sequential stream per 16-row program, bytedot.py)
# asks for its codes ahead in software, by LLVM's host CPU name (default yes). On Zen 4 the
# hardware prefetchers alone ran it 9-12 % faster streamed (u4, u8; 2 threads), as llama.cpp's
# repacked GEMVs, which prefetch nothing (docs/performance.md, session 12); Zen 5's 4-9 %
# gain from 8 KB ahead stays. Zen 3 (AVX2): code compiled for it ran on Zen 4 0.52x (u8),
# 0.81x (u4), 0.94x (u2) the time streamed without the prefetch, in cache 0.65x / 0.95x /
# 1.0x (session 14); not yet measured on a Zen 3.
INLINE_PREFETCH_BY_CPU: dict[str, bool] = {"znver4": False, "znver3": False}
INLINE_PREFETCH: bool | None = None  # overrides the host's (experiments)


def _host_choice(override: bool | None, by_cpu: Mapping[str, bool]) -> bool:
    """`override` when set, else this host's entry of `by_cpu` (by LLVM's CPU name), else
    yes."""
    return override if override is not None else by_cpu.get(cpu_name(), True)


def inline_prefetch() -> bool:
    """Whether this host's inline GEMV windows prefetch their stream in software (above)."""
    return _host_choice(INLINE_PREFETCH, INLINE_PREFETCH_BY_CPU)


# Whether `lut` of a contiguous tile (ops_lut.py) reads the table by vector gathers, by LLVM's
# host CPU name (default yes). Zen 4's gathers are microcoded: there a scalar load per element
# ran the bitsandbytes NF4 user GEMV (a [32, 1] tile of 8-bit absmax codes looked up in a
# 256-entry code book every 64 codes of a row) 0.91x the time in cache, 0.96x streamed (M = 1,
# 2 threads, interleaved; session 16).
LUT_GATHERS_BY_CPU: dict[str, bool] = {"znver4": False}
LUT_GATHERS: bool | None = None  # overrides the host's (experiments)


def lut_gathers() -> bool:
    """Whether this host's tile lookups are vector gathers (above)."""
    return _host_choice(LUT_GATHERS, LUT_GATHERS_BY_CPU)
