"""Shape buckets: a tuned configuration serves every shape in its bucket.

Batch-like dims (M) fall into 1 | 2-4 | 5-16 | 17-64 | 65-256 | >256, which separates GEMV
from small and large GEMM; other dims (N, K) round up to the next power of two.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from lowbitc.cache import CacheKey
from lowbitc.errors import UserArgumentError

M_BUCKETS = ((1, "1"), (4, "2-4"), (16, "5-16"), (64, "17-64"), (256, "65-256"))
M_LAST = ">256"


def m_bucket(m: int) -> str:
    """The batch bucket of `m` (1, 2-4, 5-16, 17-64, 65-256, >256)."""
    return next((name for top, name in M_BUCKETS if m <= top), M_LAST)


def pow2_bucket(n: int) -> int:
    """`n` rounded up to a power of two."""
    return 1 << (n - 1).bit_length()


@dataclass(frozen=True)
class ShapeBucket:
    """Named dims mapped to their bucket; `str()` is e.g. "M=2-4,N=4096,K=4096"."""

    dims: tuple[tuple[str, int | str], ...]

    def __str__(self) -> str:
        return ",".join(f"{name}={value}" for name, value in self.dims)

    def as_dict(self) -> dict[str, int | str]:
        return dict(self.dims)


def shape_bucket(shape: Mapping[str, int], batch_dims: Iterable[str] = ("M",)) -> ShapeBucket:
    """The bucket of `shape` (e.g. {"M": 3, "N": 4000, "K": 4096} -> M=2-4,N=4096,K=4096)."""
    batch = set(batch_dims)
    dims = []
    for name, value in shape.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserArgumentError(
                f"shape[{name!r}]: expected a positive integer size, got {value!r}"
            )
        dims.append((name, m_bucket(value) if name in batch else pow2_bucket(value)))
    return ShapeBucket(tuple(dims))


def tuning_key(kernel_key: CacheKey, bucket: ShapeBucket) -> CacheKey:
    """Where the tuned configuration of `kernel_key` for shapes in `bucket` is stored."""
    return kernel_key.derive("tuning", bucket=bucket.as_dict())
