"""`view` in the numba-cuda backend without a GPU: the rendered source, PTX that ptxas
assembles for odd widths both ways, the error for types the GPU cannot view, and the
simulator suite (tests/cudasim/test_sim_view.py) in a process of its own."""

from __future__ import annotations

import pytest
from cuda_checks import assemble_without_spills, needs_toolchain, run_simulator_suite

import lowbitc
from lowbitc.backends.numba_cuda.backend import BACKEND
from lowbitc.errors import BackendError

WORDS_TO_CODES = """kernel k(w: u32[R, WD], y: f32[R, C]) {{
  store(y[0 :+ 4, 0 :+ 32], cast(view(load(w[0 :+ 4, 0 :+ {bits}]), {fmt}), f32))
}}"""
CODES_TO_WORDS = """kernel q(x: f32[R, C], w: u32[R, WD]) {{
  store(w[0 :+ 4, 0 :+ {bits}], view(cast(load(x[0 :+ 4, 0 :+ 32]), {fmt}), u32))
}}"""


def _source(text: str) -> str:
    return BACKEND.rendered(lowbitc.compile(text, backend="cuda").lowered).source


def test_odd_width_codes_read_two_words_only_when_they_straddle():
    src = _source(WORDS_TO_CODES.format(bits=3, fmt="u3"))
    assert "// 32" in src and "< U64(3):" in src  # the second word behind a guard
    assert "& U64(0x7)" in src


def test_a_width_dividing_32_reads_one_word_per_code():
    src = _source(WORDS_TO_CODES.format(bits=4, fmt="u4"))
    assert "& U64(0xf)" in src and "if o" not in src  # no straddling, no guard


def test_codes_packed_into_words_shift_at_constant_offsets_for_u4():
    src = _source(CODES_TO_WORDS.format(bits=4, fmt="u4"))
    assert all(f"<< U64({4 * k}))" in src for k in range(1, 8))


def test_views_of_bool_tiles_are_errors():
    with pytest.raises(
        BackendError,
        match=r"view to u8: the GPU views formats, integers and "
        r"floats, not bool",
    ):
        lowbitc.compile(
            """kernel h(x: f32[2, 8], y: u8[2, 8]) {
  store(y[0 :+ 2, 0 :+ 8], view(load(x[0 :+ 2, 0 :+ 8]) > 0.0, u8))
}""",
            backend="cuda",
        )


@needs_toolchain
@pytest.mark.cuda_toolchain
@pytest.mark.parametrize("fmt", ["u3", "u5", "u7", "f6e3m2fn", "f16"])
def test_views_assemble_without_spills(fmt):
    bits = lowbitc.dtype(fmt).bits
    for text in (WORDS_TO_CODES, CODES_TO_WORDS):
        k = lowbitc.compile(text.format(bits=bits, fmt=fmt), backend="cuda")
        assemble_without_spills(BACKEND.ptx(k.lowered, "sm_80"), "sm_80")


@pytest.mark.cudasim
def test_view_simulator_suite_in_its_own_process():
    run_simulator_suite("test_sim_view.py", passed=25)
