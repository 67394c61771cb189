"""view(): bit-conserving reinterpretation of tiles, in the interpreter and the LLVM backend."""

import numpy as np
import pytest

import lowbitc
from lowbitc.compiler import compile
from lowbitc.errors import DSLTypeError
from lowbitc.packing import pack

RNG = np.random.default_rng(7)


@pytest.mark.parametrize("fmt", ["u3", "i4", "f6e3m2", "nf4", "b1", "u7"])
def test_words_viewed_as_codes_then_dequantized(fmt):
    f = lowbitc.dtype(fmt)
    n = 32 * 3  # whole words for every width
    codes = RNG.integers(0, f.num_codes, (4, n)).astype(np.uint8)
    words = pack(codes, f.bits)  # the kernel takes them as plain u32 words
    src = f"""kernel k(w: u32[R, WD], y: f32[R, C]) {{
  raw = load(w[0 :+ 4, 0 :+ {words.shape[1]}])
  store(y[0 :+ 4, 0 :+ {n}], cast(view(raw, {fmt}), f32))
}}"""
    k = compile(src)
    want = f.decode(codes)
    for run in (k, k.interpret):
        y = np.zeros((4, n), np.float32)
        run(words, y, C=n)
        assert np.array_equal(np.isnan(y), np.isnan(want))
        assert np.array_equal(y[~np.isnan(y)], want[~np.isnan(want)])


def test_machine_views_alias_bits():
    src = """kernel k(x: f32[2, 8], y: i32[2, 8], b: u8[2, 32]) {
  t = load(x[0 :+ 2, 0 :+ 8])
  store(y[0 :+ 2, 0 :+ 8], view(t, i32))
  store(b[0 :+ 2, 0 :+ 32], view(t, u8))
}"""
    k = compile(src)
    x = RNG.standard_normal((2, 8)).astype(np.float32)
    for run in (k, k.interpret):
        y, b = np.zeros((2, 8), np.int32), np.zeros((2, 32), np.uint8)
        run(x, y, b)
        assert np.array_equal(y, x.view(np.int32)) and np.array_equal(b, x.view(np.uint8))


def test_view_that_splits_a_value_is_an_error():
    src = """kernel k(w: u32[1, 1], y: f32[1, 10]) {
  store(y[0 :+ 1, 0 :+ 10], cast(view(load(w[0 :+ 1, 0 :+ 1]), u3), f32))
}"""
    with pytest.raises(DSLTypeError, match="32 bits per row, not a whole number of u3"):
        compile(src)
