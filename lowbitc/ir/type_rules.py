"""The type rules of the tile-IR ops that compute values: operand types and attributes ->
result types, or a `VerifyError` naming the op (the memory ops' rules: memory_rules).

lowbitc.ir.opdefs pairs each rule with its op's attribute dataclass.
"""

from __future__ import annotations

from collections.abc import Callable

from lowbitc.errors import VerifyError
from lowbitc.formats import lookup as lookup_format
from lowbitc.ir.attrs import CastAttrs
from lowbitc.ir.core import Attrs
from lowbitc.ir.types import (
    ScalarType,
    TensorType,
    TileType,
    Type,
    bit_width,
    is_float,
    is_int,
    is_machine,
)
from lowbitc.rounding import ROUNDINGS

Infer = Callable[[tuple[Type, ...], Attrs], tuple[Type, ...]]


def _bits_of(dtype: str) -> int:
    """Storage bits of one value: machine types by width, formats by their code width."""
    if is_machine(dtype):
        return bit_width(dtype) if dtype != "bool" else 8
    return lookup_format(dtype).bits


def fail(op: str, msg: str) -> VerifyError:
    """The error a type rule raises: `op: msg`."""
    return VerifyError(f"{op}: {msg}")


def broadcast_shapes(op: str, *shapes: tuple[int, ...]) -> tuple[int, ...]:
    """numpy broadcasting of tile shapes (scalars are shape ())."""
    rank = max(len(s) for s in shapes)
    out = []
    for i in range(rank):
        dims = {s[i - rank + len(s)] for s in shapes if i - rank + len(s) >= 0} - {1}
        if len(dims) > 1:
            raise fail(op, f"shapes {' and '.join(str(list(s)) for s in shapes)} do not broadcast")
        out.append(dims.pop() if dims else 1)
    return tuple(out)


def _value_type(dtype: str, shape: tuple[int, ...], like: tuple[Type, ...]) -> Type:
    if not shape and all(isinstance(t, ScalarType) for t in like):
        return ScalarType(dtype)
    space = next((t.space for t in like if isinstance(t, TileType)), "reg")
    return TileType(dtype, shape, "reg" if space == "shared" else space)


def shape_of(t: Type) -> tuple[int, ...]:
    """A tile's shape; () for scalars."""
    return t.shape if isinstance(t, TileType) else ()


def _elementwise(_name: str, result_dtype: Callable[[str], str] | None, need: str = "") -> Infer:
    def infer(ts: tuple[Type, ...], a: Attrs) -> tuple[Type, ...]:
        if any(isinstance(t, TensorType) for t in ts):
            raise fail(_name, "operands must be scalars or tiles, not tensors")
        dts = {t.dtype for t in ts}
        if len(dts) != 1:
            raise fail(_name, f"operand formats differ: {', '.join(sorted(dts))}")
        dt = dts.pop()
        if not is_machine(dt):
            raise fail(_name, f"arithmetic on {dt} codes needs a cast to a machine type first")
        if need == "int" and not (is_int(dt) or dt == "bool"):
            raise fail(_name, f"needs integer operands, got {dt}")
        if need == "float" and not is_float(dt):
            raise fail(_name, f"needs float operands, got {dt}")
        shape = broadcast_shapes(_name, *(shape_of(t) for t in ts))
        return (_value_type(result_dtype(dt) if result_dtype else dt, shape, ts),)

    return infer


def _const(ts, a):
    return (ScalarType(a.dtype),)


def _block_id(ts, a):
    if not 0 <= a.axis < 3:
        raise fail("block_id", f"axis must be 0, 1 or 2, got {a.axis}")
    return (ScalarType("i64"),)


def _full(ts, a):
    if any(d < 1 for d in a.shape):
        raise fail("full", f"tile dims must be >= 1, got {list(a.shape)}")
    return (TileType(a.dtype, tuple(a.shape)),)


def _arange(ts, a):
    return (TileType(a.dtype, (a.n,)),)


def _cast(ts, a):
    (t,) = ts
    if isinstance(t, TileType):
        return (TileType(a.dtype, t.shape),)
    return (ScalarType(a.dtype),)


ROUNDED_MACHINE_TARGETS = ("u8", "i8", "f16", "bf16")  # machine types a rounding mode reaches


def rounded_cast_problem(src: str, dst: str) -> str | None:
    """Why a cast src -> dst cannot take a rounding mode, or None: casts from a machine type
    to a format, u8 or i8 can, and from f32 to f16 or bf16."""
    if not is_machine(src) or (is_machine(dst) and dst not in ROUNDED_MACHINE_TARGETS):
        return (f"rounding applies to casts from a machine type to a format such as u4 or "
                f"f8e4m3fn, to u8, i8, or (from f32) to f16 or bf16, not {src} -> {dst}")
    if dst in ("f16", "bf16") and src != "f32":
        return f"a rounded cast to {dst} takes f32 values, got {src} (cast to f32 first)"
    return None


def _cast_op(ts, a):
    if a.rounding not in ROUNDINGS:
        raise fail("cast", f"rounding must be one of {', '.join(ROUNDINGS)}, got {a.rounding!r}")
    want = 3 if a.rounding == "stochastic" else 1
    if len(ts) != want:
        raise fail("cast", f"a {a.rounding} cast takes {want} operand(s), got {len(ts)}")
    why = rounded_cast_problem(ts[0].dtype, a.dtype) if a.rounding != "nearest_even" else None
    if why:
        raise fail("cast", f"rounding={a.rounding}: {why}")
    if want == 3:
        seed, index = ts[1], ts[2]
        if seed != ScalarType("i64") or index.dtype != "i64":
            raise fail("cast", f"stochastic cast needs an i64 seed and i64 index, got {seed}, "
                       f"{index}")
        if broadcast_shapes("cast", shape_of(index), shape_of(ts[0])) != shape_of(ts[0]):
            raise fail("cast", f"index {index} does not broadcast to {ts[0]}")
    return _cast(ts[:1], a)


def _philox(ts, a):
    """Philox 4x32-10 word 0, keyed by the seed, of counter (index, 0): u32 random bits."""
    if len(ts) != 2 or ts[0] != ScalarType("i64") or ts[1].dtype != "i64":
        raise fail("philox", f"needs an i64 seed and i64 indices, got {', '.join(map(str, ts))}")
    return _cast(ts[1:], CastAttrs("u32"))


def _codes(ts, a):
    (t,) = ts
    if is_machine(t.dtype):
        raise fail("codes", f"operand is already a machine type ({t.dtype})")
    return _cast(ts, a)


def _where(ts, a):
    c, x, y = ts
    if c.dtype != "bool":
        raise fail("where", f"condition must be bool, got {c.dtype}")
    if x.dtype != y.dtype:
        raise fail("where", f"branches differ: {x.dtype} and {y.dtype}")
    shape = broadcast_shapes("where", shape_of(c), shape_of(x), shape_of(y))
    return (_value_type(x.dtype, shape, ts),)


def _reshape(ts, a):
    (t,) = ts
    n = 1
    for d in a.shape:
        n *= d
    if not isinstance(t, TileType) or n != t.size:
        raise fail("reshape", f"cannot reshape {t} to {list(a.shape)}")
    return (TileType(t.dtype, tuple(a.shape)),)


def _broadcast(ts, a):
    (t,) = ts
    if broadcast_shapes("broadcast", shape_of(t), a.shape) != tuple(a.shape):
        raise fail("broadcast", f"cannot broadcast {t} to {list(a.shape)}")
    return (TileType(t.dtype, tuple(a.shape)),)


def _transpose(ts, a):
    (t,) = ts
    if not isinstance(t, TileType) or sorted(a.perm) != list(range(len(t.shape))):
        raise fail("transpose", f"perm {list(a.perm)} does not fit {t}")
    return (TileType(t.dtype, tuple(t.shape[p] for p in a.perm)),)


def _reduce(ts, a):
    (t,) = ts
    if a.kind not in ("sum", "max", "min"):
        raise fail("reduce", f"kind must be sum, max or min, got {a.kind!r}")
    if not isinstance(t, TileType) or not 0 <= a.axis < len(t.shape):
        raise fail("reduce", f"axis {a.axis} out of range for {t}")
    shape = t.shape[: a.axis] + t.shape[a.axis + 1 :]
    return (TileType(t.dtype, shape) if shape else ScalarType(t.dtype),)


def _dot(ts, a):
    x, y, acc = ts
    if not all(isinstance(t, TileType) and len(t.shape) == 2 for t in ts):
        raise fail("dot", f"needs 2-D tiles, got {x}, {y}, {acc}")
    m, k = x.shape
    k2, n = y.shape
    if k != k2 or acc.shape != (m, n):
        raise fail("dot", f"shapes do not chain: {x} @ {y} + {acc}")
    if not (is_machine(x.dtype) and is_machine(y.dtype)):
        raise fail("dot", "operands must be cast to machine types first")
    if is_int(acc.dtype) and not (is_int(x.dtype) and is_int(y.dtype)):
        raise fail("dot", f"an integer accumulator ({acc.dtype}) takes integer operands, "
                          f"got {x.dtype} and {y.dtype}")
    if x.dtype in BYTES and y.dtype in BYTES and acc.dtype != "i32":
        raise fail("dot", f"a dot of 8-bit integers ({x.dtype}, {y.dtype}) accumulates in i32, "
                          f"got {acc.dtype}")
    return (acc,)


BYTES = ("i8", "u8")  # a dot of these into i32 is the integer dot (VNNI on x86)


def _view(ts, a):
    """Same bits, another element type: the last dim rescales so the bit count is kept."""
    (t,) = ts
    if not isinstance(t, TileType):
        raise fail("view", f"needs a tile, got {t}")
    src, dst = _bits_of(t.dtype), _bits_of(a.dtype)
    total = t.shape[-1] * src
    if total % dst:
        raise fail("view", f"{t} has {total} bits per row, not a whole number of "
                   f"{a.dtype} ({dst}-bit) values")
    return (TileType(a.dtype, t.shape[:-1] + (total // dst,)),)


def _relayout(ts, a):
    (t,) = ts
    if not isinstance(t, TileType):
        raise fail("relayout", f"needs a tile, got {t}")
    return (TileType(t.dtype, t.shape, t.space, a.layout),)


def _lut(ts, a):
    (t,) = ts
    if not is_int(t.dtype):
        raise fail("lut", f"index must be an integer tile, got {t}")
    return _cast(ts, a)


def _for(ts, a):
    if any(t != ScalarType("i64") for t in ts[:3]):
        raise fail("for", "start, stop and step must be i64")
    return ts[3:]


def _if(ts, a):
    if ts[0] != ScalarType("bool"):
        raise fail("if", f"condition must be a bool scalar, got {ts[0]}")
    return ts[1:]


def _none(ts, a):
    return ()


def _from_codes(ts, a):
    (t,) = ts
    if not is_int(t.dtype) or is_machine(a.dtype):
        raise fail("from_codes", f"needs integer codes and a format, got {t} -> {a.dtype}")
    return _cast(ts, a)


_BINARY = ("add", "sub", "mul", "div", "rem", "min", "max", "pow")
_BITWISE = ("and", "or", "xor", "shl", "shr")
_COMPARE = ("lt", "le", "gt", "ge", "eq", "ne")
_UNARY = ("neg", "abs")
_UNARY_FLOAT = ("exp", "log", "sqrt", "rsqrt", "tanh", "sin", "cos", "floor", "erf", "sigmoid")

ELEMENTWISE = frozenset(_BINARY + _UNARY + _BITWISE + ("bnot",) + _UNARY_FLOAT + _COMPARE)
BINARY = frozenset(_BINARY + _BITWISE + _COMPARE)

VALUE_RULES: dict[str, Infer] = {
    **{n: _elementwise(n, None) for n in _BINARY + _UNARY},
    **{n: _elementwise(n, None, "int") for n in _BITWISE + ("bnot",)},
    **{n: _elementwise(n, None, "float") for n in _UNARY_FLOAT},
    **{n: _elementwise(n, lambda dt: "bool") for n in _COMPARE},
    "const": _const, "block_id": _block_id, "full": _full, "arange": _arange,
    "cast": _cast_op, "bitcast": _cast, "codes": _codes, "where": _where,
    "reshape": _reshape, "broadcast": _broadcast, "transpose": _transpose,
    "reduce": _reduce, "dot": _dot, "lut": _lut, "relayout": _relayout, "view": _view,
    "for": _for, "if": _if, "yield": _none, "sync": _none, "from_codes": _from_codes,
    "philox": _philox,
}  # fmt: skip
