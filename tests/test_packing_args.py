"""Words in a layout-specific packing (lowbitc.repack, docs/packing.md) reaching a kernel that
reads, views or writes them in another packing: a ValueError naming the argument and both
packings before any native code runs (LLVM, CUDA, the interpreter), and IR whose accesses of
one tensor disagree on its packing is rejected when compiled."""

from __future__ import annotations

import numpy as np
import pytest

import lowbitc
from lowbitc.backends import get_backend
from lowbitc.errors import BackendError, UserArgumentError, VerifyError
from lowbitc.ir.parser import parse
from lowbitc.packing import pack
from lowbitc.repack import PackedWords, Packing

RNG = np.random.default_rng(5)
LANES = Packing(3, 128)
CODES = RNG.integers(0, 8, (4, 128)).astype(np.uint8)

VIEW = """kernel v(w: u32[R, WD], y: f32[R, C]) {
  store(y[0 :+ 4, 0 :+ 128], cast(view(load(w[0 :+ 4, 0 :+ 12]), u3), f32))
}"""
STORE = """kernel q(x: f32[R, C], w: u3[R, C]) {
  store(w[0 :+ 4, 0 :+ 128], cast(load(x[0 :+ 4, 0 :+ 128]), u3))
}"""
READ = """kernel r(w: u3[R, C], y: f32[R, C]) {
  store(y[0 :+ 4, 0 :+ 128], cast(load(w[0 :+ 4, 0 :+ 128]), f32))
}"""
VIEW_OUT = """kernel vo(x: f32[R, C], w: u32[R, WD]) {
  store(w[0 :+ 4, 0 :+ 12], view(cast(load(x[0 :+ 4, 0 :+ 128]), u3), u32))
}"""
WHY = (
    r"argument 'w': expected words in the canonical packing, got PackedWords in packing "
    r"lanes16x128 of 3-bit codes"
)


def _calls():
    """(kernel source, arguments with the PackedWords as w, dims)."""
    f32 = np.float32
    return [
        (VIEW, lambda pw: [pw, np.zeros((4, 128), f32)], {"C": 128}),
        (STORE, lambda pw: [np.ones((4, 128), f32), pw], {}),
        (READ, lambda pw: [pw, np.zeros((4, 128), f32)], {}),
        (VIEW_OUT, lambda pw: [np.ones((4, 128), f32), pw], {"C": 128}),
    ]


@pytest.mark.parametrize("case", range(4))
def test_lanes_words_for_a_canonical_tensor_are_a_value_error(case):
    src, args, dims = _calls()[case]
    k = lowbitc.compile(src)
    assert k.packings == {}
    pw = PackedWords(LANES.from_codes(CODES), LANES, 128)
    before = pw.words.copy()
    for run in (k, k.interpret):
        a = args(pw)
        with pytest.raises(ValueError, match=WHY):
            run(*a, **dims)
        assert np.array_equal(pw.words, before)  # nothing ran: the words are untouched
        assert not np.any(a[1]) if isinstance(a[1], np.ndarray) else True  # nor the output


def test_qtensor_packed_as_words_into_a_quantizing_kernel_are_refused():
    qw = lowbitc.quantize(RNG.standard_normal((4, 128)).astype(np.float32), "u3", 32)
    k = lowbitc.compile(STORE)
    with pytest.raises(UserArgumentError, match=WHY):
        k(np.ones((4, 128), np.float32), qw.packed_as(LANES))
    w = np.zeros_like(qw.packed)
    k(np.full((4, 128), 2.0, np.float32), w)  # canonical words: written in place
    assert np.array_equal(w, pack(np.full((4, 128), 2, np.uint8), 3))


USER_GEMV = """
kernel gemv(x: f32[1, K], w: u3[N, K], y: f32[1, N]) grid (cdiv(N, 8)) {
  acc = zeros(f32, [1, 8])
  for k in range(0, K, 64) {
    a = load(x[0 :+ 1, k :+ 64])
    acc = dot(a, transpose(cast(load(w[block.x * 8 :+ 8, k :+ 64]), f32)), acc)
  }
  store(y[0 :+ 1, block.x * 8 :+ 8], acc)
}
"""


def test_words_in_another_lanes_step_name_both_packings():
    k = lowbitc.compile(USER_GEMV)
    p = k.packings["w"]  # a layout-specific packing, not lanes16x128 (the window is 64 wide)
    assert p != LANES
    x, y = np.zeros((1, 128), np.float32), np.zeros((1, 4), np.float32)
    pw = PackedWords(LANES.from_codes(CODES), LANES, 128)
    want = (
        rf"argument 'w': expected words in packing {p.name} of 3-bit codes, got PackedWords "
        r"in packing lanes16x128 of 3-bit codes"
    )
    with pytest.raises(UserArgumentError, match=want):
        k(x, pw, y)


def test_a_tensor_also_read_elsewhere_keeps_the_canonical_packing():
    src = USER_GEMV.replace(
        "  store(y[0 :+ 1, block.x * 8 :+ 8], acc)",
        "  store(y[0 :+ 1, block.x * 8 :+ 8], acc + cast(load(w[0 :+ 1, 0 :+ 8]), f32))",
    )
    assert lowbitc.compile(src).packings == {}


def test_ir_reading_one_tensor_in_two_packings_is_rejected():
    src = USER_GEMV.replace(
        "  store(y[0 :+ 1, block.x * 8 :+ 8], acc)",
        "  store(y[0 :+ 1, block.x * 8 :+ 8], acc + cast(load(w[0 :+ 1, 0 :+ 8]), f32))",
    )
    text = lowbitc.compile(src).text("lowered")
    assert text.count('packing=""') == 2
    mixed = parse(text.replace('packing=""', 'packing="lanes16x64"', 1), "<mixed>")
    with pytest.raises(
        VerifyError,
        match="tensor 'w' in the canonical packing, but it is read in packing lanes16x64",
    ):
        get_backend("llvm").compile(mixed)


@pytest.mark.parametrize("backend", ["llvm", "cuda"])
def test_backends_refuse_codes_ir_in_a_packing_they_do_not_implement(backend):
    if backend == "cuda":
        pytest.importorskip("numba.cuda")
    be = get_backend(backend)
    # llvm: a store into lanes words; cuda: any access (the GPU reads canonical words only)
    src, old = (STORE, "store_codes") if backend == "llvm" else (READ, "load_codes")
    text = lowbitc.compile(src, backend=backend).text("lowered")
    line = next(x for x in text.splitlines() if "codes %w" in x and old in x)
    bad = parse(text.replace(line, line.replace('packing=""', 'packing="lanes16x128"')), "<p>")
    with pytest.raises(BackendError, match="packing lanes16x128"):
        be.compile(bad)


def test_cuda_refuses_lanes_words_before_launching():
    pytest.importorskip("numba.cuda")
    k = lowbitc.compile(READ, backend="cuda")
    pw = PackedWords(LANES.from_codes(CODES), LANES, 128)
    with pytest.raises(ValueError, match=WHY):
        k(pw, np.zeros((4, 128), np.float32))
