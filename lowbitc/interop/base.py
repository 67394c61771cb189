"""What every interop codec shares: the imported tensor record and the codec registry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from lowbitc.quant import QTensor


@dataclass(frozen=True, eq=False)
class Imported:
    """One tensor of a source file: `weight` is an exact lowbitc QTensor ([out, in]) or a
    float32 array; `raw` keeps the source's own arrays so writing back gives the same bytes."""

    name: str
    format: str  # e.g. "gguf:Q4_K", "gptq", "awq", "bnb:nf4"
    weight: QTensor | np.ndarray
    raw: dict = field(default_factory=dict)
    group: int | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.weight.shape)

    @property
    def nbytes(self) -> int:
        return sum(int(np.asarray(a).nbytes) for a in self.raw.values())

    def dequantize(self) -> np.ndarray:
        w = self.weight
        return w.dequantize() if isinstance(w, QTensor) else np.asarray(w, np.float32)


@dataclass(frozen=True)
class Codec:
    """A source format: `sniff(source) -> bool`, `read(source) -> {name: Imported}`,
    `write(path, {name: Imported})`, `inspect(path) -> [row dicts]` (None where absent)."""

    name: str
    sniff: Callable[[object], bool]
    read: Callable[[object], dict]
    write: Callable[[str, dict], None] | None = None
    inspect: Callable[[str], list] | None = None


CODECS: dict[str, Codec] = {}


def register(codec: Codec) -> Codec:
    CODECS[codec.name] = codec
    return codec


def row(t: Imported) -> dict:
    n = int(np.prod(t.shape))
    return {"name": t.name, "shape": t.shape, "format": t.format, "group": t.group,
            "bytes": t.nbytes, "bits": 8 * t.nbytes / n if n else 0.0}
