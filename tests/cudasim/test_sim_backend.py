"""The numba-cuda backend in Numba's CUDA simulator: ops.dequantize / ops.matmul for every
format family (odd shapes, partial groups, zero points) and DSL kernels, against
QTensor.dequantize() and the numpy interpreter.

Run only in a process with NUMBA_ENABLE_CUDASIM=1 (tests/test_cuda_backend.py starts one).
"""

import os

import numpy as np
import pytest
from numba import cuda

import lowbitc
from lowbitc import ops
from lowbitc.quant import quantize

pytestmark = pytest.mark.cudasim
assert os.environ.get("NUMBA_ENABLE_CUDASIM") == "1", "run through tests/test_cuda_backend.py"

BOOK = lowbitc.codebook([-1.5, -0.5, 0.0, 0.25, 0.5, 1.0, 2.0, 3.0], name="simbook")
# (format, N, K, group, zero points): K never a multiple of the tiles; K % group != 0
DEQUANT = [
    ("u1", 9, 70, 32, False), ("u2", 5, 45, 16, True), ("u3", 7, 45, 16, True),
    ("u4", 11, 50, 16, True), ("u5", 5, 45, 32, True), ("u6", 6, 40, 16, False),
    ("u7", 5, 45, 16, True), ("u8", 4, 37, 16, True), ("i3", 5, 45, 16, False),
    ("i8", 3, 33, 16, False), ("b1", 4, 40, 16, False), ("b5", 5, 45, 32, False),
    ("f4e2m1fn", 9, 45, 16, False), ("f6e3m2fn", 5, 45, 32, False),
    ("f5e2m2", 5, 45, 16, False), ("f7e3m3", 5, 40, 16, False),
    ("f8e4m3fn", 5, 45, 16, False), ("f8e5m2", 5, 45, 16, False),
    ("f8e8m0fnu", 4, 64, 32, False), ("nf4", 7, 45, 16, False), ("simbook", 5, 45, 16, False),
]
MATMUL = [
    ("u4", 3, 9, 45, 16, True), ("u3", 5, 7, 40, 16, False), ("i5", 1, 6, 45, 32, False),
    ("b1", 2, 5, 33, 16, False), ("f4e2m1fn", 6, 9, 45, 16, False),
    ("f6e3m2fn", 2, 5, 45, 32, False), ("f8e5m2", 3, 4, 37, 16, False),
    ("f8e8m0fnu", 2, 3, 64, 32, False), ("nf4", 2, 6, 45, 16, False),
    ("simbook", 1, 4, 40, 16, False), ("u8", 2, 5, 33, 16, True),
]


def _qw(name, n, k, group, zp, seed=0):
    w = np.random.default_rng(seed).standard_normal((n, k)).astype(np.float32)
    return quantize(w, BOOK if name == "simbook" else name, group, zero_point=zp)


def _same_bits(got, want):
    return np.array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("name,n,k,group,zp", DEQUANT)
def test_dequantize_is_bit_exact(name, n, k, group, zp):
    qw = _qw(name, n, k, group, zp)
    got = ops.dequantize(qw, backend="cuda")
    assert _same_bits(got, qw.dequantize()), name


@pytest.mark.parametrize("name,m,n,k_,group,zp", MATMUL)
def test_matmul_matches_reference_and_interpreter(name, m, n, k_, group, zp):
    qw = _qw(name, n, k_, group, zp, seed=1)
    x = np.random.default_rng(2).standard_normal((m, k_)).astype(np.float32)
    y = ops.matmul(x, qw, backend="cuda")
    ref = x.astype(np.float64) @ qw.dequantize().astype(np.float64).T
    assert y.shape == (m, n) and y.dtype == np.float32
    assert np.abs(y - ref).max() / max(np.abs(ref).max(), 1e-30) < 2e-5, name
    k = ops.get_kernel("matmul", "cuda", **ops.matmul_params(m, qw, "f32"))
    interp = np.zeros((m, n), np.float32)
    zeros = qw.zeros if zp else np.zeros((1, 1), np.float32)
    k.interpret(x, ops.weight_storage(qw), qw.scales, zeros, interp, group, K=k_)
    # the interpreter accumulates dot products in f64, the GPU in f32
    assert np.abs(y - interp).max() / max(np.abs(interp).max(), 1e-30) < 2e-5, name


def test_matmul_f16_activations_and_interpreter():
    qw = _qw("u4", 6, 40, 16, True, seed=3)
    x = np.random.default_rng(4).standard_normal((3, 40)).astype(np.float16)
    params = ops.matmul_params(3, qw, "f16")
    k = ops.get_kernel("matmul", "cuda", **params)
    y = np.zeros((3, 6), np.float32)
    want = np.zeros((3, 6), np.float32)
    args = (x, ops.weight_storage(qw), qw.scales, qw.zeros, None, 16)
    k(*args[:4], y, 16, K=40)
    k.interpret(*args[:4], want, 16, K=40)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)


def test_device_arrays_in_and_out():
    from numba import cuda

    qw = _qw("u3", 5, 45, 16, False)
    k = ops.get_kernel("dequantize", "cuda", W=qw.dtype, ZP=False)
    out = cuda.device_array((5, 45), np.float32)
    k(cuda.to_device(qw.packed), cuda.to_device(qw.scales),
      cuda.to_device(np.zeros((1, 1), np.float32)), out, 16, K=45)
    assert _same_bits(out.copy_to_host(), qw.dequantize())


def test_device_array_arguments_are_checked():
    from numba import cuda

    from lowbitc.errors import UserArgumentError

    qw = _qw("u4", 4, 32, 16, False)
    k = ops.get_kernel("dequantize", "cuda", W=qw.dtype, ZP=False)
    out = cuda.device_array((4, 32), np.float64)
    with pytest.raises(UserArgumentError, match="'y'.*float32"):
        k(cuda.to_device(qw.packed), cuda.to_device(qw.scales),
          cuda.to_device(np.zeros((1, 1), np.float32)), out, 16, K=32)


KERNELS = """
kernel mixed(x: f32[R, C], y: f32[R, C], t: f32[C, R], m: f32[R], c: i32[R, C], lim: f32) {
  a = load(x[0 :+ 8, 0 :+ 8])
  b = where(a > lim, exp(a), a * 2.0 - 1.0)
  total = 0.0
  n = 0
  for i in range(0, 3) {
    total = total + sum(sum(b, axis=1), axis=0)
    n = n + 2
  }
  if n > 5 { b = b + total } else { b = b - total }
  store(y[0 :+ 8, 0 :+ 8], b)
  store(t[0 :+ 8, 0 :+ 8], transpose(a))
  store(m[0 :+ 8], max(a, axis=1))
  store(c[0 :+ 8, 0 :+ 8], cast(a * 4.0, i32) / 3 + (cast(a, i32) << 2))
}
"""


def test_dsl_kernel_matches_interpreter():
    k = lowbitc.compile(KERNELS, backend="cuda")
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 7)).astype(np.float32)  # smaller than the 8x8 tile: masked
    outs = [np.zeros((6, 7), np.float32), np.zeros((7, 6), np.float32),
            np.zeros(6, np.float32), np.zeros((6, 7), np.int32)]
    want = [o.copy() for o in outs]
    k(x, *outs, 0.25)
    k.interpret(x, *want, 0.25)
    for got, ref in zip(outs, want, strict=True):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


LOOPS = """
kernel swap(x: f32[N], y: f32[N], z: f32[N]) {
  a = load(x[0 :+ 16])
  b = a * 0.5
  for i in range(0, 3) {
    t = b
    b = reverse_free(a)
    a = t + 1.0
  }
  store(y[0 :+ 16], a)
  store(z[0 :+ 16], b)
}
"""


def test_loop_carried_swap_is_staged():
    src = LOOPS.replace("reverse_free(a)", "a")
    k = lowbitc.compile(src, backend="cuda")
    x = np.arange(16, dtype=np.float32)
    got = [np.zeros(16, np.float32), np.zeros(16, np.float32)]
    want = [np.zeros(16, np.float32), np.zeros(16, np.float32)]
    k(x, *got)
    k.interpret(x, *want)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


DOT = """
kernel mm(a: f32[M, K], b: f32[K, N], y: f32[M, N]) grid (cdiv(M, MB), cdiv(N, NB)) {
  acc = zeros(f32, [MB, NB])
  for k in range(0, K, 16) {
    acc = dot(load(a[block.x * MB :+ MB, k :+ 16]), load(b[k :+ 16, block.y * NB :+ NB]), acc)
  }
  store(y[block.x * MB :+ MB, block.y * NB :+ NB], acc)
}
"""


# (16 threads) rows share a column / columns share a row / K split 4 ways / per element
@pytest.mark.parametrize("mb,nb", [(8, 8), (8, 32), (1, 4), (8, 12)])
def test_dot_register_tiles_match_interpreter(mb, nb):
    k = lowbitc.compile(DOT.replace("MB", str(mb)).replace("NB", str(nb)), backend="cuda")
    rng = np.random.default_rng(nb + mb)
    a = rng.standard_normal((11, 37)).astype(np.float32)
    b = rng.standard_normal((37, 29)).astype(np.float32)
    y, want = np.zeros((11, 29), np.float32), np.zeros((11, 29), np.float32)
    k(a, b, y)
    k.interpret(a, b, want)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)


BF16_KERNEL = """kernel bfk(x: bf16[N], z: f32[N], y: bf16[N], s: f32[N]) threads 32 {
  a = cast(load(x[0 :+ 64]), f32)
  b = cast(cast(load(z[0 :+ 64]), bf16), f32)
  c = cast(a * b + a, bf16)
  store(y[0 :+ 64], c)
  store(s[0 :+ 64], cast(c, f32) * 0.5 + a)
}
"""


@pytest.mark.filterwarnings("ignore:overflow encountered")  # (the simulator's x * z -> inf)
def test_bf16_tiles_match_the_interpreter_bit_for_bit():
    """bf16 values on the GPU (carried as their bits): loads from bfloat16 arrays, casts to
    f32 and back (round to nearest even: ties, subnormals, huge values that overflow to inf),
    stores of bf16 bits; the same bits as the interpreter."""
    import ml_dtypes

    from lowbitc.compiler import compile as compile_kernel

    rng = np.random.default_rng(0)
    x = (rng.standard_normal(64) * 2.0 ** rng.integers(-130, 120, 64)).astype(ml_dtypes.bfloat16)
    z = (rng.standard_normal(64) * 2.0 ** rng.integers(-20, 20, 64)).astype(np.float32)
    z[:4] = [1.00390625, 1.01171875, 3e38, -1e-40]  # ties to even (down, up), overflow, tiny
    got = {"y": np.zeros(64, ml_dtypes.bfloat16), "s": np.zeros(64, np.float32)}
    want = {"y": np.zeros(64, ml_dtypes.bfloat16), "s": np.zeros(64, np.float32)}
    k = compile_kernel(BF16_KERNEL, backend="cuda")
    with np.errstate(all="ignore"):
        k(x, z, got["y"], got["s"])
        k.interpret(x, z, want["y"], want["s"])
    assert np.array_equal(got["y"].view(np.uint16), want["y"].view(np.uint16))
    assert np.array_equal(got["s"].view(np.uint32), want["s"].view(np.uint32))


def test_simulator_atomics_share_one_lock():
    """The simulator's atomics of every kind exclude each other (intrinsics.one_atomic_lock):
    a code's and_ (clear) and a neighbour's or_ (set) on one word lose no update, and threads
    setting their own bits of shared words with that pair leave every bit set."""
    from numba.cuda.simulator import kernelapi

    from lowbitc.backends.numba_cuda.intrinsics import ATOMIC_LOCKS

    assert len({id(getattr(kernelapi, n)) for n in ATOMIC_LOCKS}) == 1

    @cuda.jit
    def set_bits(words):
        t = cuda.threadIdx.x
        for _ in range(50):
            cuda.atomic.and_(words, t % 2, np.uint32(~(np.uint32(1) << np.uint32(t // 2))))
            cuda.atomic.or_(words, t % 2, np.uint32(1) << np.uint32(t // 2))

    words = np.zeros(2, np.uint32)
    set_bits[1, 64](words)
    assert list(words) == [0xFFFFFFFF, 0xFFFFFFFF]
