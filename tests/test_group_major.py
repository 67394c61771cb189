"""Small groups on the CPU GEMV path (docs/performance.md): group-major scales and zero points
(matmul GM, QTensor.group_major), OffsetQTensor offsets subtracted in the kernel (OFF), and
the vector row sums the zero-point path takes."""

import numpy as np
import pytest

import lowbitc
from lowbitc import ops
from lowbitc.offset import OffsetQTensor
from lowbitc.ops import get_kernel, matmul_choice, weight_storage


def _run(qw, x, gm: bool) -> np.ndarray:
    m, (n, k) = x.shape[0], qw.shape
    _, params = matmul_choice(m, n, k, qw, "f32", "llvm")
    kern = get_kernel("matmul", "llvm", **{**params, "GM": gm})
    s, z = qw.group_major if gm else (qw.scales, qw.zeros)
    y = np.empty((m, n), np.float32)
    kern(x, weight_storage(qw, kern), s, z if z is not None else np.zeros((1, 1), np.float32),
         y, qw.group_size, K=k)
    return y


@pytest.mark.parametrize("fmt,group,zp", [("i4", 32, False), ("u4", 32, True),
                                          ("u4", 128, True), ("f4e2m1fn", 32, False)])
@pytest.mark.parametrize("m", [1, 3])
def test_group_major_gemv_equals_column_reads(fmt, group, zp, m):
    rng = np.random.default_rng(m)
    w = rng.standard_normal((77, 200)).astype(np.float32)  # partial row block and group
    qw = lowbitc.quantize(w, fmt, group, zero_point=zp)
    x = rng.standard_normal((m, 200)).astype(np.float32)
    got = _run(qw, x, True)
    assert np.array_equal(got, _run(qw, x, False))  # the same operations, the same order
    assert np.array_equal(ops.matmul(x, qw), got)  # what ops.matmul runs
    ref = x.astype(np.float64) @ qw.dequantize().T.astype(np.float64)
    assert np.allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_group_major_cached_and_replicated():
    qw = lowbitc.quantize(np.ones((5, 64), np.float32), "u4", 32, zero_point=True)
    s, z = qw.group_major
    assert s.shape == (2, 5) and s.flags.c_contiguous and np.array_equal(s, qw.scales.T)
    assert np.array_equal(z, qw.zeros.T) and qw.group_major[0] is s
    twin = qw.replica()
    assert np.array_equal(twin.group_major[0], s) and twin.group_major[0] is not s


@pytest.mark.parametrize("n", [16, 32, 48, 80])
def test_row_sums_in_vectors(n):
    src = f"""
    kernel rs(x: f32[R, C], y: f32[R]) grid (cdiv(R, 4)) {{
      r = block.x * 4
      store(y[r :+ 4], sum(load(x[r :+ 4, 0 :+ {n}]), axis=1))
    }}
    """
    k = lowbitc.compile(src)
    x = np.random.default_rng(n).standard_normal((6, n)).astype(np.float32)
    y = np.zeros(6, np.float32)
    k(x, y)
    assert np.allclose(y, x.sum(axis=1, dtype=np.float64), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n", [32, 128])
def test_offset_replica_keeps_what_the_kernel_reads(n):
    """Offsets read group-major (OFF, GM) where the row tiles do not divide N, tile-major
    beside the scales (TM) where they do; a replica copies what the kernel reads."""
    rng = np.random.default_rng(0)
    base = lowbitc.quantize(rng.standard_normal((n, 64)).astype(np.float32), "u4", 32)
    qw = OffsetQTensor(base.dtype, base.shape, 32, base.codes, base.scales,
                       offsets=rng.uniform(-1, 1, (n, 2)).astype(np.float32))
    x = rng.standard_normal((1, 64)).astype(np.float32)
    y = ops.matmul(x, qw)  # packs the codes and makes the group-major copies
    k = ops._PLANS[("matmul", "llvm", qw.dtype, "f32", False, 32, 1, n, 64, "f32", True)]
    tm = n % k.params["BN"] == 0
    assert k.params["GM"] and k.params["OFF"] and k.params["TM"] == tm
    twin = qw.replica()
    packed = qw.base.__dict__["_repacked"]
    assert packed and twin.base.__dict__["_repacked"].keys() == packed.keys()
    if tm:
        (bn, sz), = qw.__dict__["_tile_offsets"].items()
        assert twin.tile_scales(bn) is not sz and np.array_equal(twin.tile_scales(bn), sz)
    else:
        assert twin.by_group is not qw.by_group and np.array_equal(twin.by_group, qw.by_group)
    assert twin.base.scales is twin.scales
    assert np.array_equal(ops.matmul(x, twin), y)
    ref = x.astype(np.float64) @ qw.dequantize().T.astype(np.float64)
    assert np.allclose(y, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("gm", [False, True])
def test_scales_of_the_wrong_shape_name_s(gm):
    """The shipped kernel declares s as [G, N] under GM and [N, G] otherwise, so an array of
    the other orientation is refused before native code runs (not read as zeros)."""
    rng = np.random.default_rng(5)
    qw = lowbitc.quantize(rng.standard_normal((48, 96)).astype(np.float32), "u4", 32)
    x = rng.standard_normal((1, 96)).astype(np.float32)
    kern = get_kernel("matmul", "llvm", W="u4", BM=1, GM=gm)
    s = qw.group_major[0] if gm else qw.scales
    z, y = np.zeros((1, 1), np.float32), np.empty((1, 48), np.float32)
    kern(x, weight_storage(qw, kern), s, z, y, 32, K=96)
    assert np.allclose(y, x @ qw.dequantize().T, rtol=1e-5, atol=1e-5)
    with pytest.raises(lowbitc.errors.UserArgumentError, match="'s'"):
        kern(x, weight_storage(qw, kern), np.ascontiguousarray(s.T), z, y, 32, K=96)


@pytest.mark.parametrize("fmt,group,zp", [("i4", 32, False), ("u4", 128, True)])
def test_quantlinear_gemv_reads_scales_group_major(fmt, group, zp):
    """QuantLinear's eager M = 1 call takes the kernel ops.matmul takes (GM), bit for bit."""
    torch = pytest.importorskip("torch")
    from lowbitc.torch import QuantLinear

    torch.manual_seed(0)
    lin = torch.nn.Linear(200, 77)
    q = QuantLinear.from_linear(lin, fmt, group, zero_point=zp)
    x = torch.randn(1, 200)
    with torch.no_grad():
        y = q(x)
    (plan,) = q._matmul()._plans.values()
    assert plan[2].params.get("GM") and plan[3].shape == (-(-200 // group), 77)
    want = ops.matmul(x.numpy(), q.qweight) + lin.bias.detach().numpy()
    assert np.array_equal(y.numpy(), want)
