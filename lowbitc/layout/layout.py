"""CuTe layouts: a shape and a congruent stride, read as a function from coordinates to indices.

`Layout((4,8),(8,1))` prints as `(4,8):(8,1)`; it is frozen, hashable and equal by value.
Semantics follow the C++ CuTe library (see include/cute/layout.hpp).
"""

from __future__ import annotations

from lowbitc.errors import UserArgumentError
from lowbitc.layout import inttuple as it
from lowbitc.layout.inttuple import IntTuple


class Layout:
    """A CuTe layout `shape:stride`; call it with an int index or a coordinate."""

    __slots__ = ("shape", "stride", "_hash")

    shape: IntTuple
    stride: IntTuple

    def __init__(self, shape: object, stride: object = None):
        try:
            s = it.normalize(shape, "shape", minimum=1)
            d = it.prefix_product(s) if stride is None else it.normalize(stride, "stride")
        except ValueError as e:
            raise UserArgumentError(
                f"Layout(shape={shape!r}, stride={stride!r}): {e}") from None
        if not it.congruent(s, d):
            raise UserArgumentError(
                f"Layout(shape={shape!r}, stride={stride!r}): shape {it.fmt(s)} and stride "
                f"{it.fmt(d)} are not congruent (same nesting expected)")
        object.__setattr__(self, "shape", s)
        object.__setattr__(self, "stride", d)
        object.__setattr__(self, "_hash", hash((s, d)))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Layout is immutable")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Layout):
            return NotImplemented
        return self.shape == other.shape and self.stride == other.stride

    def __hash__(self) -> int:
        return self._hash

    def __str__(self) -> str:
        return f"{it.fmt(self.shape)}:{it.fmt(self.stride)}"

    def __repr__(self) -> str:
        return f"Layout({it.fmt(self.shape)}, {it.fmt(self.stride)})"

    def __call__(self, *coord: object) -> int:
        """Index of a coordinate; an int is a 1-D coordinate (past `size` the last mode
        continues, as in C++ CuTe)."""
        c = coord[0] if len(coord) == 1 else coord
        try:
            c = it.normalize(c, "coordinate")
        except ValueError as e:
            raise UserArgumentError(f"{self}({c!r}): {e}") from None
        try:
            return it.crd2idx(c, self.shape, self.stride)
        except ValueError as e:
            raise UserArgumentError(f"{self}: {e}") from None

    def __len__(self) -> int:
        return it.rank(self.shape)

    def __getitem__(self, i: int) -> Layout:
        """Sub-layout of mode i (a rank-1 layout with an int shape is its own mode 0)."""
        if it.is_tuple(self.shape):
            return Layout(self.shape[i], self.stride[i])
        if i in (0, -1):
            return self
        raise IndexError(f"mode {i} of rank-1 layout {self}")

    def modes(self) -> tuple[Layout, ...]:
        return tuple(self[i] for i in range(len(self)))

    def size(self) -> int:
        return it.product(self.shape)

    def cosize(self) -> int:
        return self(self.size() - 1) + 1

    def coord(self, idx: int) -> IntTuple:
        """Natural coordinate of 1-D index `idx` in this layout's shape."""
        return it.idx2crd(idx, self.shape)


Tiler = "Layout | int | None | tuple"


def as_layout(x: object, op: str) -> Layout:
    """Accept a Layout or an int n (meaning n:1)."""
    if isinstance(x, Layout):
        return x
    if it.is_int(x):
        return Layout(x)
    raise UserArgumentError(f"{op}: expected a Layout or an int, got {x!r}")


def make_layout(*layouts: Layout) -> Layout:
    """Concatenate layouts as the modes of a new layout."""
    if len(layouts) == 1 and isinstance(layouts[0], (tuple, list)):
        layouts = tuple(layouts[0])
    ls = [as_layout(x, "make_layout") for x in layouts]
    return Layout(tuple(x.shape for x in ls), tuple(x.stride for x in ls))


def size(x: Layout | IntTuple) -> int:
    """Number of elements in the domain (of a layout or a shape)."""
    if isinstance(x, Layout) or hasattr(x, "size"):
        return x.size()
    return it.product(it.normalize(x, "size"))


def cosize(layout: Layout) -> int:
    """One past the largest index the layout produces on its domain."""
    return layout.cosize()


def rank(x: Layout | IntTuple) -> int:
    return it.rank(x.shape if isinstance(x, Layout) else x)


def depth(x: Layout | IntTuple) -> int:
    return it.depth(x.shape if isinstance(x, Layout) else x)


def flatten(layout: Layout) -> Layout:
    s, d = it.flatten(layout.shape), it.flatten(layout.stride)
    return Layout(s[0], d[0]) if len(s) == 1 else Layout(s, d)


def append(layout: Layout, n: int) -> Layout:
    """Pad `layout` with 1:0 modes to rank n."""
    ms = list(layout.modes())
    if len(ms) >= n:
        return layout
    return make_layout(*(ms + [Layout(1, 0)] * (n - len(ms))))


def bw_coalesce(shapes: list[int], strides: list[int], last_s: int, last_d: int) -> Layout:
    """CuTe's detail::bw_coalesce: merge flat modes right to left onto (last_s, last_d)."""
    ns, nd = [last_s], [last_d]
    for s, d in zip(reversed(shapes), reversed(strides), strict=False):
        if s == 1:
            continue
        if ns[0] == 1:
            ns[0], nd[0] = s, d
        elif s * d == nd[0]:
            ns[0], nd[0] = s * ns[0], d
        else:
            ns.insert(0, s)
            nd.insert(0, d)
    if len(ns) == 1:
        return Layout(1, 0) if ns[0] == 1 else Layout(ns[0], nd[0])
    return Layout(tuple(ns), tuple(nd))


def coalesce(layout: Layout, profile: IntTuple | None = None) -> Layout:
    """Fewest modes with the same function on the domain; with a tuple `profile`,
    coalesce each mode separately (by-mode coalesce)."""
    if it.is_tuple(profile):
        ms = layout.modes()
        if len(profile) > len(ms):
            raise UserArgumentError(
                f"coalesce: profile {it.fmt(profile)} has more modes than layout {layout}")
        out = [coalesce(m, p) for m, p in zip(ms, profile, strict=False)] + list(ms[len(profile):])
        return make_layout(*out)
    s, d = list(it.flatten(layout.shape)), list(it.flatten(layout.stride))
    return bw_coalesce(s[:-1], d[:-1], s[-1], d[-1])


def coalesce_x(layout: Layout) -> Layout:
    """Coalesce that also keeps the function past the size (CuTe's detail::coalesce_x)."""
    s, d = list(it.flatten(layout.shape)), list(it.flatten(layout.stride))
    last_s = 2 if s[-1] == 1 else s[-1]
    return bw_coalesce(s[:-1], d[:-1], last_s, d[-1])


def filter_layout(layout: Layout) -> Layout:
    """Drop stride-0 and size-1 modes, then coalesce (CuTe's filter)."""
    flat = zip(it.flatten(layout.shape), it.flatten(layout.stride), strict=True)
    pairs = [(s, d) for s, d in flat if s != 1 and d != 0]
    if not pairs:
        return Layout(1, 0)
    return coalesce(Layout(tuple(p[0] for p in pairs), tuple(p[1] for p in pairs)))
