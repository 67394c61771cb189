"""Calls of a compiled kernel: the grid, remembered per scalar arguments and dims, always
follows the arguments of the call."""

from __future__ import annotations

import numpy as np

import lowbitc

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
