"""lowbitc.layout.banks: wavefronts and conflicts of warp shared accesses over known patterns,
and the swizzle that makes ldmatrix and 16-byte cp.async stores of 128-byte rows conflict-free."""

import pytest

from lowbitc.errors import UserArgumentError
from lowbitc.layout import Layout, Swizzle
from lowbitc.layout.banks import ldmatrix_access, warp_access

LANES = range(32)


@pytest.mark.parametrize("stride_words,wavefronts", [(1, 1), (2, 2), (3, 1), (4, 4), (8, 8),
                                                     (16, 16), (32, 32), (33, 1)])
def test_four_byte_strides(stride_words, wavefronts):
    rep = warp_access([4 * stride_words * lane for lane in LANES], 4)
    assert (rep.wavefronts, rep.ideal, rep.conflicts) == (wavefronts, 1, wavefronts - 1)


def test_broadcast_and_inactive_lanes():
    assert warp_access([0] * 32, 4).wavefronts == 1  # one word, broadcast to every lane
    assert warp_access([128 * (lane % 2) for lane in LANES], 4).wavefronts == 2
    half = [4 * lane if lane < 16 else None for lane in LANES]
    assert warp_access(half, 4).wavefronts == 1
    assert warp_access([None] * 32, 4).wavefronts == 0


@pytest.mark.parametrize("width,phases", [(8, 2), (16, 4)])
def test_wide_contiguous_accesses_take_one_wavefront_per_phase(width, phases):
    rep = warp_access([width * lane for lane in LANES], width)
    assert rep.per_phase == (1,) * phases and rep.conflicts == 0


def test_sixteen_byte_column_of_128_byte_rows_conflicts_eightfold():
    rep = warp_access([128 * lane for lane in LANES], 16)
    assert rep.per_phase == (8, 8, 8, 8) and rep.conflicts == 28


def _a_tile_rows(row_bytes):
    """ldmatrix.x4 of a 16x16 f16 A tile: lane l gives row l % 16, 16-byte chunk l // 16."""
    return [(lane % 16) * row_bytes + 16 * (lane // 16) for lane in LANES]


def test_ldmatrix_linear_128_byte_rows_conflict():
    rep = ldmatrix_access(_a_tile_rows(128), 4)
    assert rep.per_phase == (8, 8, 8, 8) and rep.conflicts == 28


def test_ldmatrix_swizzle_3_4_3_is_conflict_free():
    sw = Swizzle(3, 4, 3)  # xor row bits 7-9 of the byte offset into its 16-byte chunk bits 4-6
    rep = ldmatrix_access([sw(a) for a in _a_tile_rows(128)], 4)
    assert rep.per_phase == (1, 1, 1, 1) and rep.conflicts == 0


def test_element_swizzle_of_a_half_tile_layout_is_conflict_free():
    tile = Swizzle(3, 3, 3).compose(Layout((16, 64), (64, 1)))  # f16 elements, 128-byte rows
    addrs = [2 * tile(lane % 16, 8 * (lane // 16)) for lane in LANES]
    assert ldmatrix_access(addrs, 4).conflicts == 0
    plain = Layout((16, 64), (64, 1))
    assert ldmatrix_access([2 * plain(lane % 16, 8 * (lane // 16)) for lane in LANES],
                           4).conflicts == 28


def test_padded_rows_are_conflict_free_too():
    assert ldmatrix_access(_a_tile_rows(144), 4).conflicts == 0


def test_cp_async_stores_of_swizzled_rows_are_conflict_free():
    """32 lanes store 16-byte chunks of 128-byte rows (lane l: row l // 8, chunk l % 8), the
    global -> shared order of cp.async; with the swizzle and without it (rows are whole)."""
    sw = Swizzle(3, 4, 3)
    for row0 in (0, 4, 8):
        plain = [128 * (row0 + lane // 8) + 16 * (lane % 8) for lane in LANES]
        assert warp_access(plain, 16).conflicts == 0
        assert warp_access([sw(a) for a in plain], 16).conflicts == 0


def test_sub_word_accesses_share_their_word():
    """2-byte lanes: two lanes per 4-byte word share it (64 consecutive bytes: no conflict); a
    row stride of 64 halves puts lanes 2 apart in the same bank, different words."""
    assert warp_access([2 * lane for lane in LANES], 2).conflicts == 0
    assert warp_access([lane for lane in LANES], 1).conflicts == 0
    assert warp_access([128 * lane for lane in LANES], 2).wavefronts == 32


def test_ldmatrix_x2_ignores_upper_lanes():
    addrs = [16 * lane if lane < 16 else 7 for lane in LANES]  # garbage beyond lane 15 ignored
    rep = ldmatrix_access(addrs, 2)
    assert rep.per_phase == (1, 1) and rep.ideal == 2


@pytest.mark.parametrize("call,msg", [
    (lambda: warp_access([0] * 31, 4), "one entry per lane"),
    (lambda: warp_access([2] * 32, 4), "multiple of the access width"),
    (lambda: warp_access([0] * 32, 3), "width must be 1, 2, 4, 8 or 16"),
    (lambda: ldmatrix_access([0] * 32, 3), "num must be 1, 2 or 4"),
    (lambda: ldmatrix_access([None] + [0] * 31, 1), "must all give a row address"),
])
def test_bad_input_is_named(call, msg):
    with pytest.raises(UserArgumentError, match=msg):
        call()
