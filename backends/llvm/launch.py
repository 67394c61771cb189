"""Calling JIT-compiled kernels: argument packing and grid launch over a thread pool.

Calling convention of every kernel entry point (C):

    void NAME(void **args, int64_t block_begin, int64_t block_end);

It runs the linearised grid blocks [block_begin, block_end) itself. `args[i]` is, for an array
parameter, the address of its first element (C-contiguous, no copy); for a scalar parameter,
the address of an 8-byte (i64, f64) or 4-byte (i32, f32) buffer holding the value.
Grids of more than one part run on the process's thread pool (`pool.get_pool()`: native
pthreads by default, Python threads with LOWBITC_THREAD_POOL=python); ctypes releases the GIL.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lowbitc.backends.llvm.pool import KERNEL_CFUNC, get_pool, split_blocks
from lowbitc.errors import UserArgumentError

__all__ = [
    "KERNEL_CFUNC",
    "ArgPacker",
    "ArrayArg",
    "GridLauncher",
    "LaunchChain",
    "PreparedLaunch",
    "ScalarArg",
    "num_threads",
    "block_range_ir",
    "pack_args",
    "split_blocks",
]


PARTS_PER_THREAD = 4  # ranges per thread in a launch: balance under contention, few claims
_INT_RANGE = {"i64": (-(2**63), 2**63 - 1), "i32": (-(2**31), 2**31 - 1)}
# Each scalar takes one 8-byte slot (little-endian, value at the slot's start).
_SLOT_FORMAT = {"i64": "q", "f64": "d", "i32": "i4x", "f32": "f4x"}


@dataclass(frozen=True, slots=True)
class ArrayArg:
    """A numpy array parameter: its dtype, rank (None = any) and whether the kernel writes it."""

    name: str
    dtype: np.dtype
    ndim: int | None = None
    output: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", np.dtype(self.dtype))


@dataclass(frozen=True, slots=True)
class ScalarArg:
    """A scalar parameter passed through a small buffer: kind is i64, i32, f64 or f32."""

    name: str
    kind: str

    def __post_init__(self) -> None:
        if self.kind not in _SLOT_FORMAT:
            raise ValueError(f"scalar kind must be one of {sorted(_SLOT_FORMAT)}: {self.kind!r}")


Param = ArrayArg | ScalarArg


def _numpy_data_offset() -> int | None:
    """Offset of the data pointer inside a CPython ndarray object, verified, or None."""
    if platform.python_implementation() != "CPython":
        return None
    probe = np.arange(7, dtype=np.int64)[2:]
    offset = 2 * ctypes.sizeof(ctypes.c_void_p)  # after PyObject_HEAD (refcount, type)
    if ctypes.c_void_p.from_address(id(probe) + offset).value == probe.ctypes.data:
        return offset
    return None


_DATA_OFFSET = _numpy_data_offset()
_VOIDP = ctypes.c_void_p


def _data_address_ctypes(array: np.ndarray) -> int:
    return array.ctypes.data


def _data_address_direct(array: np.ndarray) -> int:
    return _VOIDP.from_address(id(array) + _DATA_OFFSET).value or 0


# Address of an array's first element; the direct read is 5x cheaper than `.ctypes.data`.
_data_address = _data_address_ctypes if _DATA_OFFSET is None else _data_address_direct


_PACKED_TYPES: dict[int, type] = {}


def _packed_type(n: int) -> type:
    cls = _PACKED_TYPES.get(n)
    if cls is None:
        cls = type(f"PackedArgs{n}", (ctypes.Array,), {"_type_": ctypes.c_void_p, "_length_": n})
        _PACKED_TYPES[n] = cls
    return cls


def _check_array(param: ArrayArg, value: object) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        raise UserArgumentError(
            f"argument {param.name!r}: expected a numpy array of {param.dtype}, "
            f"got {type(value).__name__}"
        )
    if value.dtype != param.dtype:
        raise UserArgumentError(
            f"argument {param.name!r}: expected dtype {param.dtype}, got {value.dtype}"
        )
    if param.ndim is not None and value.ndim != param.ndim:
        raise UserArgumentError(
            f"argument {param.name!r}: expected a {param.ndim}-d array, got shape {value.shape}"
        )
    if not value.flags.c_contiguous:
        raise UserArgumentError(
            f"argument {param.name!r}: expected a C-contiguous array, got strides "
            f"{value.strides} for shape {value.shape} (use np.ascontiguousarray)"
        )
    if param.output and not value.flags.writeable:
        raise UserArgumentError(
            f"argument {param.name!r}: the kernel writes it, but the array is read-only"
        )
    return value


def _check_scalar(param: ScalarArg, value: object) -> None:
    """Raise UserArgumentError naming `param` unless `value` fits its kind's slot."""
    kind = param.kind
    if kind in _INT_RANGE:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise UserArgumentError(
                f"argument {param.name!r}: expected an integer ({kind}), got {type(value).__name__}"
            )
        lo, hi = _INT_RANGE[kind]
        if not lo <= int(value) <= hi:
            raise UserArgumentError(f"argument {param.name!r}: {value} does not fit in {kind}")
        return
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise UserArgumentError(
            f"argument {param.name!r}: expected a real number ({kind}), got {type(value).__name__}"
        )
    try:
        struct.pack("<" + _SLOT_FORMAT[kind], value)
    except (OverflowError, struct.error):
        message = f"argument {param.name!r}: {value} does not fit in {kind}"
        raise UserArgumentError(message) from None


class ArgPacker:
    """Checks argument values against a signature and packs them into the kernel's `void*[]`.

    Build one per kernel and call it per launch: the common case (right types) takes a fast
    path; anything else goes through the checks that raise UserArgumentError naming the
    argument, always before native code runs. Arrays are never copied. Scalars live in
    8-byte slots after the pointers, in the same ctypes array (one allocation per call).
    """

    __slots__ = ("signature", "_array_type", "_arrays", "_scalars", "_struct", "_offsets")

    def __init__(self, signature: Sequence[Param]):
        self.signature = tuple(signature)
        for param in self.signature:
            if not isinstance(param, (ArrayArg, ScalarArg)):
                raise TypeError(f"signature entries must be ArrayArg or ScalarArg: {param!r}")
        n = len(self.signature)
        self._arrays = tuple(
            (i, p, p.dtype, p.ndim, p.output)
            for i, p in enumerate(self.signature)
            if isinstance(p, ArrayArg)
        )
        self._scalars = tuple(
            (i, p) for i, p in enumerate(self.signature) if isinstance(p, ScalarArg)
        )
        self._array_type = _packed_type(n + len(self._scalars))
        self._struct = struct.Struct("<" + "".join(_SLOT_FORMAT[p.kind] for _, p in self._scalars))
        size = ctypes.sizeof(ctypes.c_void_p)
        self._offsets = tuple((i, (n + j) * size) for j, (i, _) in enumerate(self._scalars))

    def __call__(self, values: Sequence[object]) -> ctypes.Array:
        """The packed `void*[]`; its `.keep` holds the arrays it points at (keep it alive)."""
        if len(values) != len(self.signature):
            names = ", ".join(p.name for p in self.signature)
            raise UserArgumentError(
                f"expected {len(self.signature)} arguments ({names}), got {len(values)}"
            )
        packed = self._array_type()
        for i, param, dtype, ndim, output in self._arrays:
            value = values[i]
            if not (
                type(value) is np.ndarray
                and value.dtype == dtype
                and (ndim is None or value.ndim == ndim)
                and value.flags.c_contiguous
                and (not output or value.flags.writeable)
            ):
                value = _check_array(param, value)
            packed[i] = _data_address(value)
        if self._scalars:
            scalars = [values[i] for i, _ in self._scalars]
            try:
                for v in scalars:
                    if type(v) is bool:
                        raise TypeError
                self._struct.pack_into(packed, self._offsets[0][1], *scalars)
            except (struct.error, TypeError, OverflowError):
                for (_, param), v in zip(self._scalars, scalars, strict=True):
                    _check_scalar(param, v)  # raises, naming the argument
                raise UserArgumentError(f"scalar arguments {scalars!r} do not fit") from None
            base = ctypes.addressof(packed)
            for i, offset in self._offsets:
                packed[i] = base + offset
        packed.keep = values
        return packed


def pack_args(signature: Sequence[Param], values: Sequence[object]) -> ctypes.Array:
    """Check `values` against `signature` and build the kernel's `void*[]` without copying.

    One-off form of `ArgPacker(signature)(values)`; raises UserArgumentError naming the first
    bad argument. Keep the result (its `.keep` holds the buffers) until the call returns.
    """
    return ArgPacker(signature)(values)


def block_range_ir(unit: int, total: str, back: str) -> str:
    """Hand-written IR of the calling convention's loop over blocks [%begin, %end), entered
    from %entry and re-entered from label `back` (which ends `%b.next = add i64 %b, 1` and
    `br label %block`): %b the block and [%lo, %hi) its `unit` items clamped to `total`; it
    falls through into the block's body and leaves to %exit."""
    return f"""  br label %block
block:
  %b = phi i64 [ %begin, %entry ], [ %b.next, %{back} ]
  %more = icmp slt i64 %b, %end
  br i1 %more, label %body, label %exit
body:
  %lo = mul i64 %b, {unit}
  %hi.0 = add i64 %lo, {unit}
  %short = icmp slt i64 {total}, %hi.0
  %hi = select i1 %short, i64 {total}, i64 %hi.0
"""


def num_threads() -> int:
    """Worker count for grid launches: LOWBITC_NUM_THREADS if set, else the usable CPUs."""
    env = os.environ.get("LOWBITC_NUM_THREADS", "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            raise UserArgumentError(
                f"LOWBITC_NUM_THREADS: expected a positive integer, got {env!r}"
            )
        return int(env)
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


class GridLauncher:
    """Calls `void NAME(void**, i64 begin, i64 end)` at `fn_address` over a grid of blocks.

    Grids smaller than `2 * min_blocks_per_thread` blocks run on the calling thread; larger
    ones are cut into up to PARTS_PER_THREAD * `threads` contiguous ranges (threads: default
    `num_threads()`) that the launching thread and `threads - 1` pool workers claim as they go,
    so a thread slowed by other work on its core (another library's spinning BLAS threads, say)
    runs fewer of them. A launch made while the pool is busy (from another Python thread, or
    from inside a kernel) runs on its own thread instead.
    """

    __slots__ = ("fn", "address", "nblocks", "threads", "min_blocks_per_thread", "_parts")

    def __init__(
        self,
        fn_address: int,
        nblocks: int,
        threads: int | None = None,
        min_blocks_per_thread: int = 1,
    ):
        if not isinstance(fn_address, int) or fn_address <= 0:
            raise UserArgumentError(f"fn_address: expected a function address, got {fn_address!r}")
        if threads is not None and threads < 1:
            raise UserArgumentError(f"threads: expected a positive integer, got {threads!r}")
        if min_blocks_per_thread < 1:
            raise UserArgumentError(
                f"min_blocks_per_thread: expected a positive integer, got {min_blocks_per_thread!r}"
            )
        self.fn = KERNEL_CFUNC(fn_address)
        self.address = fn_address
        self.threads = num_threads() if threads is None else threads
        self.min_blocks_per_thread = min_blocks_per_thread
        self.nblocks = -1
        self._parts = 1
        self._set_grid(nblocks)

    def _set_grid(self, nblocks: int) -> None:
        if isinstance(nblocks, bool) or not isinstance(nblocks, (int, np.integer)) or nblocks < 0:
            raise UserArgumentError(f"nblocks: expected an integer >= 0, got {nblocks!r}")
        self.nblocks = int(nblocks)
        self._parts = self.parts(self.nblocks)

    def parts(self, nblocks: int) -> int:
        """How many ranges a grid of `nblocks` blocks is cut into (1: run on the caller)."""
        parts = PARTS_PER_THREAD * self.threads if self.threads > 1 else 1
        return max(1, min(parts, nblocks // self.min_blocks_per_thread))

    def __call__(self, args: ctypes.Array, nblocks: int | None = None) -> None:
        """Run every block once on `args` (from `pack_args`); `nblocks` resizes the grid."""
        if nblocks is not None and nblocks != self.nblocks:
            self._set_grid(nblocks)
        if self._parts == 1:
            if self.nblocks:
                self.fn(args, 0, self.nblocks)
        elif not get_pool().run(self.address, args, self.nblocks, self._parts, self.threads):
            self.fn(args, 0, self.nblocks)  # the pool is busy with another launch: run inline


class PreparedLaunch:
    """One kernel launch with its arguments checked and packed once: a call puts the arrays
    of the `free` parameters (same dtype and shape as when it was prepared, C-contiguous) in
    place of the prepared ones and runs the grid. For calls repeated on the same weights,
    it skips the per-call binding, grid evaluation and packing (~10 us a launch)."""

    __slots__ = ("_template", "_type", "_free", "_launcher", "_nblocks")

    def __init__(self, packed: ctypes.Array, free: Sequence[tuple[int, ArrayArg, tuple]],
                 launcher: GridLauncher, nblocks: int):
        self._template = packed  # never written again; its .keep holds the bound arguments
        self._type = type(packed)
        self._free = tuple((i, p, p.dtype, tuple(shape)) for i, p, shape in free)
        self._launcher = launcher
        self._nblocks = nblocks

    def __call__(self, *arrays: np.ndarray) -> None:
        if len(arrays) != len(self._free):
            names = ", ".join(p.name for _, p, _, _ in self._free)
            raise UserArgumentError(f"expected {len(self._free)} arrays ({names}), "
                                    f"got {len(arrays)}")
        # a copy per call: scalar slots still point into the template, which stays unchanged
        packed = self._type.from_buffer_copy(self._template)
        self._fill(packed, arrays)
        self._launcher(packed, self._nblocks)

    def _fill(self, packed: ctypes.Array, arrays: Sequence[np.ndarray]) -> None:
        """Put the free arrays' addresses into `packed`, each checked as prepared."""
        for (i, param, dtype, shape), a in zip(self._free, arrays):
            if not (type(a) is np.ndarray and a.dtype == dtype and a.shape == shape
                    and a.flags.c_contiguous and (not param.output or a.flags.writeable)):
                _check_array(param, a)
                raise UserArgumentError(f"argument {param.name!r}: expected shape {shape} "
                                        f"(as prepared), got {getattr(a, 'shape', None)}")
            packed[i] = _data_address(a)

    def then(self, second: PreparedLaunch) -> LaunchChain:
        """This launch and `second` after it, as one call (`LaunchChain`)."""
        return LaunchChain(self, second)

    def job(self, packed: ctypes.Array) -> tuple:
        """(fn address, packed, blocks, parts, threads): this launch on `packed` as the
        pool's run2 takes it."""
        la = self._launcher
        return (la.address, packed, self._nblocks, la.parts(self._nblocks), la.threads)


class LaunchChain:
    """Two prepared launches run as one native call, `second` after `first` (e.g. quantize
    the activations, then the GEMV that reads them): a call takes `first`'s free arrays, then
    `second`'s, writes their addresses into packed arguments of its own and makes one ctypes
    call (~8 us less than the two launches, whose Python work between the kernels also
    leaves the memory idle). One call at a time uses a chain: `try_call` is False, nothing
    run, while another thread is inside it."""

    __slots__ = ("_first", "_second", "_packed", "_split", "_jobs", "_busy")

    def __init__(self, first: PreparedLaunch, second: PreparedLaunch):
        self._first, self._second = first, second  # (they keep the bound arrays alive)
        self._packed = tuple(p._type.from_buffer_copy(p._template) for p in (first, second))
        self._split = len(first._free)
        self._jobs = (first.job(self._packed[0]), second.job(self._packed[1]))
        self._busy = threading.Lock()

    def try_call(self, *arrays: np.ndarray) -> bool:
        """Run both launches on `arrays` (first's free arrays, then second's, each checked
        as prepared); False, nothing run, while another thread is inside this chain."""
        want = self._split + len(self._second._free)
        if len(arrays) != want:
            names = ", ".join(p.name for _, p, _, _ in (*self._first._free, *self._second._free))
            raise UserArgumentError(f"expected {want} arrays ({names}), got {len(arrays)}")
        if not self._busy.acquire(blocking=False):
            return False
        try:
            (first, second), k = self._packed, self._split
            self._first._fill(first, arrays[:k])
            self._second._fill(second, arrays[k:])
            pool = get_pool()
            if pool.kind != "native" or not pool.run2(*self._jobs):
                self._first._launcher(first, self._first._nblocks)
                self._second._launcher(second, self._second._nblocks)
        finally:
            self._busy.release()
        return True
