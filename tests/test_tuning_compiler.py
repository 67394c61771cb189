"""The tuner driving the real compiler on a tiny .lbk kernel: the interface `lowbitc tune`
uses (build(config) -> run), real wall-clock measurement, DSL errors surfacing with their
source positions, and the winner stored under the kernel's cache key + shape bucket.
No timing is asserted: only that the winner is a valid point and errors keep their text."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from lowbitc.cache import Cache, CacheKey
from lowbitc.compiler import compile as compile_kernel
from lowbitc.tuning import TuningError, WallClock, shape_bucket, tune, tuning_key

SOURCE = """kernel scale[BN: int = 64](x: f32[N], y: f32[N])
  grid (cdiv(N, BN),)
  tune BN in [0, 16, 64, 256]
  require BN <= 128
{
  a = load(x[block.x*BN :+ BN])
  store(y[block.x*BN :+ BN], a * 2.0)
}
"""
CHOICES = {"BN": [0, 16, 64, 256]}


def build_scale(config: dict, n: int = 4096, source: str = SOURCE):
    """Compile with `config`, check the result once, return a runner on fixed inputs."""
    kernel = compile_kernel(source, **config)
    x = np.linspace(-1, 1, n, dtype=np.float32)
    y = np.zeros_like(x)
    kernel(x, y)
    np.testing.assert_array_equal(y, 2 * x)
    return functools.partial(kernel, x, y)


def test_real_kernel_tuning_surfaces_dsl_errors_and_stores_the_winner(tmp_path):
    cache = Cache(tmp_path / "c")
    kernel_key = CacheKey.make(SOURCE, {}, backend="llvm")
    key = tuning_key(kernel_key, shape_bucket({"N": 4096}))
    r = tune(build_scale, CHOICES, measurer=WallClock(warmup=1, repeats=3),
             executor="thread", progress=False, cache=cache, key=key)  # fmt: skip
    assert r.best in ({"BN": 16}, {"BN": 64})
    errors = {t.config["BN"]: t.error for t in r.errors}
    assert set(errors) == {0, 256}
    assert errors[0].startswith("<string>:6:28: DSLTypeError: slice size must be >= 1")
    assert "<string>:4:11: DSLTypeError: requirement does not hold" in errors[256]
    assert "require BN <= 128" in errors[256]  # the source line, with a caret under it
    again = tune(build_scale, CHOICES, executor="inline", progress=False, cache=cache, key=key)
    assert again.from_cache and again.best == r.best


def test_real_kernel_where_every_candidate_fails_reports_each_reason():
    with pytest.raises(TuningError) as e:
        tune(build_scale, {"BN": [0, 200]}, executor="inline", progress=False)
    text = str(e.value)
    assert "all 2 candidates failed" in text
    assert "slice size must be >= 1, got 0" in text
    assert "requirement does not hold for these parameters: BN=200" in text
