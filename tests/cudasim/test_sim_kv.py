"""The KV cache's kernels (kv_quantize.lbk, attention.lbk) on the numba-cuda backend, run in
Numba's CUDA simulator: the cache quantized on the GPU holds the same codes as on the CPU, and
decode attention matches fp64 SDPA over the dequantized cache (small shapes).

Run only in a process with NUMBA_ENABLE_CUDASIM=1 (tests/test_cuda_kv.py starts one).
"""

import os

import numpy as np
import pytest

from lowbitc import ops
from lowbitc.kv import QuantKVCache

pytestmark = pytest.mark.cudasim
assert os.environ.get("NUMBA_ENABLE_CUDASIM") == "1", "run through tests/test_cuda_kv.py"

RNG = np.random.default_rng(5)


def _sdpa(q, k, v):
    qh = q.shape[0] // k.shape[1]
    k, v = (np.repeat(x.astype(np.float64), qh, axis=1) for x in (k, v))
    s = np.einsum("hd,thd->ht", q, k) / np.sqrt(q.shape[1])
    p = np.exp(s - s.max(axis=1, keepdims=True))
    return np.einsum("ht,thd->hd", p / p.sum(axis=1, keepdims=True), v)


@pytest.mark.parametrize("fk, fv, group_v, extra", [
    ("u4", "u4", 16, {}), ("u2", "f8e4m3fn", 32, {}),
    ("u2", "u2", 16, {"important_dtype_k": "u8", "important_dtype_v": "u4"})])
def test_cache_and_attention_on_the_gpu(fk, fv, group_v, extra):
    k, v = RNG.standard_normal((2, 27, 2, 32)).astype(np.float32)
    caches = [QuantKVCache(num_heads=2, head_dim=32, dtype_k=fk, dtype_v=fv, group=8,
                           group_v=group_v, residual=4, backend=b, **extra)
              for b in ("cuda", "llvm")]
    for c in caches:
        c.append(k[:25], v[:25])
        c.append(k[25:], v[25:])
    gpu, cpu = caches
    for a, b in zip(gpu.dequantize(), cpu.dequantize()):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    q = RNG.standard_normal((4, 32)).astype(np.float32)
    kd, vd = gpu.dequantize()
    np.testing.assert_allclose(ops.attention_decode(q, gpu), _sdpa(q, kd, vd), atol=2e-5)


def test_a_batch_of_sequences_of_different_lengths_on_the_gpu():
    """One attention_decode over caches of 1, 17 and 40 tokens (GQA 4:2) on the CUDA
    backend: each sequence's output is SDPA over its own dequantized cache."""
    caches = []
    for n in (1, 17, 40):
        c = QuantKVCache(num_heads=2, head_dim=32, dtype_k="u4", dtype_v="u2", group=8,
                         group_v=16, residual=4, backend="cuda")
        k, v = RNG.standard_normal((2, n, 2, 32)).astype(np.float32)
        c.append(k, v)
        caches.append(c)
    q = RNG.standard_normal((3, 4, 32)).astype(np.float32)
    got = ops.attention_decode(q, caches)
    for b, c in enumerate(caches):
        kd, vd = c.dequantize()
        np.testing.assert_allclose(got[b], _sdpa(q[b], kd, vd), atol=2e-5)


def test_the_torch_op_runs_cuda_tensors_on_the_cuda_backend(monkeypatch):
    """torch.ops.lowbitc.attention_decode has a CUDA kernel, and it launches the cache's
    kernels on the CUDA backend (called directly: this torch has no CUDA tensors)."""
    torch = pytest.importorskip("torch")
    import lowbitc.kv.attention as kv_attention
    from lowbitc.torch import attention as torch_attention

    assert torch._C._dispatch_has_kernel_for_dispatch_key("lowbitc::attention_decode", "CUDA")
    k, v = RNG.standard_normal((2, 40, 2, 32)).astype(np.float32)
    cache = QuantKVCache(num_heads=2, head_dim=32, group=8, residual=4)  # an llvm cache
    cache.append(k, v)
    backends = []
    real = kv_attention.get_kernel
    monkeypatch.setattr(kv_attention, "get_kernel",
                        lambda *a, **kw: backends.append(a[1]) or real(*a, **kw))
    q = torch.from_numpy(RNG.standard_normal((4, 32)).astype(np.float32))
    cache_handle = torch_attention.cache_handle
    handle = cache_handle(cache)
    y = torch_attention._attention_decode_cuda(q, handle)
    assert backends and set(backends) == {"cuda"}
    np.testing.assert_allclose(y.numpy(), ops.attention_decode(q.numpy(), cache), atol=2e-5)
    # the batch op too (sequences of different lengths)
    assert torch._C._dispatch_has_kernel_for_dispatch_key("lowbitc::attention_decode_batch",
                                                          "CUDA")
    short = QuantKVCache(num_heads=2, head_dim=32, group=8, residual=4)
    short.append(k[:, :3], v[:, :3])
    backends.clear()
    qb = torch.from_numpy(RNG.standard_normal((2, 4, 32)).astype(np.float32))
    yb = torch_attention._attention_decode_batch_cuda(qb, [handle, cache_handle(short)])
    assert backends and set(backends) == {"cuda"}
    np.testing.assert_allclose(yb.numpy(), ops.attention_decode(qb.numpy(), [cache, short]),
                               atol=2e-5)
