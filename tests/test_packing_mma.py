"""lowbitc.repack_mma: the B-fragment (mma.m16n8k16) packing for every width 1..8: round trips
over random shapes, the index formula against the transform, each lane's codes in whole 16-byte
chunks holding only its own B-fragment codes (lowbitc.layout.mma), and the QTensor cache."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbitc.errors import UserArgumentError
from lowbitc.layout import mma_m16n8k16_b
from lowbitc.packing import pack
from lowbitc.quant import quantize
from lowbitc.repack_mma import (
    MmaPacking,
    mma_code_index,
    pack_for_mma,
    plane_widths,
    unpack_from_mma,
)


def _codes(bits, n, k, seed):
    return np.random.default_rng(seed).integers(0, 1 << bits, (n, k)).astype(np.uint8)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 8), st.integers(1, 140), st.integers(1, 200), st.booleans(),
       st.integers(0, 2**31))
def test_round_trip_random_shapes(bits, n, k, interleaved, seed):
    codes = _codes(bits, n, k, seed)
    pk = MmaPacking(bits, interleaved)
    words = pk.from_codes(codes)
    assert words.dtype == np.uint32 and words.shape == pk.shape(n, k)
    assert words.size * 32 == -(-n // 64) * 64 * -(-k // 64) * 64 * bits  # no waste but padding
    np.testing.assert_array_equal(pk.to_codes(words, k, n), codes)
    np.testing.assert_array_equal(pack_for_mma(codes, bits, interleaved), words)
    np.testing.assert_array_equal(unpack_from_mma(words, bits, n, k, interleaved), codes)
    padded = pk.to_codes(words, k)
    assert padded.shape[0] % 64 == 0 and not padded[n:].any()  # N padded with code 0
    np.testing.assert_array_equal(pk.to_canonical(words, k, n), pack(codes, bits))
    np.testing.assert_array_equal(pk.from_canonical(pack(codes, bits), k), words)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("interleaved", [True, False])
def test_index_formula_locates_every_code(bits, interleaved):
    n_rows, k = 70, 150  # two N tiles and three K tiles, both partial
    codes = _codes(bits, n_rows, k, bits)
    pk = MmaPacking(bits, interleaved)
    flat = pk.from_codes(codes).reshape(-1)
    n, kk = np.meshgrid(np.arange(n_rows), np.arange(k), indexing="ij")
    got = np.zeros(codes.shape, np.uint32)
    for (word, bit), (p, shift) in zip(mma_code_index(n, kk, k, bits, interleaved), pk.planes):
        got |= ((flat[word] >> bit.astype(np.uint32)) & np.uint32((1 << p) - 1)) << shift
    np.testing.assert_array_equal(got, codes)


@pytest.mark.parametrize("bits", range(1, 9))
def test_each_lane_loads_only_its_b_fragment_codes_in_16_byte_chunks(bits):
    """Over one 64x64 tile: every word holds codes of one lane only, the lane that owns them in
    the m16n8k16 B fragment; each lane's words of a plane are p aligned runs of 4 (p loads of
    128 bits), and load j of every lane is one contiguous 512-byte warp access."""
    frag = mma_m16n8k16_b()  # (K16 x N8): (lane, i) -> (k, n)
    owner = np.empty((64, 64), np.int64)  # [n, k] -> lane
    for lane in range(32):
        for i in range(4):
            kl, nl = frag(lane, i)
            for nf in range(8):
                for kf in range(4):
                    owner[8 * nf + nl, 16 * kf + kl] = lane
    n, k = np.meshgrid(np.arange(64), np.arange(64), indexing="ij")
    first = 0
    for (word, _), p in zip(mma_code_index(n, k, 64, bits), plane_widths(bits)):
        rel = word - first
        lanes_of_word = {}
        for w, lane in zip(rel.reshape(-1), owner.reshape(-1)):
            lanes_of_word.setdefault(int(w), set()).add(int(lane))
        assert all(len(s) == 1 for s in lanes_of_word.values())
        assert sorted(lanes_of_word) == list(range(128 * p))  # dense, 32/p codes per word
        for w, (lane,) in lanes_of_word.items():
            assert (w // 4) % 32 == lane  # load j = w // 128: lane l's 4 words at 4l..4l+3
        first += 128 * p


def test_fragment_order_one_k16_step_per_eight_fragments():
    """u4: a lane's first 128-bit load covers the 8 n8-fragments of the tile's first k16 step,
    codes 2m, 2m+1 (one f16x2 B register) 16 bits apart in the interleaved order."""
    (word, bit), = mma_code_index(np.arange(64), np.zeros(64, np.int64), 64, 4)
    assert word.max() < 128  # k = 0 of all 64 columns: the first load of every lane
    (w0, b0), = mma_code_index(0, 0, 64, 4)
    (w1, b1), = mma_code_index(0, 1, 64, 4)  # the same B register's high half
    assert w0 == w1 and b1 - b0 == 16


def test_cached_per_qtensor():
    w = np.random.default_rng(1).standard_normal((20, 96)).astype(np.float32)
    qt = quantize(w, "u3", 32)
    got = qt.packed_as(MmaPacking(3))
    assert qt.packed_as(MmaPacking(3)) is got and got.count == 96
    np.testing.assert_array_equal(MmaPacking(3).to_codes(got.words, 96, 20), qt.codes)


@pytest.mark.parametrize("call,msg", [
    (lambda: MmaPacking(0), "bits must be an int in 1..8"),
    (lambda: MmaPacking(4).from_codes(np.full((2, 3), 16, np.uint8)), "below 2\\*\\*4"),
    (lambda: MmaPacking(4).to_codes(np.zeros((1, 5), np.uint32), 64), "must have shape"),
    (lambda: mma_code_index(0, 64, 64, 4), "k < k_total"),
])
def test_bad_input_is_named(call, msg):
    with pytest.raises(UserArgumentError, match=msg):
        call()
