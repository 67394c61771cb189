"""Canonical packing: LSB-first bit stream per row in little-endian uint32 words."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import lowbitc
from lowbitc.packing import words_per_row


def reference_pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """The bit stream spelled out bit by bit, then cut into little-endian words."""
    k = codes.shape[-1]
    stream = (codes[..., None].astype(np.int64) >> np.arange(bits)) & 1
    stream = stream.reshape(*codes.shape[:-1], k * bits)
    w = words_per_row(k, bits)
    padded = np.zeros((*codes.shape[:-1], w * 32), np.uint8)
    padded[..., : k * bits] = stream
    return np.packbits(padded, axis=-1, bitorder="little").view("<u4")


@st.composite
def codes_and_bits(draw):
    bits = draw(st.integers(1, 8))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=70))
    codes = draw(hnp.arrays(np.uint8, shape, elements=st.integers(0, (1 << bits) - 1)))
    return codes, bits


@settings(max_examples=300, deadline=None)
@given(codes_and_bits())
def test_round_trip_and_reference(cb):
    codes, bits = cb
    words = lowbitc.pack(codes, bits)
    assert words.dtype == np.dtype("<u4")
    assert words.shape == (*codes.shape[:-1], words_per_row(codes.shape[-1], bits))
    assert np.array_equal(words, reference_pack(codes, bits))
    back = lowbitc.unpack(words, bits, codes.shape[-1])
    assert back.dtype == np.uint8 and np.array_equal(back, codes)


@pytest.mark.parametrize("bits", range(1, 9))
def test_every_width_every_row_length(bits):
    rng = np.random.default_rng(bits)
    for k in range(0, 97):
        codes = rng.integers(0, 1 << bits, (2, k)).astype(np.int64)
        words = lowbitc.pack(codes, bits)
        assert np.array_equal(words, reference_pack(codes, bits)), k
        assert np.array_equal(lowbitc.unpack(words, bits, k), codes), k


def test_golden_words():
    assert lowbitc.pack(np.array([1, 2, 3]), 2).tolist() == [0b111001]
    # 11 three-bit codes: code 10 straddles words 0 and 1 (bits 30..32)
    w = lowbitc.pack(np.array([0] * 10 + [7]), 3)
    assert w.tolist() == [0xC0000000, 0x1]
    assert lowbitc.pack(np.array([[255, 1, 0, 128, 7]]), 8).tolist() == [[0x800001FF, 7]]
    assert lowbitc.pack(np.ones(33, np.uint8), 1).tolist() == [0xFFFFFFFF, 1]
    assert lowbitc.pack(np.zeros((2, 0), np.uint8), 4).shape == (2, 0)


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"codes: expected values in 0\.\.7.*max 8"):
        lowbitc.pack(np.array([1, 8]), 3)
    with pytest.raises(ValueError, match="codes.*min -1"):
        lowbitc.pack(np.array([-1, 0]), 3)
    with pytest.raises(TypeError, match="codes"):
        lowbitc.pack(np.array([1.0]), 3)
    with pytest.raises(ValueError, match="codes"):
        lowbitc.pack(np.array(3), 3)
    for bits in (0, 9, True, 2.0, "4"):
        with pytest.raises(ValueError, match="bits"):
            lowbitc.pack(np.array([1]), bits)
    w = lowbitc.pack(np.arange(8).reshape(2, 4), 3)
    with pytest.raises(ValueError, match=r"words: expected last axis 4 .*got shape \(2, 1\)"):
        lowbitc.unpack(w, 3, 40)
    with pytest.raises(ValueError, match="count"):
        lowbitc.unpack(w, 3, -1)
    with pytest.raises(TypeError, match="words"):
        lowbitc.unpack(w.astype(np.uint64), 3, 4)
    assert np.array_equal(lowbitc.unpack(w.astype(np.int32), 3, 4), np.arange(8).reshape(2, 4))
