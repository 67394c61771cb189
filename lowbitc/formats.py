"""Format lookup for the compiler: built-in names via `lowbitc.dtypes`, plus code books that
were passed to `compile`/`ops` as objects (registered under their name; a name can never be
re-bound to other values, so a kernel's printed IR always means one thing)."""

from __future__ import annotations

import threading

from lowbitc.dtypes import dtype as _builtin
from lowbitc.errors import UserArgumentError

_CODEBOOKS: dict[str, object] = {}
_LOCK = threading.Lock()


def register(fmt) -> str:
    """Make a code-book format findable by name; returns the name."""
    if getattr(fmt, "kind", None) != "codebook":
        return fmt.name
    with _LOCK:
        old = _CODEBOOKS.get(fmt.name)
        if old is not None and old != fmt:
            raise UserArgumentError(
                f"code book name {fmt.name!r} is already bound to other values; pick another name")
        _CODEBOOKS[fmt.name] = fmt
    return fmt.name


def lookup(name: str):
    """The format object for `name` (built-in or a registered code book)."""
    fmt = _CODEBOOKS.get(name)
    return fmt if fmt is not None else _builtin(name)
