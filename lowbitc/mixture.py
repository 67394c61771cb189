"""Weights whose groups decode with different tables: a per-group choice among up to 4
same-width formats (BitMoD's mixture of data types), or one fitted code book per row
(SqueezeLLM). Both are a `TableQTensor`: codes, per-group scales (and zero points), a table
of every code's value per table, and per group the index of its table.

`quantize(w, ["u4", "nf4", "f4e2m1", "i4"], group_size)` quantizes the weight in every
member format (each with lowbitc.quant's search) and keeps, per group, the member whose
reconstruction has the least squared error (`group_errors`); ties go to the earlier member.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np

from lowbitc.dtypes import Format
from lowbitc.dtypes import dtype as get_dtype
from lowbitc.errors import UserArgumentError
from lowbitc.outliers import Sparse
from lowbitc.packing import pack
from lowbitc.repack import PackedWords, aligned_copy, cached_packing

MAX_MEMBERS = 4


@dataclass(frozen=True, eq=False)
class TableQTensor:
    """w_hat[n, k] = (tables[index[n, g], codes[n, k]] - zeros[n, g]) * scales[n, g] (+ the
    sparse outliers), g = k // group_size, in float32 in that order, as QTensor.dequantize."""

    tables: np.ndarray  # float32 [T, 2**bits]
    bits: int
    shape: tuple[int, int]
    group_size: int
    codes: np.ndarray  # uint8 [N, K]
    scales: np.ndarray  # float32 [N, G]
    index: np.ndarray  # int32 [N, G]: each group's table
    zeros: np.ndarray | None = None
    names: tuple[str, ...] = ()  # the member formats' names (empty for fitted row tables)
    sparse: Sparse | None = None

    def __post_init__(self) -> None:
        n, k = self.shape
        groups = (n, -(-k // self.group_size))
        if self.tables.ndim != 2 or self.tables.shape[1] != 1 << self.bits:
            raise UserArgumentError(f"tables: expected [T, {1 << self.bits}], got "
                                    f"{self.tables.shape}")
        if self.index.shape != groups or self.scales.shape != groups:
            raise UserArgumentError(f"index, scales: expected {groups}, got "
                                    f"{self.index.shape}, {self.scales.shape}")
        if self.index.size and (self.index.min() < 0 or self.index.max() >= len(self.tables)):
            raise UserArgumentError(f"index: expected tables 0..{len(self.tables) - 1}")

    @property
    def num_groups(self) -> int:
        return self.scales.shape[1]

    def dequantize(self) -> np.ndarray:
        n, k = self.shape
        g = self.group_size
        table = np.repeat(self.index, g, axis=1)[:, :k]
        v = self.tables[table, self.codes]
        if self.zeros is not None:
            v = v - np.repeat(self.zeros, g, axis=1)[:, :k]
        v = v * np.repeat(self.scales, g, axis=1)[:, :k]
        if self.sparse is not None:
            v[self.sparse.rows, self.sparse.indices] += self.sparse.values.astype(np.float32)
        return v

    @functools.cached_property
    def member_formats(self) -> tuple[Format, ...] | None:
        """The member formats when every table is a named format's values (what the compiled
        kernel, lowbitc/kernels/matmul_mix.lbk, decodes); None for fitted tables."""
        if not self.names or len(self.names) != len(self.tables):
            return None
        try:
            members = tuple(get_dtype(n) for n in self.names)
        except (UserArgumentError, KeyError, ValueError):
            return None
        same = all(f.bits == self.bits and np.array_equal(t, f.values())
                   for f, t in zip(members, self.tables))
        return members if same else None

    @functools.cached_property
    def group_major(self) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """scales, zeros (or None) float32 and table indices uint8, each transposed to
        group-major [G, N] as the kernel reads them (made once, cached, never saved)."""
        zeros = None if self.zeros is None else np.ascontiguousarray(self.zeros.T)
        return (np.ascontiguousarray(self.scales.T), zeros,
                np.ascontiguousarray(self.index.T).astype(np.uint8))

    @functools.cached_property
    def packed(self) -> np.ndarray:
        """Canonical packed codes, uint32 [N, ceil(K * bits / 32)] (lowbitc.packing)."""
        return pack(self.codes, self.bits)

    def packed_as(self, packing) -> PackedWords:
        """The codes in a kernel's packing (cached, as QTensor.packed_as)."""
        return cached_packing(self, self.codes, packing)

    def replica(self) -> TableQTensor:
        """The same weight in fresh memory for what the kernel reads (packed words, scales,
        zeros, indices and the packings made so far), as QTensor.replica."""
        def copy(a):
            return None if a is None else a.copy()

        twin = dataclasses.replace(self, scales=self.scales.copy(), zeros=copy(self.zeros),
                                   index=self.index.copy(), sparse=copy(self.sparse))
        for name in ("packed", "group_major"):
            if name in self.__dict__:
                v = self.__dict__[name]
                twin.__dict__[name] = tuple(map(copy, v)) if isinstance(v, tuple) else v.copy()
        twin.__dict__["_repacked"] = {
            p: PackedWords(aligned_copy(w.words), w.packing, w.count)
            for p, w in self.__dict__.get("_repacked", {}).items()}
        return twin

    def bits_per_weight(self, scale_bits: int = 32) -> float:
        """Storage per weight: codes, scales, zeros, table indices, tables and outliers."""
        n, k = self.shape
        index_bits = max(1, int(np.ceil(np.log2(len(self.tables))))) if len(self.tables) > 1 \
            else 0
        per_group = scale_bits * (2 if self.zeros is not None else 1) + index_bits
        total = self.bits * n * k + per_group * self.scales.size
        total += 0 if self.names else self.tables.size * 16  # fitted tables, stored as f16
        if self.sparse is not None:
            total += 8 * self.sparse.nbytes
        return total / max(n * k, 1)


def check_members(dtypes) -> tuple[Format, ...]:
    """The member formats of a mixture: 1..4 formats of the same width."""
    members = tuple(get_dtype(d) if not isinstance(d, Format) else d for d in dtypes)
    if not 1 <= len(members) <= MAX_MEMBERS:
        raise UserArgumentError(f"dtype: expected 1..{MAX_MEMBERS} formats in a mixture, got "
                                f"{len(members)}")
    widths = {f.name: f.bits for f in members}
    if len(set(widths.values())) > 1:
        raise UserArgumentError(f"dtype: expected formats of one width in a mixture, got "
                                f"{widths}")
    if members[0].bits > 8:
        raise UserArgumentError(f"dtype: expected 1-8-bit formats, got {members[0].name}")
    return members


def group_errors(w: np.ndarray, w_hat: np.ndarray, group_size: int) -> np.ndarray:
    """Squared error of each group [N, G] (float64): the mixture's choice criterion."""
    n, k = w.shape
    d = np.square(w.astype(np.float64) - w_hat.astype(np.float64))
    pad = -k % group_size
    if pad:
        d = np.pad(d, ((0, 0), (0, pad)))
    return d.reshape(n, -1, group_size).sum(axis=2)


def assemble(w: np.ndarray, members: tuple[Format, ...], parts: list) -> TableQTensor:
    """The mixture of `parts` (one QTensor per member, same group size): per group the part
    with the least squared error."""
    g = parts[0].group_size
    n, k = w.shape
    errs = np.stack([group_errors(w, p.dequantize(), g) for p in parts])
    index = errs.argmin(axis=0).astype(np.int32)
    per_weight = np.repeat(index, g, axis=1)[:, :k]
    codes = np.choose(per_weight, [p.codes for p in parts]).astype(np.uint8)
    scales = np.choose(index, [p.scales for p in parts]).astype(np.float32)
    zeros = None
    if any(p.zeros is not None for p in parts):
        zeros = np.choose(index, [p.zeros if p.zeros is not None else np.zeros_like(p.scales)
                                  for p in parts]).astype(np.float32)
    bits = members[0].bits
    tables = np.stack([np.nan_to_num(f.values(), nan=0.0) for f in members]).astype(np.float32)
    return TableQTensor(tables, bits, (n, k), g, codes, scales, index, zeros,
                        tuple(f.name for f in members))


def row_tables(w: np.ndarray, tables: np.ndarray, bits: int) -> TableQTensor:
    """Each row coded by its own table (SqueezeLLM): scale 1, one group per row, codes the
    nearest entry of the row's (sorted) table."""
    n, k = w.shape
    if tables.shape != (n, 1 << bits):
        raise UserArgumentError(f"tables: expected [{n}, {1 << bits}] (one per row), got "
                                f"{tables.shape}")
    mids = (tables[:, 1:] + tables[:, :-1]) / 2
    codes = np.empty((n, k), np.uint8)
    for r in range(n):
        codes[r] = np.searchsorted(mids[r], w[r])
    return TableQTensor(tables.astype(np.float32), bits, (n, k), max(k, 1), codes,
                        np.ones((n, 1), np.float32), np.arange(n, dtype=np.int32)[:, None])
