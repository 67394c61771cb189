"""`lowbitc.compile`: .lbk source -> parse -> lower (with compile-time params) -> passes ->
backend. The result is a `Kernel` callable on numpy arrays.

Compiled kernels persist in the compile cache (`lowbitc.cache`, `LOWBITC_NO_CACHE=1` turns it
off). The key covers the source text and every file it imports, the parameters (code-book
formats by their values), the backend and target, the toolchain and lowbitc's codegen hash.
An entry holds what the backend's `save` returns to rebuild its executable from object code
(for the LLVM backend: the object code and the kernel's `lowbitc.abi.ABI`) and the tile IR
before and after the passes as printed text, parsed only when `Kernel.ir`/`.lowered` is first
read. So a cache hit imports neither the DSL front end, the passes nor the IR's op table and
parser, and runs no pass and no LLVM optimisation (benchmarks/bench_compile.py times it).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lowbitc.backends import get_backend
from lowbitc.cache import CacheKey, CacheWarning, default_cache
from lowbitc.errors import DSLNameError, LowbitcError, UserArgumentError
from lowbitc.formats import register as register_format
from lowbitc.repack import PackedWords, Packing
from lowbitc.repack_mma import MmaPacking

if TYPE_CHECKING:
    from lowbitc.dsl import ast as A
    from lowbitc.ir.core import Kernel as IRKernel

ARTIFACT_VERSION = 2
# `import "path"` anywhere in the text (comments too: a superset only widens the key)
_IMPORT = re.compile(r'\bimport\s*"([^"\\\n]*)"')


def load(source_or_path: str | Path) -> tuple[A.Module, str]:
    """Parse a .lbk file (a path) or source text; returns the module and its source text."""
    # the front end (Lark) loads on first use: a cache hit never needs it
    from lowbitc.dsl.modules import load_module, load_source

    if _is_path(source_or_path):
        path = Path(source_or_path)
        return load_module(path), path.read_text(encoding="utf-8")
    if not isinstance(source_or_path, str):
        raise UserArgumentError(
            f"source_or_path: expected .lbk source text or a path, got "
            f"{type(source_or_path).__name__}")
    return load_source(source_or_path), source_or_path


def pick_kernel(module: A.Module, name: str | None) -> A.Kernel:
    if not module.kernels:
        raise DSLNameError("the source defines no kernel", module.loc)
    if name is None:
        return module.kernels[-1] if len(module.kernels) == 1 else _ambiguous(module)
    for k in module.kernels:
        if k.name == name:
            return k
    raise DSLNameError(f"no kernel named {name!r}; the source defines "
                       f"{', '.join(k.name for k in module.kernels)}", module.loc)


def _ambiguous(module: A.Module) -> A.Kernel:
    raise UserArgumentError(
        "kernel: the source defines several kernels ("
        + ", ".join(k.name for k in module.kernels) + "); pass kernel=NAME")


class Kernel:
    """A compiled kernel. Call it with numpy arrays (outputs are written in place).

    `ir` is the tile IR after lowering from the DSL, `lowered` after the backend's pipeline;
    a kernel from the compile cache holds their printed text and parses it on first access.
    """

    def __init__(self, name: str, backend: str, ir: IRKernel | str, lowered: IRKernel | str,
                 source: str, params: dict[str, object], exe: object):
        self.name = name
        self.backend = backend
        self._ir = ir
        self._lowered = lowered
        self.source = source
        self.params = params
        self._exe = exe

    @property
    def ir(self) -> IRKernel:
        if isinstance(self._ir, str):
            self._ir = _parse_ir(self._ir)
        return self._ir

    @property
    def lowered(self) -> IRKernel:
        if isinstance(self._lowered, str):
            self._lowered = _parse_ir(self._lowered)
        return self._lowered

    def __repr__(self) -> str:
        return f"Kernel(name={self.name!r}, backend={self.backend!r}, params={self.params!r})"

    def __call__(self, *args, **kwargs) -> None:
        self._exe(*args, **kwargs)

    def bind(self, *args, free: tuple[str, ...] = (), **kwargs) -> Callable[..., None]:
        """This call with its arguments checked once: the result takes new arrays for the
        parameters named in `free` (in that order; same dtypes and shapes) and launches with
        everything else as bound, skipping the per-call checks and packing on the LLVM
        backend (other backends: an ordinary call with the arrays substituted)."""
        prepare = getattr(self._exe, "prepare", None)
        if prepare is not None:
            return prepare(args, kwargs, tuple(free))
        names = [p.name for p in self.ir.params]
        unknown = [n for n in free if n not in names]
        if unknown:
            raise UserArgumentError(f"free: kernel {self.name} has no parameter {unknown[0]!r}")
        slots = [names.index(n) for n in free]

        def launch(*arrays) -> None:
            a = list(args)
            for i, v in zip(slots, arrays, strict=True):
                a[i] = v
            self(*a, **kwargs)
        return launch

    @cached_property
    def packings(self) -> dict[str, Packing]:
        """{param name: packing} of the params this kernel reads in a layout-specific packing
        (chosen by the bitpack-lanes pass, docs/packing.md). Such a param takes canonical
        words (transformed on the first call with that array, then reused while a digest of
        its contents is unchanged) or `PackedWords` in that packing (`prepare`)."""
        abi = getattr(self._exe, "abi", None)
        return abi.packings() if abi is not None else {}

    def prepare(self, name: str, words: np.ndarray, count: int | None = None) -> object:
        """The argument to pass for param `name` given its canonical words: `PackedWords` in
        the kernel's packing for a param in `packings` (transformed now, once: calls with it
        check nothing and transform nothing), else `words` unchanged. `count`: codes per row
        (default: every code the last axis holds)."""
        packing = self.packings.get(name)
        if packing is None:
            if name not in {p.name for p in self.ir.params}:
                raise UserArgumentError(f"name: kernel {self.name} has no parameter {name!r}")
            return words
        if not isinstance(words, np.ndarray) or words.dtype != np.uint32 or words.ndim < 1:
            raise UserArgumentError(
                f"words: expected the canonical uint32 words of {name!r}, got "
                f"{getattr(words, 'dtype', type(words).__name__)}")
        most = words.shape[-1] * 32 // packing.bits
        count = most if count is None else count
        if not isinstance(count, int) or -(-count * packing.bits // 32) != words.shape[-1]:
            raise UserArgumentError(
                f"count: expected the number of {packing.bits}-bit codes per row that "
                f"{words.shape[-1]} uint32 words hold (at most {most}), got {count!r}")
        canon = np.ascontiguousarray(words).reshape(-1, words.shape[-1])
        packed = packing.from_canonical(canon, count)
        return PackedWords(packed.reshape(*words.shape[:-1], packed.shape[-1]), packing, count)

    def interpret(self, *args, **kwargs) -> None:
        """Run the numpy reference interpreter on the same arguments (the semantics)."""
        from lowbitc.interp import run  # the interpreter loads on first use

        # it reads canonical words: PackedWords of a param the kernel reads in their packing are
        # transformed back; any other PackedWords is an argument error, as for the native code
        packed = self.packings
        names = [p.name for p in self.ir.params] + [""] * max(0, len(args) - len(self.ir.params))
        codes = {p.name: np.int8 if p.type.dtype == "i8" else np.uint8  # u8/i8: bytes
                 for p in self.ir.params
                 if getattr(p.type, "shape", None) is not None and p.type.dtype in ("u8", "i8")}
        args = tuple(_canonical(a, packed.get(n), codes.get(n)) for n, a in zip(names, args))
        run(self.ir, *args,
            **{n: _canonical(a, packed.get(n), codes.get(n)) for n, a in kwargs.items()})

    def explain(self) -> str:
        """Per packed parameter the packing chosen, and per `dot`, `load` and `store` the path
        the backend took, each fallback with its reason and source position (the passes and
        the backend are run again, recording their decisions: lowbitc.explain)."""
        from lowbitc.explain import recording, report
        from lowbitc.passes import run_pipeline

        be = get_backend(self.backend)
        with recording() as notes:
            be.emit(run_pipeline(self.ir, be.pipeline))
        return report(self.name, self.backend, notes)

    def text(self, stage: str = "ir") -> str:
        """`ir` (tile IR), `lowered` (after passes) or the backend's own text (`llvm`, `ptx`)."""
        if stage in ("ir", "lowered"):
            from lowbitc.ir.printer import print_kernel

            return print_kernel(self.ir if stage == "ir" else self.lowered)
        return self._exe.text(stage)


def _parse_ir(text: str) -> IRKernel:
    # the IR's parser (and op table) load on first use: a cache hit that is only called never
    # needs them
    from lowbitc.ir.parser import parse

    return parse(text, "<cached ir>")


def _canonical(a: object, packing: Packing | None, codes=None) -> object:
    """`a` as the interpreter reads it: canonical words, or for a u8/i8 param its codes
    (`codes`: their numpy dtype)."""
    if isinstance(a, PackedWords) and packing is not None and a.packing == packing:
        if codes is not None:
            return a.packing.to_codes(a.words, a.count, a.rows).view(codes)
        if isinstance(a.packing, MmaPacking):  # its words pad the rows to tiles
            return a.packing.to_canonical(a.words, a.count, a.rows)
        return a.packing.to_canonical(a.words, a.count)
    return a


def compile(source_or_path: str | Path, backend: str = "llvm", kernel: str | None = None,
            **params) -> Kernel:
    """Compile a .lbk kernel for `backend` with compile-time `params` (defaults fill the rest).

    Served from the persistent compile cache when an identical compile was done before (in any
    process); concurrent processes missing the same key build it once.
    """
    be = get_backend(backend)
    cache = default_cache() if hasattr(be, "save") and hasattr(be, "load") else None
    src = _read(source_or_path) if cache is not None else None
    key = _key(src, backend, kernel, params) if src is not None else None
    if key is None:
        return _build(source_or_path, be, backend, kernel, params)
    built: list[Kernel] = []

    def build() -> bytes:
        built.append(_build(source_or_path, be, backend, kernel, params))
        return _artifact(built[0], be)

    data = cache.get_or_build(key, build, kind="kernel")
    if built:
        return built[0]
    k = _from_artifact(data, be, backend, src.text, params)
    if k is None:  # unusable entry (it passed its checksum, so written by other code): replace
        warnings.warn(f"lowbitc cache {cache.path}: the cached {backend} kernel {key.digest[:16]} "
                      "could not be loaded; rebuilding it", CacheWarning, stacklevel=2)
        k = _build(source_or_path, be, backend, kernel, params)
        cache.put(key, _artifact(k, be), kind="kernel")
    return k


def _build(source_or_path: str | Path, be, backend: str, kernel: str | None,
           params: dict) -> Kernel:
    """The uncached compile: parse, lower, run the backend's pipeline, compile."""
    from lowbitc.dsl.lower import lower_kernel  # front end and passes load on first use
    from lowbitc.passes import run_pipeline

    module, source = load(source_or_path)
    ast_kernel = pick_kernel(module, kernel)
    ir = lower_kernel(module, ast_kernel, params)
    lowered = run_pipeline(ir, be.pipeline)
    exe = be.compile(lowered)
    return Kernel(ir.name, backend, ir, lowered, source, dict(params), exe)


# ---- the compile cache -----------------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    text: str
    filename: str
    base: Path  # imports resolve against it


def _is_path(source_or_path: object) -> bool:
    return isinstance(source_or_path, Path) or (
        isinstance(source_or_path, str) and source_or_path.endswith(".lbk")
        and "\n" not in source_or_path
    )


def _read(source_or_path: object) -> _Source | None:
    """The text `load` would parse, or None where only `load` can say what is wrong."""
    if not _is_path(source_or_path):
        if not isinstance(source_or_path, str):
            return None
        return _Source(source_or_path, "<string>", Path.cwd())
    path = Path(source_or_path)
    try:
        data = path.read_bytes()
        text = data.removeprefix(b"\xef\xbb\xbf").decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    return _Source(text, os.path.realpath(path), path.parent)


def merged_source(text: str, base: Path) -> str:
    """`text` followed by the path and sha256 of every file it imports, transitively: what a
    compile of `text` depends on (an import that cannot be read is named as missing)."""
    parts, seen = [text], set()
    pending = [(text, base)]
    while pending:
        body, where = pending.pop()
        for rel in _IMPORT.findall(body):
            path = Path(os.path.realpath(where / rel))
            if path in seen:
                continue
            seen.add(path)
            try:
                data = path.read_bytes()
            except OSError:
                parts.append(f"\n#import {path} missing")
                continue
            parts.append(f"\n#import {path} sha256:{hashlib.sha256(data).hexdigest()}")
            pending.append((data.decode("utf-8", "replace"), path.parent))
    return "".join(parts)


def _key(src: _Source, backend: str, kernel: str | None, params: dict) -> CacheKey | None:
    """The compile cache key, or None when params are not plain data (then no caching)."""
    try:
        return CacheKey.make(merged_source(src.text, src.base),
                             {"file": src.filename, "kernel": kernel, "params": params},
                             backend=backend)
    except UserArgumentError:
        return None


def _artifact(k: Kernel, be) -> bytes:
    """One JSON header line (name, both IR texts, the backend's data), then its blob."""
    from lowbitc.ir.printer import print_kernel

    meta, blob = be.save(k._exe)
    head = {"version": ARTIFACT_VERSION, "name": k.name, "ir": print_kernel(k.ir),
            "lowered": print_kernel(k.lowered), "backend": meta}
    return json.dumps(head, separators=(",", ":")).encode() + b"\n" + bytes(blob)


def _from_artifact(data: bytes, be, backend: str, source: str, params: dict) -> Kernel | None:
    """The Kernel an artifact describes, or None if it is not one this code wrote."""
    line, _, blob = data.partition(b"\n")
    try:
        head = json.loads(line)
        if not isinstance(head, dict) or head.get("version") != ARTIFACT_VERSION:
            return None
        for value in params.values():  # the IR names code books; lowering registered them
            if getattr(value, "kind", None) == "codebook":
                register_format(value)
        k = Kernel(str(head["name"]), backend, str(head["ir"]), str(head["lowered"]), source,
                   dict(params), None)
        k._exe = be.load(head["backend"], blob, lambda: k.lowered)
    except (ValueError, KeyError, TypeError, LowbitcError):
        return None
    return k
