"""What one benchmark run measures: shapes, rounds, threads, rows."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from lowbitc.errors import UserArgumentError
from lowbitc.memory import copies_for

from .cases import ROWS, RowSpec

__all__ = ["Config", "quick_config"]


@dataclass(frozen=True)
class Config:
    """Shapes and effort of one run; the defaults are issue 5's (K = N = 4096, group 128)."""

    size: int = 4096  # K = N
    small: int = 256  # K = N of the per-call overhead row
    group_size: int = 128
    rounds: int = 40
    # every sample loops one candidate's calls for at least this long (rotating through its
    # weight copies): a burst, as a model's layers call one engine in turn. Single calls right
    # after another library's measure its thread pool handing over the CPU, not the kernel
    burst_ms: float = 5.0
    threads: int = 0  # 0: every usable CPU
    copy_mib: int = 128  # bytes copied by the copy-bandwidth baseline (src size)
    read_mib: int = 512  # bytes the read-bandwidth baseline streams (issue 14: >= 512 MiB)
    # GEMV/GEMM weights (lowbitc's and every baseline's) rotate through distinct copies that
    # total this many times the last-level cache (0: one weight, which may stay in cache)
    stream: float = 4.0
    max_copies: int = 64  # at most this many copies of one weight (small quick-run weights)
    incache_sizes: tuple[int, int] = (2048, 512)  # K = N of the in-cache (L2/L3) GEMVs
    quick: bool = False
    rows: tuple[RowSpec, ...] = ROWS
    wait_load: float = 0.0  # > 0: first wait (up to wait_seconds) for a 1-min load this low
    wait_seconds: float = 600.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("size", "small", "group_size", "rounds", "copy_mib", "read_mib"):
            if getattr(self, name) < 1:
                raise UserArgumentError(f"{name}: expected a positive integer, "
                                        f"got {getattr(self, name)}")
        big, small = self.incache_sizes
        if not 1 <= small < big:
            raise UserArgumentError(f"incache_sizes: expected (big, small) with big > small "
                                    f">= 1, got {self.incache_sizes}")
        if not 0 <= self.burst_ms <= 1000:
            raise UserArgumentError(f"burst_ms: expected milliseconds in [0, 1000], "
                                    f"got {self.burst_ms}")
        if self.stream < 0 or self.max_copies < 1:
            raise UserArgumentError(f"stream, max_copies: expected >= 0 and >= 1, got "
                                    f"{self.stream}, {self.max_copies}")
        if self.threads < 0:
            raise UserArgumentError(f"threads: expected >= 1 (or 0 for all CPUs), "
                                    f"got {self.threads}")

    def copies(self, weight_bytes: float) -> int:
        """How many distinct copies of a weight the timed calls rotate through."""
        if self.stream == 0:
            return 1
        return min(self.max_copies, copies_for(weight_bytes, self.stream))

    def to_json(self) -> dict:
        out = asdict(self)
        out["rows"] = [r.name for r in self.rows]
        return out


def quick_config(**overrides) -> Config:
    """Small shapes and few rounds: a smoke run of every row in well under a minute."""
    base = {"size": 512, "rounds": 5, "copy_mib": 16, "read_mib": 32, "incache_sizes": (256, 128),
            "quick": True}
    return Config(**{**base, **overrides})
