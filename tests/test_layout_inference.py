"""Explicit layouts in the DSL and the infer-layouts pass (networkx constraint graph)."""

import numpy as np
import pytest

from lowbitc.compiler import compile
from lowbitc.errors import DSLTypeError
from lowbitc.ir import parse, print_kernel, walk
from lowbitc.ir.layouts import layout_text, parse_layout
from lowbitc.ir.types import TileType
from lowbitc.layout import local, spatial
from lowbitc.passes import run_pipeline

L = layout_text(spatial(4, 8) * local(2, 1))

SRC = """
kernel k(x: f32[8, 8], y: f32[8, 8], z: f32[8], o: f32[8, 8]) threads 32 {
  a = load(x[0 :+ 8, 0 :+ 8], layout=spatial(4, 8) * local(2, 1))
  b = load(y[0 :+ 8, 0 :+ 8])
  c = exp(a) + b
  acc = relayout(zeros(f32, [8, 8]), spatial(4, 8) * local(2, 1))
  for i in range(0, 3) {
    acc = acc + c
  }
  r = load(z[0 :+ 8])
  store(o[0 :+ 8, 0 :+ 8], acc + reshape(r, [8, 1]))
}
"""


def _layouts(k):
    return {str(op.results[0]): op.results[0].type.layout for op in walk(k.body.ops)
            if op.results and isinstance(op.results[0].type, TileType)}


def test_layouts_propagate_through_elementwise_ops_and_loops():
    k = compile(SRC)
    out = run_pipeline(k.ir, ["infer-layouts"])
    by_op = {op.opcode: op for op in walk(out.body.ops)}
    assert by_op["exp"].results[0].type.layout == L
    assert by_op["add"].results[0].type.layout == L  # tied to a and b
    loop = by_op["for"]
    assert loop.results[0].type.layout == L and loop.regions[0].args[1].type.layout == L
    assert not any(op.opcode == "relayout" for op in walk(out.body.ops))
    # the [8] tile r is not tied to the [8, 8] tiles: it keeps no layout
    loads = [op for op in walk(out.body.ops) if op.opcode == "load"]
    assert [ld.results[0].type.layout for ld in loads] == [L, L, ""]
    assert parse(print_kernel(out)) == out


def test_layouts_do_not_change_results():
    k = compile(SRC)
    rng = np.random.default_rng(0)
    x, y, z = (rng.standard_normal(s).astype(np.float32) for s in ((8, 8), (8, 8), (8,)))
    o1, o2 = np.zeros((8, 8), np.float32), np.zeros((8, 8), np.float32)
    k(x, y, z, o1)
    k.interpret(x, y, z, o2)
    np.testing.assert_allclose(o1, 3 * (np.exp(x) + y) + z[:, None], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(o1, o2, rtol=1e-5, atol=1e-5)


def test_conflicting_layouts_name_both_positions():
    src = """kernel k(x: f32[8, 8], o: f32[8, 8]) threads 32 {
  a = load(x[0 :+ 8, 0 :+ 8], layout=spatial(4, 8) * local(2, 1))
  b = relayout(load(x[0 :+ 8, 0 :+ 8]), spatial(8, 4) * local(1, 2))
  store(o[0 :+ 8, 0 :+ 8], a + b)
}"""
    with pytest.raises(DSLTypeError) as e:
        compile(src)
    msg = str(e.value)
    assert "two:" in msg and "<string>:2:" in msg and "<string>:3:" in msg


def test_a_layout_that_does_not_fit_its_tile():
    src = """kernel k(x: f32[8, 8], o: f32[8, 8]) threads 32 {
  a = load(x[0 :+ 8, 0 :+ 8], layout=spatial(4, 8))
  store(o[0 :+ 8, 0 :+ 8], a)
}"""
    with pytest.raises(DSLTypeError) as e:
        compile(src)
    assert str(e.value) == (
        "<string>:2:38: DSLTypeError: layout tv((4,8), modes=(4,8), spatial=(0,1), local=()) "
        "covers a [4, 8] tile, but the tile is [8, 8]\n"
        "      a = load(x[0 :+ 8, 0 :+ 8], layout=spatial(4, 8))\n"
        "                                         ^")


def test_a_layout_for_another_thread_count():
    src = """kernel k(x: f32[8, 8], o: f32[8, 8]) threads 64 {
  store(o[0 :+ 8, 0 :+ 8], load(x[0 :+ 8, 0 :+ 8], layout=spatial(4, 8) * local(2, 1)))
}"""
    with pytest.raises(DSLTypeError, match="uses 32 threads, but the kernel runs 64"):
        compile(src)


def test_layout_text_round_trips():
    for t in (spatial(4, 8) * local(2, 1), local(3, 5), spatial(32)):
        assert parse_layout(layout_text(t)) == t
