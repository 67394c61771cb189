"""OffsetQTensor (w[n, perm[k]] = (decode(q) - z) * s - o): exact dequantization through the
kernels, matmul within float32 summation tolerance, partial groups, bad arguments."""

import numpy as np
import pytest

from lowbitc import ops
from lowbitc.dtypes import dtype
from lowbitc.errors import UserArgumentError
from lowbitc.offset import OffsetQTensor


def make(n=37, k=200, group=32, zeros=False, perm=True, seed=0):
    rng = np.random.default_rng(seed)
    g = -(-k // group)
    return OffsetQTensor(
        dtype("u4"), (n, k), group, rng.integers(0, 16, (n, k)).astype(np.uint8),
        rng.uniform(0.01, 0.1, (n, g)).astype(np.float32),
        rng.uniform(0, 8, (n, g)).astype(np.float32) if zeros else None,
        offsets=rng.uniform(-0.5, 0.5, (n, g)).astype(np.float32),
        perm=rng.permutation(k).astype(np.int64) if perm else None)


def formula(qw: OffsetQTensor) -> np.ndarray:
    k = qw.shape[1]
    rep = lambda a: np.repeat(a, qw.group_size, axis=1)[:, :k]  # noqa: E731
    v = qw.codes.astype(np.float32)
    if qw.zeros is not None:
        v = v - rep(qw.zeros)
    w = v * rep(qw.scales) - rep(qw.offsets)
    out = np.empty_like(w)
    out[:, qw.perm if qw.perm is not None else np.arange(k)] = w
    return out


@pytest.mark.parametrize("zeros", [False, True])
@pytest.mark.parametrize("perm", [False, True])
def test_dequantize_exact_and_matmul_close(zeros, perm):
    qw = make(zeros=zeros, perm=perm)
    want = formula(qw)
    assert np.array_equal(qw.dequantize(), want)
    assert np.array_equal(ops.dequantize(qw), want)
    assert np.array_equal(ops.dequantize(qw, out_dtype=np.float16), want.astype(np.float16))
    for m in (1, 3, 20):  # GEMV, small M, the GEMM path
        x = np.random.default_rng(m).standard_normal((m, 200)).astype(np.float32)
        ref = x.astype(np.float64) @ want.T.astype(np.float64)
        tol = 1e-5 * (np.abs(x) @ np.abs(want).T + np.abs(x) @ np.repeat(
            np.abs(qw.offsets), 32, 1)[:, :200].T) + 1e-6
        assert np.all(np.abs(ops.matmul(x, qw) - ref) <= tol)


def test_bad_offsets_and_perm():
    qw = make()
    with pytest.raises(UserArgumentError, match="offsets: expected float32"):
        OffsetQTensor(qw.dtype, qw.shape, 32, qw.codes, qw.scales,
                      offsets=np.zeros((37, 3), np.float32))
    with pytest.raises(UserArgumentError, match=r"perm: expected a permutation of range\(200\)"):
        OffsetQTensor(qw.dtype, qw.shape, 32, qw.codes, qw.scales,
                      perm=np.zeros(200, np.int64))


def test_bad_out_dtype_named():
    with pytest.raises(UserArgumentError, match="out_dtype: expected float32 or float16"):
        ops.dequantize(make(), out_dtype=np.int32)


def test_replica_keeps_offsets_and_order():
    qw = make(zeros=True)
    twin = qw.replica()
    assert isinstance(twin, OffsetQTensor) and twin.offsets is not qw.offsets
    assert np.array_equal(twin.dequantize(), qw.dequantize())
    x = np.ones((1, 200), np.float32)
    assert np.allclose(ops.matmul(x, twin), ops.matmul(x, qw), rtol=1e-6, atol=1e-6)


def test_gemv_reads_scales_and_offsets_tile_major():
    """A GEMV over whole row tiles reads the scales and offsets as one tile-major stream
    (matmul TM with OFF), cached on the tensor and copied by replica; results as the formula."""
    qw = make(n=128, k=256, perm=False)
    x = np.random.default_rng(1).standard_normal((1, 256)).astype(np.float32)
    want = formula(qw)
    ref = x.astype(np.float64) @ want.T.astype(np.float64)
    tol = 1e-5 * (np.abs(x) @ np.abs(want).T + np.abs(x) @ np.repeat(
        np.abs(qw.offsets), 32, 1).T) + 1e-6
    ops._PLANS.clear()
    y = ops.matmul(x, qw)
    assert np.all(np.abs(y - ref) <= tol)
    (k,) = [k for key, k in ops._PLANS.items() if key[0] == "matmul" and key[6] == 1]
    assert k.params["TM"] and k.params["OFF"]
    bn = k.params["BN"]
    sz = qw.tile_scales(bn)
    assert sz.shape == (128 // bn, 8, 2 * bn)
    assert np.array_equal(sz[1, 3, :bn], qw.scales[bn:2 * bn, 3])
    assert np.array_equal(sz[1, 3, bn:], qw.offsets[bn:2 * bn, 3])
    twin = qw.replica()
    assert np.array_equal(twin.tile_scales(bn), sz) and twin.tile_scales(bn) is not sz
    twin.offsets[:] = 0  # a replica's arrays are its own: the original's results stand
    assert np.array_equal(ops.matmul(x, qw), y)
