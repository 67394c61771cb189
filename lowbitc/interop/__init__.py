"""Quantized checkpoints other tools write, as lowbitc tensors (one module per source format).

`read(path_or_state_dict, format=None)` -> {name: Imported}; `write(path, tensors, format)`
writes them back byte for byte; `inspect(path)` lists what a file holds without decoding it.
Formats register a `Codec` (sniff, read, write, inspect) in `CODECS`; see docs/interop.md.
"""

from __future__ import annotations

import os

from lowbitc.errors import UserArgumentError

# the codecs register themselves on import, in sniffing order
from lowbitc.interop import awq, bnb, compressed, gguffile, gptq, hqq  # noqa: F401
from lowbitc.interop.base import CODECS, Codec, Imported, register, row

__all__ = ["CODECS", "Codec", "Imported", "inspect", "read", "register", "row", "write"]


def _codec(source, format: str | None) -> Codec:
    if format is not None:
        if format not in CODECS:
            raise UserArgumentError(f"format: expected one of {sorted(CODECS)}, got {format!r}")
        return CODECS[format]
    for c in CODECS.values():
        if c.sniff(source):
            return c
    what = source if isinstance(source, str) else type(source).__name__
    raise UserArgumentError(f"source: {what} is none of the formats lowbitc reads "
                            f"({', '.join(sorted(CODECS))})")


def read(source, format: str | None = None) -> dict[str, Imported]:
    """Every tensor of a file path or state dict (format sniffed when None)."""
    return _codec(source, format).read(source)


def write(path: str, tensors: dict[str, Imported], format: str) -> None:
    c = _codec(None, format)
    if c.write is None:
        raise UserArgumentError(f"format: lowbitc does not write {format!r} files")
    c.write(str(path), tensors)


def inspect(path: str, format: str | None = None) -> list[dict]:
    """Rows (name, shape, format, group, bytes, bits per weight); GGUF without decoding."""
    if not os.path.isfile(path):
        raise UserArgumentError(f"file: {path} does not exist")
    c = _codec(str(path), format)
    if c.inspect is None:
        return [row(t) for name, t in c.read(str(path)).items() if not name.startswith("__")]
    return c.inspect(str(path))
