"""The tensor-core matmul (kernels/matmul_mma.lbk: `dot` of f16 tiles lowered to
mma.sync m16n8k16) in Numba's CUDA simulator, through the shipped `ops.matmul` with f16
activations, against float64 numpy and the interpreter.

Tolerance, derived: activations are f16 and every code value of these formats is exactly an
f16 except nf4's and the code book's (rounded once to f16: relative error <= 2^-11 per
weight); f16 x f16 products are exact in f32 and mma accumulates in f32, so K terms in
any order are within K * 2^-24 (relative, of sum |x * v|) of the exact sum; the group scale
and zero point are applied in f32 (a few more 2^-24). Per output:
  |y - exact| <= (2^-11 [rounded formats] + (K + 8) * 2^-24) * sum_k |x_k * s_k * v_k|
where v is the code value, s the group's scale (zero point terms are added to the budget as
|s * z * sum x|). Against the interpreter (which rounds values to f16 the same way and sums
in float64) the 2^-11 term drops out.

bf16 activations (mma m16n8k16 .bf16): the same bound with bf16's unit roundoff 2^-8 (8
significant bits) in place of f16's 2^-11 for the formats whose code values need more bits
(nf4, the code book: 1 + 2^-12 rounds to 1); bf16 x bf16 products are exact in f32 (16
significant bits) and the K sum is the same f32 accumulation, so the (K + 8) 2^-24 term
stands. Every other format's code values (integers up to 255, floats of at most 3 mantissa
bits) are exact in bf16.

Run only in a process with NUMBA_ENABLE_CUDASIM=1 (tests/test_cuda_mma.py starts one).

The default run keeps a set of cases that together take every code path once (each decode
family, one four-warp tile, f16 and bf16, zero points, ragged N/K, a partial last group,
split-K, a pipeline depth, the bank trace of a staged and a packing tile); every other case of
the acceptance matrix is marked `sweep` (tests/conftest.py skips those unless -m is given).
The whole matrix: `NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/cudasim/test_sim_mma.py -m
"sweep or not sweep"`, or `python -m pytest tests/test_cuda_mma.py -m "sweep or not sweep" -k
simulator` (test_simulator_suite runs the default cases, test_simulator_sweep the others).
"""

import os

import numpy as np
import pytest

import lowbitc
from lowbitc import ops
from lowbitc.quant import quantize

pytestmark = pytest.mark.cudasim
assert os.environ.get("NUMBA_ENABLE_CUDASIM") == "1", "run through tests/test_cuda_mma.py"

BOOK = lowbitc.codebook([-1.5, -0.5, 0.0, 0.25, 0.5, 1.0, 1.000244140625, 2.0], name="mmabook")
ROUNDED = {"nf4", "mmabook"}  # code values not exact in f16
# (format, M, N, K, group, zero points): N and K odd or not multiples of the 32 x 16 tiles,
# K % group != 0 gives a partial last group
CASES = [
    ("u1", 5, 9, 70, 32, False), ("u2", 1, 33, 96, 32, True), ("u3", 16, 7, 45, 32, True),
    ("u4", 1, 40, 200, 64, False), ("u4", 5, 11, 80, 32, True), ("u4", 33, 9, 150, 128, True),
    ("u4", 16, 32, 128, 64, False), ("u5", 5, 6, 45, 32, False), ("u6", 1, 6, 70, 64, True),
    ("u7", 5, 5, 45, 32, False), ("u8", 16, 5, 33, 32, True), ("i2", 5, 7, 64, 32, False),
    ("i4", 33, 6, 96, 64, False), ("b1", 5, 9, 45, 32, False), ("b3", 1, 5, 70, 64, False),
    ("f4e2m1fn", 5, 9, 45, 32, False), ("f6e3m2fn", 16, 5, 45, 32, False),
    ("f6e2m3fn", 5, 5, 64, 32, False), ("f8e4m3fn", 1, 9, 45, 32, False),
    ("f8e5m2", 5, 4, 37, 32, False), ("nf4", 5, 6, 130, 128, False),
    ("mmabook", 1, 4, 40, 32, False),
    # N past one 64-wide block: the first block's whole tiles take the unchecked K loop
    ("u4", 16, 72, 160, 64, True), ("i4", 5, 70, 96, 32, False),
    # the mma packing's f16 decodes over every code (64 x 128 weights): u8 by PRMT, the
    # float formats by field placement, nf4 and the code book by table registers
    ("u8", 5, 64, 128, 64, True), ("f8e4m3fn", 16, 64, 128, 64, False),
    ("f8e5m2", 5, 64, 128, 64, False), ("f6e3m2fn", 1, 64, 128, 64, False),
    ("nf4", 5, 64, 128, 64, False), ("mmabook", 5, 64, 128, 64, False),
    ("i8", 5, 64, 128, 64, False),
]


def _split(cases, default):
    """`cases` for parametrize, those not in `default` marked `sweep` (run with -m)."""
    assert all(d in cases for d in default), default
    return [c if c in default else pytest.param(*c, marks=pytest.mark.sweep) for c in cases]


# the default run's cases: magic u1/u2/u4 (M 1, 5, 16; zero points; ragged N/K; partial
# groups; the unchecked K loop past one 64-wide block), u3's bit planes, b1, and every code
# of u8 (PRMT), f8e4m3fn (float fields), nf4 (table) and i8
DEFAULT = [("u1", 5, 9, 70, 32, False), ("u2", 1, 33, 96, 32, True), ("u3", 16, 7, 45, 32, True),
           ("u4", 5, 11, 80, 32, True), ("b1", 5, 9, 45, 32, False),
           ("u4", 16, 72, 160, 64, True), ("u8", 5, 64, 128, 64, True),
           ("f8e4m3fn", 16, 64, 128, 64, False), ("nf4", 5, 64, 128, 64, False),
           ("i8", 5, 64, 128, 64, False)]


def _qw(name, n, k, group, zp, seed=0):
    w = np.random.default_rng(seed).standard_normal((n, k)).astype(np.float32)
    return quantize(w, BOOK if name == "mmabook" else name, group, zero_point=zp)


def _budget(x, qw, rounded: bool, unit: float = 2.0**-11) -> np.ndarray:
    """The per-output error bound of the module docstring (`unit`: the activation type's unit
    roundoff, charged once per weight of a rounded format)."""
    n, k = qw.shape
    g = qw.group_size
    cols = np.arange(k) // g
    values = qw.dtype.values()[qw.codes.astype(np.int64)]  # code values [N, K]
    s = qw.scales[:, cols].astype(np.float64)
    mass = np.abs(x.astype(np.float64)) @ np.abs(values * s).T
    if qw.zeros is not None:
        mass += np.abs(x.astype(np.float64)) @ np.abs(qw.zeros[:, cols] * s).T
    rel = (unit if rounded else 0.0) + (k + 8) * 2.0**-24
    return rel * mass + 1e-30


@pytest.mark.parametrize("name,m,n,k,group,zp", _split(CASES, DEFAULT))
def test_mma_matmul_matches_numpy_and_interpreter(name, m, n, k, group, zp):
    qw = _qw(name, n, k, group, zp)
    x = np.random.default_rng(1).standard_normal((m, k)).astype(np.float16)
    name_, params = ops.matmul_choice(m, n, k, qw, "f16", backend="cuda")
    assert name_ == "matmul_mma"
    y = ops.matmul(x, qw, backend="cuda")
    exact = x.astype(np.float64) @ qw.dequantize().astype(np.float64).T
    err = np.abs(y - exact)
    assert np.all(err <= _budget(x, qw, name in ROUNDED)), (name, err.max())
    kern = ops.get_kernel("matmul_mma", "cuda", **params)
    assert "mma_f16(" in kern.text("python")
    want = np.zeros((m, n), np.float32)
    zeros = qw.zeros if zp else np.zeros((1, 1), np.float32)
    kern.interpret(x, ops.weight_storage(qw, kern), qw.scales, zeros, want, group, K=k)
    assert np.all(np.abs(y - want) <= _budget(x, qw, False)), name


# bf16 activations: rounded formats (nf4, the book), zero points, M 1/5/16/33, edges
BF16_CASES = [
    ("u4", 5, 11, 80, 32, True), ("u8", 16, 5, 33, 32, True), ("nf4", 5, 6, 130, 128, False),
    ("mmabook", 1, 4, 40, 32, False), ("f8e4m3fn", 33, 9, 45, 32, False),
    ("i4", 5, 70, 96, 32, False),
    # M <= 16: the mma packing's bf16 decodes (magic 128, f32 magic for 8 bits, float fields,
    # tables); every code of these formats occurs in a 64 x 128 weight
    ("u3", 5, 64, 128, 64, True), ("b3", 1, 64, 128, 64, False), ("i2", 16, 64, 128, 64, False),
    ("f4e2m1fn", 5, 64, 128, 64, False), ("f6e3m2fn", 5, 64, 128, 64, False),
    ("f6e2m3fn", 5, 64, 128, 64, False), ("f8e4m3fn", 5, 64, 128, 64, False),
    ("f8e5m2", 5, 64, 128, 64, False), ("u8", 5, 64, 128, 64, False),
    ("mmabook", 5, 64, 128, 64, False), ("i8", 5, 64, 128, 64, False),
]


# by default: u4 (zero points, partial group, the bf16 bits on the device), and every code of
# u8 (f32 magic for 8 bits) and the code book (table registers)
BF16_DEFAULT = [("u4", 5, 11, 80, 32, True), ("u8", 5, 64, 128, 64, False),
                ("mmabook", 5, 64, 128, 64, False)]


@pytest.mark.parametrize("name,m,n,k,group,zp", _split(BF16_CASES, BF16_DEFAULT))
def test_mma_matmul_bf16_activations(name, m, n, k, group, zp):
    """bf16 x takes mma .bf16 (the same kernel, A=bf16): against float64 numpy within the
    module docstring's bf16 bound, and against the interpreter within the f32-sum part."""
    import ml_dtypes

    qw = _qw(name, n, k, group, zp)
    x = np.random.default_rng(2).standard_normal((m, k)).astype(ml_dtypes.bfloat16)
    name_, params = ops.matmul_choice(m, n, k, qw, "bf16", backend="cuda")
    assert name_ == "matmul_mma" and params["A"] == "bf16"
    kern = ops.get_kernel("matmul_mma", "cuda", **params)
    assert "mma_bf16(" in kern.text("python") and "mma_f16(" not in kern.text("python")
    y = ops.matmul(x, qw, backend="cuda")
    xf = x.astype(np.float64)
    err = np.abs(y - xf @ qw.dequantize().astype(np.float64).T)
    assert np.all(err <= _budget(x, qw, name in ROUNDED, 2.0**-8)), (name, err.max())
    want = np.zeros((m, n), np.float32)
    zeros = qw.zeros if zp else np.zeros((1, 1), np.float32)
    kern.interpret(x, ops.weight_storage(qw, kern), qw.scales, zeros, want, group, K=k)
    assert np.all(np.abs(y - want) <= _budget(x, qw, False)), name
    if name == "u4":  # a device array of 2-byte integers holds bf16 bits (torch's bf16 path)
        from numba import cuda

        dev = np.zeros((m, n), np.float32)
        kern(cuda.to_device(x.view(np.int16)), ops.weight_storage(qw, kern), qw.scales,
             qw.zeros, dev, group, K=k)
        np.testing.assert_array_equal(dev, y)


# every format of the acceptance list at M = 33 (the BM 32 tile, four warps on a GPU), f16 and
# bf16 activations in turn, zero points on every third unsigned format; N, K ragged, K % group
# != 0 (a partial last group)
M33_FORMATS = ["u1", "u2", "u3", "u4", "u5", "u6", "u7", "u8", "i2", "i4", "b1", "b3", "f4e2m1fn",
               "f6e3m2fn", "f6e2m3fn", "f8e4m3fn", "f8e5m2", "nf4", "mmabook"]


@pytest.mark.parametrize("i,name", _split(list(enumerate(M33_FORMATS)), []))
def test_every_format_at_m33(i, name):
    import ml_dtypes

    act = "f16" if i % 2 == 0 else "bf16"
    zp = i % 3 == 0 and name.startswith("u")
    n, k, group = 21, 150, 64
    qw = _qw(name, n, k, group, zp)
    x = np.random.default_rng(3).standard_normal((33, k))
    x = x.astype(np.float16 if act == "f16" else ml_dtypes.bfloat16)
    name_, params = ops.matmul_choice(33, n, k, qw, act, backend="cuda")
    assert name_ == "matmul_mma" and params["BM"] > 16 and params["A"] == act
    y = ops.matmul(x, qw, backend="cuda")
    err = np.abs(y - x.astype(np.float64) @ qw.dequantize().astype(np.float64).T)
    unit = 2.0**-11 if act == "f16" else 2.0**-8
    assert np.all(err <= _budget(x, qw, name in ROUNDED, unit)), (name, act, err.max())


def test_formats_beyond_f16_keep_the_simt_kernel():
    qw = _qw("f8e8m0fnu", 3, 64, 32, False)
    assert ops.matmul_choice(2, 3, 64, qw, "f16", backend="cuda")[0] == "matmul"
    assert ops.matmul_choice(2, 3, 64, _qw("u4", 3, 64, 32, False), "f32",
                              backend="cuda")[0] == "matmul"


def test_tutorial_example_runs_on_tensor_cores():
    """examples/tc_gemm.lbk (docs/tutorial.md section 7) on backend="cuda": the mma path,
    against float64 numpy within K f32 roundings of sum |x * w| (its values are exact f16)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples" / "run_examples.py"
    spec = importlib.util.spec_from_file_location("run_examples", path)
    run_examples = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_examples)
    seen = []

    def run(k, *args, **kwargs):
        seen.append(k.text("python"))
        k(*args, **kwargs)

    got, want = run_examples.tc_gemm(run, np.random.default_rng(0), 5, 37, 70, 32,
                                     backend="cuda")
    assert "mma_f16(" in seen[0] and "ldmatrix_x4(" in seen[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=70 * 2.0**-24 * 8)


IDOT = os.path.join(os.path.dirname(__file__), "idot.lbk")


@pytest.mark.parametrize("m,n,k", [(20, 13, 100), (33, 16, 64)])
def test_i8_dot_runs_on_s8_tensor_cores_exactly(m, n, k):
    """A dot of i8 tiles into i32 is mma.sync m16n8k32 .s8: exact integer sums (edges read 0)."""
    kern = lowbitc.compile(IDOT, backend="cuda")
    assert "mma_s8(" in kern.text("python")
    rng = np.random.default_rng(k)
    x = rng.integers(-128, 128, (m, k)).astype(np.int8)
    w = rng.integers(-128, 128, (n, k)).astype(np.int8)
    y = np.zeros((m, n), np.int32)
    kern(x, w, y)
    np.testing.assert_array_equal(y, x.astype(np.int64) @ w.astype(np.int64).T)


# M > 16: four warps, each owning 32 rows of one 64-column tile (BM 32: BN 256; BM 64: BN
# 128), so the weight takes the mma packing (128-bit loads into B registers) as at BM 16;
# N and K ragged, zero points, f16 and bf16
FOUR_WARPS = [
    ("u4", "f16", 33, 200, 300, 64, True), ("u3", "f16", 64, 130, 192, 64, True),
    ("f4e2m1fn", "f16", 33, 70, 160, 32, False), ("u4", "bf16", 64, 90, 136, 128, True),
    ("u3", "bf16", 20, 270, 96, 32, False),
    # the default: BM 64 x BN 128 (2 x 2 warps), ragged N and K, a partial last group, zero
    # points, bf16 in two K tiles of 64 (one whole, one ragged): the paths of the 136-deep
    # case above in half its simulated time
    ("u4", "bf16", 64, 90, 72, 64, True),
]


@pytest.mark.parametrize("name,act,m,n,k,group,zp",
                         _split(FOUR_WARPS, [("u4", "bf16", 64, 90, 72, 64, True)]))
def test_mma_packing_on_four_warps(name, act, m, n, k, group, zp):
    """At BM 32 / 64 the weight is read from the mma packing (not staged canonical words):
    against float64 numpy within the module docstring's bound and against the interpreter."""
    import ml_dtypes

    qw = _qw(name, n, k, group, zp)
    dt = np.float16 if act == "f16" else ml_dtypes.bfloat16
    x = np.random.default_rng(4).standard_normal((m, k)).astype(dt)
    name_, params = ops.matmul_choice(m, n, k, qw, act, backend="cuda")
    assert name_ == "matmul_mma" and params["BM"] > 16 and params["TH"] == 128, params
    kern = ops.get_kernel("matmul_mma", "cuda", **params)
    assert type(kern.packings.get("w")).__name__ == "MmaPacking", kern.packings
    y = ops.matmul(x, qw, backend="cuda")
    exact = x.astype(np.float64) @ qw.dequantize().astype(np.float64).T
    unit = 2.0**-11 if act == "f16" else 2.0**-8
    assert np.all(np.abs(y - exact) <= _budget(x, qw, name in ROUNDED, unit)), name
    want = np.zeros((m, n), np.float32)
    zeros = qw.zeros if zp else np.zeros((1, 1), np.float32)
    kern.interpret(x, ops.weight_storage(qw, kern), qw.scales, zeros, want, group, K=k)
    assert np.all(np.abs(y - want) <= _budget(x, qw, False)), name


# (format, activations, M, N, zero points, params): four warps (BM 64, 128 threads) and one
# (BM 16); u8 on four warps at BM 16 keeps canonical bytes (each warp 16 of the 64 columns:
# not the mma packing), its decoded tile staged in shared memory and read by ldmatrix; the
# odd widths on four warps at BM 32 / 64 (the canonical path: their decoded [32, 64] tile
# written by the unit loop, 16-byte stores, then read by ldmatrix_x2)
TRACED = [("u4", "bf16", 33, 64, False, {"TH": 128}), ("u8", "f16", 5, 64, False, {"TH": 128}),
          ("u4", "f16", 16, 64, True, {}), ("u4", "f16", 33, 200, True, {}),
          # BN 32 (a tune choice) keeps the canonical words staged in shared memory at BM > 16
          ("u3", "f16", 33, 32, False, {"TH": 128, "BN": 32}),
          ("u5", "f16", 20, 32, False, {"TH": 128, "BN": 32}),
          ("u6", "bf16", 20, 32, False, {"TH": 128, "BN": 32}),
          ("u7", "f16", 20, 32, True, {"TH": 128, "BN": 32})]


@pytest.mark.parametrize("name,act,m,n,zp,extra", _split(TRACED, [
    ("u4", "f16", 16, 64, True, {}), ("u7", "f16", 20, 32, True, {"TH": 128, "BN": 32})]))
def test_every_shared_access_is_free_of_bank_conflicts(name, act, m, n, zp, extra):
    """Every shared-memory access the generated kernel makes (stores, loads, ldmatrix rows,
    the pipeline's cp.async chunks into its swizzled stages), recorded per simulated thread
    with its byte address and grouped per warp (backends/numba_cuda/bank_trace.py), takes one
    wavefront per phase (layout.banks); with zero points sum(a, axis=1) reads the stage from
    rotated start columns (reduce_order.py; it was 2-way before); the odd widths' decoded
    tiles go out in 16-byte stores (units.vector_store; two-byte stores were 4-way)."""
    import ml_dtypes

    from lowbitc.backends.numba_cuda.bank_trace import conflicts

    k, group = 128, 64
    qw = _qw(name, n, k, group, zp)
    dt = np.float16 if act == "f16" else ml_dtypes.bfloat16
    x = np.random.default_rng(3).standard_normal((m, k)).astype(dt)
    params = {**ops.matmul_choice(m, n, k, qw, act, backend="cuda")[1], **extra}
    kern = ops.get_kernel("matmul_mma", "cuda", **params)
    y = np.zeros((m, n), np.float32)
    zeros = qw.zeros if zp else np.zeros((1, 1), np.float32)
    every, bad = conflicts(lambda: kern(x, ops.weight_storage(qw, kern), qw.scales, zeros, y,
                                        group, K=k))
    kinds = {a.kind for a in every}
    assert {"load", "store", "ldmatrix.x4", "cp.async"} <= kinds and len(every) > 100, kinds
    if name in ("u3", "u5", "u6", "u7"):  # the staged tile: 16-byte stores, ldmatrix_x2 reads
        assert {(a.kind, a.width) for a in every} >= {("store", 16), ("ldmatrix.x2", 16)}
    assert not bad, [(a.text, a.report) for a in bad[:3]]
    exact = x.astype(np.float64) @ qw.dequantize().astype(np.float64).T
    assert np.all(np.abs(y - exact) <= _budget(x, qw, False, 2.0**-8))  # (traced = correct)


def test_stated_fragment_layouts_run_on_tensor_cores():
    """A kernel that states the mma fragment layouts (layout=, relayout) runs the mma path
    and matches numpy (f16 inputs, exact products, f32 sums of 32 terms)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from test_cuda_mma import _stated

    kern = lowbitc.compile(_stated(), backend="cuda")
    assert "mma_f16(" in kern.text("python")
    rng = np.random.default_rng(4)
    x = rng.standard_normal((20, 32)).astype(np.float16)
    w = rng.standard_normal((40, 32)).astype(np.float16)
    y = np.zeros((20, 40), np.float32)
    kern(x, w, y)
    want = x.astype(np.float64) @ w.astype(np.float64).T
    mass = np.abs(x.astype(np.float64)) @ np.abs(w.astype(np.float64)).T
    assert np.all(np.abs(y - want) <= 40 * 2.0**-24 * mass)


# u3: SK = 4 > its 3 groups, an empty split adds zeros
@pytest.mark.parametrize("name,m,n,k,group,zp,sk", _split([
    ("u4", 5, 40, 300, 32, True, 2), ("u3", 1, 6, 70, 32, True, 4)],
    [("u3", 1, 6, 70, 32, True, 4)]))
def test_split_k_partial_sums_reduced_in_order(name, m, n, k, group, zp, sk):
    """Split-K (SK > 1): each split's groups into its slice of the workspace, splitk_sum adds
    the slices in order; the same bound against numpy as one pass (each split is the one-pass
    kernel over fewer groups; SK - 1 more f32 additions, inside the (K + 8) 2^-24 term)."""
    qw = _qw(name, n, k, group, zp)
    x = np.random.default_rng(5).standard_normal((m, k)).astype(np.float16)
    params = {**ops.matmul_choice(m, n, k, qw, "f16", backend="cuda")[1], "SK": sk}
    kern = ops.get_kernel("matmul_mma", "cuda", **params)
    y = np.full((m, n), np.nan, np.float32)
    zeros = qw.zeros if zp else np.zeros((1, 1), np.float32)
    ops.launch_matmul(kern, x, ops.weight_storage(qw, kern), qw.scales, zeros, y, group, k)
    exact = x.astype(np.float64) @ qw.dequantize().astype(np.float64).T
    assert np.all(np.abs(y - exact) <= _budget(x, qw, False)), (name, np.abs(y - exact).max())


@pytest.mark.sweep
def test_the_tuner_times_split_k_with_both_passes():
    """A split-K point of `tune("matmul", backend="cuda")`: the tuner's candidate runs both
    passes and its result check (against numpy) passes."""
    from lowbitc import autotune

    t = autotune._op_target("matmul", (5, 40, 256), "u4", 64, True, "f16", "cuda")
    run = autotune.Candidate(t, "cuda")({"BM": 16, "BN": 32, "BK": 64, "SK": 2})
    run()


@pytest.mark.parametrize("st,name,m", _split([(2, "u4", 5), (4, "u3", 20)], [(2, "u4", 5)]))
def test_pipeline_depths_match_numpy(st, name, m):
    """ST (the K loop's `stages=`, a tune choice) 2 and 4: the cp.async pipeline with 1 and 3
    fills ahead over 5 K tiles of 32 (a partial last group), against float64 numpy within the
    one-pass bound (the depth changes when a tile arrives, not what is summed)."""
    n, k, group = 9, 150, 32
    qw = _qw(name, n, k, group, True)
    x = np.random.default_rng(6).standard_normal((m, k)).astype(np.float16)
    params = {**ops.matmul_choice(m, n, k, qw, "f16", backend="cuda")[1], "ST": st}
    kern = ops.get_kernel("matmul_mma", "cuda", **params)
    assert kern.text("python").count("cp_async_commit()") == st
    y = np.full((m, n), np.nan, np.float32)
    ops.launch_matmul(kern, x, ops.weight_storage(qw, kern), qw.scales, qw.zeros, y, group, k)
    exact = x.astype(np.float64) @ qw.dequantize().astype(np.float64).T
    assert np.all(np.abs(y - exact) <= _budget(x, qw, False)), (name, np.abs(y - exact).max())


# a `sweep` (K 512 and more to split by default): the split-K kernel and launch_matmul's two
# passes are test_split_k_partial_sums_reduced_in_order[u3 SK 4]'s default case, the default
# choice and ops passing it on are tests/test_split_k.py's
@pytest.mark.parametrize("name,m,k,want", _split([("u4", 1, 512, 2), ("u3", 5, 1024, 4)], []))
def test_default_split_k_matches_numpy(name, m, k, want):
    """The default split-K (lowbitc/split_k.py: one block of output tiles, K of 16 and 32
    groups of 32 on the A100 table) picks SK > 1 and ops.matmul's result, both passes, is
    within the one-pass bound of float64 numpy."""
    n, group = 9, 32
    qw = _qw(name, n, k, group, True)
    x = np.random.default_rng(7).standard_normal((m, k)).astype(np.float16)
    assert ops.matmul_choice(m, n, k, qw, "f16", backend="cuda")[1]["SK"] == want
    y = ops.matmul(x, qw, backend="cuda")
    exact = x.astype(np.float64) @ qw.dequantize().astype(np.float64).T
    assert np.all(np.abs(y - exact) <= _budget(x, qw, False)), (name, np.abs(y - exact).max())
