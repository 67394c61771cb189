"""Thread-value layouts, MMA fragments (against the PTX ISA and CUTLASS) and swizzles."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbitc.layout import (
    ComposedLayout,
    Layout,
    Swizzle,
    TVLayout,
    composition,
    from_cute,
    local,
    mma_m16n8k16_a,
    mma_m16n8k16_b,
    mma_m16n8k16_c,
    replicated,
    size,
    spatial,
)

SETTINGS = settings(max_examples=80, deadline=None)


def _every_pair(tv: TVLayout):
    return [(t, v) for t in range(tv.num_threads) for v in range(tv.num_values)]


# -- pieces and the map both ways ---------------------------------------------------------
def test_spatial_local_replicated_pieces():
    s = spatial(4, 8)
    assert (s.shape, s.num_threads, s.num_values) == ((4, 8), 32, 1)
    assert s(9, 0) == (1, 1) and s.owners(1, 1) == [(9, 0)]
    loc = local(2, 3)
    assert (loc.num_threads, loc.num_values, loc(0, 4)) == (1, 6, (1, 1))
    r = replicated(2) * spatial(2, 2)
    assert (r.shape, r.num_threads, r.num_values) == ((2, 2), 8, 1)
    assert r.owners(1, 0) == [(2, 0), (6, 0)] and r(6, 0) == (1, 0)
    assert spatial(2) * spatial(2) == spatial(4)  # equal by function (normal form)
    assert local(2, 1) * local(1, 2) == local(2, 2)
    assert str(spatial(4, 8)) == "tv((4,8), modes=(4,8), spatial=(0,1), local=())"


def test_kronecker_product_formula():
    a, b = spatial(2, 2) * local(1, 2), local(2, 1) * spatial(1, 4)
    p = a * b
    assert p.shape == (a.shape[0] * b.shape[0], a.shape[1] * b.shape[1])
    for ta, va in _every_pair(a):
        for tb, vb in _every_pair(b):
            ca, cb = a(ta, va), b(tb, vb)
            want = tuple(x * s + y for x, s, y in zip(ca, b.shape, cb, strict=True))
            assert p(ta * b.num_threads + tb, va * b.num_values + vb) == want


def test_bad_tv_input():
    with pytest.raises(ValueError, match="TVLayout"):
        TVLayout((4,), (2, 2), (0,), ())  # mode 1 unused
    with pytest.raises(ValueError, match="TVLayout"):
        TVLayout((4,), (3,), (0,), ())
    with pytest.raises(ValueError, match="outside"):
        spatial(2, 2)(4, 0)
    with pytest.raises(ValueError, match="divide"):
        mma_m16n8k16_a() / local(2, 1)
    with pytest.raises(ValueError, match="divide"):
        spatial(4) / spatial(3)
    with pytest.raises(ValueError, match="from_cute"):
        from_cute(Layout((4, 2), (1, 1)), (8,))  # not a bijection


pieces = st.one_of(
    st.builds(lambda m, n: spatial(m, n), st.integers(1, 3), st.integers(1, 3)),
    st.builds(lambda m, n: local(m, n), st.integers(1, 3), st.integers(1, 3)),
    st.builds(replicated, st.integers(1, 3)),
)
tv_layouts = st.lists(pieces, min_size=1, max_size=4).map(
    lambda ps: ps[0] if len(ps) == 1 else _prod(ps))


def _prod(ps):
    out = ps[0]
    for p in ps[1:]:
        out = out * p
    return out


@SETTINGS
@given(tv_layouts)
def test_map_both_ways(tv):
    seen = {}
    for t, v in _every_pair(tv):
        c = tv(t, v)
        assert (t, v) in tv.owners(*c)
        seen.setdefault(c, set()).add(t)
    cells = [(i, j) for i in range(tv.shape[0]) for j in range(tv.shape[1])] if tv.rank == 2 \
        else [tuple()] if tv.rank == 0 else [(i,) for i in range(tv.shape[0])]
    assert set(seen) == set(cells)  # every element has an owner
    copies = {len(ts) for ts in seen.values()}
    assert len(copies) == 1  # replication is uniform


@SETTINGS
@given(tv_layouts, tv_layouts, tv_layouts)
def test_product_is_associative_and_division_undoes_it(a, b, c):
    def padded(x, r):  # local(1,...,1) is the identity of rank r; ranks align on the right
        return x * local(*(1,) * r) if r else x

    assert (a * b) * c == a * (b * c)
    assert (a * b) / b == padded(a, max(a.rank, b.rank))
    assert (a * b * c) / c == padded(a * b, max(a.rank, b.rank, c.rank))


@SETTINGS
@given(tv_layouts)
def test_cute_round_trip(tv):
    cute = tv.to_cute()
    assert from_cute(cute, tv.shape) == tv
    row_major = [1] * tv.rank
    for i in range(tv.rank - 2, -1, -1):
        row_major[i] = row_major[i + 1] * tv.shape[i + 1]
    for t, v in _every_pair(tv):
        assert cute(t, v) == sum(c * s for c, s in zip(tv(t, v), row_major, strict=True))


# -- MMA m16n8k16 fragments ---------------------------------------------------------------
# PTX ISA 9.7.14.5.8 (mma.m16n8k16, .f16 A/B, .f32 C/D); groupID = lane >> 2, tig = lane % 4
def _ptx_a(lane, i):
    g, t = lane >> 2, lane % 4
    row = g if (i < 2 or 4 <= i < 6) else g + 8
    col = t * 2 + (i & 1) + (8 if i >= 4 else 0)
    return row, col


def _ptx_b(lane, i):
    g, t = lane >> 2, lane % 4
    return t * 2 + (i & 1) + (8 if i >= 2 else 0), g


def _ptx_c(lane, i):
    g, t = lane >> 2, lane % 4
    return (g if i < 2 else g + 8), t * 2 + (i & 1)


@pytest.mark.parametrize("make,shape,values,formula", [
    (mma_m16n8k16_a, (16, 16), 8, _ptx_a),
    (mma_m16n8k16_b, (16, 8), 4, _ptx_b),
    (mma_m16n8k16_c, (16, 8), 4, _ptx_c),
])
def test_mma_fragments_match_ptx_isa(make, shape, values, formula):
    tv = make()
    assert (tv.shape, tv.num_threads, tv.num_values) == (shape, 32, values)
    for lane in range(32):
        for i in range(values):
            assert tv(lane, i) == formula(lane, i)


def test_mma_fragments_match_cutlass_sm80_layouts():
    # CUTLASS mma_traits_sm80.hpp: (thread, value) -> column-major index of (M,K)/(N,K)/(M,N)
    sm80_a = Layout(((4, 8), (2, 2, 2)), ((32, 1), (16, 8, 128)))
    sm80_b = Layout(((4, 8), (2, 2)), ((16, 1), (8, 64)))
    sm80_c = Layout(((4, 8), (2, 2)), ((32, 1), (16, 8)))
    a, b, c = mma_m16n8k16_a(), mma_m16n8k16_b(), mma_m16n8k16_c()
    for lane in range(32):
        for i in range(8):
            m, k = a(lane, i)
            assert sm80_a(lane, i) == m + 16 * k
        for i in range(4):
            k, n = b(lane, i)
            assert sm80_b(lane, i) == n + 8 * k
            m, n = c(lane, i)
            assert sm80_c(lane, i) == m + 16 * n


def test_mma_fragments_are_products_of_pieces():
    assert mma_m16n8k16_c() / local(1, 2) == local(2, 1) * spatial(8, 4)
    assert mma_m16n8k16_a() / (spatial(8, 4) * local(1, 2)) == local(1, 2) * local(2, 1)
    assert str(mma_m16n8k16_c().to_cute()) == "(32,(2,2)):(2,(1,64))"


# -- swizzles ------------------------------------------------------------------------------
@SETTINGS
@given(st.integers(0, 3), st.integers(0, 3), st.integers(0, 4), st.booleans(), st.integers(1, 3))
def test_swizzle_is_a_bijection(bits, base, extra, negative, blocks):
    shift = (bits + extra) * (-1 if negative else 1)
    sw = Swizzle(bits, base, shift)
    n = sw.size() * blocks
    assert sorted(sw(i) for i in range(n)) == list(range(n))


def test_swizzled_shared_tile_is_bank_conflict_free():
    # 8 x 64 f16 tile, row-major; Sw<3,3,3> permutes the 16-byte chunks of each row
    tile = composition(Swizzle(3, 3, 3), Layout((8, 64), (64, 1)))
    assert isinstance(tile, ComposedLayout) and str(tile) == "Sw<3,3,3> o (8,64):(64,1)"
    assert sorted(tile(i) for i in range(size(tile))) == list(range(512))
    for col in range(0, 64, 8):  # a column of 16-byte chunks: 8 rows read together
        chunks = {(tile(r, col) // 8) % 8 for r in range(8)}
        assert len(chunks) == 8  # 8 different 16-byte bank groups: no conflict
    plain = Layout((8, 64), (64, 1))
    assert len({(plain(r, 0) // 8) % 8 for r in range(8)}) == 1  # without: all in one group
    sub = composition(tile, (Layout(8, 1), Layout(8, 1)))
    assert all(sub(r, c) == tile(r, c) for r in range(8) for c in range(8))


def test_bad_swizzle():
    with pytest.raises(ValueError, match="Swizzle"):
        Swizzle(3, 0, 2)
    with pytest.raises(ValueError, match="Swizzle"):
        Swizzle(-1, 0, 2)
