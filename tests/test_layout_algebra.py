"""CuTe layout algebra: the worked examples of CuTe's documentation, C++-specific semantics,
bad input, and properties over random nested layouts."""

from __future__ import annotations

import pytest
from cute_cases import COMPLEMENT, COMPOSITION
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from lowbitc.layout import (
    Layout,
    blocked_product,
    coalesce,
    complement,
    composition,
    cosize,
    depth,
    filter_layout,
    flat_divide,
    left_inverse,
    logical_divide,
    logical_product,
    make_layout,
    raked_product,
    rank,
    right_inverse,
    size,
    tiled_divide,
    zipped_divide,
)

L = Layout
SETTINGS = settings(max_examples=100, deadline=None,
                    suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])


# -- basics ------------------------------------------------------------------------------
def test_str_repr_equality_hash():
    a = L((4, 8), (8, 1))
    assert str(a) == "(4,8):(8,1)"
    assert str(L((2, (1, 6)), (1, (6, 2)))) == "(2,(1,6)):(1,(6,2))"
    assert str(L(8)) == "8:1"
    assert repr(a) == "Layout((4,8), (8,1))"
    assert a == L([4, 8], [8, 1]) and hash(a) == hash(L((4, 8), (8, 1)))
    assert a != L((4, 8), (1, 4)) and len({a, L((4, 8), (8, 1))}) == 1
    assert L((4, 8)) == L((4, 8), (1, 4))  # default stride: compact column-major
    with pytest.raises(AttributeError):
        a.shape = (2, 2)


def test_call_index_coordinate_and_past_size():
    a = L((4, 8), (8, 1))
    assert [a(i) for i in range(5)] == [0, 8, 16, 24, 1]
    assert a(3, 2) == a((3, 2)) == 26
    nested = L((2, (3, 4)), (1, (10, 100)))
    assert nested((1, (2, 3))) == 1 + 20 + 300
    assert nested((1, 5)) == nested(1 + 2 * 5)  # an int coordinate into a nested mode
    # past size(L) the last mode continues (C++ CuTe)
    b = L((2, 3), (1, 10))
    assert b(7) == 1 + 3 * 10
    assert L((4, 1), (1, 100))(5) == 1 + 100


def test_size_cosize_rank_depth():
    a = L((2, (3, 4)), (12, (1, 3)))
    assert size(a) == 24 and a.size() == 24 and size((2, (3, 4))) == 24
    assert cosize(a) == 1 * 12 + 2 * 1 + 3 * 3 + 1
    assert rank(a) == 2 and depth(a) == 2 and depth(L(3)) == 0


@pytest.mark.parametrize("shape,stride,what", [
    ((2, 3), (1, 2, 3), "not congruent"),
    ((2, (3, 4)), (1, 2), "not congruent"),
    ((2, -3), (1, 2), ">= 1"),
    ((2, 3), (1, -2), ">= 0"),
    ((2, 0), (1, 2), ">= 1"),
    ((2, 3.0), (1, 2), "integers"),
    (("2", 3), (1, 2), "integers"),
    ((True, 3), (1, 2), "integers"),
])
def test_constructor_rejects_bad_input(shape, stride, what):
    with pytest.raises(ValueError, match="Layout") as e:
        L(shape, stride)
    assert what in str(e.value)


def test_bad_algebra_input_names_operation_and_layouts():
    with pytest.raises(ValueError, match=r"composition\(\(3,4\):\(1,5\), 2:5\).*stride"):
        composition(L((3, 4), (1, 5)), L(2, 5))  # 5 is neither below 3 nor a multiple of it
    with pytest.raises(ValueError, match=r"composition\(\(8,8\):\(8,1\), 4:3\).*size 4"):
        composition(L((8, 8), (8, 1)), L(4, 3))  # CuTe's test: "should fail" (3 does not fill 4)
    with pytest.raises(ValueError, match="run past that mode"):
        composition(L((6, 4), (1, 10)), L(4, 4))  # C++ would give (2,2):(4,10): R(2) != A(8)
    with pytest.raises(ValueError, match="cross that mode's end"):
        composition(L((3, 4), (1, 5)), L((2, 2), (1, 2)))  # C++: (2,2):(1,2), R(3) != A(3)
    with pytest.raises(ValueError, match=r"complement\(\(2,2\):\(1,1\), 4\).*not injective"):
        complement(L((2, 2), (1, 1)), 4)
    with pytest.raises(ValueError, match=r"complement\(\(2,2\):\(1,3\), 12\).*short of"):
        complement(L((2, 2), (1, 3)), 12)  # C++ gives 2:6: (A, 2:6) reaches only 10 < 12
    with pytest.raises(ValueError, match="logical_divide.*more modes"):
        logical_divide(L(8), (2, 2))


# -- the worked examples of CuTe's layout-algebra documentation (02_layout_algebra.md) ----
def test_doc_coalesce():
    a = L((2, (1, 6)), (1, (6, 2)))
    assert coalesce(a) == L(12, 1)
    assert coalesce(a, (1, 1)) == L((2, 6), (1, 2))


def test_doc_composition():
    a, b = L((6, 2), (8, 2)), L((4, 3), (3, 1))
    r = composition(a, b)
    assert r == L(((2, 2), 3), ((24, 2), 8))
    assert [r(i) for i in range(12)] == [0, 24, 2, 26, 8, 32, 10, 34, 16, 40, 18, 42]
    assert composition(L(20, 2), L((5, 4), (4, 1))) == L((5, 4), (8, 2))
    assert composition(L((10, 2), (16, 4)), L((5, 4), (1, 5))) == L((5, (2, 2)), (16, (80, 4)))


def test_doc_by_mode_composition():
    a = L((12, (4, 8)), (59, (13, 1)))
    assert composition(a, (L(3, 4), L(8, 2))) == L((3, (2, 4)), (236, (26, 1)))
    assert composition(a, (3, 8)) == L((3, (4, 2)), (59, (13, 1)))


@pytest.mark.parametrize("layout,cotarget,expected", [
    (L(4, 1), 24, L(6, 4)),
    (L(6, 4), 24, L(4, 1)),
    (L((4, 6), (1, 4)), 24, L(1, 0)),
    (L(4, 2), 24, L((2, 3), (1, 8))),
    (L((2, 4), (1, 6)), 24, L(3, 2)),
    (L((2, 2), (1, 6)), 24, L((3, 2), (2, 12))),
])
def test_doc_complement(layout, cotarget, expected):
    assert complement(layout, cotarget) == expected


def test_doc_logical_divide_1d():
    a, b = L((4, 2, 3), (2, 1, 8)), L(4, 2)
    assert complement(b, size(a)) == L((2, 3), (1, 8))
    assert logical_divide(a, b) == L(((2, 2), (2, 3)), ((4, 1), (2, 8)))


def test_doc_logical_divide_2d_and_zipped_tiled():
    a = L((9, (4, 8)), (59, (13, 1)))
    tiler = (L(3, 3), L((2, 4), (1, 8)))
    ld = logical_divide(a, tiler)
    assert ld[0][0] == L(3, 177) and ld[1][0] == L((2, 4), (13, 2))
    assert make_layout(ld[0][0], ld[1][0]) == L((3, (2, 4)), (177, (13, 2)))
    zd = zipped_divide(a, tiler)
    assert (size(zd[0][0]), size(zd[0][1]), size(zd[1][0]), size(zd[1][1])) == (3, 8, 3, 4)
    assert zd[0] == composition(a, tiler)  # layout<0>(zipped_divide(a, b)) == a o b
    td = tiled_divide(a, tiler)
    assert rank(td) == 3 and td[0] == zd[0] and td[1] == zd[1][0] and td[2] == zd[1][1]
    assert rank(flat_divide(a, tiler)) == 4


def test_doc_logical_product():
    a = L((2, 2), (4, 1))
    assert complement(a, 24) == L((2, 3), (2, 8))
    assert logical_product(a, L(6, 1)) == L(((2, 2), (2, 3)), ((4, 1), (2, 8)))
    assert size(logical_product(a, L((4, 2), (2, 1)))[1]) == 8
    block = L((2, 5), (5, 1))  # 2x5 row-major block tiled over a 3x4 column-major arrangement
    by_mode = logical_product(block, (L(3, 5), L(4, 6)))
    assert by_mode == L(((2, 3), (5, 4)), ((5, 10), (1, 30)))
    blocked = blocked_product(block, L((3, 4)))
    assert blocked == L((6, (5, 4)), (5, (1, 30)))  # mode 0 coalesced, as the docs note
    assert all(blocked(i, j) == by_mode(i, j) for i in range(6) for j in range(20))
    assert raked_product(block, L((3, 4))) == L(((3, 2), (4, 5)), ((10, 5), (30, 1)))


# -- C++ CuTe's own unit tests (tests/cute_cases.py), with the checks they make -----------
def _layout(pair) -> Layout:
    shape, stride = pair
    return L(shape) if stride is None else L(shape, stride)


@pytest.mark.parametrize("a,b", COMPOSITION, ids=str)
def test_cute_composition_cases(a, b):
    a, b = _layout(a), _layout(b)
    r = composition(a, b)
    assert size(r) == size(b)  # compatible(B, R)
    assert [r(i) for i in range(size(b))] == [a(b(i)) for i in range(size(b))]


def _check_complement(layout: Layout, cotarget) -> Layout:
    """complement.cpp's checks: cosize of (layout, R) covers the cotarget's size, R is ordered
    and disjoint from the layout's image (past R(0)), R is at least cotarget / size long."""
    r = complement(layout, cotarget)
    n = size(L(cotarget)) if isinstance(cotarget, tuple) else cotarget
    assert cosize(make_layout(layout, r)) >= n
    values = [r(i) for i in range(size(r))]
    assert values == sorted(set(values))
    assert not {layout(j) for j in range(size(layout))} & set(values[1:])
    assert size(r) >= n // size(filter_layout(layout))
    assert size(r) <= cosize(r)
    return r


@pytest.mark.parametrize("layout,cotarget", COMPLEMENT, ids=str)
def test_cute_complement_cases(layout, cotarget):
    layout = _layout(layout)
    _check_complement(layout, cosize(layout) if cotarget is None else cotarget)
    _check_complement(layout, 1)


@pytest.mark.parametrize("a,b,expected", [
    # strides below a mode's size that do not divide it: all of B lands inside that mode
    (L((8, 8), (8, 1)), L(2, 3), L(2, 24)),
    (L((8, 8), (8, 1)), L(3, 3), L(3, 24)),
    (L((3, 4), (1, 5)), L(2, 2), L(2, 2)),
])
def test_relaxed_compositions_give_cute_results(a, b, expected):
    r = composition(a, b)
    assert r == expected
    assert [r(i) for i in range(size(b))] == [a(b(i)) for i in range(size(b))]


@pytest.mark.parametrize("layout,cotarget,expected", [
    # strides that leave gaps: C++ rounds each quotient down (6 // 4, 10 // 4, 10 // 3)
    (L((4, 6), (1, 6)), 34, L(1, 0)),
    (L((4, 2), (1, 10)), 14, L(2, 4)),
    (L((3, 6), (1, 10)), 53, L(3, 3)),
    (L((4, 6), (1, 6)), 1, L(1, 0)),
    (L((4, 2), (1, 10)), 1, L(2, 4)),
    (L((3, 6), (1, 10)), 1, L(3, 3)),
    (L((2, 2), (1, 3)), 5, L(1, 0)),
])
def test_relaxed_complements_give_cute_results(layout, cotarget, expected):
    assert _check_complement(layout, cotarget) == expected


# -- where C++ CuTe and pycute differ ----------------------------------------------------
def test_composition_keeps_a_past_its_size():
    a = L((4, 1), (1, 100))  # coalesce alone would drop the trailing 1:100 mode
    r = composition(a, L(8, 1))
    assert [r(i) for i in range(8)] == [a(i) for i in range(8)] == [0, 1, 2, 3, 100, 101, 102,
                                                                    103]


def test_shape_div_rounds_up():
    # dividing stride 6 out of (2,3,4): ceil_div(2,6) == 1 (not 0), then ceil_div(3,3) == 1
    a = L((2, 3, 4), (1, 10, 100))
    assert composition(a, L(3, 6)) == L(3, 100)
    # (6,2) / 12 == (1,1): everything lands in the unbounded last mode
    assert composition(L((6, 2), (8, 2)), L(2, 12)) == L(2, 4)


def test_left_inverse_skips_stride_zero_modes():
    lay = L((2, 3), (0, 1))
    inv = left_inverse(lay)
    assert inv == L(3, 2)
    assert [inv(lay(i)) for i in range(6)] == [0, 0, 2, 2, 4, 4]
    assert right_inverse(L((2, 4), (0, 1))) == L(4, 2)


# -- properties over random nested layouts ------------------------------------------------
@st.composite
def layouts(draw, max_stride: int = 24):
    n = draw(st.integers(1, 4))
    shapes = draw(st.lists(st.integers(1, 4), min_size=n, max_size=n))
    strides = draw(st.lists(st.integers(0, max_stride), min_size=n, max_size=n))
    shape, stride = _nest_pairs(draw, shapes, strides)
    if len(shape) == 1 and draw(st.booleans()):
        shape, stride = shape[0], stride[0]
    return L(shape, stride)


@st.composite
def injective_layouts(draw, max_modes: int = 4):
    """Strides that step over gaps: each stride a multiple of the span below it."""
    n = draw(st.integers(1, max_modes))
    shapes = draw(st.lists(st.integers(2, 4), min_size=n, max_size=n))
    order = draw(st.permutations(range(n)))
    strides, cur = [0] * n, 1
    for i in order:
        strides[i] = cur * draw(st.integers(1, 3))
        cur = strides[i] * shapes[i]
    shape = _nest_pairs(draw, shapes, strides)
    return L(*shape)


def _nest_pairs(draw, shapes, strides):
    s, d, i = [], [], 0
    while i < len(shapes):
        k = draw(st.integers(1, min(2, len(shapes) - i)))
        s.append(shapes[i] if k == 1 else tuple(shapes[i:i + k]))
        d.append(strides[i] if k == 1 else tuple(strides[i:i + k]))
        i += k
    return tuple(s), tuple(d)


def test_random_layout_strategy_nests():
    lay = L(((2, 3), 4), ((1, 2), 6))
    assert depth(lay) == 2 and lay((1, 2), 3) == 1 + 4 + 18


@SETTINGS
@given(layouts(), injective_layouts(), st.integers(0, 2))
def test_composition_is_function_composition(a, b, zeros):
    # B injective (the documented precondition), possibly with extra stride-0 modes
    b = make_layout(b, *([L(2, 0)] * zeros)) if zeros else b
    try:
        r = composition(a, b)
    except ValueError:
        assume(False)
    assert size(r) == size(b)
    assert all(r(i) == a(b(i)) for i in range(size(b)))


@SETTINGS
@given(layouts())
def test_coalesce_keeps_the_function(a):
    c = coalesce(a)
    assert size(c) == size(a) and depth(c) <= 1
    assert all(c(i) == a(i) for i in range(size(a)))
    by_mode = coalesce(a, (1,) * rank(a))
    assert rank(by_mode) == rank(a)
    assert all(by_mode(i) == a(i) for i in range(size(a)))


@SETTINGS
@given(injective_layouts(), st.integers(1, 400))
def test_complement_disjoint_and_covers_cotarget(a, cotarget):
    c = complement(a, cotarget)
    image = {a(i) for i in range(size(a))}
    rest = [c(i) for i in range(size(c))]
    assert rest == sorted(rest) and len(set(rest)) == len(rest)  # ordered
    assert not image & set(rest[1:])  # disjoint codomains
    both = make_layout(a, c)
    values = [both(i) for i in range(size(both))]
    assert len(set(values)) == len(values)  # (A, A*) is injective
    assert set(range(cotarget)) <= set(values)  # and covers the cotarget


@SETTINGS
@given(layouts())
def test_complement_of_any_layout_is_right_or_refused(a):
    try:
        c = complement(a)
    except ValueError:
        return
    image = {a(i) for i in range(size(a))}
    assert not image & {c(i) for i in range(1, size(c))}


@SETTINGS
@given(layouts())
def test_right_inverse(a):
    r = right_inverse(a)
    assert all(a(r(i)) == i for i in range(size(r)))


@SETTINGS
@given(injective_layouts())
def test_left_inverse(a):
    r = left_inverse(a)
    assert all(r(a(i)) == i for i in range(size(a)))


@SETTINGS
@given(layouts(), injective_layouts())
def test_logical_divide_definition(a, b):
    try:
        r = logical_divide(a, b)
    except ValueError:
        assume(False)
    full = make_layout(b, complement(b, a.shape))
    assert r == composition(a, full)
    assert all(r(i) == a(full(i)) for i in range(size(full)))
    assert zipped_divide(a, b) == r
    assert r[0] == composition(a, b)


@SETTINGS
@given(injective_layouts(3), injective_layouts(3))
def test_logical_product_definition(a, b):
    try:
        r = logical_product(a, b)
    except ValueError:  # e.g. 2:2 x 3:1: complement (2,2):(1,4) cannot be composed with 3:1
        assume(False)
    assert r == make_layout(a, composition(complement(a, size(a) * cosize(b)), b))
    assert r[0] == a and size(r) == size(a) * size(b)
    values = [r(i) for i in range(size(r))]
    assert len(set(values)) == len(values)  # unique replication of A


@settings(SETTINGS, max_examples=60)
@given(injective_layouts(2), injective_layouts(2))
def test_blocked_and_raked_products_reassociate_modes(a, b):
    a2, b2 = make_layout(a, L(2, cosize(a))), make_layout(b, L(3, cosize(b)))
    try:
        p = logical_product(a2, b2)
    except ValueError:
        assume(False)
    blocked, raked = blocked_product(a2, b2), raked_product(a2, b2)
    (a0, a1), (b0, b1) = (size(a2[0]), size(a2[1])), (size(b2[0]), size(b2[1]))
    for i in range(a0 * a1):
        for k in range(b0 * b1):
            (i0, i1), (k0, k1) = divmod(i, a0)[::-1], divmod(k, b0)[::-1]
            want = p(i, k)
            assert blocked(i0 + a0 * k0, i1 + a1 * k1) == want
            assert raked(k0 + b0 * i0, k1 + b1 * i1) == want


def test_layout_package_is_pure():
    """lowbitc.layout imports nothing from lowbitc except errors (and itself)."""
    import ast
    import pathlib

    import lowbitc.layout

    root = pathlib.Path(lowbitc.layout.__file__).parent
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                if name.startswith("lowbitc"):
                    assert name == "lowbitc.errors" or name.startswith("lowbitc.layout"), (
                        f"{path.name} imports {name}")
