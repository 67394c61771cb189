"""Cache keys: everything that can change a compiled artifact, hashed into one digest.

A key covers the kernel source, its compile-time parameters (canonical JSON), the backend, the
target (CPU name + features, or GPU arch), the toolchain versions and `codegen_hash()`, a hash
of lowbitc's own compiler sources, so upgrading lowbitc or its toolchain never serves stale code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import importlib.util
import json
import math
import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lowbitc.cache.host import llvm_host
from lowbitc.errors import UserArgumentError

# packages whose source files make up "the compiler" for codegen_hash()
CODEGEN_PACKAGES = ("lowbitc", "lowbitc.dsl", "lowbitc.backends")
CODEGEN_SUFFIXES = (".py", ".lark", ".lbk")
# distributions whose versions can change generated code, with their import names
TOOLCHAIN_DISTRIBUTIONS = {
    "llvmlite": "llvmlite", "numba": "numba", "numba-cuda": "numba_cuda", "numpy": "numpy"
}  # fmt: skip


def _type_name(value: Any) -> str:
    return f"{type(value).__module__}.{type(value).__qualname__}"


def canonical(value: Any, what: str = "value") -> Any:
    """`value` as plain JSON data with a single spelling, or UserArgumentError naming `what`.

    Dicts are sorted by key, tuples become lists, numpy scalars their Python value, arrays a
    digest of their bytes, dataclasses a tagged dict of their fields; an object may define
    `__lowbitc_cache_key__()` returning JSON-able data that identifies it.
    """
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            return {"float": repr(value)}
        return value
    if isinstance(value, np.generic):
        return canonical(value.item(), what)
    if isinstance(value, np.ndarray):
        data = np.ascontiguousarray(value)
        digest = hashlib.sha256(data.tobytes()).hexdigest()
        return {"ndarray": [str(data.dtype), list(data.shape), digest]}
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise UserArgumentError(f"{what}: expected string keys, got {list(value)!r}")
        return {k: canonical(value[k], f"{what}[{k!r}]") for k in sorted(value)}
    if isinstance(value, (list, tuple)):
        return [canonical(v, f"{what}[{i}]") for i, v in enumerate(value)]
    hook = getattr(value, "__lowbitc_cache_key__", None)
    if callable(hook):
        return {_type_name(value): canonical(hook(), what)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return {_type_name(value): canonical(fields, what)}
    raise UserArgumentError(
        f"{what}: expected JSON data, a numpy value, a dataclass or an object with "
        f"__lowbitc_cache_key__(), got {type(value).__name__} {value!r}"
    )


def canonical_json(value: Any, what: str = "value") -> str:
    """The canonical JSON text of `value` (sorted keys, no spaces)."""
    return json.dumps(canonical(value, what), sort_keys=True, separators=(",", ":"))


def _package_dirs() -> list[str]:
    dirs = []
    for name in CODEGEN_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            dirs.extend(os.path.realpath(p) for p in spec.submodule_search_locations)
    return dirs


def _walk(root: str, rel: str, out: dict[str, str]) -> None:
    with os.scandir(root) as entries:
        for e in entries:
            name = f"{rel}/{e.name}"
            if e.is_dir(follow_symlinks=False):
                if e.name != "__pycache__":
                    _walk(e.path, name, out)
            elif e.name.endswith(CODEGEN_SUFFIXES) and e.is_file():
                # `root` is a real path, so only a symlinked file needs resolving (realpath on
                # every file was most of this walk's time)
                path = os.path.realpath(e.path) if e.is_symlink() else e.path
                out.setdefault(path, name)


def _codegen_sources() -> dict[str, str]:
    """Real path -> stable name ("<package dir>/<relative path>") of each compiler source."""
    out: dict[str, str] = {}
    for root in _package_dirs():
        _walk(root, os.path.basename(root), out)
    return out


def codegen_files() -> list[Path]:
    """Every compiler source file that codegen_hash() covers, sorted and without duplicates."""
    return sorted(Path(p) for p in _codegen_sources())


@functools.lru_cache(maxsize=1)
def codegen_hash() -> str:
    """sha256 over lowbitc's compiler source files (computed once per process)."""
    digest = hashlib.sha256()
    for path, name in sorted(_codegen_sources().items(), key=lambda item: item[1]):
        with open(path, "rb") as f:
            digest.update(name.encode() + b"\0" + f.read() + b"\0")
    return digest.hexdigest()


@functools.lru_cache(maxsize=8)
def _listing(site: str) -> tuple[str, ...]:
    """The names in a site-packages directory (listed once per process: several
    distributions live in one)."""
    return tuple(os.listdir(site))


def _dist_version(dist: str, module: str) -> str:
    """The installed version of `dist`, read from its dist-info directory name next to the
    package (a directory listing, not a metadata parse); importlib.metadata as the fallback."""
    spec = importlib.util.find_spec(module)
    if spec is None:
        return "absent"
    if spec.origin and spec.submodule_search_locations:
        site = os.path.dirname(os.path.dirname(spec.origin))
        prefix = dist.replace("-", "_").lower() + "-"
        with contextlib.suppress(OSError):
            found = [
                name[len(prefix) : -len(".dist-info")]
                for name in _listing(site)
                if name.lower().startswith(prefix) and name.endswith(".dist-info")
            ]
            if len(found) == 1:
                return found[0]
    from importlib import metadata  # ~13 ms to import: only for layouts the listing misses

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"


@functools.lru_cache(maxsize=1)
def toolchain_versions() -> tuple[tuple[str, str], ...]:
    """(name, version) of Python, LLVM and each code-generating distribution ("absent" if
    not installed)."""
    versions = [("python", platform.python_version())]
    versions.append(("llvm", llvm_host().llvm))
    versions.extend((d, _dist_version(d, m)) for d, m in TOOLCHAIN_DISTRIBUTIONS.items())
    return tuple(versions)


@functools.lru_cache(maxsize=1)
def host_target() -> str:
    """The host CPU as a target string: LLVM CPU name and its feature list (from the record
    `cache.host` keeps per host fingerprint, so a cache hit does not import llvmlite)."""
    host = llvm_host()
    return f"{host.cpu}:{host.features}"


@dataclass(frozen=True, slots=True)
class CacheKey:
    """What a cached entry depends on; `digest` names it in the store.

    Build one with `CacheKey.make(...)`, which fills in the toolchain and codegen hash.
    `purpose` separates artifacts ("artifact") from records derived from them ("tuning").
    """

    source: str
    params: str  # canonical JSON
    backend: str
    target: str
    toolchain: tuple[tuple[str, str], ...]
    codegen: str
    purpose: str = "artifact"

    @classmethod
    def make(
        cls,
        source: str,
        params: Mapping[str, Any] | None = None,
        *,
        backend: str,
        target: str | None = None,
    ) -> CacheKey:
        """A key for `source` compiled with `params` by `backend` for `target` (default: host)."""
        if not isinstance(source, str):
            raise UserArgumentError(f"source: expected kernel source text, got {type(source)}")
        if not isinstance(backend, str) or not backend:
            raise UserArgumentError(f"backend: expected a backend name, got {backend!r}")
        return cls(
            source=source,
            params=canonical_json(dict(params or {}), "params"),
            backend=backend,
            target=host_target() if target is None else str(target),
            toolchain=toolchain_versions(),
            codegen=codegen_hash(),
        )

    def derive(self, purpose: str, **extra: Any) -> CacheKey:
        """A key for a record about this one (e.g. purpose="tuning", bucket=...)."""
        params = json.loads(self.params)
        clash = sorted(set(params) & set(extra))
        if clash:
            raise UserArgumentError(f"derive: extra names {clash} already are parameters")
        params.update(extra)
        return dataclasses.replace(
            self, params=canonical_json(params, "extra"), purpose=str(purpose)
        )

    @property
    def digest(self) -> str:
        """sha256 hex digest over every part of the key."""
        parts = dataclasses.astuple(self)
        return hashlib.sha256(json.dumps(parts, separators=(",", ":")).encode()).hexdigest()

    def describe(self) -> dict[str, str]:
        """A short, human-readable summary stored next to the entry (for `cache info`)."""
        first = next((ln.strip() for ln in self.source.splitlines() if ln.strip()), "")
        return {"backend": self.backend, "purpose": self.purpose, "source": first[:80]}
