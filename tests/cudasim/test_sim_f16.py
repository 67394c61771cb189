"""The f16 store path of the numba-cuda backend (halves.py) in Numba's CUDA simulator:
ops.dequantize(out_dtype=float16) for every format family against QTensor.dequantize(), the
fast path alone (fallbacks cut) against the whole kernel, and interleaved device arrays.

Run only in a process with NUMBA_ENABLE_CUDASIM=1 (tests/test_cuda_halves.py starts one).
"""

import copy
import os

import numpy as np
import pytest
from numba import cuda

import lowbitc
from lowbitc import ops
from lowbitc.backends.numba_cuda import flat, toolchain
from lowbitc.backends.numba_cuda.backend import BACKEND
from lowbitc.backends.numba_cuda.halves import steady_state
from lowbitc.quant import quantize

pytestmark = pytest.mark.cudasim
assert os.environ.get("NUMBA_ENABLE_CUDASIM") == "1", "run through tests/test_cuda_halves.py"

BOOK = lowbitc.codebook([-1.5, -0.5, 0.0, 0.25, 0.5, 1.0, 2.0, 3.0], name="simbook16")
# (format, N, K, group, zero points): full 128-column chunks plus partial groups and odd K
CASES = [
    ("u1", 3, 256, 128, False),
    ("u2", 3, 300, 128, True),
    ("u3", 3, 256, 128, True),
    ("u4", 5, 384, 128, True),
    ("u4", 4, 256, 128, False),
    ("u5", 3, 256, 128, False),
    ("u6", 3, 256, 128, True),
    ("u7", 3, 256, 128, False),
    ("u8", 3, 260, 128, True),
    ("i3", 3, 256, 128, False),
    ("i4", 3, 256, 128, False),
    ("i8", 3, 256, 128, False),
    ("b1", 3, 256, 128, False),
    ("b4", 3, 256, 128, False),
    ("b5", 2, 256, 128, False),
    ("f4e2m1fn", 3, 256, 128, False),
    ("nf4", 3, 256, 64, False),
    ("simbook16", 3, 256, 128, False),
    ("f8e5m2", 3, 256, 128, False),
    ("f8e4m3fn", 2, 256, 128, False),
    ("f6e3m2fn", 2, 256, 128, False),
    ("f8e8m0fnu", 2, 128, 32, False),
    ("u4", 3, 45, 16, True),
]


def _qw(name, n, k, group, zp, seed=0, amp=1.0):
    w = (np.random.default_rng(seed).standard_normal((n, k)) * amp).astype(np.float32)
    return quantize(w, BOOK if name == "simbook16" else name, group, zero_point=zp)


def _tolerance(qw, ref):
    """docs/cuda.md's bound: 2^-10 (|s v| + |z s|) plus half an f16 ulp of the result."""
    g = qw.group_size
    k = ref.shape[1]
    s = np.abs(np.repeat(qw.scales, g, axis=1)[:, :k]).astype(np.float64)
    z = 0.0 if qw.zeros is None else np.abs(np.repeat(qw.zeros, g, axis=1)[:, :k]) * s
    with np.errstate(over="ignore"):
        ulp = np.spacing(np.abs(ref).astype(np.float16)).astype(np.float64)
    return 2.0**-10 * (np.abs(ref) + z) + ulp / 2


def _check(got, qw):
    ref = qw.dequantize().astype(np.float64)
    assert got.dtype == np.float16 and got.shape == ref.shape
    err = np.abs(got.astype(np.float64) - ref)
    with np.errstate(over="ignore"):
        big = np.abs(ref) > 65504  # overflows f16 either way
    ok = (err <= _tolerance(qw, ref)) | (np.isnan(ref) & np.isnan(got)) | big
    assert ok.all(), (float(err.max()), np.argwhere(~ok)[:5])


@pytest.mark.parametrize("name,n,k,group,zp", CASES)
def test_f16_dequantize_within_bound(name, n, k, group, zp):
    qw = _qw(name, n, k, group, zp)
    _check(ops.dequantize(qw, backend="cuda", out_dtype=np.float16), qw)


@pytest.mark.parametrize(
    "name,zp",
    [
        ("u4", True),
        ("u3", False),
        ("i4", False),
        ("b4", False),
        ("u8", False),
        ("f8e5m2", False),
        ("nf4", False),
    ],
)
def test_fast_path_alone_matches_whole_kernel(name, zp):
    """Full chunks only: the kernel with every fallback cut must give the same f16 bits."""
    # f8e5m2's scales are below f16's normal range (its own range is 2^16) unless the weights
    # are large: such units take the f32 fallback
    qw = _qw(name, 3, 256, 128, zp, seed=1, amp=2.0**16 if name == "f8e5m2" else 1.0)
    whole = ops.dequantize(qw, backend="cuda", out_dtype=np.float16)
    k = ops.get_kernel("dequantize", "cuda", W=qw.dtype, ZP=zp, O="f16", BN=8)
    fast = toolchain.load_source(steady_state(k.text("python")), BACKEND.rendered(k.lowered).name)
    fast_exe = copy.copy(k._exe)  # same argument handling and grid, fallbacks cut
    fast_exe.kernel = cuda.jit(fast)
    y = np.full(whole.shape, np.nan, np.float16)
    zeros = qw.zeros if zp else np.zeros((1, 1), np.float32)
    fast_exe(ops.weight_storage(qw), qw.scales, zeros, y, 128, K=qw.shape[1])
    np.testing.assert_array_equal(y.view(np.uint16), whole.view(np.uint16))


def test_interleaved_device_array_argument():
    qw = _qw("u4", 4, 256, 128, True, seed=2)
    k = ops.get_kernel("dequantize", "cuda", W=qw.dtype, ZP=True, O="f16")
    assert k._exe.interleaved == {"w": 4}
    y = np.zeros(qw.shape, np.float16)
    k(cuda.to_device(ops.weight_storage(qw)), qw.scales, qw.zeros, y, 128, K=256)
    _check(y, qw)


def test_f32_contract_unchanged_for_interleaved_formats():
    qw = _qw("i4", 3, 200, 64, False, seed=3)
    got = ops.dequantize(qw, backend="cuda")
    assert np.array_equal(got.view(np.uint32), qw.dequantize().view(np.uint32))


def test_units_past_32_bit_offsets_take_the_64_bit_path(monkeypatch):
    """Tensors of 2^32 elements or more fail the block-uniform precondition (flat.py) and
    every unit goes element by element: here the limit is lowered to 512 elements."""
    monkeypatch.setattr(flat, "LIMIT", 512)
    qw = _qw("u4", 3, 256, 128, True, seed=4)
    k = ops.get_kernel("dequantize", "cuda", W=qw.dtype, ZP=True, O="f16", BN=32)
    assert " < 512 and " in k.text("python")
    y = np.zeros(qw.shape, np.float16)
    k(ops.weight_storage(qw), qw.scales, qw.zeros, y, 128, K=256)
    _check(y, qw)
