"""lowbitc.ops on every DESIGN.md format: odd shapes, partial groups, zero points, activation
dtypes; against a float64 reference and (dequantize) bit for bit against QTensor.dequantize."""

import numpy as np
import pytest

import lowbitc
from lowbitc import ops
from lowbitc.backends.llvm import decode
from lowbitc.errors import UserArgumentError
from lowbitc.ir.types import numpy_dtype
from lowbitc.quant import quantize

FORMATS = sorted(lowbitc.dtypes())
N, K, GROUP = 37, 200, 64  # N, K not multiples of any tile; K % GROUP != 0


def _qw(name: str, seed: int = 0, n: int = N, k: int = K, group: int = GROUP):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, k)).astype(np.float32)
    zp = lowbitc.dtype(name).kind == "uint" and name != "u1"
    return quantize(w, name, group, zero_point=zp)


def _check_matmul(qw, m: int, dtype=np.float32, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, qw.shape[1])).astype(dtype)
    ref = x.astype(np.float64) @ qw.dequantize().astype(np.float64).T
    y = ops.matmul(x, qw)
    assert y.dtype == np.float32 and y.shape == (m, qw.shape[0])
    scale = max(np.abs(ref).max(), 1e-30)
    assert np.abs(y - ref).max() / scale < 2e-5, f"{qw.dtype.name} M={m}"


@pytest.mark.parametrize("name", FORMATS)
def test_dequantize_bit_exact(name):
    qw = _qw(name)
    got = ops.dequantize(qw)
    want = qw.dequantize()
    assert got.shape == want.shape
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("name", FORMATS)
@pytest.mark.parametrize("m", [1, 17])
def test_matmul_every_format(name, m):
    _check_matmul(_qw(name), m)


@pytest.mark.parametrize("name", ["u4", "i3", "f4e2m1fn", "nf4", "b2"])
def test_matmul_m3_and_other_groups(name):
    for n, k, g in [(5, 33, 7), (64, 256, 128), (3, 1, 1)]:
        _check_matmul(_qw(name, n=n, k=k, group=g), 3)


@pytest.mark.parametrize("name", ["u1", "u2", "i3", "b2", "u4"])
def test_gemv_blocks_of_256_rows_for_the_planes_formats(name):
    """A GEMV of a <= 3-bit integer format over N a multiple of ops.planes_bn() rows takes
    blocks of that many (its tables of activation sums are shared by more rows); other
    formats and other N keep 64; the results are exact either way."""
    for n, m in [(512, 1), (512, 4), (320, 1)]:
        qw = _qw(name, n=n, k=300, group=64)
        bn = ops.matmul_params(m, qw, "f32", N=n)["BN"]
        wide = name != "u4" and n % ops.planes_bn() == 0
        assert bn == (ops.planes_bn() if wide else 64)
        _check_matmul(qw, m)
    assert ops.matmul_params(1, _qw(name, n=512), "f32")["BN"] == 64  # N unknown


@pytest.mark.parametrize("avx2", [True, False])
def test_gemv_blocks_of_128_rows_without_avx512(monkeypatch, avx2):
    """Without AVX-512 the planes formats' GEMV reads the same words with the table dot on
    AVX2's 8-lane permutes, or without AVX2 with the rows dot, in blocks of
    ops.PLANES_BN_AVX2 rows, exact (the kernel compiled afresh: the IR differs)."""
    monkeypatch.setenv("LOWBITC_NO_CACHE", "1")
    monkeypatch.setattr(decode, "permutes", lambda: False)
    monkeypatch.setattr(decode, "cpu_features", lambda: {"avx2": avx2})
    qw = _qw("u2", n=512, k=300, group=64)
    params = ops.matmul_params(1, qw, "f32", N=512)
    k = lowbitc.compile(ops.kernel_path("matmul"), **params, GM=True, OFF=False)
    text = k.text("llvm")
    assert params["BN"] == ops.PLANES_BN_AVX2 and "avx512" not in text
    assert ("@llvm.x86.avx2.permps" in text) == avx2
    x = np.random.default_rng(1).standard_normal((1, 300)).astype(np.float32)
    y = np.zeros((1, 512), np.float32)
    s, z = qw.group_major
    k(x, ops.weight_storage(qw, k), s, z, y, qw.group_size, K=300)
    ref = x.astype(np.float64) @ qw.dequantize().astype(np.float64).T
    assert np.abs(y - ref).max() / np.abs(ref).max() < 2e-5


@pytest.mark.parametrize("act", [np.float16, "bf16"])
def test_half_activations(act):
    dtype = numpy_dtype(act) if isinstance(act, str) else act
    _check_matmul(_qw("u4"), 3, dtype=dtype)


def test_codebook_weights():
    cb = lowbitc.codebook(np.linspace(-1, 1, 8).astype(np.float32), name="lin8_ops")
    qw = quantize(np.random.default_rng(3).standard_normal((N, K)).astype(np.float32), cb, GROUP)
    _check_matmul(qw, 2)
    assert np.array_equal(ops.dequantize(qw), qw.dequantize())


def test_mx_and_nv_scales():
    w = np.random.default_rng(4).standard_normal((N, K)).astype(np.float32)
    for fmt, sd, g in [("f4e2m1fn", "f8e8m0fnu", 32), ("f4e2m1fn", "f8e4m3fn", 16)]:
        qw = quantize(w, fmt, g, scale_dtype=sd)
        _check_matmul(qw, 1)


def test_bad_arguments():
    qw = _qw("u4")
    with pytest.raises(UserArgumentError, match="x: expected K = 200"):
        ops.matmul(np.zeros((1, 199), np.float32), qw)
    with pytest.raises(UserArgumentError, match="x: expected float32"):
        ops.matmul(np.zeros((1, K), np.float64), qw)
    with pytest.raises(UserArgumentError, match="x: expected a 2-D"):
        ops.matmul(np.zeros((K,), np.float32), qw)
    with pytest.raises(UserArgumentError, match="qw: expected a lowbitc QTensor"):
        ops.matmul(np.zeros((1, K), np.float32), "u4")


def test_non_contiguous_activations_are_accepted():
    qw = _qw("u4")
    x = np.random.default_rng(5).standard_normal((K, 4)).astype(np.float32).T  # F-order view
    ref = x.astype(np.float64) @ qw.dequantize().astype(np.float64).T
    assert np.allclose(ops.matmul(x, qw), ref, rtol=1e-4, atol=1e-4)


def test_out_arrays_are_filled_and_checked():
    qw = _qw("u3")
    out = np.full(qw.shape, np.nan, np.float32)
    assert ops.dequantize(qw, out=out) is out
    assert np.array_equal(out.view(np.uint32), qw.dequantize().view(np.uint32))
    x = np.random.default_rng(9).standard_normal((2, K)).astype(np.float32)
    y = np.zeros((2, N), np.float32)
    assert ops.matmul(x, qw, out=y) is y
    np.testing.assert_allclose(y, x.astype(np.float64) @ qw.dequantize().T, rtol=1e-4, atol=1e-4)
    with pytest.raises(UserArgumentError, match="out: expected a writeable C-contiguous float32"):
        ops.dequantize(qw, out=np.zeros(qw.shape, np.float64))
    with pytest.raises(UserArgumentError, match="out: expected"):
        ops.matmul(x, qw, out=np.zeros((3, N), np.float32))
