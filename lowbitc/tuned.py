"""Where tuned configurations live: one record per (kernel source, fixed parameters, runtime
scalars, backend, target) and shape bucket, in the compile cache. `lowbitc.tune` writes them;
`lowbitc.ops` reads them through `tuned_config` (memoised for the life of the process)."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lowbitc.cache import CacheKey, default_cache, default_cache_dir
from lowbitc.compiler import merged_source
from lowbitc.errors import LowbitcError
from lowbitc.tuning import lookup, shape_bucket, tuning_key

_MEMO: dict[tuple, dict[str, Any] | None] = {}
GENERATION = 0  # bumped by forget(): memos built on tuned configs compare it
_LOCK = threading.Lock()


def kernel_key(text: str, base: Path, kernel: str | None, fixed: Mapping[str, Any],
               scalars: Mapping[str, Any], backend: str) -> CacheKey:
    """The key tuning records of a kernel hang off: its source and imports, the compile-time
    parameters that are not tuned, the runtime scalars (e.g. `group`) and the backend."""
    return CacheKey.make(merged_source(text, base),
                         {"kernel": kernel, "fixed": dict(fixed), "scalars": dict(scalars)},
                         backend=backend)


def record_key(key: CacheKey, shape: Mapping[str, int]) -> CacheKey:
    """The record for the shape bucket of `shape` (M buckets, other dims by powers of two)."""
    return tuning_key(key, shape_bucket(dict(shape)))


def tuned_config(path: str, kernel: str | None, fixed: Mapping[str, Any],
                 scalars: Mapping[str, Any], shape: Mapping[str, int],
                 backend: str) -> dict[str, Any] | None:
    """The stored winner for this kernel and `shape`'s bucket, or None (also with the cache
    off). Each distinct question reads the cache once per process."""
    memo = (str(default_cache_dir()), path, kernel, _frozen(fixed), _frozen(scalars),
            str(shape_bucket(dict(shape))), backend)
    if memo in _MEMO:
        return _MEMO[memo]
    cache = default_cache()
    config = None
    if cache is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
            key = kernel_key(text, Path(path).parent, kernel, fixed, scalars, backend)
            hit = lookup(cache, record_key(key, shape))
        except (OSError, LowbitcError):  # an unreadable cache never stops an op
            hit = None
        config = dict(hit[0]) if hit is not None else None
    with _LOCK:
        _MEMO[memo] = config
    return config


def forget() -> None:
    """Drop the memo (after `lowbitc.tune` stores a new winner in this process)."""
    global GENERATION
    with _LOCK:
        _MEMO.clear()
        GENERATION += 1


def _frozen(values: Mapping[str, Any]) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in values.items()))
