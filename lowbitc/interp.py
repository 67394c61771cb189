"""The numpy reference interpreter: the executable semantics of the tile IR.

Every pass and backend is checked against it on random inputs. It favours clarity over speed:
packed tensors are unpacked to codes on entry and re-packed on exit; each block runs in turn.

Semantics worth stating: integer `div`/`rem` truncate toward zero (C); shifts are logical for
unsigned and arithmetic for signed types; loads outside a tensor read 0 and stores outside it
are dropped; `cast` from a format decodes its codes, `cast` to a format encodes (RNE unless
its `rounding` says otherwise, saturating), and so does a cast of floats to `i8`/`u8` (RNE,
NaN gives 0); `dot` accumulates in float64 and rounds once to the accumulator's type (into an
integer accumulator: exactly, in int64, wrapping to its type). A shared tile is an array made
afresh (zeroed) each time its `alloc_shared` runs, so once per block; `sync` does nothing,
since a block runs as one program.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from lowbitc.abi import grid_of as grid_with
from lowbitc.abi import grid_program, grid_runner
from lowbitc.errors import LowbitcError
from lowbitc.formats import lookup as format_of
from lowbitc.ir.core import Kernel, Op, Region
from lowbitc.ir.types import TensorType, TileType, is_machine, numpy_dtype
from lowbitc.packing import pack, unpack
from lowbitc.rounding import encode_rounded, random_bits
from lowbitc.signature import bind, format_bits


def _nd(dtype: str) -> np.dtype:
    return numpy_dtype(dtype) if is_machine(dtype) else np.dtype(np.uint8)


def _tdiv(a, b):
    if np.issubdtype(np.asarray(a).dtype, np.floating):
        return np.true_divide(a, b)
    a64, b64 = np.asarray(a, np.int64), np.asarray(b, np.int64)
    q = np.abs(a64) // np.where(b64 == 0, 1, np.abs(b64))
    return np.where(b64 == 0, 0, np.sign(a64) * np.sign(b64) * q)


def _trem(a, b):
    if np.issubdtype(np.asarray(a).dtype, np.floating):
        return np.fmod(a, b)
    return np.asarray(a, np.int64) - _tdiv(a, b) * np.asarray(b, np.int64)


def _erf(x):
    return np.vectorize(math.erf, otypes=[np.float64])(x)


_BIN: dict[str, Callable] = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "div": _tdiv, "rem": _trem,
    "min": np.minimum, "max": np.maximum, "pow": np.power,
    "and": np.bitwise_and, "or": np.bitwise_or, "xor": np.bitwise_xor,
    "shl": np.left_shift, "shr": np.right_shift,
    "lt": np.less, "le": np.less_equal, "gt": np.greater, "ge": np.greater_equal,
    "eq": np.equal, "ne": np.not_equal,
}
_UN: dict[str, Callable] = {
    "neg": np.negative, "abs": np.abs, "bnot": np.invert, "exp": np.exp, "log": np.log,
    "sqrt": np.sqrt, "rsqrt": lambda x: 1 / np.sqrt(x), "tanh": np.tanh, "sin": np.sin,
    "cos": np.cos, "floor": np.floor, "erf": _erf, "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
}


def _as(v, dtype: str):
    return np.asarray(v).astype(_nd(dtype), copy=False)


def _window(arr: np.ndarray, starts: list[int], sizes: tuple[int, ...]):
    """Index arrays selecting the window (with a validity mask for the edges)."""
    idx, valid = [], []
    for st, sz, n in zip(starts, sizes, arr.shape):
        ix = np.arange(max(sz, 1), dtype=np.int64) + st
        idx.append(ix)
        valid.append((ix >= 0) & (ix < n))
    grids = np.ix_(*idx)
    shape = [len(i) for i in idx]
    mask = np.ones(shape, dtype=bool)
    for d, m in enumerate(valid):
        mask = mask & m.reshape([-1 if j == d else 1 for j in range(len(shape))])
    clipped = tuple(np.clip(g, 0, max(n - 1, 0)) for g, n in zip(grids, arr.shape))
    keep = tuple(0 if sz == 0 else slice(None) for sz in sizes)
    return clipped, mask, keep


class Interpreter:
    """Runs one kernel on bound arguments; `run` is the entry point."""

    def __init__(self, kernel: Kernel):
        self.k = kernel

    def __call__(self, *args, **kwargs) -> None:
        run(self.k, *args, **kwargs)


def _bits(dtype: str) -> int:
    return format_of(dtype).bits if not is_machine(dtype) else np.dtype(_nd(dtype)).itemsize * 8


def view_bits(x: np.ndarray, src: str, dst: str) -> np.ndarray:
    """Reinterpret each row's bits (an LSB-first stream along the last dim) as `dst` values."""
    sb, db = _bits(src), _bits(dst)
    lead = x.shape[:-1]
    if is_machine(src):
        raw = np.ascontiguousarray(x).view(np.uint8).reshape(lead + (-1,))
        stream = np.unpackbits(raw, axis=-1, bitorder="little")
    else:
        codes = np.asarray(x, np.uint8)[..., None] >> np.arange(sb, dtype=np.uint8) & 1
        stream = codes.reshape(lead + (-1,))
    n = stream.shape[-1] // db
    if is_machine(dst):
        packed = np.packbits(stream, axis=-1, bitorder="little")
        return np.ascontiguousarray(packed).view(_nd(dst)).reshape(lead + (n,))
    weights = (1 << np.arange(db)).astype(np.uint16)
    return (stream.reshape(lead + (n, db)) * weights).sum(-1).astype(np.uint8)


# float -> 8-bit integer casts quantize (the issue-14 rule; wider integers truncate as in C)
QUANTIZING = {"i8": (-128, 127), "u8": (0, 255)}


def _cast(v, src: str, dst: str):
    if not is_machine(src):
        v = format_of(src).decode(np.asarray(v, np.uint8))
        src = "f32"
    if not is_machine(dst):
        return format_of(dst).encode(np.asarray(v, np.float64))
    if dst in QUANTIZING and np.issubdtype(np.asarray(v).dtype, np.floating):
        # like every other iN/uN format: round to nearest even, saturate; NaN gives 0
        lo, hi = QUANTIZING[dst]
        r = np.clip(np.rint(np.asarray(v, np.float64)), lo, hi)
        return _as(np.where(np.isnan(r), 0, r), dst)
    with np.errstate(all="ignore"):
        return _as(v, dst)


_U64 = (1 << 64) - 1


def _cast_rounded(ins: list, src: str, a) -> np.ndarray:
    """A cast to a format in another rounding mode, compared in the type kernels use (f32 for
    f32 and narrower floats); stochastic casts draw from (seed, index)."""
    ft = np.float32 if src in ("f32", "f16", "bf16") else np.float64
    x = np.ascontiguousarray(np.asarray(ins[0], ft))
    seed, index = 0, None
    if a.rounding == "stochastic":
        seed = int(ins[1]) & _U64
        index = np.broadcast_to(np.asarray(ins[2], np.int64), x.shape).reshape(-1)
    codes = encode_rounded(format_of(a.dtype), x, a.rounding, seed, index)
    return codes.view(_nd(a.dtype)) if is_machine(a.dtype) else codes  # u8, i8, f16, bf16


def _eval_op(op: Op, env: dict, block: tuple[int, int, int], mem: dict) -> None:
    o = op.opcode
    ins = [env[v.id] for v in op.operands]
    a = op.attrs
    rt = op.results[0].type if op.results else None
    with np.errstate(all="ignore"):
        if o in _BIN:
            out = _BIN[o](*ins)
        elif o in _UN:
            out = np.logical_not(ins[0]) if (o == "bnot" and rt.dtype == "bool") else _UN[o](ins[0])
        elif o == "const":
            out = a.value
        elif o == "block_id":
            out = block[a.axis]
        elif o == "full":
            out = np.full(a.shape, a.value)
        elif o == "arange":
            out = np.arange(a.n)
        elif o == "cast" and a.rounding != "nearest_even":
            out = _cast_rounded(ins, op.operands[0].type.dtype, a)
        elif o == "cast":
            out = _cast(ins[0], op.operands[0].type.dtype, a.dtype)
        elif o == "philox":
            out = random_bits(int(ins[0]) & _U64, np.asarray(ins[1], np.int64).view(np.uint64))
        elif o == "relayout":
            out = ins[0]
        elif o == "view":
            out = view_bits(np.asarray(ins[0]), op.operands[0].type.dtype, a.dtype)
        elif o == "codes":
            out = np.asarray(ins[0], np.uint8)
        elif o == "bitcast":
            out = np.asarray(ins[0]).view(_nd(a.dtype))
        elif o == "where":
            out = np.where(*ins)
        elif o == "reshape":
            out = np.reshape(ins[0], a.shape)
        elif o == "broadcast":
            out = np.broadcast_to(ins[0], a.shape).copy()
        elif o == "transpose":
            out = np.transpose(ins[0], a.perm)
        elif o == "reduce":
            out = {"sum": np.sum, "max": np.max, "min": np.min}[a.kind](ins[0], axis=a.axis)
        elif o == "dot" and np.issubdtype(np.asarray(ins[2]).dtype, np.integer):
            # integer dots are exact and wrap to the accumulator's type
            acc = np.asarray(ins[2])
            out = (np.asarray(ins[0], np.int64) @ np.asarray(ins[1], np.int64)
                   + acc.astype(np.int64)).astype(acc.dtype)
        elif o == "dot":
            out = np.asarray(ins[0], np.float64) @ np.asarray(ins[1], np.float64) + ins[2]
        elif o == "alloc_shared":  # per block: every run of the body gets fresh memory
            env[op.results[0].id] = mem[op.results[0].id] = np.zeros(a.shape, _nd(a.dtype))
            return
        elif o == "sync":  # a block is one program here: its threads never race
            return
        elif o == "from_codes":
            out = ins[0]
        elif o in ("load", "load_codes", "load_shared"):
            arr = mem[op.operands[0].id]
            starts = [int(s) for s in ins[1 : 1 + len(a.sizes)]]  # (then linear operands)
            idx, mask, keep = _window(arr, starts, a.sizes)
            out = np.where(mask, arr[idx], 0)[keep]
            if a.masked:
                out = np.where(ins[-1], out, 0)
        elif o == "gather":  # the window along a.axis takes the index tile's rows
            arr = mem[op.operands[0].id]
            rows = np.asarray(ins[1], np.int64)
            others = iter(int(x) for x in ins[2:])
            starts = [0 if d == a.axis else next(others) for d in range(arr.ndim)]
            sizes = tuple(1 if d == a.axis else s for d, s in enumerate(a.sizes))
            parts = []
            for r in rows:
                starts[a.axis] = int(r)
                idx, mask, keep = _window(arr, starts, sizes)
                parts.append(np.where(mask, arr[idx], 0))
            out = np.concatenate(parts, axis=a.axis)[
                tuple(slice(None) if s else 0 for s in a.sizes)]
        elif o in ("store", "store_shared", "store_codes"):
            arr = mem[op.operands[0].id]
            value = ins[-1 - a.masked]
            starts = [int(s) for s in ins[1 : 1 + len(a.sizes)]]
            idx, mask, keep = _window(arr, starts, a.sizes)
            full_shape = mask.shape
            tile_shape = tuple(n for s, n in zip(a.sizes, full_shape) if s > 0)
            val = np.broadcast_to(value, tile_shape).reshape(full_shape)
            if a.masked:
                mask = mask & np.broadcast_to(ins[-1], tile_shape).reshape(full_shape)
            sel = tuple(g[mask] if g.ndim else g for g in np.broadcast_arrays(*idx))
            arr[sel] = np.asarray(val)[mask].astype(arr.dtype)
            return
        elif o == "lut":
            out = np.asarray(a.values, np.float64)[np.asarray(ins[0], np.int64)]
        elif o == "for":
            out = _run_for(op, ins, env, block, mem)
            for r, v in zip(op.results, out):
                env[r.id] = v
            return
        elif o == "if":
            region = op.regions[0] if bool(ins[0]) else op.regions[1]
            vals = _run_region(region, (), env, block, mem)
            for r, v in zip(op.results, vals):
                env[r.id] = v
            return
        else:
            raise LowbitcError(f"interpreter: no semantics for op {o!r}", op.loc)
    if rt is not None:
        env[op.results[0].id] = _as(out, rt.dtype) if isinstance(rt, TileType) or is_machine(
            rt.dtype) else np.asarray(out, np.uint8)


def evaluate(ops: Sequence[Op], env: dict) -> dict:
    """Run straight-line ops that touch no memory over the numpy values in `env` (updated in
    place and returned): compile-time evaluation, e.g. a decode tree for every code."""
    for op in ops:
        _eval_op(op, env, (0, 0, 0), {})
    return env


def _run_region(r: Region, args: tuple, env: dict, block, mem) -> list:
    for a, v in zip(r.args, args):
        env[a.id] = v
    for op in r.ops:
        if op.opcode == "yield":
            return [env[v.id] for v in op.operands]
        _eval_op(op, env, block, mem)
    return []


def _run_for(op: Op, ins: list, env: dict, block, mem) -> list:
    start, stop, step = (int(x) for x in ins[:3])
    if step <= 0:
        raise LowbitcError(f"for: step must be positive, got {step}", op.loc)
    carried = list(ins[3:])
    for i in range(start, stop, step):
        carried = _run_region(op.regions[0], (np.int64(i), *carried), env, block, mem)
    return carried


def compile_grid(k: Kernel) -> Callable[[dict], tuple[int, int, int]] | None:
    """The grid region as straight-line integer arithmetic over {value id: int} (None when it
    uses an op this fast path does not know; `grid_of` interprets those)."""
    program = grid_program(k)
    return None if program is None else grid_runner(*program)


def grid_of_bound(k: Kernel, b, fast: Callable | None = None) -> tuple[int, int, int]:
    """The grid for bound arguments (`signature.bind`): block counts along x, y, z."""
    if fast is not None:
        return grid_with(k, b.values, b.dims, fast)
    env: dict = {}
    for p in k.params:
        if not isinstance(p.type, TensorType):
            env[p.id] = b.values[p.name]
    for d in k.dims:
        env[d.id] = b.dims[d.name]
    g = grid_of(k, env)
    if min(g) < 0:
        raise LowbitcError(f"kernel {k.name}: the grid {g} has a negative count")
    return g


def grid_of(k: Kernel, env: dict) -> tuple[int, int, int]:
    """Evaluate the kernel's grid region: block counts along x, y, z."""
    counts = [int(c) for c in _run_region(k.grid, (), env, (0, 0, 0), {})]
    return tuple(counts + [1] * (3 - len(counts)))  # type: ignore[return-value]


def run(k: Kernel, *args, **kwargs) -> None:
    """Run every block of the kernel on numpy arguments (outputs are written in place)."""
    b = bind(k, args, kwargs)
    env: dict = {}
    mem: dict = {}
    packed: list = []
    for p in k.params:
        a = b.values[p.name]
        if isinstance(p.type, TensorType):
            if is_machine(p.type.dtype):
                mem[p.id] = a
            else:
                n = p.type.shape[-1]
                count = b.dims[n] if isinstance(n, str) else n
                codes = unpack(a, format_bits(p.type.dtype), count)
                mem[p.id] = codes
                packed.append((p, a, codes))
        else:
            env[p.id] = np.asarray(a, numpy_dtype(p.type.dtype))
        if p.id in mem:
            env[p.id] = mem[p.id]
    for d in k.dims:
        env[d.id] = np.int64(b.dims[d.name])
    gx, gy, gz = grid_of(k, env)
    for z in range(gz):
        for y in range(gy):
            for x in range(gx):
                _run_region(k.body, (), env, (x, y, z), mem)
    for p, a, codes in packed:
        a[...] = pack(codes, format_bits(p.type.dtype))
