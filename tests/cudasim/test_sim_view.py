"""`view` in the numba-cuda backend, run in Numba's CUDA simulator against the interpreter:
words viewed as codes of every width family (odd widths, a partial last word past the
tensor's edge), codes viewed back as words (quantizing into a u32 tensor), format to format
and machine views.

Run only in a process with NUMBA_ENABLE_CUDASIM=1 (tests/test_cuda_view.py starts one).
"""

import os

import numpy as np
import pytest

import lowbitc
from lowbitc.packing import pack, unpack

pytestmark = pytest.mark.cudasim
assert os.environ.get("NUMBA_ENABLE_CUDASIM") == "1", "run through tests/test_cuda_view.py"

RNG = np.random.default_rng(11)
K = 27  # codes per row: never a whole number of words for the odd widths
FORMATS = ["u3", "u5", "u7", "u4", "i4", "b1", "u2", "f6e3m2fn", "nf4", "u8", "i3"]


def _both(src: str, args: list, **dims) -> tuple[list, list]:
    """Outputs of the CUDA kernel and of the interpreter on copies of the same arguments."""
    k = lowbitc.compile(src, backend="cuda")
    got, want = [a.copy() for a in args], [a.copy() for a in args]
    k(*got, **dims)
    k.interpret(*want, **dims)
    return got, want


@pytest.mark.parametrize("fmt", FORMATS)
def test_words_viewed_as_codes(fmt):
    """A window of `bits` words (32 codes) over rows of K codes: the last word is partial and
    for u7 the window passes the tensor's edge (those words read 0)."""
    f = lowbitc.dtype(fmt)
    codes = RNG.integers(0, f.num_codes, (3, K)).astype(np.uint8)
    src = f"""kernel k(w: u32[R, WD], y: f32[R, C], c: i32[R, D]) {{
  v = view(load(w[0 :+ 4, 0 :+ {f.bits}]), {fmt})
  store(y[0 :+ 4, 0 :+ 32], cast(v, f32))
  store(c[0 :+ 4, 0 :+ {4 * f.bits}], cast(view(v, u8), i32))
}}"""
    words = pack(codes, f.bits)
    y, c = np.full((3, K), -7.0, np.float32), np.full((3, 4 * f.bits), -1, np.int32)
    got, want = _both(src, [words, y, c], C=K)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[2], want[2])
    decoded = f.decode(codes)
    ok = ~np.isnan(decoded)
    assert np.array_equal(got[1][ok], decoded[ok]) and np.isnan(got[1][~ok]).all()


@pytest.mark.parametrize("fmt", FORMATS)
def test_codes_viewed_as_words_quantize_into_a_u32_tensor(fmt):
    """cast to the format, view as u32, store: the canonical words of the codes (the 5 columns
    past the input's edge quantize 0.0 into the last, partial, word; for u7 a whole word of
    the window lies past the tensor's edge)."""
    f = lowbitc.dtype(fmt)
    x = RNG.standard_normal((3, K)).astype(np.float32) * 3
    src = f"""kernel q(x: f32[R, C], w: u32[R, WD]) {{
  codes = cast(load(x[0 :+ 3, 0 :+ 32]), {fmt})
  store(w[0 :+ 3, 0 :+ {f.bits}], view(codes, u32))
}}"""
    words = np.zeros((3, -(-K * f.bits // 32)), np.uint32)  # the canonical size: stores clip
    got, want = _both(src, [x, words])
    np.testing.assert_array_equal(got[1], want[1])
    if fmt != "u8":  # (u8 is a machine type: its cast is a conversion, not an encode)
        want_codes = f.encode(x.astype(np.float64))
        assert np.array_equal(unpack(got[1], f.bits, K).reshape(3, K), want_codes)


def test_format_to_format_and_byte_views():
    """Bytes as u5 codes, those as u7 codes (neither width divides the other), and back."""
    src = """kernel r(b: u8[R, 35], y: i32[R, 40], z: u8[R, 35]) {
  c5 = view(load(b[0 :+ 2, 0 :+ 35]), u5)
  c7 = view(c5, u7)
  store(y[0 :+ 2, 0 :+ 40], cast(c7, i32))
  store(z[0 :+ 2, 0 :+ 35], view(view(c7, u1), u8))
}"""
    b = RNG.integers(0, 256, (2, 35)).astype(np.uint8)
    got, want = _both(src, [b, np.zeros((2, 40), np.int32), np.zeros((2, 35), np.uint8)])
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[2], b)  # the round trip keeps every bit


def test_machine_views_keep_bit_patterns():
    """f32 as i32 and u16; i8 (negative values) as u32 words; u16 as u3 codes."""
    src = """kernel m(x: f32[2, 8], s: i8[2, 8], h: u16[2, 3],
                 a: i32[2, 8], b: u16[2, 16], c: u32[2, 2], d: i32[2, 16]) {
  t = load(x[0 :+ 2, 0 :+ 8])
  store(a[0 :+ 2, 0 :+ 8], view(t, i32))
  store(b[0 :+ 2, 0 :+ 16], view(t, u16))
  store(c[0 :+ 2, 0 :+ 2], view(load(s[0 :+ 2, 0 :+ 8]), u32))
  store(d[0 :+ 2, 0 :+ 16], cast(view(load(h[0 :+ 2, 0 :+ 3]), u3), i32))
}"""
    x = RNG.standard_normal((2, 8)).astype(np.float32)
    s = RNG.integers(-128, 128, (2, 8)).astype(np.int8)
    h = RNG.integers(0, 1 << 16, (2, 3)).astype(np.uint16)
    outs = [
        np.zeros((2, 8), np.int32),
        np.zeros((2, 16), np.uint16),
        np.zeros((2, 2), np.uint32),
        np.zeros((2, 16), np.int32),
    ]
    got, want = _both(src, [x, s, h, *outs])
    for g, w in zip(got[3:], want[3:], strict=True):
        np.testing.assert_array_equal(g, w)
    assert np.array_equal(got[3], x.view(np.int32)) and np.array_equal(got[5], s.view(np.uint32))


def test_half_and_double_views_keep_bit_patterns():
    """f16 as u16 and as u32 words, u16 back as f16; f64 as u32 and u32 words as f64."""
    src = """kernel fd(h: f16[2, 8], d: f64[2, 4], a: u16[2, 8], b: u32[2, 4], c: f16[2, 8],
                  e: u32[2, 8], f: f64[2, 4]) {
  t = load(h[0 :+ 2, 0 :+ 8])
  store(a[0 :+ 2, 0 :+ 8], view(t, u16))
  store(b[0 :+ 2, 0 :+ 4], view(t, u32))
  store(c[0 :+ 2, 0 :+ 8], view(view(t, u16), f16))
  w = view(load(d[0 :+ 2, 0 :+ 4]), u32)
  store(e[0 :+ 2, 0 :+ 8], w)
  store(f[0 :+ 2, 0 :+ 4], view(w, f64))
}"""
    h = RNG.standard_normal((2, 8)).astype(np.float16)
    d = RNG.standard_normal((2, 4))
    outs = [
        np.zeros((2, 8), np.uint16),
        np.zeros((2, 4), np.uint32),
        np.zeros((2, 8), np.float16),
        np.zeros((2, 8), np.uint32),
        np.zeros((2, 4), np.float64),
    ]
    got, want = _both(src, [h, d, *outs])
    for g, w in zip(got[2:], want[2:], strict=True):
        np.testing.assert_array_equal(g, w)
    assert np.array_equal(got[2], h.view(np.uint16)) and np.array_equal(got[3], h.view(np.uint32))
    assert np.array_equal(got[4], h) and np.array_equal(got[6], d)
