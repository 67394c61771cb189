"""The fused byte dot's GEMV variants: codes of several bit planes (u3 = 2 + 1, u5-u7) put
together in the widest plane's bytes (byte_planes.merge_source, vpmultishiftqb) give each code
whole, and the W*A8 results are bit for bit those of one vpdpbusd per plane; windows of whole
steps unrolled (bytedot.unrolls) give the same results as the step loop."""

from __future__ import annotations

import re

import numpy as np
import pytest

import lowbitc
from lowbitc import a8, ops
from lowbitc.backends.llvm import byte_planes, bytedot
from lowbitc.compiler import compile
from lowbitc.kernels import kernel_path
from lowbitc.repack import RowsPacking

MULTI = (3, 5, 6, 7)  # the widths whose rows packing has several planes


def _multishift(ctl: list[int], qword: int) -> list[int]:
    """vpmultishiftqb on one 64-bit element: byte i = the 8 bits from bit ctl[i] on, wrapping."""
    rot = qword | (qword << 64)
    return [(rot >> (c % 64)) & 0xFF for c in ctl]


@pytest.mark.parametrize("bits", MULTI)
def test_merge_source_gathers_every_code(bits):
    """For every extraction of the widest plane and every other plane: the control bytes land
    the bits of the codes the extraction sees (two rows' words in one 64-bit element) at the
    plane's place, and the widest plane's extraction plus the gathered planes give every
    code of the step exactly once, in the activation order of the widest plane."""
    packing = RowsPacking(bits)
    p0, shift0, _ = packing.planes[0]
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 1 << bits, (2, 32))  # two rows (the lanes of one 64-bit element)
    seen = []
    for w in range(p0):
        for e in range(8 // p0):
            got = np.zeros((2, 4), np.int64)
            for r in range(2):
                for j in range(4):
                    c = (32 // p0) * w + (8 // p0) * j + e
                    got[r, j] = (codes[r, c] >> shift0) & ((1 << p0) - 1)
            for p, shift, _ in packing.planes[1:]:
                word, ctl = byte_planes.merge_source(p0, w, e, p, shift)
                plane = (codes >> shift) & ((1 << p) - 1)  # this plane's bits per code
                lanes = [sum(int(plane[r, (32 // p) * word + i]) << (p * i)
                             for i in range(32 // p)) for r in range(2)]
                out = _multishift(ctl, lanes[0] | (lanes[1] << 32))
                got |= np.array(out).reshape(2, 4) & (((1 << p) - 1) << shift)
            order = [(32 // p0) * w + (8 // p0) * j + e for j in range(4)]
            np.testing.assert_array_equal(got, codes[:, order])
            seen += order
    assert sorted(seen) == list(range(32))


def _a8(monkeypatch, merged: bool, qw, x, whole: bool = True):
    monkeypatch.setattr(byte_planes, "merges", byte_planes.merges if merged else lambda p: False)
    monkeypatch.setattr(bytedot, "WHOLE_WINDOWS", whole)
    N, K = qw.shape
    k = compile(kernel_path("matmul_a8"), **a8.params(qw.dtype, qw.group_size, qw.zeros is not None,
                                                x.shape[0], "i8", N))
    y = np.zeros((x.shape[0], N), np.float32)
    a8.matmul(k, x, "f32", *a8.operands(qw, k, ops.weight_storage), y, qw.group_size)
    return y, k.text("asm")


@pytest.mark.skipif(not (bytedot.applies() and byte_planes._vbmi()),
                    reason="the merged planes need AVX-512 VNNI and VBMI")
@pytest.mark.parametrize("fmt, zp, M", [("u3", True, 1), ("i3", False, 1), ("u3", False, 3),
                                        ("b3", False, 1), ("u5", True, 1), ("u6", False, 1),
                                        ("i7", False, 1)])
def test_merged_planes_are_bit_identical(monkeypatch, fmt, zp, M):
    """One vpdpbusd per four codes of all planes (vpmultishiftqb) gives the same integer sums,
    hence the same outputs bit for bit, as one vpdpbusd per plane; N = 40 has a partial
    16-row block (the generic dot), K = 200 a partial last group; fewer vpdpbusd."""
    monkeypatch.setenv("LOWBITC_NO_CACHE", "1")  # the two builds share a cache key
    rng = np.random.default_rng(7)
    N, K = 40, 200
    qw = lowbitc.quantize(rng.standard_normal((N, K)).astype(np.float32), fmt, 64,
                          zero_point=zp)
    x = rng.standard_normal((M, K)).astype(np.float32)
    y, asm = _a8(monkeypatch, True, qw, x)
    want, old = _a8(monkeypatch, False, qw, x)
    np.testing.assert_array_equal(y, want)
    assert "vpmultishiftqb" in asm and "vpmultishiftqb" not in old
    assert len(re.findall("vpdpbusd", old)) > len(re.findall("vpdpbusd", asm))


@pytest.mark.skipif(not bytedot.applies(), reason="the fused byte dot needs AVX2")
@pytest.mark.parametrize("fmt, zp, group", [("u2", True, 64), ("u3", True, 64),
                                            ("f4e2m1fn", False, 128), ("u1", False, 32),
                                            ("u4", True, 64)])
def test_whole_windows_unrolled_are_bit_identical(monkeypatch, fmt, zp, group):
    """A GEMV window of whole steps runs a constant-trip step loop for 1-3-bit codes and
    table lookups (bytedot.unrolls; u4's plain shifts keep the loop), the K tail (K = 200:
    the last window of the tile-major u3 holds one step of two) the counted loop: the same
    outputs bit for bit as the loop alone."""
    monkeypatch.setenv("LOWBITC_NO_CACHE", "1")
    rng = np.random.default_rng(9)
    N, K = 40, 200
    qw = lowbitc.quantize(rng.standard_normal((N, K)).astype(np.float32), fmt, group,
                          zero_point=zp)
    x = rng.standard_normal((1, K)).astype(np.float32)
    y, asm = _a8(monkeypatch, True, qw, x, whole=True)
    want, old = _a8(monkeypatch, True, qw, x, whole=False)
    np.testing.assert_array_equal(y, want)
    table = fmt == "f4e2m1fn"
    monkeypatch.setattr(bytedot, "WHOLE_WINDOWS", True)
    unrolled = bytedot.unrolls(1, qw.dtype.bits, table)
    assert unrolled == (fmt != "u4") and not bytedot.unrolls(16, qw.dtype.bits, table)
    assert (asm != old) == unrolled
