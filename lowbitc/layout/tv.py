"""Thread-value layouts of register tiles (Tilus' normal form on top of the CuTe algebra).

A TVLayout says which thread holds which tile element in which of its registers. Each tile
dimension is split into modes (row-major inside the dimension: the first mode is outermost);
`spatial_modes` lists, slowest first, the modes that select the thread (a negative entry -k
means k threads holding the same values), `local_modes` those that select the register.
Pieces: `spatial(4, 8)` spreads 32 threads row-major over a 4x8 tile, `local(2, 2)` gives one
thread a 2x2 block, `replicated(2)` duplicates; `a * b` is their Kronecker product (b is the
inner, fast part: coord = ca * shape(b) + cb, thread = ta * T(b) + tb, value = va * V(b) + vb)
and `a / b` undoes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product as cartesian

from lowbitc.errors import UserArgumentError
from lowbitc.layout import inttuple as it
from lowbitc.layout.layout import Layout, coalesce


def _prod(xs) -> int:
    p = 1
    for x in xs:
        p *= x
    return p


def _ravel(idx: list[int], shape: list[int]) -> int:
    out = 0
    for i, s in zip(idx, shape, strict=False):
        out = out * s + i
    return out


def _unravel(x: int, shape: list[int]) -> list[int]:
    out = []
    for s in reversed(shape):
        out.append(x % s)
        x //= s
    return out[::-1]


class _Work:
    """Mutable mode lists (ids into `sizes`) used while building or rewriting a layout."""

    def __init__(self, dims: list[list[int]], sizes: list[int], spatial: list[int],
                 local: list[int]):
        self.dims, self.sizes, self.spatial, self.local = dims, sizes, spatial, local

    @classmethod
    def of(cls, tv: TVLayout) -> _Work:
        dims = [list(g) for g in tv.dim_modes]
        return cls(dims, list(tv.mode_shape), list(tv.spatial_modes), list(tv.local_modes))

    def split(self, m: int, outer: int) -> tuple[int, int]:
        """Split mode m into (outer, inner) modes; returns their ids."""
        inner = self.sizes[m] // outer
        self.sizes[m] = outer
        self.sizes.append(inner)
        n = len(self.sizes) - 1
        for lst in self.dims + [self.spatial, self.local]:
            if m in lst:
                lst.insert(lst.index(m) + 1, n)
        return m, n

    def build(self, shape: tuple[int, ...]) -> TVLayout:
        order = [m for d in self.dims for m in d]
        new = {m: i for i, m in enumerate(order)}
        return TVLayout(shape, tuple(self.sizes[m] for m in order),
                        tuple(new[m] if m >= 0 else m for m in self.spatial),
                        tuple(new[m] for m in self.local))


def _canonical(shape, mode_shape, spatial, local):
    """Drop size-1 modes, merge neighbours that act as one mode, merge replications."""
    dims, pos = [], 0
    for s in shape:
        group, p = [], 1
        while p < s:
            if pos >= len(mode_shape):
                raise ValueError(f"modes {mode_shape} do not fill shape {shape}")
            group.append(pos)
            p *= mode_shape[pos]
            pos += 1
        if p != s:
            raise ValueError(f"modes {mode_shape} do not split shape {shape} by dimension")
        dims.append(group)
    if any(m != 1 for m in mode_shape[pos:]):
        raise ValueError(f"modes {mode_shape} are larger than shape {shape}")
    used = [m for m in spatial if m >= 0] + list(local)
    if sorted(used) != list(range(len(mode_shape))):
        raise ValueError("every mode must appear exactly once in spatial_modes or local_modes")
    w = _Work(dims, list(mode_shape), list(spatial), list(local))
    w.spatial = [m for m in w.spatial if not (m == -1 or (m >= 0 and w.sizes[m] == 1))]
    w.local = [m for m in w.local if w.sizes[m] != 1]
    w.dims = [[m for m in d if w.sizes[m] != 1] for d in w.dims]
    changed = True
    while changed:
        changed = False
        for d in w.dims:
            for a, b in zip(d, d[1:], strict=False):
                for lst in (w.spatial, w.local):
                    if a in lst and lst.index(a) + 1 < len(lst) and lst[lst.index(a) + 1] == b:
                        w.sizes[a] *= w.sizes[b]
                        d.remove(b)
                        lst.remove(b)
                        changed = True
                        break
                if changed:
                    break
            if changed:
                break
        for i in range(len(w.spatial) - 1):
            if w.spatial[i] < 0 and w.spatial[i + 1] < 0:
                w.spatial[i:i + 2] = [-(w.spatial[i] * w.spatial[i + 1])]
                changed = True
                break
    return w


@dataclass(frozen=True, slots=True)
class TVLayout:
    """Which thread and register hold each element of a tile; equal by function."""

    shape: tuple[int, ...]
    mode_shape: tuple[int, ...]
    spatial_modes: tuple[int, ...]
    local_modes: tuple[int, ...]

    def __post_init__(self) -> None:
        try:
            shape = tuple(it.normalize(self.shape, "shape", minimum=1))
            modes = tuple(it.normalize(self.mode_shape, "mode_shape", minimum=1))
            spatial = tuple(it.normalize(self.spatial_modes, "spatial_modes", minimum=-2**62))
            local = tuple(it.normalize(self.local_modes, "local_modes"))
            if any(not it.is_int(s) for s in shape + modes):
                raise ValueError("shape and mode_shape must be flat tuples of ints")
            w = _canonical(shape, modes, spatial, local)
        except (ValueError, TypeError) as e:
            raise UserArgumentError(f"TVLayout(shape={self.shape!r}, "
                                    f"mode_shape={self.mode_shape!r}, spatial_modes="
                                    f"{self.spatial_modes!r}, local_modes="
                                    f"{self.local_modes!r}): {e}") from None
        order = [m for d in w.dims for m in d]
        new = {m: i for i, m in enumerate(order)}
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "mode_shape", tuple(w.sizes[m] for m in order))
        object.__setattr__(self, "spatial_modes",
                           tuple(new[m] if m >= 0 else m for m in w.spatial))
        object.__setattr__(self, "local_modes", tuple(new[m] for m in w.local))

    # -- structure ---------------------------------------------------------------------
    @property
    def dim_modes(self) -> tuple[tuple[int, ...], ...]:
        """Mode indices of each tile dimension, outermost first."""
        out, pos = [], 0
        for s in self.shape:
            group, p = [], 1
            while p < s:
                group.append(pos)
                p *= self.mode_shape[pos]
                pos += 1
            out.append(tuple(group))
        return tuple(out)

    @property
    def thread_shape(self) -> tuple[int, ...]:
        return tuple(self.mode_shape[m] if m >= 0 else -m for m in self.spatial_modes)

    @property
    def value_shape(self) -> tuple[int, ...]:
        return tuple(self.mode_shape[m] for m in self.local_modes)

    @property
    def num_threads(self) -> int:
        return _prod(self.thread_shape)

    @property
    def num_values(self) -> int:
        return _prod(self.value_shape)

    @property
    def rank(self) -> int:
        return len(self.shape)

    def size(self) -> int:
        return _prod(self.shape)

    # -- the map (thread, value) <-> coordinate ----------------------------------------
    def __call__(self, thread: int, value: int) -> tuple[int, ...]:
        """Tile coordinate of register `value` of `thread`."""
        if not (0 <= thread < self.num_threads and 0 <= value < self.num_values):
            raise UserArgumentError(
                f"{self}: (thread={thread}, value={value}) outside "
                f"{self.num_threads} threads x {self.num_values} values")
        idx = [0] * len(self.mode_shape)
        threads = _unravel(thread, list(self.thread_shape))
        for m, i in zip(self.spatial_modes, threads, strict=True):
            if m >= 0:
                idx[m] = i
        for m, i in zip(self.local_modes, _unravel(value, list(self.value_shape)), strict=False):
            idx[m] = i
        return tuple(_ravel([idx[m] for m in g], [self.mode_shape[m] for m in g])
                     for g in self.dim_modes)

    def owners(self, *coord: int) -> list[tuple[int, int]]:
        """Every (thread, value) that holds the element at `coord`, by thread."""
        if len(coord) == 1 and isinstance(coord[0], tuple):
            coord = coord[0]
        inside = all(0 <= c < s for c, s in zip(coord, self.shape, strict=False))
        if len(coord) != self.rank or not inside:
            raise UserArgumentError(f"{self}: coordinate {coord} outside shape {self.shape}")
        idx = [0] * len(self.mode_shape)
        for c, g in zip(coord, self.dim_modes, strict=False):
            for m, i in zip(g, _unravel(c, [self.mode_shape[m] for m in g]), strict=False):
                idx[m] = i
        value = _ravel([idx[m] for m in self.local_modes], list(self.value_shape))
        choices = [range(-m) if m < 0 else (idx[m],) for m in self.spatial_modes]
        return [(_ravel(list(t), list(self.thread_shape)), value) for t in cartesian(*choices)]

    # -- algebra -----------------------------------------------------------------------
    def __mul__(self, other: TVLayout) -> TVLayout:
        if not isinstance(other, TVLayout):
            return NotImplemented
        return kron(self, other)

    def __truediv__(self, other: TVLayout) -> TVLayout:
        if not isinstance(other, TVLayout):
            return NotImplemented
        return divide(self, other)

    def to_cute(self) -> Layout:
        """The CuTe layout (thread, value) -> row-major index into the tile."""
        dim_stride = [_prod(self.shape[i + 1:]) for i in range(self.rank)]
        stride = [0] * len(self.mode_shape)
        for g, ds in zip(self.dim_modes, dim_stride, strict=False):
            for k, m in enumerate(g):
                stride[m] = ds * _prod(self.mode_shape[n] for n in g[k + 1:])

        def part(modes, sizes):
            s = [sz for sz in reversed(sizes)]
            d = [stride[m] if m >= 0 else 0 for m in reversed(modes)]
            if not s:
                return 1, 0
            return (s[0], d[0]) if len(s) == 1 else (tuple(s), tuple(d))

        (ts, td), (vs, vd) = (part(self.spatial_modes, self.thread_shape),
                              part(self.local_modes, self.value_shape))
        return coalesce(Layout((ts, vs), (td, vd)), (1, 1))

    def __str__(self) -> str:
        return (f"tv({it.fmt(self.shape)}, modes={it.fmt(self.mode_shape)}, "
                f"spatial={it.fmt(self.spatial_modes)}, local={it.fmt(self.local_modes)})")


def spatial(*shape: int) -> TVLayout:
    """One element per thread, threads row-major over the tile."""
    return TVLayout(shape, shape, tuple(range(len(shape))), ())


def local(*shape: int) -> TVLayout:
    """One thread holding the whole tile, registers row-major."""
    return TVLayout(shape, shape, (), tuple(range(len(shape))))


def replicated(n: int, rank: int = 0) -> TVLayout:
    """n threads holding the same (single) element; rank-0 unless `rank` is given."""
    if not it.is_int(n) or n < 1:
        raise UserArgumentError(f"replicated: n must be a positive int, got {n!r}")
    return TVLayout((1,) * rank, (), (-n,), ())


def _padded(tv: TVLayout, rank: int) -> _Work:
    w = _Work.of(tv)
    w.dims = [[] for _ in range(rank - tv.rank)] + w.dims
    return w


def kron(a: TVLayout, b: TVLayout) -> TVLayout:
    """Kronecker product: b tiled inside every element of a (ranks align on the right)."""
    r = max(a.rank, b.rank)
    wa, wb = _padded(a, r), _padded(b, r)
    off = len(wa.sizes)
    sh = lambda ms: [m + off if m >= 0 else m for m in ms]  # noqa: E731
    dims = [da + sh(db) for da, db in zip(wa.dims, wb.dims, strict=False)]
    shape = tuple(x * y for x, y in zip((1,) * (r - a.rank) + a.shape,
                                        (1,) * (r - b.rank) + b.shape, strict=False))
    return _Work(dims, wa.sizes + wb.sizes, wa.spatial + sh(wb.spatial),
                 wa.local + sh(wb.local)).build(shape)


def _align_tail(lst: list[int], other: list[int], pairs: dict[int, int]) -> int:
    """Match b's thread (or value) list, mapped through `pairs`, against the tail of a's
    list `lst` (splitting replication counts as needed); returns where the tail starts."""
    i, j, other = len(lst) - 1, len(other) - 1, list(other)
    while j >= 0:
        if i < 0:
            raise ValueError("the divisor has more thread/value modes")
        x, y = lst[i], other[j]
        if y >= 0 or x >= 0:
            if y < 0 or x != pairs.get(y):
                raise ValueError("thread/value orders differ")
        elif x != y:
            if x % y == 0:
                lst[i:i + 1] = [-(x // y), y]
                i += 1
            elif y % x == 0:
                other[j:j + 1] = [-(y // x), x]
                j += 1
            else:
                raise ValueError("replication counts do not divide")
            continue
        i, j = i - 1, j - 1
    return i + 1


def divide(a: TVLayout, b: TVLayout) -> TVLayout:
    """c with c * b == a; ValueError if b is not an inner factor of a."""
    try:
        padded_b = (1,) * (a.rank - b.rank) + b.shape
        if b.rank > a.rank or any(x % y for x, y in zip(a.shape, padded_b, strict=False)):
            raise ValueError("the divisor's shape does not divide the dividend's")
        wa, wb = _Work.of(a), _padded(b, a.rank)
        pairs: dict[int, int] = {}
        for da, db in zip(wa.dims, wb.dims, strict=False):
            ka, kb = len(da) - 1, len(db) - 1
            while kb >= 0:
                if ka < 0:
                    raise ValueError("the divisor's tile is larger")
                ma, mb = da[ka], db[kb]
                sa, sb = wa.sizes[ma], wb.sizes[mb]
                if sa % sb == 0 and sa != sb:
                    wa.split(ma, sa // sb)
                    ka += 1
                    continue
                if sb % sa == 0 and sa != sb:
                    wb.split(mb, sb // sa)
                    kb += 1
                    continue
                if sa != sb:
                    raise ValueError(f"mode sizes {sa} and {sb} do not divide")
                pairs[mb] = ma
                ka, kb = ka - 1, kb - 1
        s0 = _align_tail(wa.spatial, wb.spatial, pairs)
        l0 = _align_tail(wa.local, wb.local, pairs)
        gone = set(pairs.values())
        wa.spatial, wa.local = wa.spatial[:s0], wa.local[:l0]
        wa.dims = [[m for m in d if m not in gone] for d in wa.dims]
        c = wa.build(tuple(x // y for x, y in zip(a.shape, padded_b, strict=False)))
        if kron(c, b) != a:
            raise ValueError("no quotient reproduces the dividend")
        return c
    except ValueError as e:
        raise UserArgumentError(f"divide({a}, {b}): {e}") from None

