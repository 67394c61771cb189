"""Tile-major scales and zero points on the CPU GEMV path (matmul TM, docs/performance.md):
lowbitc.a8.tile_major's [N / BN, G, P * BN] (scales, then zero points) viewed as [P * G, N],
so a program reads them as one sequential stream; the same operations in the same order as
the group-major reads (GM)."""

import numpy as np
import pytest

import lowbitc
from lowbitc import a8, ops
from lowbitc.ops import get_kernel, matmul_choice, weight_storage

_NONE = np.zeros((1, 1), np.float32)


def _run(qw, x, tm: bool) -> tuple[np.ndarray, dict]:
    m, (n, k) = x.shape[0], qw.shape
    _, params = matmul_choice(m, n, k, qw, "f32", "llvm")
    kern = get_kernel("matmul", "llvm", **{**params, "GM": True, "TM": tm})
    if tm:  # scales and zero points in one array; z is not read
        s, z = a8.tile_scales(qw, params["BN"]).reshape(-1, n), None
    else:
        s, z = qw.group_major
    y = np.empty((m, n), np.float32)
    kern(x, weight_storage(qw, kern), s, z if z is not None else _NONE, y,
         qw.group_size, K=k)
    return y, kern.params


# u2 and u3 take the planes packing (256 rows a block), the others the rows packing (64)
@pytest.mark.parametrize("fmt,n,k,group,zp", [
    ("u4", 128, 200, 128, True),  # a partial last group, K not a multiple of the window
    ("i4", 128, 96, 32, False),
    ("f4e2m1fn", 128, 160, 32, False),
    ("u2", 512, 200, 64, True),
    ("u3", 512, 128, 128, False),
])
@pytest.mark.parametrize("m", [1, 3])
def test_tile_major_gemv_equals_group_major(fmt, n, k, group, zp, m):
    rng = np.random.default_rng(m + n)
    w = rng.standard_normal((n, k)).astype(np.float32)
    qw = lowbitc.quantize(w, fmt, group, zero_point=zp)
    x = rng.standard_normal((m, k)).astype(np.float32)
    got, params = _run(qw, x, True)
    assert n % params["BN"] == 0 and n // params["BN"] > 1  # several tiles
    assert np.array_equal(got, _run(qw, x, False)[0])  # the same operations, the same order
    assert np.array_equal(ops.matmul(x, qw), got)  # what ops.matmul runs
    ref = x.astype(np.float64) @ qw.dequantize().T.astype(np.float64)
    assert np.allclose(got, ref, rtol=1e-4, atol=1e-4)


def _kernel_of(qw, m: int = 1):
    """The kernel ops.matmul ran last for qw's shape (its plan)."""
    x = np.ones((m, qw.shape[1]), np.float32)
    ops.matmul(x, qw)
    return ops._PLANS[("matmul", "llvm", qw.dtype, "f32", qw.zeros is not None,
                       qw.group_size, m, *qw.shape, "f32", False)]


def test_ops_takes_tile_major_where_the_tiles_divide_n():
    """Tile-major where BN divides N and the tile is at most TILE_MAJOR_BN rows."""
    rng = np.random.default_rng(1)
    whole = lowbitc.quantize(rng.standard_normal((192, 64)).astype(np.float32), "u4", 32,
                             zero_point=True)
    ragged = lowbitc.quantize(rng.standard_normal((77, 64)).astype(np.float32), "u4", 32,
                              zero_point=True)
    assert _kernel_of(whole).params["TM"]
    assert not _kernel_of(ragged).params["TM"] and _kernel_of(ragged).params["GM"]
    assert not _kernel_of(whole, 16).params.get("TM")  # the GEMM path reads [N, G]
    planes = lowbitc.quantize(rng.standard_normal((512, 64)).astype(np.float32), "u2", 32,
                              zero_point=True)
    assert _kernel_of(planes).params["BN"] == ops.planes_bn() <= ops.TILE_MAJOR_BN
    assert _kernel_of(planes).params["TM"]  # the planes packing's 256-row tiles too
    for qw in (whole, ragged, planes):
        x = rng.standard_normal((1, 64)).astype(np.float32)
        ref = x.astype(np.float64) @ qw.dequantize().T.astype(np.float64)
        assert np.allclose(ops.matmul(x, qw), ref, rtol=1e-4, atol=1e-4)


def test_tile_major_view_and_its_inverse():
    """In the [P * G, N] view, tile t's run for group g starts at flat index
    (t * G + g) * P * BN: its BN scales, then its BN zero points; a8.from_tile_major inverts."""
    rng = np.random.default_rng(2)
    qw = lowbitc.quantize(rng.standard_normal((96, 100)).astype(np.float32), "u4", 32,
                          zero_point=True)
    n, g, bn = 96, 4, 32
    sz = a8.tile_scales(qw, bn)
    flat = sz.reshape(-1, n).ravel()
    for t in range(n // bn):
        for j in range(g):
            at = (t * g + j) * 2 * bn
            assert np.array_equal(flat[at:at + bn], qw.scales[t * bn:(t + 1) * bn, j])
            assert np.array_equal(flat[at + bn:at + 2 * bn], qw.zeros[t * bn:(t + 1) * bn, j])
    s, z = a8.from_tile_major(sz, n, True)
    assert np.array_equal(s, qw.scales) and np.array_equal(z, qw.zeros)


def test_tile_major_cached_and_replicated():
    rng = np.random.default_rng(3)
    qw = lowbitc.quantize(rng.standard_normal((128, 64)).astype(np.float32), "u4", 32,
                          zero_point=True)
    x = rng.standard_normal((1, 64)).astype(np.float32)
    y = ops.matmul(x, qw)
    bn = _kernel_of(qw).params["BN"]
    sz = qw.__dict__["_tile_major"][bn]
    assert a8.tile_scales(qw, bn) is sz  # made once per tile width
    twin = qw.replica()
    tsz = twin.__dict__["_tile_major"][bn]
    assert tsz is not sz and np.array_equal(tsz, sz)
    assert np.array_equal(ops.matmul(x, twin), y)


def test_tile_major_scales_of_the_wrong_orientation_name_s():
    """Under TM the kernel still declares s as [G, N]: an [N, G] array is refused."""
    rng = np.random.default_rng(5)
    qw = lowbitc.quantize(rng.standard_normal((128, 96)).astype(np.float32), "u4", 32)
    x = rng.standard_normal((1, 96)).astype(np.float32)
    kern = get_kernel("matmul", "llvm", W="u4", BM=1, BN=64, GM=True, TM=True)
    s = a8.tile_scales(qw, 64).reshape(3, 128)
    y = np.empty((1, 128), np.float32)
    kern(x, weight_storage(qw, kern), s, _NONE, y, 32, K=96)
    assert np.allclose(y, x @ qw.dequantize().T, rtol=1e-5, atol=1e-5)
    with pytest.raises(lowbitc.errors.UserArgumentError, match="'s'"):
        kern(x, weight_storage(qw, kern), np.ascontiguousarray(s.T), _NONE, y, 32, K=96)
