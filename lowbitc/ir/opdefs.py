"""Every tile-IR opcode: its attribute dataclass (from lowbitc.ir.attrs), how many regions it
has, and its type rule.

The type rule (`infer`) maps operand types and attributes to result types or raises
`VerifyError`; the builder uses it to type new ops and the verifier to re-check them.
One piece (just over 400 lines): the opcode table and its type rules are read together by
the builder, verifier and parser; the attribute dataclasses live in lowbitc.ir.attrs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

from lowbitc.errors import VerifyError
from lowbitc.formats import lookup as lookup_format
from lowbitc.ir.attrs import (
    ArangeAttrs,
    AxisAttrs,
    CastAttrs,
    CodesAttrs,
    ConstAttrs,
    ForAttrs,
    FullAttrs,
    GatherAttrs,
    LayoutAttrs,
    LutAttrs,
    MemAttrs,
    PermAttrs,
    ReduceAttrs,
    ShapeAttrs,
    SharedAttrs,
    VecAttrs,
)
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

# ---------------------------------------------------------------- type rules

Infer = Callable[[tuple[Type, ...], Attrs], tuple[Type, ...]]


@dataclass(frozen=True, slots=True)
class OpDef:
    name: str
    attrs: type[Attrs]
    infer: Infer
    regions: int = 0


def _bits_of(dtype: str) -> int:
    """Storage bits of one value: machine types by width, formats by their code width."""
    if is_machine(dtype):
        return bit_width(dtype) if dtype != "bool" else 8
    return lookup_format(dtype).bits


def _fail(op: str, msg: str) -> VerifyError:
    return VerifyError(f"{op}: {msg}")


def broadcast_shapes(op: str, *shapes: tuple[int, ...]) -> tuple[int, ...]:
    """numpy broadcasting of tile shapes (scalars are shape ())."""
    rank = max(len(s) for s in shapes)
    out = []
    for i in range(rank):
        dims = {s[i - rank + len(s)] for s in shapes if i - rank + len(s) >= 0} - {1}
        if len(dims) > 1:
            raise _fail(op, f"shapes {' and '.join(str(list(s)) for s in shapes)} do not broadcast")
        out.append(dims.pop() if dims else 1)
    return tuple(out)


def _value_type(dtype: str, shape: tuple[int, ...], like: tuple[Type, ...]) -> Type:
    if not shape and all(isinstance(t, ScalarType) for t in like):
        return ScalarType(dtype)
    space = next((t.space for t in like if isinstance(t, TileType)), "reg")
    return TileType(dtype, shape, "reg" if space == "shared" else space)


def _shape(t: Type) -> tuple[int, ...]:
    return t.shape if isinstance(t, TileType) else ()


def _elementwise(_name: str, result_dtype: Callable[[str], str] | None, need: str = "") -> Infer:
    def infer(ts: tuple[Type, ...], a: Attrs) -> tuple[Type, ...]:
        if any(isinstance(t, TensorType) for t in ts):
            raise _fail(_name, "operands must be scalars or tiles, not tensors")
        dts = {t.dtype for t in ts}
        if len(dts) != 1:
            raise _fail(_name, f"operand formats differ: {', '.join(sorted(dts))}")
        dt = dts.pop()
        if not is_machine(dt):
            raise _fail(_name, f"arithmetic on {dt} codes needs a cast to a machine type first")
        if need == "int" and not (is_int(dt) or dt == "bool"):
            raise _fail(_name, f"needs integer operands, got {dt}")
        if need == "float" and not is_float(dt):
            raise _fail(_name, f"needs float operands, got {dt}")
        shape = broadcast_shapes(_name, *(_shape(t) for t in ts))
        return (_value_type(result_dtype(dt) if result_dtype else dt, shape, ts),)

    return infer


def _const(ts, a):
    return (ScalarType(a.dtype),)


def _block_id(ts, a):
    if not 0 <= a.axis < 3:
        raise _fail("block_id", f"axis must be 0, 1 or 2, got {a.axis}")
    return (ScalarType("i64"),)


def _full(ts, a):
    if any(d < 1 for d in a.shape):
        raise _fail("full", f"tile dims must be >= 1, got {list(a.shape)}")
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
        raise _fail("cast", f"rounding must be one of {', '.join(ROUNDINGS)}, got {a.rounding!r}")
    want = 3 if a.rounding == "stochastic" else 1
    if len(ts) != want:
        raise _fail("cast", f"a {a.rounding} cast takes {want} operand(s), got {len(ts)}")
    why = rounded_cast_problem(ts[0].dtype, a.dtype) if a.rounding != "nearest_even" else None
    if why:
        raise _fail("cast", f"rounding={a.rounding}: {why}")
    if want == 3:
        seed, index = ts[1], ts[2]
        if seed != ScalarType("i64") or index.dtype != "i64":
            raise _fail("cast", f"stochastic cast needs an i64 seed and i64 index, got {seed}, "
                        f"{index}")
        if broadcast_shapes("cast", _shape(index), _shape(ts[0])) != _shape(ts[0]):
            raise _fail("cast", f"index {index} does not broadcast to {ts[0]}")
    return _cast(ts[:1], a)


def _philox(ts, a):
    """Philox 4x32-10 word 0, keyed by the seed, of counter (index, 0): u32 random bits."""
    if len(ts) != 2 or ts[0] != ScalarType("i64") or ts[1].dtype != "i64":
        raise _fail("philox", f"needs an i64 seed and i64 indices, got {', '.join(map(str, ts))}")
    return _cast(ts[1:], CastAttrs("u32"))


def _codes(ts, a):
    (t,) = ts
    if is_machine(t.dtype):
        raise _fail("codes", f"operand is already a machine type ({t.dtype})")
    return _cast(ts, a)


def _where(ts, a):
    c, x, y = ts
    if c.dtype != "bool":
        raise _fail("where", f"condition must be bool, got {c.dtype}")
    if x.dtype != y.dtype:
        raise _fail("where", f"branches differ: {x.dtype} and {y.dtype}")
    shape = broadcast_shapes("where", _shape(c), _shape(x), _shape(y))
    return (_value_type(x.dtype, shape, ts),)


def _reshape(ts, a):
    (t,) = ts
    n = 1
    for d in a.shape:
        n *= d
    if not isinstance(t, TileType) or n != t.size:
        raise _fail("reshape", f"cannot reshape {t} to {list(a.shape)}")
    return (TileType(t.dtype, tuple(a.shape)),)


def _broadcast(ts, a):
    (t,) = ts
    if broadcast_shapes("broadcast", _shape(t), a.shape) != tuple(a.shape):
        raise _fail("broadcast", f"cannot broadcast {t} to {list(a.shape)}")
    return (TileType(t.dtype, tuple(a.shape)),)


def _transpose(ts, a):
    (t,) = ts
    if not isinstance(t, TileType) or sorted(a.perm) != list(range(len(t.shape))):
        raise _fail("transpose", f"perm {list(a.perm)} does not fit {t}")
    return (TileType(t.dtype, tuple(t.shape[p] for p in a.perm)),)


def _reduce(ts, a):
    (t,) = ts
    if a.kind not in ("sum", "max", "min"):
        raise _fail("reduce", f"kind must be sum, max or min, got {a.kind!r}")
    if not isinstance(t, TileType) or not 0 <= a.axis < len(t.shape):
        raise _fail("reduce", f"axis {a.axis} out of range for {t}")
    shape = t.shape[: a.axis] + t.shape[a.axis + 1 :]
    return (TileType(t.dtype, shape) if shape else ScalarType(t.dtype),)


def _dot(ts, a):
    x, y, acc = ts
    if not all(isinstance(t, TileType) and len(t.shape) == 2 for t in ts):
        raise _fail("dot", f"needs 2-D tiles, got {x}, {y}, {acc}")
    m, k = x.shape
    k2, n = y.shape
    if k != k2 or acc.shape != (m, n):
        raise _fail("dot", f"shapes do not chain: {x} @ {y} + {acc}")
    if not (is_machine(x.dtype) and is_machine(y.dtype)):
        raise _fail("dot", "operands must be cast to machine types first")
    if is_int(acc.dtype) and not (is_int(x.dtype) and is_int(y.dtype)):
        raise _fail("dot", f"an integer accumulator ({acc.dtype}) takes integer operands, "
                           f"got {x.dtype} and {y.dtype}")
    if x.dtype in BYTES and y.dtype in BYTES and acc.dtype != "i32":
        raise _fail("dot", f"a dot of 8-bit integers ({x.dtype}, {y.dtype}) accumulates in i32, "
                           f"got {acc.dtype}")
    return (acc,)


BYTES = ("i8", "u8")  # a dot of these into i32 is the integer dot (VNNI on x86)


def _window(t: Type, sizes: tuple[int, ...], nstarts: int, op: str) -> tuple[int, ...]:
    if op.endswith("_shared"):  # load_shared / store_shared: a window of a shared tile
        if not (isinstance(t, TileType) and t.space == "shared"):
            raise _fail(op, f"first operand must be a shared tile, got {t}")
    elif not isinstance(t, TensorType):
        raise _fail(op, f"first operand must be a tensor, got {t}")
    if len(sizes) != len(t.shape) or nstarts != len(t.shape):
        raise _fail(op, f"{t} has {len(t.shape)} dims; got {nstarts} starts, {len(sizes)} sizes")
    if any(s < 0 for s in sizes):
        raise _fail(op, f"sizes must be >= 0, got {list(sizes)}")
    return tuple(s for s in sizes if s > 0)


def _linear(ts, a, op: str) -> int:
    """How many linear operands (offset, row strides) follow the starts: checked i64 scalars."""
    if not getattr(a, "linear", False):
        return 0
    n = len(ts[0].shape) if isinstance(ts[0], TensorType) else 0
    extra = ts[1 + n : 1 + 2 * n]
    if not n or len(extra) != n or any(t != ScalarType("i64") for t in extra):
        raise _fail(op, f"linear needs {n} i64 scalars (offset, row strides) after the starts")
    return n


def _mask(ts, a, shape: tuple[int, ...], op: str) -> None:
    if not a.masked:
        return
    m = ts[-1]
    if m.dtype != "bool" or broadcast_shapes(op, _shape(m), shape) != shape:
        raise _fail(op, f"mask must be a bool tile that broadcasts to {list(shape)}, got {m}")


def _loader(op: str) -> Infer:
    def infer(ts, a):
        shape = _window(ts[0], a.sizes, len(ts) - 1 - a.masked - _linear(ts, a, op), op)
        _mask(ts, a, shape, op)
        return (TileType(ts[0].dtype, shape, "reg", a.layout) if shape
                else ScalarType(ts[0].dtype),)
    return infer


_load = _loader("load")


def _gather(ts, a):
    """tensor, index tile [R], then one i64 start per other dim: a window whose `axis` takes the
    index tile's rows (numpy's t[idx, i :+ n]: R in that dim's place)."""
    t, idx = ts[0], ts[1]
    if not (isinstance(t, TensorType) or isinstance(t, TileType) and t.space == "shared"):
        raise _fail("gather", f"first operand must be a tensor or a shared tile, got {t}")
    if not (isinstance(idx, TileType) and len(idx.shape) == 1 and is_int(idx.dtype)):
        raise _fail("gather", f"the index must be a 1-D integer tile, got {idx}")
    if not 0 <= a.axis < len(t.shape) or a.sizes[a.axis] != idx.shape[0]:
        raise _fail("gather", f"axis {a.axis} of {t} does not take an index of {idx}")
    shape = _window(t, a.sizes, len(ts) - 1,
                    "gather_shared" if isinstance(t, TileType) else "gather")
    if any(x != ScalarType("i64") for x in ts[2:]):
        raise _fail("gather", "the other dims' starts must be i64 scalars")
    return (TileType(t.dtype, shape, "reg"),)


def _load_codes(ts, a):
    nstarts = len(ts) - 1 - a.masked - _linear(ts, a, "load_codes")
    shape = _window(ts[0], a.sizes, nstarts, "load_codes")
    _mask(ts, a, shape, "load_codes")
    return (TileType(a.dtype, shape),)


def _storer(op: str) -> Infer:
    def infer(ts, a):
        shape = _window(ts[0], a.sizes, len(ts) - 2 - a.masked - _linear(ts, a, op), op)
        _mask(ts, a, shape, op)
        v = ts[-1 - a.masked]
        if v.dtype != ts[0].dtype:
            where = "the shared tile" if op == "store_shared" else "tensor"
            raise _fail(op, f"value is {v.dtype}, {where} holds {ts[0].dtype}")
        if broadcast_shapes(op, _shape(v), shape) != shape:
            raise _fail(op, f"value {v} does not fit window {list(shape)}")
        return ()
    return infer


_store = _storer("store")


def _view(ts, a):
    """Same bits, another element type: the last dim rescales so the bit count is kept."""
    (t,) = ts
    if not isinstance(t, TileType):
        raise _fail("view", f"needs a tile, got {t}")
    src, dst = _bits_of(t.dtype), _bits_of(a.dtype)
    total = t.shape[-1] * src
    if total % dst:
        raise _fail("view", f"{t} has {total} bits per row, not a whole number of "
                    f"{a.dtype} ({dst}-bit) values")
    return (TileType(a.dtype, t.shape[:-1] + (total // dst,)),)


def _relayout(ts, a):
    (t,) = ts
    if not isinstance(t, TileType):
        raise _fail("relayout", f"needs a tile, got {t}")
    return (TileType(t.dtype, t.shape, t.space, a.layout),)


def _lut(ts, a):
    (t,) = ts
    if not is_int(t.dtype):
        raise _fail("lut", f"index must be an integer tile, got {t}")
    return _cast(ts, a)


def _for(ts, a):
    if any(t != ScalarType("i64") for t in ts[:3]):
        raise _fail("for", "start, stop and step must be i64")
    return ts[3:]


def _if(ts, a):
    if ts[0] != ScalarType("bool"):
        raise _fail("if", f"condition must be a bool scalar, got {ts[0]}")
    return ts[1:]


def _none(ts, a):
    return ()


def _alloc_shared(ts, a):
    if not a.shape or any(d < 1 for d in a.shape):
        raise _fail("alloc_shared", f"tile dims must be >= 1, got {list(a.shape)}")
    return (TileType(a.dtype, tuple(a.shape), "shared", a.layout),)


def _from_codes(ts, a):
    (t,) = ts
    if not is_int(t.dtype) or is_machine(a.dtype):
        raise _fail("from_codes", f"needs integer codes and a format, got {t} -> {a.dtype}")
    return _cast(ts, a)


def _store_codes(ts, a):
    shape = _window(ts[0], a.sizes, len(ts) - 2 - a.masked, "store_codes")
    _mask(ts, a, shape, "store_codes")
    if is_machine(ts[0].dtype) or not is_int(ts[-1 - a.masked].dtype):
        raise _fail("store_codes", f"needs a packed tensor and integer codes, got {ts[0]}")
    return ()


_BINARY = ("add", "sub", "mul", "div", "rem", "min", "max", "pow")
_BITWISE = ("and", "or", "xor", "shl", "shr")
_COMPARE = ("lt", "le", "gt", "ge", "eq", "ne")
_UNARY = ("neg", "abs")
_UNARY_FLOAT = ("exp", "log", "sqrt", "rsqrt", "tanh", "sin", "cos", "floor", "erf", "sigmoid")

OPS: dict[str, OpDef] = {}


def _def(name: str, attrs: type[Attrs], infer: Infer, regions: int = 0) -> None:
    OPS[name] = OpDef(name, attrs, infer, regions)


for _n in _BINARY + _UNARY:
    _def(_n, VecAttrs, _elementwise(_n, None))
for _n in _BITWISE + ("bnot",):
    _def(_n, VecAttrs, _elementwise(_n, None, "int"))
for _n in _UNARY_FLOAT:
    _def(_n, VecAttrs, _elementwise(_n, None, "float"))
for _n in _COMPARE:
    _def(_n, VecAttrs, _elementwise(_n, lambda dt: "bool"))
_def("const", ConstAttrs, _const)
_def("block_id", AxisAttrs, _block_id)
_def("full", FullAttrs, _full)
_def("arange", ArangeAttrs, _arange)
_def("cast", CastAttrs, _cast_op)
_def("bitcast", CastAttrs, _cast)
_def("codes", CastAttrs, _codes)
_def("where", VecAttrs, _where)
_def("reshape", ShapeAttrs, _reshape)
_def("broadcast", ShapeAttrs, _broadcast)
_def("transpose", PermAttrs, _transpose)
_def("reduce", ReduceAttrs, _reduce)
_def("dot", Attrs, _dot)
_def("load", MemAttrs, _load)
_def("load_codes", CodesAttrs, _load_codes)
_def("gather", GatherAttrs, _gather)
_def("store", MemAttrs, _store)
_def("lut", LutAttrs, _lut)
_def("relayout", LayoutAttrs, _relayout)
_def("view", CastAttrs, _view)
_def("for", ForAttrs, _for, regions=1)
_def("if", Attrs, _if, regions=2)
_def("yield", Attrs, _none)
_def("alloc_shared", SharedAttrs, _alloc_shared)
_def("load_shared", MemAttrs, _loader("load_shared"))
_def("store_shared", MemAttrs, _storer("store_shared"))
_def("sync", Attrs, _none)
_def("from_codes", CastAttrs, _from_codes)
_def("philox", VecAttrs, _philox)
_def("store_codes", CodesAttrs, _store_codes)

# the only ops that take a shared tile (memory, not a value) as an operand: their first
SHARED_OPERAND = frozenset({"load_shared", "store_shared", "gather"})


def check_shared_operands(opcode: str, types: tuple[Type, ...]) -> None:
    """Raise unless shared tiles appear only where an op reads or writes them as memory."""
    for t in types[1:] if opcode in SHARED_OPERAND else types:
        if isinstance(t, TileType) and t.space == "shared":
            raise _fail(opcode, f"an operand is a shared tile ({t}), which is memory, not a "
                        "value; read it with load(s[...]) first")

ELEMENTWISE = frozenset(_BINARY + _UNARY + _BITWISE + ("bnot",) + _UNARY_FLOAT + _COMPARE)
BINARY = frozenset(_BINARY + _BITWISE + _COMPARE)


def attr_items(a: Attrs) -> list[tuple[str, object]]:
    """The attributes of an op, sorted by name (the printed order); late attributes only
    when set."""
    return sorted((f.name, getattr(a, f.name)) for f in fields(a)
                  if not (f.metadata.get("late") and getattr(a, f.name) == f.default))


def make_attrs(opcode: str, values: dict[str, object]) -> Attrs:
    cls = OPS[opcode].attrs
    names = {f.name for f in fields(cls)}
    if set(values) - names:
        raise VerifyError(f"{opcode}: unknown attributes {sorted(set(values) - names)}")
    return cls(**values)
