"""Operands in flight (backends/numba_cuda/pipeline.py, launch.py, reduce_order.py): the
activation tile of matmul_mma's K loop staged by cp.async in a 3-stage pipeline, its swizzle,
dynamic shared memory beyond 48 KiB and its launch, the cp.async twins' group semantics, and
the conflict-free reduction order. No GPU: source, ptxas/SASS and fakes of the driver."""

from __future__ import annotations

import re

import numpy as np
import pytest
from cuda_checks import T, assemble_without_spills, needs_toolchain

from lowbitc import ops
from lowbitc.backends.numba_cuda import launch, pipeline, reduce_order, warpsim
from lowbitc.backends.numba_cuda.backend import BACKEND
from lowbitc.backends.numba_cuda.mma_dot import Tiling
from lowbitc.backends.numba_cuda.render import render
from lowbitc.errors import BackendError


def _kernel(**params):
    return ops.get_kernel("matmul_mma", "cuda", **{"W": "u4", **params})


def test_the_k_loop_pipelines_the_activation_tile():
    """Prologue of STAGES - 1 committed fills, then per iteration: wait_group(STAGES - 2),
    a barrier, the fill STAGES - 1 ahead, a commit; the body reads its stage by ldmatrix."""
    src = _kernel().text("python")
    s = pipeline.STAGES
    loop = src[src.index(f"cp_async_wait({s - 2})"):]
    head = [ln.strip() for ln in loop.splitlines()[:3]]
    assert head[:2] == [f"cp_async_wait({s - 2})", "cuda.syncthreads()"], head
    assert src.count("cp_async_commit()") == s  # S - 1 in the prologue, one in the loop
    fills = re.findall(r"cp_async16_zfill\((sp\d+), U32\((so\d+) \+ \((o\d+) \^ \(\(\3 & (\d+)\) "
                       r">> (\d+)\)\)\), a0, U64\(ga\d+\), U32\(2 \* n\d+\)\)", src)
    assert len(fills) == s and len({f[0] for f in fills}) == 1, fills  # one buffer, S stages
    assert "aligned16(a0) and p3 % 8 == 0" in src  # 16-byte rows, else element by element
    assert re.search(r"ldmatrix_x4\(sp\d+, U32\(ls\d+ \^ \(ks\d+ \* 1\)\)\)", src)
    assert src.rstrip().endswith("return") and "cp_async_wait(0)" in src


@pytest.mark.parametrize("bm,bk,threads", [(16, 64, 32), (64, 128, 128), (16, 16, 32),
                                           (32, 32, 64), (64, 64, 32)])
def test_stage_swizzle_is_conflict_free_for_copies_and_ldmatrix(bm, bk, threads):
    """The chosen swizzle (found by search) keeps 16-byte chunks whole, permutes the tile,
    and every warp's cp.async stores and ldmatrix rows take one wavefront per phase; the
    unswizzled rows of 128 bytes (bk 64) would conflict 8-way on ldmatrix."""
    warps = threads // 32
    wm = next(w for w in range(warps, 0, -1) if warps % w == 0 and bm // 16 % w == 0)
    t = Tiling(bm, 64, bk, wm, warps // wm)
    sw = pipeline.stage_swizzle(bm, bk, t, threads)
    assert sw is not False and (sw is None or sw[1] == 3)
    offs = sorted(pipeline.swizzle_offset(o, sw) for o in range(bm * bk))
    assert offs == list(range(bm * bk))
    assert pipeline._stores_free(bm, bk, sw, threads) and pipeline._ldmatrix_free(bk, t, sw,
                                                                                    threads)
    if bk == 64:
        assert sw is not None and not pipeline._ldmatrix_free(bk, t, None, threads)


_RULE = """kernel k(x: f16[M, K], w: f16[N, K], y: f32[M, N])
  threads 32
{
  acc = zeros(f32, [16, 8])
  off = 0
  for k in range(0, K, 16) {
    a = load(x[0 :+ 16, START :+ 16])
    acc = dot(a, transpose(load(w[0 :+ 8, k :+ 16])), acc)
    off = off + 16
  }
  store(y[0 :+ 16, 0 :+ 8], acc)
}
"""


def test_loads_that_stay_off_the_pipeline():
    """A user kernel's A tile at the loop index is staged (a rule, not a kernel name); at a
    loop-carried offset (unknown for a later iteration) it is not; f32 activations take the
    SIMT dot: no staged load, no cp.async."""
    from lowbitc import compile as compile_kernel

    def source(start):
        return compile_kernel(_RULE.replace("START", start), backend="cuda").text("python")

    assert "cp_async16_zfill(" in source("k") and "mma_f16(" in source("k")
    assert "cp_async16_zfill(" not in source("off") and "mma_f16(" in source("off")
    assert "cp_async16_zfill(" not in ops.get_kernel("matmul", "cuda", W="u4").text("python")
    src = _kernel(A="bf16").text("python")
    assert src.count("cp_async16_zfill(") == pipeline.STAGES  # bf16 bits: the same copies


def test_big_tiles_take_dynamic_shared_memory():
    """BM 64, BK 128 with 3 stages needs more than 48 KiB: every tile is a slice of the
    dynamic shared memory (16-byte aligned offsets) and the launch asks for that much."""
    k = _kernel(BM=64, BN=32, BK=128, TH=128, ZP=True)
    r = render(k.lowered, 128)
    assert r.dynamic_bytes == r.shared_bytes > 48 * 1024
    assert "cuda.shared.array(0, F16)" in r.source and "cuda.shared.array(0, F32)" in r.source
    starts = [int(a) * (2 if t == "F16" else 4) for t, a in
              re.findall(r"= dyn_(F16|F32)\[(\d+):\d+\]", r.source)]
    assert starts and all(s % 16 == 0 for s in starts)
    small = render(_kernel().lowered, 32)
    assert small.dynamic_bytes == 0 and "cuda.shared.array(0," not in small.source


@pytest.mark.cuda_toolchain
@needs_toolchain
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_pipelined_kernel_assembles_to_ldgsts_and_depbar(arch):
    """ptxas: LDGSTS (cp.async), LDGDEPBAR (commit), DEPBAR (wait_group) and HMMA, no spills;
    the dynamic-shared variant declares no static shared memory."""
    k = _kernel(BM=64, BN=32, BK=128, TH=128)
    asm = assemble_without_spills(BACKEND.ptx(k.lowered, arch), arch)
    mix = T.sass_mix(asm.cubin)
    assert mix.get("LDGSTS", 0) >= pipeline.STAGES and mix.get("DEPBAR", 0) >= 2, mix
    assert mix.get("LDGDEPBAR", 0) >= pipeline.STAGES and mix.get("HMMA", 0) >= 8, mix
    assert asm.shared_bytes == 0


@pytest.mark.parametrize("st", [2, 4])
def test_pipeline_depth_is_the_loops_stages(st):
    """matmul_mma's ST (`range(..., stages=ST)`, a tune choice): ST - 1 committed fills
    before the loop, wait_group(ST - 2) at the top of each iteration, the fill ST - 1 ahead,
    ST stage tiles in one shared buffer; shared memory grows by one stage tile per stage."""
    src = _kernel(ST=st).text("python")
    assert src.count("cp_async_commit()") == st and f"cp_async_wait({st - 2})" in src
    assert re.search(rf"\(\(st\d+ \+ {st - 1}\) % {st}\)", src)  # the stage ST - 1 ahead
    fills = re.findall(r"cp_async16_zfill\((sp\d+),", src)
    assert len(fills) == st and len(set(fills)) == 1
    tile = 16 * 64  # BM x BK halves at the defaults
    assert re.search(rf"{fills[0]} = cuda\.shared\.array\({st * tile}, F16", src)
    r3, rs = render(_kernel().lowered, 32), render(_kernel(ST=st).lowered, 32)
    assert rs.shared_bytes - r3.shared_bytes == 2 * tile * (st - 3)


def test_pipeline_depth_must_be_two_or_more():
    from lowbitc.errors import DSLTypeError

    with pytest.raises(DSLTypeError, match=r"stages= must be a compile-time int >= 2"):
        _kernel(ST=1)


@pytest.mark.cuda_toolchain
@needs_toolchain
@pytest.mark.parametrize("st", [pytest.param(2, marks=(pytest.mark.slow, pytest.mark.sweep)), 4])
def test_pipeline_depths_assemble_without_spills(st):
    """ptxas (sm_80, the 4-warp dynamic-shared tile): ST - 1 LDGDEPBAR-committed fills ahead,
    HMMA, 0 spills, for the tune's other depths (3: the test above)."""
    k = _kernel(BM=64, BN=32, BK=128, TH=128, ST=st)
    asm = assemble_without_spills(BACKEND.ptx(k.lowered, "sm_80"), "sm_80")
    mix = T.sass_mix(asm.cubin)
    assert mix.get("LDGSTS", 0) >= st and mix.get("LDGDEPBAR", 0) >= st, mix
    assert mix.get("HMMA", 0) >= 8 and mix.get("DEPBAR", 0) >= 2, mix


class _Cufunc:
    def __init__(self, cc):
        self.handle = "h"
        self.device = type("D", (), {"compute_capability": cc, "id": 3})()


class _Dispatcher:
    """Stands for a numba-cuda dispatcher: specialize, overloads, [grid, block, stream, smem]."""

    def __init__(self, cc=(8, 0)):
        self.calls, self.cufunc = [], _Cufunc(cc)
        lib = type("L", (), {"get_cufunc": lambda _: self.cufunc})()
        self.overloads = {("sig",): type("K", (), {"_codelibrary": lib})()}

    def specialize(self, *args):
        self.calls.append(("specialize", len(args)))
        return self

    def __getitem__(self, config):
        return lambda *args: self.calls.append(("launch", config, args))


def test_launch_raises_the_dynamic_shared_limit_before_launching(monkeypatch):
    set_calls = []
    monkeypatch.setattr(launch, "set_max_dynamic_shared", lambda *a: set_calls.append(a))
    monkeypatch.setattr(launch, "SIMULATOR", False)
    d = _Dispatcher((9, 0))
    launch.launch(d, (2, 1, 1), 128, [1, 2], 100_000)
    assert set_calls == [("h", 3, 100_000)]
    assert d.calls == [("specialize", 2), ("launch", ((2, 1, 1), 128, 0, 100_000), (1, 2))]
    d = _Dispatcher()
    launch.launch(d, (1, 1, 1), 32, [7], 0)  # static shared memory: a plain launch
    assert d.calls == [("launch", ((1, 1, 1), 32), (7,))] and len(set_calls) == 1
    with pytest.raises(BackendError, match="more than the 166912 bytes sm_80 allows"):
        launch.launch(_Dispatcher((8, 0)), (1, 1, 1), 128, [], 200_000)


def test_cp_async_twin_completes_groups_at_wait_group():
    """The twin copies when wait_group needs the group (the latest moment the ISA allows):
    before the wait the shared bytes are unchanged; wait_group(1) completes all but the last
    committed group; zfill zeroes past src_bytes."""
    src = np.arange(64, dtype=np.uint32)
    sh = np.full(64, 7, np.uint32)
    warpsim.cp_async16_py(sh, 0, src, 0)
    warpsim.cp_async_commit_py()
    warpsim.cp_async16_zfill_py(sh, 4, src, 8, 6)
    warpsim.cp_async_commit_py()
    assert (sh == 7).all()
    warpsim.cp_async_wait_py(1)
    assert list(sh[:4]) == [0, 1, 2, 3] and (sh[4:] == 7).all()
    warpsim.cp_async_wait_py(0)
    assert sh[4] == 8 and sh[5] == 9 and list(sh[6:8]) == [0, 0]
    with pytest.raises(BackendError, match="16-byte aligned"):
        warpsim.cp_async16_py(sh, 2, src, 0)


def test_row_sums_of_the_swizzled_stage_walk_rows_without_conflicts():
    """sum(a, axis=1) over the pipeline's [16, 64] stage (Swizzle<3,3,3>): rows r and r + 8
    share banks in the plain order (2-way); the searched start rotation removes it."""
    sw = (3, 3, 3)
    assert not reduce_order._free(16, 64, 64, sw, 2, 32, 1, 0, 0)
    p, q = reduce_order._search((16, 64), 64, sw, 2, 32)
    assert q and reduce_order._free(16, 64, 64, sw, 2, 32, p, q, 0)
    assert reduce_order._search((16, 64), 65, None, 4, 32) == (1, 0)  # plain order kept
