"""Nested integer tuples (CuTe's IntTuple): the shapes, strides and coordinates of layouts.

An IntTuple is a Python int or a tuple of IntTuples. Coordinates map to indices
colexicographically (the leftmost mode is fastest), as in CuTe.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import TypeAlias

IntTuple: TypeAlias = "int | tuple[IntTuple, ...]"


def is_int(x: object) -> bool:
    """True for Python/numpy integers (bool excluded)."""
    if isinstance(x, bool):
        return False
    try:
        operator.index(x)
    except TypeError:
        return False
    return not isinstance(x, (tuple, list))


def is_tuple(x: object) -> bool:
    return isinstance(x, tuple)


def normalize(x: object, what: str, *, minimum: int = 0) -> IntTuple:
    """Convert lists to tuples and integer-likes to int; raise ValueError on anything else."""
    if isinstance(x, (tuple, list)):
        return tuple(normalize(e, what, minimum=minimum) for e in x)
    if not is_int(x):
        raise ValueError(f"{what}: expected a nested tuple of integers, got {x!r}")
    v = operator.index(x)
    if v < minimum:
        raise ValueError(f"{what}: entries must be integers >= {minimum}, got {v}")
    return v


def congruent(a: IntTuple, b: IntTuple) -> bool:
    """Same nesting profile."""
    if is_tuple(a) and is_tuple(b):
        return len(a) == len(b) and all(congruent(x, y) for x, y in zip(a, b, strict=False))
    return not is_tuple(a) and not is_tuple(b)


def flatten(t: IntTuple) -> tuple[int, ...]:
    if is_tuple(t):
        return tuple(x for e in t for x in flatten(e))
    return (t,)


def product(t: IntTuple) -> int:
    if is_tuple(t):
        p = 1
        for e in t:
            p *= product(e)
        return p
    return t


def depth(t: IntTuple) -> int:
    if is_tuple(t):
        return 1 + max((depth(e) for e in t), default=0)
    return 0


def rank(t: IntTuple) -> int:
    return len(t) if is_tuple(t) else 1


def transform_leaf(t: IntTuple, f: Callable[[int], int]) -> IntTuple:
    if is_tuple(t):
        return tuple(transform_leaf(e, f) for e in t)
    return f(t)


def prefix_product(shape: IntTuple, init: int = 1) -> IntTuple:
    """Compact column-major strides for `shape` (CuTe's LayoutLeft)."""
    if is_tuple(shape):
        out = []
        for e in shape:
            out.append(prefix_product(e, init))
            init *= product(e)
        return tuple(out)
    return init


def ceil_div(a: IntTuple, b: IntTuple) -> IntTuple:
    """CuTe ceil_div: a tuple is divided by folding b over its modes."""
    if is_tuple(a):
        if is_tuple(b):
            return tuple(ceil_div(x, y) for x, y in zip(a, b, strict=False))
        out = []
        for ai in a:
            out.append(ceil_div(ai, b))
            b = ceil_div(b, product(ai))
        return tuple(out)
    if is_tuple(b):
        return ceil_div(a, product(b))
    return (a + b - 1) // b


def crd2idx(crd: IntTuple, shape: IntTuple, stride: IntTuple) -> int:
    """Coordinate -> index. An int coordinate into a tuple shape is split colexicographically;
    the last mode takes whatever is left (so indices past the size continue in it)."""
    if is_tuple(crd):
        if not is_tuple(shape) or len(crd) != len(shape):
            raise ValueError(f"coordinate {fmt(crd)} does not fit shape {fmt(shape)}")
        return sum(crd2idx(c, s, d) for c, s, d in zip(crd, shape, stride, strict=False))
    if is_tuple(shape):
        result = 0
        for s, d in zip(shape[:-1], stride[:-1], strict=False):
            n = product(s)
            result += crd2idx(crd % n, s, d)
            crd //= n
        return result + crd2idx(crd, shape[-1], stride[-1])
    return crd * stride


def idx2crd(idx: int, shape: IntTuple) -> IntTuple:
    """Index -> natural coordinate of `shape` (colexicographic); the last mode is unbounded."""
    if is_tuple(shape):
        out = []
        for i, s in enumerate(shape):
            n = product(s)
            if i == len(shape) - 1:
                out.append(idx2crd(idx, s))
            else:
                out.append(idx2crd(idx % n, s))
                idx //= n
        return tuple(out)
    return idx


def fmt(t: IntTuple) -> str:
    """CuTe's printed form: (4,(2,3)) without spaces."""
    if is_tuple(t):
        return "(" + ",".join(fmt(e) for e in t) + ")"
    return str(t)
