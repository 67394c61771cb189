"""The LLVM CPU runtime: JIT, object-code round trip, argument packing and grid launch.

Kernels here are hand-written LLVM IR following the backend's calling convention
`void NAME(ptr args, i64 block_begin, i64 block_end)`, so the runtime is tested without the IR.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbitc.backends.llvm import jit, launch, pool
from lowbitc.backends.llvm.launch import ArgPacker, ArrayArg, GridLauncher, ScalarArg
from lowbitc.errors import BackendError, UserArgumentError

BLOCK = 64  # saxpy elements per grid block

SAXPY_IR = """
declare <16 x float> @llvm.fma.v16f32(<16 x float>, <16 x float>, <16 x float>)
declare float @llvm.fma.f32(float, float, float)

define void @noop(ptr %args, i64 %begin, i64 %end) {
  ret void
}

; y[i] = a * x[i] + y[i] for i in blocks [begin, end) of 64 elements, n total
define void @saxpy(ptr noalias %args, i64 %begin, i64 %end) {
entry:
  %pa = load ptr, ptr %args
  %px.p = getelementptr inbounds ptr, ptr %args, i64 1
  %px = load ptr, ptr %px.p
  %py.p = getelementptr inbounds ptr, ptr %args, i64 2
  %py = load ptr, ptr %py.p
  %pn.p = getelementptr inbounds ptr, ptr %args, i64 3
  %pn = load ptr, ptr %pn.p
  %a = load float, ptr %pa
  %n = load i64, ptr %pn
  %a.ins = insertelement <16 x float> poison, float %a, i64 0
  %av = shufflevector <16 x float> %a.ins, <16 x float> poison, <16 x i32> zeroinitializer
  %any = icmp slt i64 %begin, %end
  br i1 %any, label %block, label %done
block:
  %b = phi i64 [%begin, %entry], [%b.next, %block.end]
  %lo = mul i64 %b, 64
  %hi0 = add i64 %lo, 64
  %hi.lt = icmp slt i64 %hi0, %n
  %hi = select i1 %hi.lt, i64 %hi0, i64 %n
  br label %vec.cond
vec.cond:
  %i = phi i64 [%lo, %block], [%i.next, %vec.body]
  %i16 = add i64 %i, 16
  %fits = icmp sle i64 %i16, %hi
  br i1 %fits, label %vec.body, label %tail.cond
vec.body:
  %xp = getelementptr inbounds float, ptr %px, i64 %i
  %yp = getelementptr inbounds float, ptr %py, i64 %i
  %xv = load <16 x float>, ptr %xp, align 4
  %yv = load <16 x float>, ptr %yp, align 4
  %r = call <16 x float> @llvm.fma.v16f32(<16 x float> %av, <16 x float> %xv, <16 x float> %yv)
  store <16 x float> %r, ptr %yp, align 4
  %i.next = add i64 %i, 16
  br label %vec.cond
tail.cond:
  %j = phi i64 [%i, %vec.cond], [%j.next, %tail.body]
  %more = icmp slt i64 %j, %hi
  br i1 %more, label %tail.body, label %block.end
tail.body:
  %xs.p = getelementptr inbounds float, ptr %px, i64 %j
  %ys.p = getelementptr inbounds float, ptr %py, i64 %j
  %xs = load float, ptr %xs.p
  %ys = load float, ptr %ys.p
  %rs = call float @llvm.fma.f32(float %a, float %xs, float %ys)
  store float %rs, ptr %ys.p
  %j.next = add i64 %j, 1
  br label %tail.cond
block.end:
  %b.next = add i64 %b, 1
  %again = icmp slt i64 %b.next, %end
  br i1 %again, label %block, label %done
done:
  ret void
}
"""
SAXPY_SIG = (
    ScalarArg("a", "f32"),
    ArrayArg("x", np.float32, 1),
    ArrayArg("y", np.float32, 1, output=True),
    ScalarArg("n", "i64"),
)


def _vec(values: list[int], ty: str = "i32") -> str:
    return "<" + ", ".join(f"{ty} {v}" for v in values) + ">"


def _unpack3_ir() -> str:
    """3-bit codes -> float32, one block per 32 codes (3 words), masked store on the tail."""
    lo_idx = [(3 * k) // 32 for k in range(32)]
    shift = [(3 * k) % 32 for k in range(32)]
    hi_idx = [i + 1 for i in lo_idx]
    return f"""
declare void @llvm.masked.store.v32f32.p0(<32 x float>, ptr, i32, <32 x i1>)

define void @unpack3(ptr noalias %args, i64 %begin, i64 %end) {{
entry:
  %pw = load ptr, ptr %args
  %po.p = getelementptr inbounds ptr, ptr %args, i64 1
  %po = load ptr, ptr %po.p
  %pn.p = getelementptr inbounds ptr, ptr %args, i64 2
  %pn = load ptr, ptr %pn.p
  %n = load i64, ptr %pn
  %bits = mul i64 %n, 3
  %bits.up = add i64 %bits, 31
  %nwords = lshr i64 %bits.up, 5
  %last = sub i64 %nwords, 1
  %any = icmp slt i64 %begin, %end
  br i1 %any, label %block, label %done
block:
  %g = phi i64 [%begin, %entry], [%g.next, %block]
  %w0 = mul i64 %g, 3
  %wv0 = call <4 x i32> @load_word(ptr %pw, i64 %w0, i64 %last, <4 x i32> zeroinitializer, i32 0)
  %w1 = add i64 %w0, 1
  %wv1 = call <4 x i32> @load_word(ptr %pw, i64 %w1, i64 %last, <4 x i32> %wv0, i32 1)
  %w2 = add i64 %w0, 2
  %wv2 = call <4 x i32> @load_word(ptr %pw, i64 %w2, i64 %last, <4 x i32> %wv1, i32 2)
  %lo = shufflevector <4 x i32> %wv2, <4 x i32> poison, <32 x i32> {_vec(lo_idx)}
  %hi = shufflevector <4 x i32> %wv2, <4 x i32> poison, <32 x i32> {_vec(hi_idx)}
  %lo.s = lshr <32 x i32> %lo, {_vec(shift)}
  %hi.1 = shl <32 x i32> %hi, {_vec([1] * 32)}
  %hi.s = shl <32 x i32> %hi.1, {_vec([31 - s for s in shift])}
  %both = or <32 x i32> %lo.s, %hi.s
  %code = and <32 x i32> %both, {_vec([7] * 32)}
  %val = uitofp <32 x i32> %code to <32 x float>
  %first = mul i64 %g, 32
  %left = sub i64 %n, %first
  %left32 = trunc i64 %left to i32
  %lanes.ins = insertelement <32 x i32> poison, i32 %left32, i64 0
  %lanes = shufflevector <32 x i32> %lanes.ins, <32 x i32> poison, <32 x i32> zeroinitializer
  %mask = icmp slt <32 x i32> {_vec(list(range(32)))}, %lanes
  %dst = getelementptr inbounds float, ptr %po, i64 %first
  call void @llvm.masked.store.v32f32.p0(<32 x float> %val, ptr %dst, i32 4, <32 x i1> %mask)
  %g.next = add i64 %g, 1
  %again = icmp slt i64 %g.next, %end
  br i1 %again, label %block, label %done
done:
  ret void
}}

; vec[lane] = words[idx] if idx <= last else 0 (the stream's last group may be short)
define internal <4 x i32> @load_word(ptr %pw, i64 %idx, i64 %last, <4 x i32> %vec, i32 %lane) {{
  %in = icmp ule i64 %idx, %last
  %safe = select i1 %in, i64 %idx, i64 %last
  %p = getelementptr inbounds i32, ptr %pw, i64 %safe
  %w = load i32, ptr %p
  %v = select i1 %in, i32 %w, i32 0
  %r = insertelement <4 x i32> %vec, i32 %v, i32 %lane
  ret <4 x i32> %r
}}
"""


UNPACK3_SIG = (
    ArrayArg("words", np.uint32, 1),
    ArrayArg("out", np.float32, 1, output=True),
    ScalarArg("n", "i64"),
)


@pytest.fixture(scope="module")
def saxpy_module() -> jit.CompiledModule:
    return jit.compile_ir(SAXPY_IR, "test_saxpy")


@pytest.fixture(scope="module")
def unpack3_module() -> jit.CompiledModule:
    return jit.compile_ir(_unpack3_ir(), "test_unpack3")


def _pack3(codes: np.ndarray) -> np.ndarray:
    """Canonical LSB-first 3-bit stream in little-endian uint32 words (numpy reference)."""
    bits = ((codes[:, None] >> np.arange(3)) & 1).astype(np.uint8).ravel()
    nwords = (bits.size + 31) // 32
    bits = np.concatenate([bits, np.zeros(nwords * 32 - bits.size, np.uint8)])
    return np.packbits(bits, bitorder="little").view("<u4").copy()


def _saxpy(module, a, x, y, threads):
    n = x.size
    grid = GridLauncher(module.address("saxpy"), -(-n // BLOCK), threads=threads)
    grid(ArgPacker(SAXPY_SIG)((a, x, y, n)))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 2000), threads=st.integers(1, 3))
def test_saxpy_matches_numpy_exactly_on_integer_data(saxpy_module, n, threads):
    rng = np.random.default_rng(n)
    x = rng.integers(-1000, 1000, n).astype(np.float32)
    y = rng.integers(-1000, 1000, n).astype(np.float32)
    expected = 3.0 * x + y
    _saxpy(saxpy_module, 3.0, x, y, threads)
    np.testing.assert_array_equal(y, expected)


@pytest.mark.parametrize("threads", [2, 3, 8])
def test_thread_split_is_bit_identical_to_one_thread(saxpy_module, threads):
    rng = np.random.default_rng(7)
    x = rng.standard_normal(100_003).astype(np.float32)
    y0 = rng.standard_normal(100_003).astype(np.float32)
    one, many = y0.copy(), y0.copy()
    _saxpy(saxpy_module, 0.37, x, one, 1)
    _saxpy(saxpy_module, 0.37, x, many, threads)
    np.testing.assert_array_equal(one, many)
    np.testing.assert_allclose(one, np.float32(0.37) * x + y0, rtol=1e-6, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 3000), threads=st.integers(1, 2))
def test_unpack3_matches_numpy(unpack3_module, n, threads):
    codes = np.random.default_rng(n).integers(0, 8, n).astype(np.uint8)
    words = _pack3(codes)
    out = np.full(n + 5, -1.0, np.float32)
    view = out[:n]
    grid = GridLauncher(unpack3_module.address("unpack3"), -(-n // 32), threads=threads)
    grid(ArgPacker(UNPACK3_SIG)((words, view, n)))
    np.testing.assert_array_equal(view, codes.astype(np.float32))
    np.testing.assert_array_equal(out[n:], -1.0)  # the masked tail wrote nothing past n


def test_concurrent_launches_from_python_threads(saxpy_module):
    x = np.arange(50_000, dtype=np.float32)
    outs = [np.zeros_like(x) for _ in range(6)]

    def work(y):
        for _ in range(5):
            _saxpy(saxpy_module, 1.0, x, y, 2)

    workers = [threading.Thread(target=work, args=(y,)) for y in outs]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    for y in outs:
        np.testing.assert_array_equal(y, 5 * x)


COUNT_IR = """
; counts[b] += 1 for every block b in [begin, end): checks each block runs exactly once
define void @count(ptr noalias %args, i64 %begin, i64 %end) {
entry:
  %pc = load ptr, ptr %args
  %any = icmp slt i64 %begin, %end
  br i1 %any, label %loop, label %done
loop:
  %b = phi i64 [%begin, %entry], [%b.next, %loop]
  %p = getelementptr inbounds i64, ptr %pc, i64 %b
  %old = atomicrmw add ptr %p, i64 1 monotonic
  %b.next = add i64 %b, 1
  %again = icmp slt i64 %b.next, %end
  br i1 %again, label %loop, label %done
done:
  ret void
}
"""
COUNT_SIG = (ArrayArg("counts", np.int64, 1, output=True),)


@pytest.fixture(scope="module")
def count_address() -> int:
    return jit.compile_ir(COUNT_IR, "test_count").address("count")


@pytest.mark.parametrize("kind", ["native", "python"])
@pytest.mark.parametrize("threads", [None, 2])
def test_every_block_runs_exactly_once_over_many_launches(count_address, kind, threads):
    """Also when parts outnumber `threads`: then no more workers than threads - 1 start."""
    if kind == "native" and not pool.available():
        pytest.skip("no native pool on this platform")
    the_pool = pool.NativePool() if kind == "native" else pool.PythonPool()
    rng = np.random.default_rng(3)
    counts = np.zeros(600, np.int64)
    packed = ArgPacker(COUNT_SIG)((counts,))
    expected = np.zeros_like(counts)
    for _ in range(400):
        nblocks = int(rng.integers(1, 600))
        parts = int(rng.integers(1, min(nblocks, 6 if threads is None else 16) + 1))
        assert the_pool.run(count_address, packed, nblocks, parts, threads)
        expected[:nblocks] += 1
    np.testing.assert_array_equal(counts, expected)
    assert the_pool.workers >= 1 if threads is None else the_pool.workers == threads - 1


def test_run2_runs_both_launches_once_each(count_address):
    """NativePool.run2: the first launch's blocks, then the second's, each exactly once,
    inline (one part) or over the pool (that the second reads the first's results is
    test_a8.py::test_a8_bound_chain_and_its_fallback_give_the_launches_result)."""
    if not pool.available():
        pytest.skip("no native pool on this platform")
    the_pool = pool.NativePool()
    rng = np.random.default_rng(4)
    a, b = np.zeros(300, np.int64), np.zeros(300, np.int64)
    pa, pb = ArgPacker(COUNT_SIG)((a,)), ArgPacker(COUNT_SIG)((b,))
    want_a, want_b = np.zeros_like(a), np.zeros_like(b)
    for _ in range(200):
        n1, n2 = (int(v) for v in rng.integers(1, 300, 2))
        p1, p2 = (int(v) for v in rng.integers(1, 9, 2))
        assert the_pool.run2((count_address, pa, n1, p1, 2), (count_address, pb, n2, p2, 2))
        want_a[:n1] += 1
        want_b[:n2] += 1
    np.testing.assert_array_equal(a, want_a)
    np.testing.assert_array_equal(b, want_b)
    same = np.zeros(64, np.int64)  # one array, both launches: every block counted twice
    ps = ArgPacker(COUNT_SIG)((same,))
    assert the_pool.run2((count_address, ps, 64, 4, 2), (count_address, ps, 64, 1, 2))
    np.testing.assert_array_equal(same, 2)


def test_launch_in_a_forked_child(count_address):
    if not hasattr(os, "fork"):
        pytest.skip("no fork on this platform")
    counts = np.zeros(64, np.int64)
    grid = GridLauncher(count_address, 64, threads=2)
    grid(ArgPacker(COUNT_SIG)((counts,)))  # the parent's pool exists before the fork
    pid = os.fork()
    if pid == 0:  # child: a fresh pool must be built, not the parent's dead workers used
        try:
            child = np.zeros(64, np.int64)
            GridLauncher(count_address, 64, threads=2)(ArgPacker(COUNT_SIG)((child,)))
            os._exit(0 if (child == 1).all() else 1)
        finally:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert (counts == 1).all()


def test_native_workers_run_off_the_launching_cpu(count_address):
    """Each worker may run only on its own CPU other than the launcher's (pool._place); with
    more workers than other CPUs, on any allowed CPU."""
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if not pool.available() or len(allowed) < 2:
        pytest.skip("needs the native pool and two usable CPUs")
    the_pool = pool.NativePool()
    counts = np.zeros(64, np.int64)
    packed = ArgPacker(COUNT_SIG)((counts,))
    assert the_pool.run(count_address, packed, 64, 2, 2)
    cpu, workers = the_pool._placed
    assert workers == 1 and cpu in allowed
    (mask,) = [os.sched_getaffinity(the_pool._worker_tid(i)) for i in range(workers)]
    after = [c for c in allowed if c > cpu] + [c for c in allowed if c < cpu]
    assert mask == {after[0]}  # the next CPU after the launcher's, in turn
    many = len(allowed) + 1
    assert the_pool.run(count_address, packed, 64, many + 1, many + 1)
    assert the_pool._placed[1] == many
    for i in range(many):
        assert os.sched_getaffinity(the_pool._worker_tid(i)) == set(allowed)
    np.testing.assert_array_equal(counts, 2)


def test_pool_kind_env(monkeypatch):
    monkeypatch.setenv("LOWBITC_THREAD_POOL", "python")
    assert pool.pool_kind() == "python"
    monkeypatch.setenv("LOWBITC_THREAD_POOL", "openmp")
    with pytest.raises(UserArgumentError, match="LOWBITC_THREAD_POOL"):
        pool.pool_kind()


def _good_args():
    x = np.ones(10, np.float32)
    return [2.0, x, np.zeros(10, np.float32), 10]


@pytest.mark.parametrize(
    "index, bad, needle",
    [
        (1, np.ones(10, np.float64), "'x': expected dtype float32, got float64"),
        (1, np.ones((2, 5), np.float32), "'x': expected a 1-d array"),
        (1, np.ones(20, np.float32)[::2], "'x': expected a C-contiguous array"),
        (1, [1.0] * 10, "'x': expected a numpy array of float32, got list"),
        (2, np.frombuffer(bytes(40), np.float32), "'y': the kernel writes it"),
        (3, 2.5, "'n': expected an integer (i64), got float"),
        (3, True, "'n': expected an integer (i64), got bool"),
        (3, 2**63, "'n': 9223372036854775808 does not fit in i64"),
        (0, "2", "'a': expected a real number (f32), got str"),
        (0, 1e300, "'a': 1e+300 does not fit in f32"),
        (0, 10**400, "does not fit in f32"),
    ],
)
def test_bad_arguments_raise_before_native_code(saxpy_module, index, bad, needle):
    args = _good_args()
    args[index] = bad
    y_before = args[2].copy() if isinstance(args[2], np.ndarray) else None
    with pytest.raises(UserArgumentError) as info:
        _saxpy_call(saxpy_module, args)
    assert needle in str(info.value)
    assert isinstance(info.value, ValueError)
    if y_before is not None:
        np.testing.assert_array_equal(args[2], y_before)


def _saxpy_call(module, args):
    GridLauncher(module.address("saxpy"), 1, threads=1)(ArgPacker(SAXPY_SIG)(args))


def test_wrong_argument_count_names_the_parameters():
    with pytest.raises(UserArgumentError, match=r"expected 4 arguments \(a, x, y, n\), got 2"):
        launch.pack_args(SAXPY_SIG, [1.0, np.ones(3, np.float32)])


def test_scalars_accept_numpy_scalars_and_ints(saxpy_module):
    x = np.arange(70, dtype=np.float32)
    y = np.zeros(70, np.float32)
    packed = launch.pack_args(SAXPY_SIG, (np.float64(2.0), x, y, np.int32(70)))
    GridLauncher(saxpy_module.address("saxpy"), 2, threads=2)(packed)
    np.testing.assert_array_equal(y, 2 * x)


def test_pack_args_passes_array_addresses_without_copying():
    x = np.arange(9, dtype=np.float32)[3:]
    y = np.zeros(6, np.float32)
    packed = launch.pack_args(SAXPY_SIG, (1.0, x, y, 6))
    assert packed[1] == x.ctypes.data and packed[2] == y.ctypes.data
    assert packed.keep[1] is x


@settings(max_examples=200, deadline=None)
@given(nblocks=st.integers(0, 10_000), parts=st.integers(1, 64))
def test_split_blocks_covers_the_grid_in_balanced_ranges(nblocks, parts):
    ranges = launch.split_blocks(nblocks, parts)
    assert ranges[0][0] == 0 and ranges[-1][1] == nblocks
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
    sizes = [e - b for b, e in ranges]
    assert max(sizes) - min(sizes) <= 1
    assert len(ranges) == max(1, min(parts, nblocks))


def test_grid_resize_and_empty_grid(saxpy_module):
    x = np.ones(200, np.float32)
    y = np.zeros(200, np.float32)
    grid = GridLauncher(saxpy_module.address("saxpy"), 0, threads=2)
    packed = ArgPacker(SAXPY_SIG)((1.0, x, y, 200))
    grid(packed)
    assert not y.any()
    grid(packed, nblocks=2)  # the first 128 elements only
    np.testing.assert_array_equal(y, np.r_[np.ones(128), np.zeros(72)].astype(np.float32))


def test_num_threads_env(monkeypatch):
    monkeypatch.setenv("LOWBITC_NUM_THREADS", "3")
    assert launch.num_threads() == 3
    monkeypatch.setenv("LOWBITC_NUM_THREADS", "zero")
    with pytest.raises(UserArgumentError, match="LOWBITC_NUM_THREADS"):
        launch.num_threads()
    monkeypatch.delenv("LOWBITC_NUM_THREADS")
    assert launch.num_threads() >= 1


def test_bad_ir_and_missing_symbol_raise_backend_error(saxpy_module):
    with pytest.raises(BackendError, match="invalid LLVM IR in module 'broken'"):
        jit.compile_ir("define void @f( {", "broken")
    with pytest.raises(BackendError, match="has no function 'nope'"):
        saxpy_module.address("nope")
    with pytest.raises(BackendError):
        jit.load_object(b"", "empty")


def test_host_target_id_names_cpu_and_is_stable():
    key = jit.host_target_id()
    assert key == jit.host_target_id()
    assert platform.machine() in key or "x86_64" in key
    assert "llvm" in key


@pytest.mark.skipif(platform.machine() != "x86_64", reason="x86 assembly expected")
def test_assembly_uses_vector_registers():
    asm = jit.assembly(SAXPY_IR, "asm")
    assert "saxpy:" in asm
    assert "%ymm" in asm or "%zmm" in asm
    assert "vfmadd" in asm


def test_optimize_ir_returns_parsable_text():
    text = jit.optimize_ir(SAXPY_IR, "opt")
    assert "define void @saxpy" in text
    jit.compile_ir(text, "reparsed")


def test_object_code_round_trips_into_a_fresh_process(tmp_path, saxpy_module):
    obj = jit.object_code(SAXPY_IR, "roundtrip")
    assert obj[:4] == b"\x7fELF" or platform.system() != "Linux"
    assert obj == saxpy_module.object_code  # same IR, same target: same bytes
    path = tmp_path / "saxpy.o"
    path.write_bytes(obj)
    script = textwrap.dedent(
        f"""
        import time
        import numpy as np
        from lowbitc.backends.llvm import jit, launch, pool
        t = time.perf_counter()
        mod = jit.load_object(open({str(path)!r}, "rb").read(), "cached")
        fn = mod.address("saxpy")
        print("load_ms", (time.perf_counter() - t) * 1e3)
        sig = (launch.ScalarArg("a", "f32"), launch.ArrayArg("x", np.float32, 1),
               launch.ArrayArg("y", np.float32, 1, output=True), launch.ScalarArg("n", "i64"))
        x = np.arange(1000, dtype=np.float32)
        y = np.ones(1000, np.float32)
        launch.GridLauncher(fn, 16, threads=2)(launch.pack_args(sig, (2.0, x, y, 1000)))
        assert np.array_equal(y, 2 * x + 1), "wrong result"
        print("ok")
        """
    )
    env = dict(os.environ)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("ok")


EXTERN_IR = """
declare <8 x float> @llvm.exp.v8f32(<8 x float>)
@table = internal constant [4 x float] [float 1.0, float 2.0, float 3.0, float 4.0]

; x[0:8] = exp(x + 0.5 + lane), then x[0] = table[2]: a libm call and a constant pool
define void @expk(ptr %args, i64 %begin, i64 %end) {
  %px = load ptr, ptr %args
  %v = load <8 x float>, ptr %px, align 4
  %c = fadd <8 x float> %v, <float 0.5, float 1.5, float 2.5, float 3.5,
                             float 4.5, float 5.5, float 6.5, float 7.5>
  %r = call <8 x float> @llvm.exp.v8f32(<8 x float> %c)
  %t = load float, ptr getelementptr (float, ptr @table, i64 2)
  %out = insertelement <8 x float> %r, float %t, i64 0
  store <8 x float> %out, ptr %px, align 4
  ret void
}
"""


def test_loaded_object_resolves_libm_calls_and_constants():
    module = jit.load_object(jit.object_code(EXTERN_IR, "extern"), "extern")
    x = np.zeros(8, np.float32)
    sig = [ArrayArg("x", np.float32, 1, output=True)]
    GridLauncher(module.address("expk"), 1)(launch.pack_args(sig, [x]))
    expected = np.exp(np.arange(8, dtype=np.float32) + np.float32(0.5))
    expected[0] = 3.0
    np.testing.assert_allclose(x, expected, rtol=1e-6)
