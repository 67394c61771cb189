"""Check and bind a compiled kernel's call arguments before any code runs.

Tensor parameters of a machine dtype take numpy arrays of that dtype and shape. Tensor
parameters of a lowbitc format take the canonical packing (DESIGN.md): uint32 words, the last
dim holding ceil(n * bits / 32) words. Symbolic dims are read off the arrays (or given by
keyword when only packed tensors mention them) and must agree everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from lowbitc.errors import UserArgumentError
from lowbitc.formats import lookup as format_of
from lowbitc.ir.types import ScalarType, TensorType, is_float, is_machine, numpy_dtype
from lowbitc.repack import PACKINGS, PackedWords, Packing

if TYPE_CHECKING:  # `k` below is an IR kernel or a lowbitc.abi.ABI (same name/params/dims)
    from lowbitc.ir.core import Kernel, Value


def storage_dtype(dtype: str) -> np.dtype:
    """The numpy dtype a tensor of `dtype` is passed as (uint32 words for packed formats)."""
    return numpy_dtype(dtype) if is_machine(dtype) else np.dtype(np.uint32)


def format_bits(dtype: str) -> int:
    return format_of(dtype).bits


def words_for(n: int, bits: int) -> int:
    return (n * bits + 31) // 32


@dataclass(frozen=True)
class Bound:
    """Arguments checked against a kernel: arrays/scalars by param name, dim values by name."""

    values: dict[str, object]
    dims: dict[str, int]

    def ordered(self, k: Kernel) -> list[object]:
        return [self.values[p.name] for p in k.params] + [self.dims[d.name] for d in k.dims]


def _bind_dim(dims: dict[str, int], name: str, value: int, where: str) -> None:
    if name in dims and dims[name] != value:
        raise UserArgumentError(
            f"dim {name} is {dims[name]} elsewhere but {value} from {where}"
        )
    dims[name] = value


def _check_tensor(p: Value, a: object, dims: dict[str, int], deferred: list) -> None:
    t = p.type
    assert isinstance(t, TensorType)
    if not isinstance(a, np.ndarray):
        raise UserArgumentError(
            f"argument {p.name!r}: expected a numpy array for {t}, got {type(a).__name__}"
        )
    want = storage_dtype(t.dtype)
    if a.dtype != want:
        raise UserArgumentError(
            f"argument {p.name!r}: expected dtype {want} for {t}, got {a.dtype}"
            + ("" if is_machine(t.dtype) else " (packed formats are passed as uint32 words)")
        )
    if a.ndim != len(t.shape):
        raise UserArgumentError(
            f"argument {p.name!r}: expected {len(t.shape)} dims for {t}, got shape {a.shape}"
        )
    if not a.flags.c_contiguous:
        raise UserArgumentError(f"argument {p.name!r}: array must be C-contiguous")
    for i, (d, n) in enumerate(zip(t.shape, a.shape)):
        packed_last = not is_machine(t.dtype) and i == len(t.shape) - 1
        if packed_last:
            deferred.append((p, d, n))
        elif isinstance(d, int):
            if d != n:
                raise UserArgumentError(f"argument {p.name!r}: dim {i} must be {d}, got {n}")
        else:
            _bind_dim(dims, d, n, f"argument {p.name!r} dim {i}")


Repack = Callable[[Packing, np.ndarray, int], np.ndarray]


def transform(packing: Packing, words: np.ndarray, count: int) -> np.ndarray:
    """Canonical words -> `packing`, with no cache (the default `repack` of `bind`)."""
    return packing.from_canonical(words, count)


def bind(k: Kernel, args: tuple, kwargs: dict,
         packings: dict[str, Packing] | None = None, repack: Repack = transform) -> Bound:
    """Match positional/keyword arguments to the kernel's params; infer and check dims.
    A param read in a layout-specific packing (`packings`, by name) takes the canonical words
    (given to `repack`, by default transformed on every call; a backend passes
    `WordsCache.get`) or a `PackedWords` already in that packing."""
    packings = packings or {}
    names = [p.name for p in k.params]
    if len(args) > len(names):
        raise UserArgumentError(f"kernel {k.name} takes {len(names)} arguments, got {len(args)}")
    values = dict(zip(names, args))
    dims: dict[str, int] = {}
    dim_names = {d.name for d in k.dims}
    for key, v in kwargs.items():
        if key in values:
            raise UserArgumentError(f"kernel {k.name}: argument {key!r} given twice")
        if key in names:
            values[key] = v
        elif key in dim_names:
            _bind_dim(dims, key, int(v), "keyword")
        else:
            raise UserArgumentError(f"kernel {k.name} has no parameter or dim {key!r}")
    missing = [n for n in names if n not in values]
    if missing:
        raise UserArgumentError(f"kernel {k.name}: missing arguments {missing}")
    deferred: list = []
    repacked: dict[str, int] = {}  # params given as PackedWords: their code count per row
    for p in k.params:
        a = values[p.name]
        if isinstance(a, PackedWords):
            if a.packing != packings.get(p.name):
                raise UserArgumentError(
                    f"argument {p.name!r}: expected words in {_packing_name(packings.get(p.name))}"
                    f", got PackedWords in {_packing_name(a.packing)} (Kernel.packings names the "
                    "params read in a layout-specific packing; others take canonical words, "
                    "e.g. QTensor.packed)")
            repacked[p.name] = a.count
            a = values[p.name] = a.words
        if isinstance(p.type, TensorType):
            _check_tensor(p, a, dims, deferred)
        else:
            values[p.name] = _scalar(p, a)
    for p, d, n in deferred:
        bits = format_bits(p.type.dtype)
        if isinstance(d, str) and d not in dims:
            raise UserArgumentError(
                f"dim {d} appears only in packed argument {p.name!r}; pass it by keyword, "
                f"e.g. {d}=..."
            )
        size = dims[d] if isinstance(d, str) else d
        packing = packings.get(p.name)
        if p.name in repacked:
            if repacked[p.name] != size or packing.words_per_row(size) != n:
                raise UserArgumentError(
                    f"argument {p.name!r}: PackedWords of {repacked[p.name]} codes per row "
                    f"({n} words) given for {size} codes per row")
            continue
        if words_for(size, bits) != n:
            raise UserArgumentError(
                f"argument {p.name!r}: {size} {p.type.dtype} codes per row need "
                f"{words_for(size, bits)} uint32 words, got {n}"
            )
        if packing is not None:  # canonical words for a kernel reading another packing
            values[p.name] = repack(packing, values[p.name], size)
    for d in k.dims:
        if d.name not in dims:
            raise UserArgumentError(f"kernel {k.name}: dim {d.name} is not determined; pass it")
    return Bound(values, dims)


def _packing_name(p: Packing | None) -> str:
    return "the canonical packing" if p is None else f"packing {p.name} of {p.bits}-bit codes"


def _scalar(p: Value, a: object) -> object:
    t = p.type
    assert isinstance(t, ScalarType)
    if is_float(t.dtype):
        if not isinstance(a, (int, float, np.integer, np.floating)) or isinstance(a, bool):
            raise UserArgumentError(f"argument {p.name!r}: expected a number, got {a!r}")
        return float(a)
    if not isinstance(a, (int, np.integer)) or isinstance(a, bool):
        raise UserArgumentError(f"argument {p.name!r}: expected an integer, got {a!r}")
    return int(a)


class Binder:
    """`bind` for one kernel with the checks precomputed: the common, correct call takes a
    fast path; anything unusual goes through `bind`, which gives the error messages."""

    def __init__(self, k: Kernel, packings: dict[str, Packing] | None = None,
                 repack: Repack = transform):
        self.k = k
        self.packings = packings or {}
        self.repack = repack
        self.names = [p.name for p in k.params]
        self.dim_names = frozenset(d.name for d in k.dims)
        self.specs = []
        for p in k.params:
            if isinstance(p.type, TensorType):
                packed = not is_machine(p.type.dtype)
                bits = format_bits(p.type.dtype) if packed else 0
                dims = tuple((i, d, packed and i == len(p.type.shape) - 1)
                             for i, d in enumerate(p.type.shape))
                self.specs.append((True, storage_dtype(p.type.dtype), len(dims), dims,
                                   self.packings.get(p.name, bits)))
            else:
                self.specs.append((False, is_float(p.type.dtype), 0, (), 0))

    def __call__(self, args: tuple, kwargs: dict) -> Bound:
        if len(args) != len(self.names) or not self.dim_names.issuperset(kwargs):
            return self.slow(args, kwargs)
        dims = dict(kwargs)
        values = {}
        packed_rows = []
        canonical = []  # (name, packing, dim) of canonical words for a packed param
        for name, (tensor, dt, ndim, dspec, bits), a in zip(self.names, self.specs, args):
            if tensor:
                if bits.__class__ in PACKINGS:
                    if a.__class__ is PackedWords and a.packing == bits:  # in its packing
                        bits, count, a = a.packing, a.count, a.words
                        packed_rows.append((dspec[-1][1], count, None))
                    else:  # canonical words: checked below, then transformed
                        canonical.append((name, bits, dspec[-1][1]))
                        bits = bits.bits
                if (type(a) is not np.ndarray or a.dtype != dt or a.ndim != ndim
                        or not a.flags.c_contiguous):
                    return self.slow(args, kwargs)
                for i, d, packed_last in dspec:
                    n = a.shape[i]
                    if packed_last:
                        packed_rows.append((d, n, bits))
                    elif d.__class__ is int:
                        if d != n:
                            return self.slow(args, kwargs)
                    elif dims.setdefault(d, n) != n:
                        return self.slow(args, kwargs)
                values[name] = a
            else:
                ok = (isinstance(a, (int, float)) if dt else isinstance(a, int)) \
                    and not isinstance(a, bool)
                if not ok:
                    return self.slow(args, kwargs)
                values[name] = float(a) if dt else a
        for d, n, bits in packed_rows:
            size = d if d.__class__ is int else dims.get(d)
            if bits is None:  # a PackedWords' count
                ok = size == n
            elif bits.__class__ in PACKINGS:
                ok = size is not None and bits.words_per_row(size) == n
            else:
                ok = size is not None and (size * bits + 31) // 32 == n
            if not ok:
                return self.slow(args, kwargs)
        if len(dims) != len(self.dim_names):
            return self.slow(args, kwargs)
        for name, packing, d in canonical:
            values[name] = self.repack(packing, values[name], d if d.__class__ is int else dims[d])
        return Bound(values, dims)

    def slow(self, args: tuple, kwargs: dict) -> Bound:
        return bind(self.k, args, kwargs, self.packings, self.repack)
