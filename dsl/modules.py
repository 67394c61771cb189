"""Follow `import "file.lbk"` statements and merge a file with everything it imports.

Imports are relative to the importing file. Each file is loaded once however often it is
imported; a cycle, a missing file or a name defined twice (funcs and kernels share one
namespace) is a DSLNameError located at the import statement or at the second definition.
"""

from __future__ import annotations

import os
from pathlib import Path

from lowbitc.dsl import ast
from lowbitc.dsl.parser import decode_source, parse
from lowbitc.errors import DSLNameError, SourceLoc, UserArgumentError


class _Loader:
    """Depth-first import resolution; definitions come out imported-first."""

    def __init__(self) -> None:
        self.done: set[Path] = set()
        self.active: list[Path] = []
        self.funcs: list[ast.Func] = []
        self.kernels: list[ast.Kernel] = []
        self.defined: dict[str, SourceLoc] = {}

    def add_source(self, source: str, filename: str, key: Path | None, base: Path) -> None:
        module = parse(source, filename)
        if key is not None:
            self.active.append(key)
        for imp in module.imports:
            self.add_import(imp, base)
        if key is not None:
            self.active.pop()
            self.done.add(key)
        for item in (*module.funcs, *module.kernels):
            self._define(item.name, item.loc)
        self.funcs.extend(module.funcs)
        self.kernels.extend(module.kernels)

    def add_import(self, imp: ast.Import, base: Path) -> None:
        path = base / imp.path
        key = _identity(path)
        if key in self.active:
            chain = " -> ".join(_short(p) for p in (*self.active[self.active.index(key):], key))
            raise DSLNameError(f"import cycle: {chain}", imp.loc)
        if key in self.done:
            return
        try:
            data = path.read_bytes()
        except OSError as e:
            reason = e.strerror or type(e).__name__
            raise DSLNameError(f"cannot import {imp.path!r}: {reason} ({path})", imp.loc) from None
        self.add_source(decode_source(data, str(path)), str(path), key, path.parent)

    def _define(self, name: str, loc: SourceLoc) -> None:
        first = self.defined.get(name)
        if first is not None:
            raise DSLNameError(f"'{name}' is already defined at {first}", loc)
        self.defined[name] = loc

    def module(self, loc: SourceLoc) -> ast.Module:
        return ast.Module((), tuple(self.funcs), tuple(self.kernels), loc=loc)


def _identity(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _short(path: Path) -> str:
    return path.name


def load_module(path: str | Path) -> ast.Module:
    """Parse the .lbk file at path and every file it imports, merged into one Module.

    The result has no imports; funcs and kernels of imported files come first, each keeping
    the loc (file, line) of its own definition.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserArgumentError(f"path: cannot read {str(path)!r}: {e.strerror}") from None
    loader = _Loader()
    loader.add_source(decode_source(data, str(path)), str(path), _identity(path), path.parent)
    return loader.module(SourceLoc(str(path), 1, 1, ""))


def load_source(source: str, filename: str = "<string>",
                base_dir: str | Path | None = None) -> ast.Module:
    """Like load_module for source text; imports resolve against base_dir (default: cwd)."""
    loader = _Loader()
    loader.add_source(source, filename, None, Path(base_dir) if base_dir is not None
                      else Path.cwd())
    return loader.module(SourceLoc(filename, 1, 1, ""))
