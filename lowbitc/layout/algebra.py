"""CuTe's layout algebra: composition, complement, inverses, divides and products.

Follows the C++ library (include/cute/layout.hpp) where pycute differs: the left operand of
a composition is coalesced with its last mode left unbounded, so `A o B` keeps A's behaviour
past size(A); shape division rounds up (ceil_div) under CuTe's weak divisibility conditions, and
a composition those conditions (or the one below them) do not allow raises ValueError instead of
returning a wrong layout; complement rounds gaps down as C++ does; right_inverse follows strides
from the stride-1 mode, skipping stride-0 modes.
"""

from __future__ import annotations

from lowbitc.errors import UserArgumentError
from lowbitc.layout import inttuple as it
from lowbitc.layout.inttuple import IntTuple
from lowbitc.layout.layout import (
    Layout,
    Tiler,
    append,
    as_layout,
    bw_coalesce,
    coalesce,
    coalesce_x,
    filter_layout,
    make_layout,
)


def _by_mode(op: str, fn, a: Layout, tiler: tuple) -> Layout:
    ms = a.modes()
    if len(tiler) > len(ms):
        raise UserArgumentError(
            f"{op}: tiler {_tiler_str(tiler)} has more modes than layout {a}")
    out = [fn(m, t) for m, t in zip(ms, tiler, strict=False)] + list(ms[len(tiler):])
    return make_layout(*out)


def _tiler_str(t: Tiler) -> str:
    if isinstance(t, tuple):
        return "<" + ",".join(_tiler_str(e) for e in t) + ">"
    return "_" if t is None else str(t)


def _compose_leaf(a: Layout, s: int, d: int, b: Layout, alone: bool) -> Layout:
    """A o s:d for a coalesced (extension-preserving) A and integral s, d: C++ CuTe's
    composition_impl, one fold over A's modes but the last (which is unbounded). `alone`: s:d
    is B's only mode that moves (others have size 1 or stride 0)."""
    if d == 0:
        return Layout(s, 0)
    if not it.is_tuple(a.shape):
        return Layout(s, d * a.stride)
    if s == 1:
        return Layout(1, 0)
    res_s, res_d, rest_s, rest_d = [], [], s, d
    for sh, st in zip(a.shape[:-1], a.stride[:-1], strict=False):
        if rest_s == 1:  # every element placed (rest_d is 1 here): later modes are not reached
            break
        if rest_d % sh == 0:  # the stride steps over this whole mode
            rest_d //= sh
            continue
        if rest_d > sh:  # CuTe's stride divisibility condition
            raise UserArgumentError(
                f"composition({a}, {b}): stride {d} breaks the divisibility condition: "
                f"{rest_d} is neither a multiple of the mode size {sh} nor below it")
        steps = it.ceil_div(sh, rest_d)  # elements of this mode the stride lands on
        new = min(steps, rest_s)
        if rest_s % new != 0:  # CuTe's shape divisibility condition
            raise UserArgumentError(
                f"composition({a}, {b}): size {s} breaks the divisibility condition: "
                f"{rest_s} remaining elements do not fill a mode of size {new} evenly")
        if sh % rest_d != 0 and (rest_s > steps or not alone):  # C++ would be wrong here
            why = (f"the {rest_s} remaining elements run past that mode" if rest_s > steps
                   else "B's other modes add offsets that would cross that mode's end")
            raise UserArgumentError(
                f"composition({a}, {b}): stride {rest_d} does not divide the mode size {sh} "
                f"and {why}")
        res_s.append(new)
        res_d.append(rest_d * st)
        rest_s, rest_d = rest_s // new, 1  # ceil_div(rest_d, sh) == 1 as rest_d < sh
    return bw_coalesce(res_s, res_d, rest_s, rest_d * a.stride[-1])


def _compose_layout(a: Layout, b: Layout) -> Layout:
    flat_a = coalesce_x(a)
    moving = sum(1 for s, d in zip(it.flatten(b.shape), it.flatten(b.stride), strict=False)
                 if s > 1 and d != 0)

    def go(s: IntTuple, d: IntTuple) -> Layout:
        if it.is_tuple(s):
            return make_layout(*(go(si, di) for si, di in zip(s, d, strict=False)))
        return _compose_leaf(flat_a, s, d, b, moving <= 1)

    try:
        return go(b.shape, b.stride)
    except UserArgumentError as e:
        if f"composition({a}, {b})" in e.message:
            raise
        raise UserArgumentError(f"composition({a}, {b}): {e.message}") from None


def composition(a, b: Tiler):
    """R = A o B with R(i) == A(B(i)) for i in B's domain; B may be a layout, an int n (n:1),
    None (keep A) or a tuple of those applied to A's modes one by one."""
    if hasattr(a, "compose"):  # swizzled layouts and other functions of an index
        return a.compose(b)
    a = as_layout(a, "composition")
    if b is None:
        return a
    if isinstance(b, tuple):
        return _by_mode("composition", composition, a, b)
    return _compose_layout(a, as_layout(b, "composition"))


def complement(layout: Layout, cotarget: IntTuple | None = None) -> Layout:
    """The ordered layout of the indices in [0, cotarget) that `layout` does not reach, so that
    (layout, complement) is a bijection onto a range covering the cotarget."""
    layout = as_layout(layout, "complement")
    f = filter_layout(layout)
    if cotarget is None:
        cot: IntTuple = f.cosize()
    else:
        try:
            cot = it.normalize(cotarget, "cotarget", minimum=1)
        except ValueError as e:
            raise UserArgumentError(f"complement({layout}, {cotarget!r}): {e}") from None
    if f.stride == 0:
        return Layout(it.product(cot), 1)
    modes = sorted(zip(it.flatten(f.stride), it.flatten(f.shape), strict=False))
    res_s, res_d, cur = [], [], 1
    for d, s in modes:
        if d < cur:  # C++ CuTe's static_assert: a mode of size 0
            raise UserArgumentError(
                f"complement({layout}, {it.fmt(cot)}): the layout is not injective")
        res_s.append(d // cur)  # rounds down, as C++ does, where d leaves a gap (d % cur != 0)
        res_d.append(cur)
        cur = d * s
    rest = it.product(it.ceil_div(cot, cur))
    result = coalesce(Layout(tuple(res_s + [rest]), tuple(res_d + [cur])))
    if make_layout(layout, result).cosize() < it.product(cot):  # CuTe's postcondition
        raise UserArgumentError(
            f"complement({layout}, {it.fmt(cot)}): the layout's strides leave gaps, and C++'s "
            f"result {result} would leave (layout, complement) short of the cotarget")
    return result


def right_inverse(layout: Layout) -> Layout:
    """R with layout(R(i)) == i for i < size(R), as large as possible."""
    flat = coalesce(as_layout(layout, "right_inverse"))
    shapes, strides = it.flatten(flat.shape), it.flatten(flat.stride)
    rstride = it.flatten(it.prefix_product(flat.shape))
    seq, nxt = [], 1
    while nxt in strides:
        i = strides.index(nxt)
        seq.append(i)
        nxt = shapes[i] * strides[i]
        if nxt == strides[i]:
            break
    if not seq:
        return Layout(1, 0)
    if len(seq) == 1:
        return Layout(shapes[seq[0]], rstride[seq[0]])
    return Layout(tuple(shapes[i] for i in seq), tuple(rstride[i] for i in seq))


def left_inverse(layout: Layout) -> Layout:
    """R with R(layout(i)) == i for injective layouts (stride-0 modes are skipped)."""
    layout = as_layout(layout, "left_inverse")
    return right_inverse(make_layout(layout, complement(layout)))


def logical_divide(a: Layout, tiler: Tiler) -> Layout:
    """A / B = A o (B, complement(B, shape(A))): mode 0 is the tile, mode 1 the tiles."""
    a = as_layout(a, "logical_divide")
    if tiler is None:
        return a
    if isinstance(tiler, tuple):
        return _by_mode("logical_divide", logical_divide, a, tiler)
    b = as_layout(tiler, "logical_divide")
    return composition(a, make_layout(b, complement(b, a.shape)))


def logical_product(a: Layout, tiler: Tiler) -> Layout:
    """A x B = (A, complement(A, size(A)*cosize(B)) o B): A repeated as B says."""
    a = as_layout(a, "logical_product")
    if tiler is None:
        return a
    if isinstance(tiler, tuple):
        return _by_mode("logical_product", logical_product, a, tiler)
    b = as_layout(tiler, "logical_product")
    return make_layout(a, composition(complement(a, a.size() * b.cosize()), b))


def _zip2_by(shape: IntTuple, stride: IntTuple, guide: Tiler, op: str):
    """Gather ((tile...),(rest...)) following the tiler's profile (CuTe's zip2_by)."""
    if isinstance(guide, tuple):
        if not it.is_tuple(shape) or len(guide) > len(shape):
            raise UserArgumentError(f"{op}: tiler {_tiler_str(guide)} does not fit {shape}")
        split = [_zip2_by(shape[i], stride[i], g, op) for i, g in enumerate(guide)]
        extra_s, extra_d = shape[len(guide):], stride[len(guide):]
        return ((tuple(x[0][0] for x in split), tuple(x[0][1] for x in split) + extra_s),
                (tuple(x[1][0] for x in split), tuple(x[1][1] for x in split) + extra_d))
    if guide is None or not it.is_tuple(shape) or len(shape) != 2:
        raise UserArgumentError(f"{op}: tiler {_tiler_str(guide)} must be layouts or ints")
    return (shape[0], shape[1]), (stride[0], stride[1])


def _unzip(result: Layout, tiler: Tiler, op: str) -> Layout:
    (t_s, r_s), (t_d, r_d) = _zip2_by(result.shape, result.stride, tiler, op)
    return Layout((t_s, r_s), (t_d, r_d))


def zipped_divide(a: Layout, tiler: Tiler) -> Layout:
    """((tile modes...), (rest modes..., other modes of A...))."""
    return _unzip(logical_divide(a, tiler), tiler, "zipped_divide")


def tiled_divide(a: Layout, tiler: Tiler) -> Layout:
    """((tile modes...), rest modes..., other modes of A...)."""
    z = zipped_divide(a, tiler)
    return make_layout(z[0], *z[1].modes())


def flat_divide(a: Layout, tiler: Tiler) -> Layout:
    """(tile modes..., rest modes..., other modes of A...)."""
    z = zipped_divide(a, tiler)
    return make_layout(*z[0].modes(), *z[1].modes())


def zipped_product(a: Layout, tiler: Tiler) -> Layout:
    return _unzip(logical_product(a, tiler), tiler, "zipped_product")


def tiled_product(a: Layout, tiler: Tiler) -> Layout:
    z = zipped_product(a, tiler)
    return make_layout(z[0], *z[1].modes())


def flat_product(a: Layout, tiler: Tiler) -> Layout:
    z = zipped_product(a, tiler)
    return make_layout(*z[0].modes(), *z[1].modes())


def _rank_sensitive(a: Layout, b: Layout, raked: bool, op: str) -> Layout:
    a, b = as_layout(a, op), as_layout(b, op)
    r = max(len(a), len(b))
    p = logical_product(append(a, r), append(b, r))
    first, second = (p[1], p[0]) if raked else (p[0], p[1])
    zipped = make_layout(*(make_layout(first[i], second[i]) for i in range(r)))
    return coalesce(zipped, (1,) * r)


def blocked_product(a: Layout, b: Layout) -> Layout:
    """Each element of B becomes a block A; modes of like rank are paired (A's first)."""
    return _rank_sensitive(a, b, False, "blocked_product")


def raked_product(a: Layout, b: Layout) -> Layout:
    """Like blocked_product but interleaved: B's mode comes first in each pair."""
    return _rank_sensitive(a, b, True, "raked_product")
