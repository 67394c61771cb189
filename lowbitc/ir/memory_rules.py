"""The type rules of the tile-IR ops that read and write memory (tensors and shared tiles):
loads, stores, gathers and shared allocations; windows, masks and linear operands checked.
"""

from __future__ import annotations

from lowbitc.ir.type_rules import Infer, broadcast_shapes, fail, shape_of
from lowbitc.ir.types import ScalarType, TensorType, TileType, Type, is_int, is_machine


def _window(t: Type, sizes: tuple[int, ...], nstarts: int, op: str) -> tuple[int, ...]:
    if op.endswith("_shared"):  # load_shared / store_shared: a window of a shared tile
        if not (isinstance(t, TileType) and t.space == "shared"):
            raise fail(op, f"first operand must be a shared tile, got {t}")
    elif not isinstance(t, TensorType):
        raise fail(op, f"first operand must be a tensor, got {t}")
    if len(sizes) != len(t.shape) or nstarts != len(t.shape):
        raise fail(op, f"{t} has {len(t.shape)} dims; got {nstarts} starts, {len(sizes)} sizes")
    if any(s < 0 for s in sizes):
        raise fail(op, f"sizes must be >= 0, got {list(sizes)}")
    return tuple(s for s in sizes if s > 0)


def _linear(ts, a, op: str) -> int:
    """How many linear operands (offset, row strides) follow the starts: checked i64 scalars."""
    if not getattr(a, "linear", False):
        return 0
    n = len(ts[0].shape) if isinstance(ts[0], TensorType) else 0
    extra = ts[1 + n : 1 + 2 * n]
    if not n or len(extra) != n or any(t != ScalarType("i64") for t in extra):
        raise fail(op, f"linear needs {n} i64 scalars (offset, row strides) after the starts")
    return n


def _mask(ts, a, shape: tuple[int, ...], op: str) -> None:
    if not a.masked:
        return
    m = ts[-1]
    if m.dtype != "bool" or broadcast_shapes(op, shape_of(m), shape) != shape:
        raise fail(op, f"mask must be a bool tile that broadcasts to {list(shape)}, got {m}")


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
        raise fail("gather", f"first operand must be a tensor or a shared tile, got {t}")
    if not (isinstance(idx, TileType) and len(idx.shape) == 1 and is_int(idx.dtype)):
        raise fail("gather", f"the index must be a 1-D integer tile, got {idx}")
    if not 0 <= a.axis < len(t.shape) or a.sizes[a.axis] != idx.shape[0]:
        raise fail("gather", f"axis {a.axis} of {t} does not take an index of {idx}")
    shape = _window(t, a.sizes, len(ts) - 1,
                    "gather_shared" if isinstance(t, TileType) else "gather")
    if any(x != ScalarType("i64") for x in ts[2:]):
        raise fail("gather", "the other dims' starts must be i64 scalars")
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
            raise fail(op, f"value is {v.dtype}, {where} holds {ts[0].dtype}")
        if broadcast_shapes(op, shape_of(v), shape) != shape:
            raise fail(op, f"value {v} does not fit window {list(shape)}")
        return ()
    return infer


_store = _storer("store")


def _alloc_shared(ts, a):
    if not a.shape or any(d < 1 for d in a.shape):
        raise fail("alloc_shared", f"tile dims must be >= 1, got {list(a.shape)}")
    return (TileType(a.dtype, tuple(a.shape), "shared", a.layout),)


def _store_codes(ts, a):
    shape = _window(ts[0], a.sizes, len(ts) - 2 - a.masked, "store_codes")
    _mask(ts, a, shape, "store_codes")
    if is_machine(ts[0].dtype) or not is_int(ts[-1 - a.masked].dtype):
        raise fail("store_codes", f"needs a packed tensor and integer codes, got {ts[0]}")
    return ()


MEMORY_RULES: dict[str, Infer] = {
    "load": _load, "load_codes": _load_codes, "gather": _gather,
    "store": _store, "alloc_shared": _alloc_shared,
    "load_shared": _loader("load_shared"), "store_shared": _storer("store_shared"),
    "store_codes": _store_codes,
}  # fmt: skip
