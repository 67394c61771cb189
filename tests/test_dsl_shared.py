"""Shared tiles: `shared(...)`, `copy`, `load`/`store` of shared slices and `sync()`, in the
interpreter (the semantics) and the LLVM backend, their IR round trip, the passes' respect for
their ordering, and the errors they raise (with the DSL position)."""

from __future__ import annotations

import re

import numpy as np
import pytest

import lowbitc
from lowbitc.errors import BackendError, DSLTypeError, VerifyError
from lowbitc.ir import parse, print_kernel, verify
from lowbitc.passes import CPU_PIPELINE, run_pipeline

STAGED = """
kernel staged[BM: int = 4, BK: int = 8](x: f32[M, K], y: f32[M, K])
  threads 32 grid (cdiv(M, BM), cdiv(K, BK))
{
  s = shared(f32, [BM, BK], layout=swizzle(1, 1, 2))
  copy(s, x[block.x * BM :+ BM, block.y * BK :+ BK])     # global -> shared
  sync()
  t = load(s[1 :+ 2, :])                                  # shared -> registers
  store(s[0 :+ 2, :], t * 2.0)                            # registers -> shared
  sync()
  copy(y[block.x * BM :+ BM, block.y * BK :+ BK], s)     # shared -> global
}
"""


def staged_expect(x: np.ndarray, BM: int = 4, BK: int = 8) -> np.ndarray:
    y = x.copy()
    for i in range(0, x.shape[0], BM):
        tile = np.zeros((BM, BK + x.shape[1]), np.float32)
        rows = x[i : i + BM]
        tile[: len(rows), : x.shape[1]] = rows
        new = tile.copy()
        new[0:2] = 2 * tile[1:3]
        y[i : i + BM] = new[: len(rows), : x.shape[1]]
    return y


@pytest.mark.parametrize("shape", [(7, 13), (4, 8), (1, 3)])
def test_staged_tiles_match_numpy_in_both_engines(shape):
    k = lowbitc.compile(STAGED)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    for run in (k, k.interpret):
        y = np.full_like(x, np.nan)
        run(x, y)
        assert np.array_equal(y, staged_expect(x)), run


def test_format_codes_through_shared_memory_windows_and_masks():
    src = """
    kernel k[W: dtype = u3](w: W[3, 9], y: f32[3, 9], z: f16[3, 4]) threads 16 grid (1) {
      s = shared(W, [3, 9])                      # codes, not values
      copy(s, w[0 :+ 3, 0 :+ 9])
      h = shared(f16, [2, 4])
      store(h[0, :], cast(load(s[0, 0 :+ 4]), f16))
      store(h[1, 1 :+ 4], full(f16, [4], 7.0), mask=arange(4) < 2)   # past the edge: dropped
      sync()
      store(y[0 :+ 3, 0 :+ 9], cast(load(s), f32))
      store(z[0 :+ 2, :], load(h, mask=arange(4) != 3))
    }
    """
    codes = np.random.default_rng(1).integers(0, 8, (3, 9)).astype(np.uint8)
    k = lowbitc.compile(src)
    for run_name in ("native", "interp"):
        run = k if run_name == "native" else k.interpret
        y, z = np.zeros((3, 9), np.float32), np.full((3, 4), -1, np.float16)
        run(lowbitc.pack(codes, 3), y, z)
        assert np.array_equal(y, codes.astype(np.float32)), run_name
        h1 = [0, 7, 7, 0]  # h[1, 0] and h[1, 3] were never written: zero in the interpreter
        want = np.float16([list(codes[0, :3]) + [0], h1, [-1] * 4])
        if run_name == "interp":
            assert np.array_equal(z, want)
        else:  # unwritten shared memory is undefined: compare what was written
            assert np.array_equal(z[0, :3], want[0, :3]) and np.array_equal(z[1, 1:3], [7, 7])


def test_passes_keep_shared_loads_and_stores_in_order():
    src = """
    kernel k(x: f32[8], y: f32[16]) {
      s = shared(f32, [8])
      copy(s, x[0 :+ 8])
      a = load(s)                  # identical loads around a store: never merged
      store(s, a + 1.0)
      b = load(s)
      t = shared(f32, [8])         # a second tile of the same shape is other memory
      copy(t, a)
      store(y[0 :+ 8], b)
      store(y[8 :+ 8], load(t))
    }
    """
    k = lowbitc.compile(src)
    lowered = run_pipeline(k.ir, CPU_PIPELINE)
    text = print_kernel(lowered)
    assert text.count("load_shared") == 3 and text.count("alloc_shared") == 2
    assert text.count("sync") == 0 and text.count("store_shared") == 3
    x = np.arange(8, dtype=np.float32)
    for run in (k, k.interpret):
        y = np.zeros(16, np.float32)
        run(x, y)
        assert np.array_equal(y, np.concatenate([x + 1, x]))


def test_shared_ops_round_trip_through_text():
    k = lowbitc.compile(STAGED).ir
    text = print_kernel(k)
    assert 'alloc_shared {dtype="f32", layout="Sw<1,1,2>", shape=[4, 8]}' in text
    assert 'tile<f32[4,8], shared, layout="Sw<1,1,2>">' in text and "  sync" in text
    assert parse(text) == k


@pytest.mark.parametrize(
    "body,message",
    [
        (
            "s = shared(f32, [4])\ncopy(s, x[0 :+ 5])",
            "copy: the source is [5] but the destination is [4]",
        ),
        (
            "s = shared(f16, [4])\nstore(s, load(x[0 :+ 4]))",
            "store: the value is f32 but the shared tile holds f16; cast it",
        ),
        ("s = shared(f32, [4])\ny = s * 2.0", "shared tile tile<f32[4], shared> (memory: read it "),
        (
            "s = shared(f32, [4, 4], layout=swizzle(3, 2, 3))",
            "swizzle(3, 2, 3) permutes blocks of 256 elements, but the tile [4, 4] has 16",
        ),
        ("s = shared(f32, [4], layout=spatial(4))", "a shared tile's layout= is a swizzle"),
        ("s = shared(f32, [4])\nt = load(s[0 :+ 2, 0])", "has 1 dims"),
        ("s = shared(f32, [4])\nt = exp(s)", "x must be a tile or scalar value, got shared tile"),
        ("s = shared(f32, [4])\ncopy(x[0 :+ 4], 1.0)", "copy() copies from a tensor slice"),
    ],
)
def test_shared_tile_errors_point_at_the_source(body, message):
    src = "kernel k(x: f32[N]) {\n" + body + "\n}"
    with pytest.raises(DSLTypeError, match=re.escape(message)) as err:
        lowbitc.compile(src)
    assert err.value.loc is not None and err.value.loc.line >= 2


def test_verifier_rejects_shared_tiles_used_as_values():
    k = lowbitc.compile("kernel k(x: f32[4]) {\n  s = shared(f32, [4])\n  copy(s, x[0 :+ 4])\n}")
    text = print_kernel(k.ir).replace(
        '%4 = load %x, %3 {layout="", masked=false, sizes=[4]} : tile<f32[4]>',
        "%4 = exp %2 : tile<f32[4]>",
    )
    assert "exp %2" in text
    with pytest.raises(VerifyError, match="is a shared tile"):
        verify(parse(text))


def test_cuda_shared_memory_limit_names_the_tile():
    from lowbitc.backends.numba_cuda.render import render

    src = """kernel big(x: f32[N]) threads 128 {
      a = shared(f32, [64, 128])
      b = shared(f32, [64, 128])
      copy(a, b)
    }"""
    k = lowbitc.compile(src, backend="llvm")
    with pytest.raises(
        BackendError,
        match="need 65536 bytes per block by here, more than the "
        "49152 bytes of static shared memory sm_80",
    ) as err:
        render(k.lowered)
    assert err.value.loc.line == 3


STAGING = """
kernel stage[BN: int = 8, GC: int = 4](s: f16[G, N], z: f32[G, N], y: f32[G, N])
  grid (cdiv(G, GC), cdiv(N, BN))
{
  st = shared(f32, [GC, BN])
  zt = shared(f32, [GC, BN])
  g0 = block.x * GC
  n0 = block.y * BN
  store(st[0 :+ GC, 0 :+ BN], cast(load(s[g0 :+ GC, n0 :+ BN]), f32))  # rows past G: 0
  store(zt[0 :+ GC, 0 :+ BN], load(z[g0 :+ GC, n0 :+ BN]) + 1.0)
  # a row broadcast of the tile being written: must read row 0 as it was
  store(zt[0 :+ GC, 0 :+ BN], load(zt[0 :+ 1, 0 :+ BN]) * load(st[0 :+ GC, 0 :+ BN]))
  store(y[g0 :+ GC, n0 :+ BN], load(zt[0 :+ GC, 0 :+ BN]) - load(st[0 :+ GC, 0 :+ BN]))
}
"""


@pytest.mark.parametrize("in_place", [True, False])
def test_whole_tile_stores_build_the_tile_in_place(in_place, monkeypatch):
    # store(st, cast(load(s), f32)): the cast writes the shared tile itself (the CPU backend's
    # plan_in_place), with the same results as a tile built, then copied
    from lowbitc.backends.llvm import ops_shared

    monkeypatch.setenv("LOWBITC_NO_CACHE", "1")
    monkeypatch.setattr(ops_shared, "IN_PLACE", in_place)
    planned = []  # the producers of the stores planned in place
    plan = ops_shared.plan_in_place

    def spy(r, defs):
        found = plan(r, defs)
        planned.extend(op for op in r.ops if id(op) in found)
        return found

    monkeypatch.setattr(ops_shared, "plan_in_place", spy)
    k = lowbitc.compile(STAGING)
    k.text("llvm")
    assert [p.opcode for p in planned] == (["cast", "add", "mul"] if in_place else [])
    assert ("built in place by the cast" in k.explain()) == in_place
    rng = np.random.default_rng(3)
    s = rng.standard_normal((10, 20)).astype(np.float16)
    z = rng.standard_normal((10, 20)).astype(np.float32)
    y = np.full((10, 20), np.nan, np.float32)
    k(s, z, y)
    want = np.full_like(y, np.nan)
    k.interpret(s, z, want)
    assert np.array_equal(y, want)
    sf = s.astype(np.float32)
    row0 = (z[0::4] + 1)[np.arange(10) // 4]  # each block's first row of zt
    assert np.allclose(y, row0 * sf - sf, rtol=1e-6)
