"""CUDA toolchain layer: SASS/ptxas parsing, intrinsic twins, prototype kernels through
nvJitLink + ptxas (no spills, SASS per weight), and the simulator suite in its own process."""

from __future__ import annotations

import contextlib
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbitc.backends.numba_cuda import sass
from lowbitc.errors import UserArgumentError

intrinsics = pytest.importorskip("lowbitc.backends.numba_cuda.intrinsics")
P = pytest.importorskip("lowbitc.backends.numba_cuda.prototypes")
T = pytest.importorskip("lowbitc.backends.numba_cuda.toolchain")

MISSING = T.toolchain_missing()
needs_toolchain = pytest.mark.skipif(MISSING is not None, reason=f"CUDA toolchain: {MISSING}")

SASS_TEXT = """
        /*0000*/                   LDC R1, c[0x0][0x28] ;
.L_x_3:
        /*0070*/               @P0 EXIT ;
.L_x_1:
        /*00e0*/                   LEA R22, P1, R2.reuse, c[0x0][0x1b8], 0x1 ;
.L_x_7:
        /*00f0*/                   PRMT R0, R4, 0x1010, R5 ;
        /*0100*/                   LOP3.LUT R4, R0, 0xf0000f, RZ, 0xc0, !PT ;
        /*0110*/                   HFMA2.MMA R0, R25, -64, -1024, RZ ;
        /*0120*/              @!P2 BRA `(.L_x_7) ;
        /*0130*/                   NOP;
        /*0140*/               @P0 CALL.REL.NOINC `(.L_x_0) ;
        /*0150*/                   BRA `(.L_x_1) ;
.L_x_0:
        /*0160*/                   EXIT ;
.L_x_2:
        /*0170*/                   BRA `(.L_x_2);
        /*0180*/                   NOP;
"""

PTXAS_LOG = """ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_Z1k' for 'sm_80'
ptxas info    : Function properties for _Z1k
    16 bytes stack frame, 8 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers, 4096 bytes smem, 400 bytes cmem[0]
"""


def test_sass_parse_loops_and_mix():
    instrs = sass.parse(SASS_TEXT)
    assert [i.base for i in instrs][:3] == ["LDC", "EXIT", "LEA"]
    assert instrs[1].pred == "@P0" and instrs[4].opcode == "LOP3.LUT"
    assert sass.loops(instrs) == [(2, 9), (3, 6)]  # the final branch-to-self is no loop
    inner = sass.innermost_loop(instrs)
    assert [i.base for i in inner] == ["PRMT", "LOP3", "HFMA2", "BRA"]
    assert sass.count(instrs) == len(instrs) - 2  # NOPs are not counted
    assert sass.opcode_mix(instrs)["BRA"] == 3 and "NOP" not in sass.opcode_mix(instrs)


def test_parse_ptxas_log():
    got = T.parse_ptxas_log(PTXAS_LOG)
    assert got == dict(registers=40, spill_store_bytes=8, spill_load_bytes=12, stack_bytes=16,
                       shared_bytes=4096, barriers=1)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_lop3_and_prmt_twins(a, b, c):
    intrinsics = pytest.importorskip("lowbitc.backends.numba_cuda.intrinsics")
    lop3 = intrinsics.lop3_py
    assert lop3(a, b, c, 0xF0) == a and lop3(a, b, c, 0xCC) == b and lop3(a, b, c, 0xAA) == c
    assert lop3(a, b, c, 0xEA) == (a & b) | c and lop3(a, b, c, 0x96) == a ^ b ^ c
    pool = b << 32 | a
    for sel in (0x3210, 0x7654, 0x0123, 0x5140):
        want = sum(((pool >> (8 * ((sel >> 4 * k) & 7))) & 0xFF) << 8 * k for k in range(4))
        assert intrinsics.prmt_py(a, b, sel) == want
    assert intrinsics.prmt_py(0x80, 0, 0x8888) == 0xFFFFFFFF  # msb replicate


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 0xFFFF).filter(lambda h: (h & 0x7C00) != 0x7C00), min_size=6,
                max_size=6))
def test_hfma2_twin_rounds_once(h):
    intrinsics = pytest.importorskip("lowbitc.backends.numba_cuda.intrinsics")
    a, b, c = (np.uint32(h[i] | h[i + 3] << 16) for i in range(3))
    got = np.array([intrinsics.hfma2_py(a, b, c)], dtype=np.uint32).view(np.float16)
    f = [np.array([x], dtype=np.uint32).view(np.float16).astype(np.float64) for x in (a, b, c)]
    with np.errstate(over="ignore"):
        want = (f[0] * f[1] + f[2]).astype(np.float16)
    np.testing.assert_array_equal(got.view(np.uint16), want.view(np.uint16))


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 8), st.integers(1, 70), st.integers(0, 2**31))
def test_pack_lsb_is_the_canonical_stream(bits, k, seed):
    codes = np.random.default_rng(seed).integers(0, 1 << bits, size=(2, k))
    words = P.pack_lsb(codes, bits)
    stream = [int(w) >> j & 1 for row in words for w in row for j in range(32)]
    nbits = words.shape[1] * 32
    for n in range(2):
        for j in range(k):
            got = sum(stream[n * nbits + j * bits + t] << t for t in range(bits))
            assert got == codes[n, j]


def test_interleave_u4_order():
    words = P.pack_lsb(np.arange(8)[None, :], 4)
    assert hex(int(P.interleave_u4(words)[0, 0])) == "0x75316420"


@pytest.mark.parametrize("args", [("u", 9, 128, 128), ("e2m1", 3, 128, 128), ("u", 4, 100, 128),
                                  ("u", 4, 128, 48), ("u", 3, 128, 128, "interleaved")])
def test_dequant_spec_rejects(args):
    with pytest.raises(UserArgumentError):
        P.DequantSpec(*args)


def test_source_and_arch_arguments_are_checked():
    with pytest.raises(UserArgumentError, match="name"):
        T.load_source("def f():\n    pass\n", "f()")
    with pytest.raises(UserArgumentError, match="arch"):
        T.assemble(".version 9.0", "sm_81")


@needs_toolchain
@pytest.mark.cuda_toolchain
def test_archs_share_the_numba_library_and_get_their_own_ptx():
    """ptx_for types and lowers a kernel once (numba-cuda's library) for the archs numba-cuda
    does not tell apart (sm_80, sm_90): sm_90's PTX from sm_80's library is the PTX numba's
    own compile_all gives at sm_90."""
    from cuda.core import Linker, LinkerOptions, ObjectCode
    from numba import cuda

    spec = P.DequantSpec("u", 4, 256, 128, "interleaved")
    src = P.dequant_source(spec)
    T._LIBRARIES.clear()
    assert ".target sm_80" in T.ptx_for(src, P.SIGNATURE, "sm_80", name=spec.name)
    shared = T.ptx_for(src, P.SIGNATURE, "sm_90", name=spec.name)
    assert len(T._LIBRARIES) == 1 and T._numba_features((8, 0)) == T._numba_features((9, 0))
    with T._offline_device((9, 0)):
        codes, _ = cuda.compile_all(T.load_source(src, spec.name), P.SIGNATURE, device=False,
                                    abi="numba", cc=(9, 0), output="ltoir")
    objects = [ObjectCode.from_ltoir(c) if isinstance(c, bytes) else c for c in codes]
    linker = Linker(*objects, options=LinkerOptions(arch="sm_90", link_time_optimization=True,
                                                    ptx=True))
    own = linker.link("ptx").code
    linker.close()
    own = (own.decode() if isinstance(own, bytes) else str(own)).rstrip("\0")
    assert _unnamed(shared) == _unnamed(own) and ".target sm_90" in shared


def _unnamed(ptx: str) -> str:
    """PTX without the names numba makes unique per compile (the mangled entry's ABI tag and
    the shared-array counter)."""
    return re.sub(r"_cudapy_smem_\d+", "smem", re.sub(r"\b_Z\w+", "entry", ptx))


BRANCHY = """from numba import cuda
from numba.cuda.types import int64 as I64, float32 as F32


def branchy(y, x, n, m):
    tid = I64(cuda.threadIdx.x)
    a0 = F32(0.0)
    a1 = F32(0.0)
    i = tid
    while i < n:
        g = i * 3
        v = F32(0)
        if 0 <= g < n and 0 <= i < m:
            v = x[g]
        q = (I64(0) if m == 0 else I64(abs(g) // abs(m)) * (1 if (g < 0) == (m < 0) else -1))
        a0 = a0 + v * F32(q)
        if i % 2 == 0 and q > 1:
            a1, a0 = a0, a1 - v
        i += 32
    j = 0
    while j < 4:
        k = 0
        while k < j:
            a1 += F32(k)
            k += 1
        j += 1
    if tid < y.shape[0]:
        y[tid] = a0 + a1
"""


@needs_toolchain
@pytest.mark.cuda_toolchain
def test_faster_numba_analyses_lower_to_the_same_llvm_ir(monkeypatch):
    """numba_passes' stand-ins (which ptx_for swaps in) give the LLVM IR numba-cuda's own
    analyses give, on a kernel with nested loops, short-circuit conditions, conditional
    expressions and variables assigned in several blocks; numba's liveness map and the
    stand-in's agree on every call of the plain compile."""
    from numba.cuda.compiler import _compile_pyfunc_with_fixup
    from numba.cuda.core import analysis, ir_utils

    from lowbitc.backends.numba_cuda import numba_passes

    sig = "void(float32[::1], float32[::1], int64, int64)"
    real, calls = analysis.compute_live_map, []

    def both(*args):
        want = real(*args)
        assert numba_passes.compute_live_map(*args) == want
        calls.append(len(want))
        return want

    def llvm_ir(faster: bool) -> str:
        with numba_passes.faster_analyses() if faster else contextlib.nullcontext():
            lib, _ = _compile_pyfunc_with_fixup(T.load_source(BRANCHY, "branchy"), sig,
                                                device=False, cc=(8, 0), abi="numba", lto=True)
        # numba's unique-id counter in mangled names ("B4v103": the tag's length, then the
        # count of compiles so far in the process) differs between the two compiles
        return re.sub(r"B\d+v\d+", "BNvN",
                      re.sub(r"(\$|_smem_)\d+", r"\1N", lib.get_llvm_str()))

    fast = llvm_ir(True)
    with monkeypatch.context() as m:
        m.setattr(analysis, "compute_live_map", both)
        m.setattr(ir_utils, "compute_live_map", both)
        plain = llvm_ir(False)
    assert calls and max(calls) >= 10  # blocks
    assert fast == plain and "branchy" in fast
    from numba.core.types import functions  # numba's own analyses are back after the swap

    assert analysis.compute_live_map is real and ir_utils.compute_live_map is real
    assert functions.BaseFunction.get_call_type.__module__ == functions.__name__


# Figures per width (sm_80): the innermost loop dequantizes P.CHUNK weights per iteration.
GOALS = {("u", 4, "interleaved"): 1.5}
FAST = [("u", 4, "canonical"), ("u", 4, "interleaved"), ("u", 3, "canonical"),
        ("e2m1", 4, "canonical")]
SWEEP = [("u", b, "canonical") for b in (1, 2, 5, 6, 7, 8)]


def _check_kernel(fmt, bits, order, arch):
    spec = P.DequantSpec(fmt, bits, 256, 128, order)
    ptx = T.ptx_for(P.dequant_source(spec), P.SIGNATURE, arch, name=spec.name)
    assert ".entry" in ptx and f".target {arch}" in ptx and "\0" not in ptx
    asm = T.assemble(ptx, arch)
    assert asm.spill_store_bytes == 0 and asm.spill_load_bytes == 0 and asm.stack_bytes == 0
    stats = T.stats(asm, weights_per_iteration=P.CHUNK)
    loop = stats["inner_loop"]
    assert loop["sass_mix"].get("HFMA2", 0) >= P.CHUNK // 2  # one f16x2 FMA per pair
    assert "I2F" not in loop["sass_mix"] and "F2F" not in loop["sass_mix"]
    goal = GOALS.get((fmt, bits, order), 3.0)
    assert loop["sass_per_weight"] <= goal, stats


@needs_toolchain
@pytest.mark.cuda_toolchain
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("fmt,bits,order", FAST)
def test_prototype_assembles_without_spills(fmt, bits, order, arch):
    _check_kernel(fmt, bits, order, arch)


@needs_toolchain
@pytest.mark.cuda_toolchain
@pytest.mark.slow
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("fmt,bits,order", SWEEP)
def test_every_width_assembles_without_spills(fmt, bits, order, arch):
    _check_kernel(fmt, bits, order, arch)


def _run_elsewhere(sim_dir: Path) -> set[str]:
    """The simulator files another test module runs in a process of its own (the modules that
    call run_simulator_suite name their file)."""
    names: set[str] = set()
    for f in Path(__file__).parent.glob("test_*.py"):
        text = f.read_text()
        if f.name != Path(__file__).name and "run_simulator_suite(" in text:
            names |= set(re.findall(r"test_sim_[a-z0-9_]+\.py", text))
    missing = sorted(n for n in names if not (sim_dir / n).exists())
    assert not missing, f"tests name simulator files that do not exist: {missing}"
    return names


@pytest.mark.cudasim
def test_simulator_suite_in_its_own_process():
    """Every file of tests/cudasim runs once: those no other module runs (run_simulator_suite)
    run here, in a simulator process of their own (running the whole directory here ran
    every other file twice)."""
    pytest.importorskip("numba.cuda")
    sim_dir = Path(__file__).parent / "cudasim"
    rest = sorted(str(f) for f in sim_dir.glob("test_sim_*.py")
                  if f.name not in _run_elsewhere(sim_dir))
    assert rest, "every simulator file is run by another module: nothing left to run here"
    proc = T.run_in_simulator(["-m", "pytest", "-q", "-p", "no:cacheprovider", *rest])
    report = proc.stdout[-6000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, report
    assert " passed" in proc.stdout and "failed" not in proc.stdout, report
    assert os.environ.get("NUMBA_ENABLE_CUDASIM") != "1"  # this process stays a GPU process
    assert sys.modules["numba.cuda"].config.ENABLE_CUDASIM == 0
