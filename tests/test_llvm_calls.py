"""Calls of a compiled kernel: the grid, remembered per scalar arguments and dims, always
follows the arguments of the call."""

from __future__ import annotations

import re

import numpy as np
import pytest

import lowbitc
from lowbitc import ops
from lowbitc.backends.llvm import decode, ops_memory, prefetch, rows
from lowbitc.errors import UserArgumentError

FILL = """
kernel fill(y: f32[N], step: int, v: f32) grid (cdiv(N, step)) {
  i = block.x * step
  store(y[i :+ 1], zeros(f32, [1]) + v)
}
"""


def test_grid_follows_scalar_arguments_and_dims_call_after_call():
    k = lowbitc.compile(FILL)
    for n, step, v in [(10, 2, 1.0), (10, 1, 2.0), (10, 2, 3.0), (7, 3, 4.0), (30, 1, 5.0),
                       (7, 3, 6.0), (10, 2, 7.0)]:
        y = np.zeros(n, np.float32)
        k(y, step, v)
        want = np.zeros(n, np.float32)
        want[::step] = v
        np.testing.assert_array_equal(y, want)


COLUMN = """
kernel column(s: f32[N, G], y: f32[G, N]) grid (G) {
  g = block.x
  store(y[g :+ 1, 0 :+ 37], reshape(load(s[0 :+ 37, g]), [1, 37]))
}
"""


def test_a_column_window_is_gathered_and_exact():
    # 37 rows of one column: two 16-lane gathers at the row stride, then 5 single loads
    k = lowbitc.compile(COLUMN)
    assert "@llvm.masked.gather.v16f32" in k.text("llvm")
    s = np.arange(37 * 5, dtype=np.float32).reshape(37, 5)
    y = np.zeros((5, 37), np.float32)
    k(s, y)
    np.testing.assert_array_equal(y, s.T)


@pytest.mark.parametrize("name", ["u1", "b1", "u2"])
def test_dequantize_of_one_bit_codes_beside_a_float_tensor_of_the_same_shape(name):
    # linearize shares row strides between tensors of one shape and element kind: the 1-bit
    # codes' words per row must not be taken for the f32 output's elements per row
    rng = np.random.default_rng(0)
    qw = lowbitc.quantize(rng.standard_normal((37, 200)).astype(np.float32), name, 64)
    got = lowbitc.ops.dequantize(qw)
    assert np.array_equal(got.view(np.uint32), qw.dequantize().view(np.uint32))


ROWSUM = """
kernel rowsum[ROW: int = 1](s: f32[G, N], y: f32[1, N]) grid (cdiv(N, 64)) {
  acc = zeros(f32, [64])
  for g in range(0, G) {
    r = g
    c = block.x * 64
    if ROW == 0 { r = 0 }
    if ROW == 2 {  # a tile-major run: program x's G windows of 64 back to back
      at = (block.x * G + g) * 64
      r = at / N
      c = at % N
    }
    acc = acc + load(s[r, c :+ 64])
  }
  store(y[0, block.x * 64 :+ 64], acc)
}
"""


@pytest.mark.parametrize("row", [1, 0, 2])
def test_a_row_window_at_the_loop_counter_prefetches_rows_ahead(row):
    """A window of row `g` of a 2-D tensor in a loop over g (the GEMV's group-major scales)
    prefetches its row iterations ahead (4 lines of 64 bytes here, and the run's last byte:
    the fifth line of an array that starts inside one); a fixed row does not; a row that
    moves with g otherwise (matmul TM's tile-major run) asks for the same RUN_AHEAD bytes past
    it. The rows past the tensor's end are prefetched too, which never faults."""
    k = lowbitc.compile(ROWSUM, ROW=row)
    s = np.random.default_rng(0).standard_normal((5, 256)).astype(np.float32)
    y = np.zeros((1, 256), np.float32)
    k(s, y)
    want = {1: s.sum(0), 0: 5 * s[0], 2: s.reshape(4, 5, 64).sum(1).reshape(-1)}[row]
    np.testing.assert_allclose(y[0], want, rtol=1e-5, atol=1e-5)
    text = k.text("llvm")
    assert text.count("call void @llvm.prefetch") == (0 if row == 0 else 5)
    assert (f"i64 {ops_memory.RUN_AHEAD}" in text) == (row == 2)


@pytest.mark.parametrize("nbytes", [1, 16, 63, 64, 65, 128, 256, 1024])
def test_a_prefetched_run_covers_its_lines_at_any_start(nbytes):
    """The lines of prefetch.run_offsets, from any start within a line, are exactly the lines
    the run's bytes lie in (a numpy array starts 16 bytes past a line; the run's last line was
    left to a demand miss)."""
    for start in range(64):
        lines = {(start + off) // 64 for off in prefetch.run_offsets(nbytes)}
        assert lines == set(range(start // 64, (start + nbytes - 1) // 64 + 1))


@pytest.mark.parametrize("fmt", ["u4", "u8", "f4e2m1fn"])
def test_tile_major_gemv_prefetches_its_scale_run(fmt):
    """ops.matmul's f32 GEMV with tile-major scales (TM): besides its codes, each program's
    scale (and zero-point) windows ask for the lines RUN_AHEAD bytes on, so the lines of the
    run (one sequential stream per thread, tile after tile) are all asked for past the
    first RUN_AHEAD bytes (without it the stream waited for memory: docs/performance.md)."""
    q = lowbitc.quantize(np.ones((256, 256), np.float32), fmt, 128,
                         zero_point=fmt.startswith("u"))
    _, p = ops.matmul_choice(1, 4096, 4096, q, "f32")
    p.update(GM=True, TM=True)
    text = ops.get_kernel("matmul", **p).text("asm")
    far = ops_memory.RUN_AHEAD
    offsets = {int(v) for v in re.findall(r"prefetcht[0-2]\s+(-?\d+)\(", text)}
    window = 4 * p["BN"]  # bytes of one group's scales (and as many of its zero points)
    assert set(range(far, far + window, 64)) <= offsets
    loads = 2 if q.zeros is not None else 1
    starts = [t * 32 * loads * window + (g * loads + j) * window  # 32 groups a program
              for t in range(4) for g in range(32) for j in range(loads)]
    asked = {(s + far + line) // 64 for s in starts for line in range(0, window, 64)}
    assert set(range(far // 64, starts[-1] // 64 + window // 64)) <= asked


@pytest.mark.skipif(not decode.permutes(), reason="reads AVX-512 assembly (one zmm load a line)")
@pytest.mark.parametrize("fmt", ["u2", "u3", "u4", "f4e2m1fn"])
def test_gemv_code_windows_ask_for_each_line_they_load(fmt):
    """The rows and planes dots of ops.matmul's f32 GEMV prefetch a 16-row block's codes
    rows.PREFETCH_WINDOWS windows ahead: a window of more than rows.BURST_LINES lines (u3: 12,
    u4: 16) asks in each K step for that step's own lines (a burst of them at the window's
    start stalled the loads behind it: docs/performance.md), a narrower one (u2: 8) for all of
    them at once. Either way every code line the loop loads is asked for exactly that far
    ahead in the same loop body, so a block's stream is covered past its first windows."""
    q = lowbitc.quantize(np.ones((256, 256), np.float32), fmt, 128,
                         zero_point=fmt.startswith("u"))
    _, p = ops.matmul_choice(1, 4096, 4096, q, "f32")
    p.update(GM=True, TM=p["BN"] <= ops.TILE_MAJOR_BN)
    text = ops.get_kernel("matmul", **p).text("asm")
    bits = q.dtype.bits
    lines = p["BK"] // 32 * bits  # a block's window of codes
    far = rows.PREFETCH_WINDOWS * lines * 64
    checked = 0
    for block in re.split(r"\n(?=\.?\w+:)", text):  # basic blocks
        asked: dict[str, list[int]] = {}
        for off, at in re.findall(r"prefetcht[0-2]\s+(-?\d*)\(([^)]*)\)", block):
            asked.setdefault(at, []).append(int(off or 0))
        for at, offsets in asked.items():
            loads = [int(o or 0) for o in
                     re.findall(rf"vmovdqu64\s+(-?\d*)\({re.escape(at)}\), %zmm", block)]
            if loads:  # the code loads of a step (u2: of a whole unrolled window)
                assert sorted(o - far for o in offsets) == sorted(loads)
                assert len(loads) == (bits if lines > rows.BURST_LINES else lines)
                checked += 1
    assert checked >= 1


AXPY = """
kernel axpy(x: f32[M, 40], y: f32[M, 40], a: f32) grid (M) {
  i = block.x
  store(y[i :+ 1, 0 :+ 40], load(x[i :+ 1, 0 :+ 40]) * a + load(y[i :+ 1, 0 :+ 40]))
}
"""


def test_a_bound_call_takes_new_free_arrays_and_keeps_the_rest():
    """Kernel.bind checks and packs once: each call puts in the free arrays (any contents,
    the same shapes), keeps the bound ones and the scalars; a wrong array is refused with
    the parameter's name before any native code runs."""
    k = lowbitc.compile(AXPY)
    rng = np.random.default_rng(0)
    x0, y0 = (rng.standard_normal((9, 40)).astype(np.float32) for _ in range(2))
    run = k.bind(x0, y0, 0.5, free=("y",))
    for _ in range(3):
        y = rng.standard_normal((9, 40)).astype(np.float32)
        want = x0 * np.float32(0.5) + y
        run(y)
        np.testing.assert_array_equal(y, want)
    run2 = k.bind(x0, y0, 2.0, free=("x", "y"))
    x, y = np.ones((9, 40), np.float32), np.zeros((9, 40), np.float32)
    run2(x, y)
    np.testing.assert_array_equal(y, np.full((9, 40), 2.0, np.float32))
    with pytest.raises(UserArgumentError, match=r"'y'.*shape \(9, 40\)"):
        run(np.zeros((8, 40), np.float32))
    with pytest.raises(UserArgumentError, match="'y'.*float32"):
        run(np.zeros((9, 40), np.float64))
    with pytest.raises(UserArgumentError, match="'y'.*C-contiguous"):
        run(np.zeros((40, 9), np.float32).T)
    with pytest.raises(UserArgumentError, match="expected 2 arrays"):
        run2(x)
    with pytest.raises(UserArgumentError, match="'a' is not an array parameter"):
        k.bind(x0, y0, 0.5, free=("a",))
