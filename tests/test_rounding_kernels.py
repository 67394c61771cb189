"""Rounding modes inside kernels: the DSL's `cast(x, F, rounding=...)` through the LLVM backend
and the interpreter against the host encoder, bit for bit, on every code's neighbourhood;
stochastic casts independent of tiling and threads; the IR text of a rounded cast; errors."""

from __future__ import annotations

import numpy as np
import pytest
from test_compiler_encode import probe_values
from test_rounding import binade_points

import lowbitc
from lowbitc.backends import get_backend
from lowbitc.compiler import load, pick_kernel
from lowbitc.dsl.lower import lower_kernel
from lowbitc.emulate import run_chop
from lowbitc.errors import DSLTypeError, VerifyError
from lowbitc.interp import run as interpret
from lowbitc.ir import parse, print_kernel, verify
from lowbitc.ops import get_kernel
from lowbitc.passes import CPU_PIPELINE, run_pipeline
from lowbitc.rounding import ROUNDINGS, random_bits

MODES = """
kernel modes[F: dtype = u4, B: int = 64](x: f32[N], y0: F[N], y1: F[N], y2: F[N], y3: F[N],
                                         y4: F[N], y5: F[N], seed: i64)
  grid (cdiv(N, B))
{
  t = load(x[block.x * B :+ B])
  store(y0[block.x * B :+ B], cast(t, F))
  store(y1[block.x * B :+ B], cast(t, F, rounding="nearest_away"))
  store(y2[block.x * B :+ B], cast(t, F, rounding="toward_zero"))
  store(y3[block.x * B :+ B], cast(t, F, rounding="up"))
  store(y4[block.x * B :+ B], cast(t, F, rounding="down"))
  store(y5[block.x * B :+ B], cast(t * 1.0, F, rounding="stochastic", seed=seed))
}
"""
# the vectorised kernels (B=64) on one format of every encoder shape: integer codes by an
# add, bipolar, -0, NaN, inf, unsigned-zero NaN, no zero, code books (every format runs the
# scalar kernel in test_rounding_formats.py)
FAMILIES = ["u3", "b2", "f4e2m1fn", "f8e4m3fn", "f8e5m2", "f8e4m3fnuz", "f8e8m0fnu", "nf4"]
SEED = 0x1234_5678_9ABC
PHILOX_IR = """kernel @ph(%idx: tensor<i64[N]>, %out: tensor<u32[N]>, %seed: i64) dims(%N: i64) \
threads=1 meta() {
grid:
  %4 = const {dtype="i64", value=1} : i64
  yield %4
body:
  %5 = const {dtype="i64", value=0} : i64
  %6 = load %idx, %5 {layout="", masked=false, sizes=[16]} : tile<i64[16]>
  %7 = philox %seed, %6 : tile<u32[16]>
  store %out, %5, %7 {layout="", masked=false, sizes=[16]}
}
"""
PHILOX_IDX = np.array([0, 1, 2, 3, 2**32 - 1, 2**32, 2**40 + 7, 2**63 - 1, *range(100, 108)],
                      np.int64)


def run_philox(backend: str, seed: int) -> np.ndarray:
    """The `philox` op of a backend on PHILOX_IDX (an IR kernel: the DSL has no philox)."""
    be = get_backend(backend)
    exe = be.compile(run_pipeline(verify(parse(PHILOX_IR)), be.pipeline))
    out = np.zeros(16, np.uint32)
    exe(PHILOX_IDX, out, seed)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2**32 + 5, 2**63 - 1, -1])
def test_llvm_philox_matches_host(seed):
    """The host Philox passes Random123's known answers (test_rounding); word 0 of counter 0
    under key 0 is one of them."""
    out = run_philox("llvm", seed)
    assert np.array_equal(out, random_bits(seed & (2**64 - 1), PHILOX_IDX.view(np.uint64)))
    assert seed != 0 or out[0] == 0x6627E8D5


@pytest.mark.cudasim
def test_simulator_suite_in_its_own_process():
    from cuda_checks import run_simulator_suite

    run_simulator_suite("test_sim_rounding.py", passed=17)


def run_modes(k, fmt, x: np.ndarray, interpret: bool = False) -> list[np.ndarray]:
    words = -(-x.size * fmt.bits // 32)
    outs = [np.full(words, 0xDEADBEEF, np.uint32) for _ in ROUNDINGS]
    (k.interpret if interpret else k)(x, *outs, SEED)
    return [lowbitc.unpack(o[None, :], fmt.bits, x.size)[0] for o in outs]


@pytest.mark.parametrize("name", FAMILIES)
def test_dsl_cast_every_mode_matches_host_encode(name):
    fmt = lowbitc.dtype(name)
    x = probe_values(fmt)
    x = x[~np.isnan(x)] if not fmt.has_nan else x
    k = lowbitc.compile(MODES, F=fmt)
    native = run_modes(k, fmt, x)
    interp = run_modes(k, fmt, x, interpret=True)
    for mode, got, want_interp in zip(ROUNDINGS, native, interp):
        want = fmt.encode(x, rounding=mode, seed=SEED)
        bad = np.flatnonzero(got != want)
        assert bad.size == 0, (name, mode, x[bad[:5]], got[bad[:5]], want[bad[:5]])
        assert np.array_equal(want_interp, want), (name, mode)


EVERY_FORMAT = [n for n in lowbitc.dtypes() if n not in ("u8", "i8")]  # (machine types)


@pytest.mark.parametrize("name", EVERY_FORMAT)
def test_lowered_ir_of_every_format_matches_host_encode(name):
    """The backend's whole pipeline (lower-encode's searches, tables and stochastic step) for
    every format, run by the interpreter on the lowered IR: what both backends execute. The
    LLVM code of it is checked above on one format of every family."""
    fmt = lowbitc.dtype(name)
    x = probe_values(fmt)
    x = x[~np.isnan(x)] if not fmt.has_nan else x
    module, _ = load(MODES)
    lowered = run_pipeline(lower_kernel(module, pick_kernel(module, None), {"F": fmt}),
                           CPU_PIPELINE)
    words = -(-x.size * fmt.bits // 32)
    outs = [np.full(words, 0xDEADBEEF, np.uint32) for _ in ROUNDINGS]
    interpret(lowered, x, *outs, SEED)
    for mode, out in zip(ROUNDINGS, outs):
        got = lowbitc.unpack(out[None, :], fmt.bits, x.size)[0]
        want = fmt.encode(x, rounding=mode, seed=SEED)
        assert np.array_equal(got, want), (name, mode, x[got != want][:5])


CHOP_TILES = [{"BM": 1, "BK": 1024}, {"BM": 4, "BK": 256}, {"BM": 3, "BK": 96}]


@pytest.mark.parametrize("name", ["f4e2m1fn", "f6e3m2fn", "u4", "bf16", "f8e4m3fn"])
def test_stochastic_codes_independent_of_tiles_and_threads(name, monkeypatch):
    fmt = lowbitc.dtype(name)
    scale = min(fmt.max, 1e30) / 3  # (bf16's max / 3 * a normal sample overflows f32)
    x = (np.random.default_rng(1).standard_normal((37, 300)) * scale).astype(np.float32)
    want = fmt.decode(fmt.encode(x, rounding="stochastic", seed=77))
    for threads in ("1", "2"):
        monkeypatch.setenv("LOWBITC_NUM_THREADS", threads)
        for tiles in CHOP_TILES:
            k = lowbitc.compile(lowbitc.ops.kernel_path("chop"), F=fmt, MODE=5, **tiles)
            assert k._exe.launcher.threads == int(threads)
            y = np.full_like(x, np.nan)
            k(x, np.ones((1, 1), np.float32), y, 300, 77, np.float32(0), np.float32(np.inf),
              np.float32(-np.inf), np.float32(np.inf))
            assert np.array_equal(y.view(np.uint32), want.view(np.uint32)), (threads, tiles)


def test_bf16_stochastic_is_unbiased_in_every_binade():
    """The mean of 2^20 roundings of x against x, for a value in each of bf16's 254 binades,
    one below its smallest subnormal and two negatives, drawn by the compiled chop kernel (the
    host's codes bit for bit: above and test_rounding_machine.py). With ~257 values an
    unbiased rounding leaves ~0.7 of them beyond 3 standard errors by chance: all must be
    within 4 (P(fail) ~ 1.6%) and at most 3 beyond 3 (P ~ 0.5%)."""
    fmt = lowbitc.dtype("bf16")
    pts = binade_points("bf16", every=True)
    assert pts.size >= 256
    y = np.empty((256, 4096), np.float32)
    z = []
    for i, x in enumerate(pts):
        run_chop(np.full(y.shape, x, np.float32), fmt, "stochastic", True, True, 1000 + i, y)
        r = y.astype(np.float64).reshape(-1)
        assert len(np.unique(r)) == 2, (x, np.unique(r))
        z.append((r.mean() - float(x)) / (r.std() / np.sqrt(r.size)))
    z = np.abs(np.array(z))
    assert z.max() <= 4 and (z > 3).sum() <= 3, (pts[z > 3], z[z > 3])


def test_stochastic_cast_ir_text_round_trips():
    k = get_kernel("chop", "llvm", F=lowbitc.dtype("f6e3m2fn"), MODE=5)
    text = print_kernel(k.ir)
    line = next(ln for ln in text.splitlines() if 'rounding="stochastic"' in ln)
    assert line.split("=", 1)[1].strip().startswith("cast ")
    assert '{dtype="f6e3m2fn", rounding="stochastic"} : tile<f6e3m2fn[4,256]>' in line
    assert parse(text) == k.ir
    lowered = print_kernel(k.lowered)
    assert "philox %seed" in lowered and "stochastic" not in lowered
    plain = print_kernel(get_kernel("chop", "llvm", F=lowbitc.dtype("f6e3m2fn")).ir)
    assert "rounding" not in plain  # the default is not printed


BAD = [
    ('cast(t, F, rounding="nearest")', DSLTypeError, 'rounding must be one of "nearest_even"'),
    ("cast(t, F, rounding=up)", DSLTypeError, "got a non-string expression"),
    ('cast(t, F, rounding="stochastic")', DSLTypeError, "needs seed="),
    ('cast(t, F, rounding="up", seed=3)', DSLTypeError, 'seed= applies to rounding="stochastic"'),
    ('cast(t, i16, rounding="up")', DSLTypeError, "not f32 -> i16"),
    ('cast(cast(t, f16), bf16, rounding="up")', DSLTypeError, "takes f32 values, got f16"),
    ('cast(sum(t), F, rounding="stochastic", seed=1)', DSLTypeError, "pass index="),
    ('cast(acc, F, rounding="stochastic", seed=1)', DSLTypeError, "pass index="),
]


@pytest.mark.parametrize("expr,err,msg", BAD)
def test_rounding_errors_point_at_the_cast(expr, err, msg):
    src = f"""
kernel bad[F: dtype = u4](x: f32[N], y: F[N]) grid (1) {{
  t = load(x[0 :+ 16])
  acc = zeros(f32, [16])
  store(y[0 :+ 16], cast(t, F) )
  z = {expr}
}}
"""
    with pytest.raises(err, match=msg) as e:
        lowbitc.compile(src)
    assert "cast(" in str(e.value) and "^" in str(e.value)


def test_explicit_index_and_verifier_messages():
    src = """
kernel ix[F: dtype = u4](x: f32[N], y: F[N], seed: i64) grid (cdiv(N, 16)) {
  i = block.x * 16
  t = sum(reshape(load(x[i :+ 16]), [16, 1]), 1)
  store(y[i :+ 16], cast(t, F, rounding="stochastic", seed=seed, index=arange(16) + i))
}
"""
    k = lowbitc.compile(src)
    fmt = lowbitc.dtype("u4")
    x = np.random.default_rng(0).uniform(0, 15, 40).astype(np.float32)
    y = np.zeros(5, np.uint32)
    k(x, y, 9)
    assert np.array_equal(lowbitc.unpack(y[None], 4, 40)[0],
                          fmt.encode(x, rounding="stochastic", seed=9))
    text = print_kernel(k.ir).replace('rounding="stochastic"', 'rounding="sideways"')
    with pytest.raises(VerifyError, match="rounding must be one of"):
        verify(parse(text))


@pytest.mark.cuda_toolchain
def test_stochastic_chop_ptx_assembles_without_spills():
    checks = pytest.importorskip("cuda_checks")
    if checks.MISSING:
        pytest.skip(f"CUDA toolchain: {checks.MISSING}")
    from lowbitc.commands import emit
    from lowbitc.commands.compile import compile_file

    (k, _), = compile_file(lowbitc.ops.kernel_path("chop"), None,
                           {"F": "f8e4m3fn", "MODE": 5}, backend="cuda")
    for arch in ("sm_80", "sm_90"):
        checks.assemble_without_spills(emit.cuda_text(k, "ptx", arch), arch)
