"""The GEMM path (more than 8 activation rows): weight tiles dequantized once into an f32
panel, then the register-blocked microkernel of the LLVM backend's dot. Results against a
float64 reference over every format family, odd shapes, zero points, partial and unaligned
groups, half activations; a user's own .lbk dot of f32 tiles takes the same microkernel."""

import numpy as np
import pytest

import lowbitc
from lowbitc import ops
from lowbitc.backends.llvm import microkernel
from lowbitc.ir.types import numpy_dtype
from lowbitc.quant import quantize

# one format of each family: unsigned, signed, bipolar, small floats, 8-bit floats, the
# power-of-two scale format, NormalFloat, machine-width codes
FAMILIES = ["u1", "u3", "u4", "i5", "b2", "f4e2m1fn", "f6e3m2fn", "f8e4m3fn", "f8e5m2",
            "f8e8m0fnu", "nf4", "u8", "i8"]
N, K = 75, 300  # N: a partial 16-row block and a partial vector; K: a partial last group


def _qw(name, n=N, k=K, group=128, seed=0, zero_point=None):
    w = np.random.default_rng(seed).standard_normal((n, k)).astype(np.float32)
    if zero_point is None:
        zero_point = lowbitc.dtype(name).kind == "uint" and name != "u1"
    return quantize(w, name, group, zero_point=zero_point)


def _check(qw, m, dtype=np.float32, seed=1):
    x = np.random.default_rng(seed).standard_normal((m, qw.shape[1])).astype(dtype)
    ref = x.astype(np.float64) @ qw.dequantize().astype(np.float64).T
    y = ops.matmul(x, qw)
    assert y.shape == (m, qw.shape[0])
    scale = max(np.abs(ref).max(), 1e-30)
    assert np.abs(y - ref).max() / scale < 2e-5, f"{qw.dtype.name} M={m}"


@pytest.mark.parametrize("name", FAMILIES)
def test_every_family(name):
    _check(_qw(name), 33)


@pytest.mark.parametrize("m", [9, 16, 33, 130])
def test_row_counts(m):
    _check(_qw("u4"), m)
    _check(_qw("u3", zero_point=True), m)
    _check(_qw("i3"), m)


@pytest.mark.parametrize("group", [32, 48, 7])
def test_groups_that_tiles_do_not_divide(group):
    # 48: a K tile of 32 crosses each group's end (the zeroed partial chunk); 7: unaligned
    # windows take the generic decode
    _check(_qw("u4", n=40, k=101, group=group), 20)


@pytest.mark.parametrize("act", [np.float16, "bf16"])
def test_half_activations(act):
    _check(_qw("u4"), 16, dtype=numpy_dtype(act) if isinstance(act, str) else act)


def test_gemm_params_and_code():
    """M > 8 dequantizes before the dot (EARLY) with a row tile of at most 128; the dot is
    the fused panel plus the microkernel (fused multiply-adds on whole vectors)."""
    qw = _qw("u4", n=256, k=256)
    assert [ops.gemm_rows(m) for m in (9, 16, 33, 128, 130, 1000)] == [16, 16, 48, 128, 80, 128]
    params = ops.matmul_params(16, qw, "f32")
    assert params["EARLY"] and params["BM"] == 16 and params["BN"] == 64
    assert not ops.matmul_params(8, qw, "f32")["EARLY"]
    cuda = ops.matmul_params(16, qw, "f32", "cuda")
    assert cuda["EARLY"] and (cuda["BM"], cuda["BN"]) == (8, 32)
    text = ops.get_kernel("matmul", **params).text("llvm")
    lanes = microkernel.host_vector()[0]
    assert f"@llvm.fmuladd.v{lanes}f32" in text
    assert "panel" in text  # the fused decode into the panel


USER_DOT = """
kernel mm[BM: int = 32, BN: int = 48, BK: int = 40, T: dtype = f32](
    a: T[M, K], b: T[N, K], y: f32[M, N])
  grid (cdiv(M, BM), cdiv(N, BN))
{
  acc = zeros(f32, [BM, BN])
  for k in range(0, K, BK) {
    x = cast(load(a[block.x * BM :+ BM, k :+ BK]), f32)
    w = cast(load(b[block.y * BN :+ BN, k :+ BK]), f32)
    acc = dot(x, transpose(w), acc)
  }
  store(y[block.x * BM :+ BM, block.y * BN :+ BN], acc)
}
"""


def _user_dot(dtype="f32", **params):
    k = lowbitc.compile(USER_DOT, T=dtype, **params)
    rng = np.random.default_rng(3)
    a = rng.standard_normal((70, 90)).astype(numpy_dtype(dtype))
    b = rng.standard_normal((53, 90)).astype(numpy_dtype(dtype))
    y = np.zeros((70, 53), np.float32)
    k(a, b, y)
    ref = a.astype(np.float64) @ b.astype(np.float64).T
    assert np.abs(y - ref).max() / np.abs(ref).max() < 1e-5
    return k.text("llvm")


@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_user_kernel_dot_takes_the_microkernel(dtype):
    lanes = microkernel.host_vector()[0]
    assert f"@llvm.fmuladd.v{lanes}f32" in _user_dot(dtype)
    _user_dot(dtype, BM=13, BN=21, BK=7)  # edges everywhere: partial vectors and blocks


def test_avx2_width(monkeypatch):
    """Hosts without AVX-512 get 8-lane vectors and a 16-register blocking."""
    monkeypatch.setenv("LOWBITC_NO_CACHE", "1")
    monkeypatch.setattr(microkernel, "host_vector", lambda: (8, 16))
    text = _user_dot()
    assert "@llvm.fmuladd.v8f32" in text and "v16f32" not in text
    _user_dot(BM=13, BN=21, BK=7)
    qw = _qw("u4", n=40, k=256, zero_point=True)
    x = np.random.default_rng(2).standard_normal((20, 256)).astype(np.float32)
    k = lowbitc.compile(ops.kernel_path("matmul"), **ops.matmul_params(20, qw, "f32"))
    assert "@llvm.fmuladd.v8f32" in k.text("llvm")
    y = np.zeros((20, 40), np.float32)
    k(x, ops.weight_storage(qw), qw.scales, qw.zeros, y, qw.group_size, K=256)
    ref = x.astype(np.float64) @ qw.dequantize().astype(np.float64).T
    assert np.abs(y - ref).max() / np.abs(ref).max() < 2e-5


def test_transpose_vectors_moves_every_element():
    """The in-register transpose, rendered for 8 and 16 lanes, sends (r, l) to (l, r)."""
    from lowbitc.backends.llvm.emitter import Emitter

    for lanes in (8, 16):
        em = Emitter()
        rows = [f"%r{i}" for i in range(lanes)]
        out = microkernel.transpose_vectors(em, rows, lanes)
        # evaluate the shuffles symbolically: each value is a list of (row, lane) sources
        vals = {f"%r{i}": [(i, j) for j in range(lanes)] for i in range(lanes)}
        for line in em.lines:
            name, rhs = line.strip().split(" = ")
            parts = rhs.split(", ")  # shufflevector <T> x, <T> y, <n x i32> <i32 i, ...>
            x = parts[0].split()[-1]
            y = parts[1].split()[-1]
            idx = [int(t.split()[-1].rstrip(">")) for t in parts[2:]]
            src = vals[x] + vals[y]
            vals[name] = [src[i] for i in idx]
        for r, v in enumerate(out):
            assert vals[v] == [(j, r) for j in range(lanes)]
