"""B-register decode recipes of the mma packing (backends/numba_cuda/mma_decode.py): which
formats get which recipe, and each recipe's instructions (run by their simulator twins)
against every code's value, independently of the compile-time check."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import lowbitc
from lowbitc.backends.numba_cuda import mma_decode as D
from lowbitc.backends.numba_cuda.intrinsics import hfma2_bf16_py, pack_bf16x2_py
from lowbitc.repack_mma import MmaPacking

BOOK = lowbitc.codebook([-1.5, -0.5, 0.0, 0.25, 0.5, 1.0, 1.000244140625, 2.0], name="mmabook")
BOOK2 = lowbitc.codebook([-1.5, -0.5, 0.25, 2.0], name="decode_book2")


def _values(fmt) -> np.ndarray:
    return np.asarray(fmt.values(), np.float64)


# (format, dest) -> (exponent bits, mantissa bits, 2^scale): the scale is bias_dst - bias_src
FLOATS = {("f4e2m1fn", "f16"): (2, 1, 14), ("f6e3m2fn", "f16"): (3, 2, 12),
          ("f6e2m3fn", "f16"): (2, 3, 14), ("f8e4m3fn", "f16"): (4, 3, 8),
          ("f8e5m2", "f16"): (5, 2, 0), ("f4e2m1fn", "bf16"): (2, 1, 126),
          ("f8e4m3fn", "bf16"): (4, 3, 120), ("f8e5m2", "bf16"): (5, 2, 112),
          ("f6e3m2fn", "bf16"): (3, 2, 124)}


@pytest.mark.parametrize("name,dst", sorted(FLOATS))
def test_float_formats_decode_by_field_placement(name, dst):
    fmt = lowbitc.dtype(name)
    d = D.DESTS[dst]
    f = D.float_recipe(_values(fmt), fmt.bits, d)
    assert (f.exp, f.man, f.scale) == FLOATS[name, dst]
    # every code by hand (the recipe's bit moves and one product by 2^scale), not the check
    for c, want in enumerate(_values(fmt)):
        if not np.isfinite(want):
            continue
        bits = (c >> (f.exp + f.man)) << 15 | (c & ((1 << (f.exp + f.man)) - 1)) << (
            d.mantissa - f.man)
        got = float(d.halves(bits)[0]) * 2.0**f.scale
        assert got == want and np.signbit(got) == np.signbit(want), (name, c)
    # the check is not vacuous: one scale off fails
    assert not D._float_checked(_values(fmt), d, D.Float(f.exp, f.man, f.scale + 1))


def test_formats_without_a_float_layout():
    for name in ("nf4", "u4", "i4", "f8e8m0fnu"):
        fmt = lowbitc.dtype(name)
        assert D.float_recipe(_values(fmt), fmt.bits, D.DESTS["f16"]) is None, name


def test_table_packing_is_chosen_for_non_affine_non_float_formats():
    assert D.wants_table(_values(lowbitc.dtype("nf4")), 4)
    assert D.wants_table(_values(BOOK), 3) and D.wants_table(_values(BOOK2), 2)
    for name in ("u4", "i4", "b3", "f4e2m1fn", "u8"):
        fmt = lowbitc.dtype(name)
        assert not D.wants_table(_values(fmt), fmt.bits), name
    linear = lowbitc.codebook(list(np.arange(16) * 0.25 - 2.0), name="decode_linear16")
    assert not D.wants_table(_values(linear), 4)  # affine: the magic recipe


@pytest.mark.parametrize("fmt", [lowbitc.dtype("nf4"), BOOK, BOOK2], ids=lambda f: f.name)
@pytest.mark.parametrize("dst", ["f16", "bf16"])
def test_table_registers_give_every_code_at_every_position(fmt, dst):
    """Random groups of 8 codes at every bit offset of their plane words (codes in order):
    the 4 registers equal the values rounded once to the destination type."""
    d = D.DESTS[dst]
    planes = MmaPacking(fmt.bits, interleaved=False).planes
    t = D.table_recipe(_values(fmt), fmt.bits, planes, d)
    assert t is not None
    want16 = _values(fmt).astype(d.np_type).view(np.uint16).astype(np.int64)
    rng = np.random.default_rng(0)
    for _ in range(64):
        codes = rng.integers(0, 1 << fmt.bits, 8)
        g = int(rng.integers(0, 4))
        fields = []
        for p, shift in planes:
            at = 8 * g * p % 32
            word = sum(int((c >> shift) & ((1 << p) - 1)) << (at + j * p)
                       for j, c in enumerate(codes))
            fields.append((p, shift, word | int(rng.integers(0, 2**32)) & ~_field(at, p), at))
        regs = D.table_registers(D._Run(), t, dict(enumerate(t.lo + t.hi)), fields)
        assert regs == [int(want16[codes[k]] | want16[codes[k + 1]] << 16)
                        for k in range(0, 8, 2)]
    bad = D.Table(t.bits, t.lo, (t.hi[0] ^ 1,) + t.hi[1:])  # one byte off: some code differs
    regs = [D.table_registers(D._Run(), bad, dict(enumerate(bad.lo + bad.hi)),
                              [(p, s, 0, 0) for p, s in planes])]
    assert regs != [D.table_registers(D._Run(), t, dict(enumerate(t.lo + t.hi)),
                                      [(p, s, 0, 0) for p, s in planes])]


def _field(at: int, p: int) -> int:
    """The bits of 8 p-bit codes from bit `at` (other codes of the word stay random)."""
    return ((1 << (8 * p)) - 1) << at


def test_tables_need_finite_values_in_the_destination():
    big = lowbitc.codebook([-1.0, 0.0, 1.0, 1e6], name="decode_big")
    assert D.table_recipe(_values(big), 2, ((2, 0),), D.DESTS["f16"]) is None
    assert D.table_recipe(_values(big), 2, ((2, 0),), D.DESTS["bf16"]) is not None


def test_bf16_twins():
    def pair(x, y):
        return int(np.array([x, y], ml_dtypes.bfloat16).view(np.uint32)[0])

    # fma.rn.bf16x2: one rounding per half, subnormals kept
    assert hfma2_bf16_py(pair(1.5, 2.0**-130), pair(2.0, 2.0**126), pair(0.25, -0.0)) == \
        pair(3.25, 2.0**-4)
    assert pack_bf16x2_py(np.float32(255.0), np.float32(-1.0 - 2.0**-9)) == pair(255.0, -1.0)
