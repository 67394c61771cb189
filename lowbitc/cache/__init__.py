"""Persistent compile cache: artifacts (object code, PTX) and tuning records, keyed so that a
change to the source, parameters, target, toolchain or lowbitc's own codegen never hits."""

from lowbitc.cache.fsutil import default_cache_dir
from lowbitc.cache.key import (
    CacheKey,
    canonical_json,
    codegen_files,
    codegen_hash,
    host_target,
    toolchain_versions,
)
from lowbitc.cache.store import Cache, CacheWarning, default_cache
from lowbitc.errors import CacheError

__all__ = [
    "Cache",
    "CacheError",
    "CacheKey",
    "CacheWarning",
    "canonical_json",
    "codegen_files",
    "codegen_hash",
    "default_cache",
    "default_cache_dir",
    "host_target",
    "toolchain_versions",
]
