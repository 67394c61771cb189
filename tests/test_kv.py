"""lowbitc.kv: QuantKVCache (quantize-on-append, KIVI layout, MiKV) and decode attention
(ops.attention_decode) against fp32 SDPA over the dequantized cache."""

from __future__ import annotations

import numpy as np
import pytest

import lowbitc
from lowbitc import ops
from lowbitc.errors import UserArgumentError
from lowbitc.kv import QuantKVCache
from lowbitc.signature import words_for

RNG = np.random.default_rng(19)


def sdpa(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    """fp64 reference: q [HQ, D] over k, v [T, H, D] (query head j reads head j // (HQ/H))."""
    qh = q.shape[0] // k.shape[1]
    k = np.repeat(k.astype(np.float64), qh, axis=1)
    v = np.repeat(v.astype(np.float64), qh, axis=1)
    s = np.einsum("hd,thd->ht", q.astype(np.float64), k) / np.sqrt(q.shape[1])
    p = np.exp(s - s.max(axis=1, keepdims=True))
    return np.einsum("ht,thd->hd", p / p.sum(axis=1, keepdims=True), v)


def tokens(t: int, h: int, d: int) -> np.ndarray:
    x = RNG.standard_normal((t, h, d)).astype(np.float32)
    x[:, :, 3] *= 8.0  # an outlier channel, as real keys have
    return x


def check_attention(cache: QuantKVCache, hq: int) -> None:
    q = RNG.standard_normal((hq, cache.head_dim)).astype(np.float32) * 2
    k, v = cache.dequantize()
    want = sdpa(q, k, v)
    got = ops.attention_decode(q, cache)
    assert got.shape == want.shape and got.dtype == np.float32
    # f32 summation order: |error| well under 1e-5 of the values' scale
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * max(1.0, np.abs(v).max()))


CASES = [("u2", "u2", {}), ("u4", "u4", {}), ("f8e4m3fn", "f8e4m3fn", {}),
         ("u2", "u2", {"important_dtype_k": "u8", "important_dtype_v": "f8e4m3fn"})]


@pytest.mark.parametrize("fk, fv, extra", CASES, ids=["u2", "u4", "f8e4m3fn", "mixed"])
@pytest.mark.parametrize("heads, kv_heads", [(1, 1), (8, 8), (8, 2)])
@pytest.mark.parametrize("length", [1, 17, 1000, 4097])
def test_attention_matches_sdpa_over_the_dequantized_cache(fk, fv, extra, heads, kv_heads,
                                                           length):
    d = 64
    cache = QuantKVCache(num_heads=kv_heads, head_dim=d, dtype_k=fk, dtype_v=fv, group=32,
                         residual=64, **extra)
    k, v = tokens(length, kv_heads, d), tokens(length, kv_heads, d)
    prompt = max(0, length - 3)
    cache.append(k[:prompt], v[:prompt])  # a prefill, then decode steps of one token
    for t in range(prompt, length):
        cache.append(k[t:t + 1], v[t:t + 1])
    assert len(cache) == length
    check_attention(cache, heads)
    if length > 100:  # the packed pages hold all but the window and a partial group
        assert sum(s.n for s in cache.stores) >= length - 64 - 31 - (31 if extra else 0)


def test_quantize_on_append_matches_a_numpy_kivi_reference():
    """Keys: per-channel min-max over groups of G tokens; values: per-token groups."""
    d, g = 32, 8
    cache = QuantKVCache(num_heads=3, head_dim=d, dtype_k="u3", dtype_v="u4", group=g,
                         group_v=16, residual=0)
    k, v = tokens(24, 3, d), tokens(24, 3, d)
    cache.append(k, v)
    assert [s.n for s in cache.stores] == [24]
    kd, vd = cache.dequantize()
    kg = k.reshape(3, g, 3, d)
    lo, hi = kg.min(axis=1, keepdims=True), kg.max(axis=1, keepdims=True)
    s = (hi - lo) / 7
    z = -lo / s
    want_k = ((np.clip(np.round(kg / s + z), 0, 7) - z) * s).reshape(24, 3, d)
    np.testing.assert_allclose(kd, want_k, atol=1e-5)
    vg = v.reshape(24, 3, 2, 16)
    lo, hi = vg.min(axis=3, keepdims=True), vg.max(axis=3, keepdims=True)
    s = (hi - lo) / 15
    z = -lo / s
    want_v = ((np.clip(np.round(vg / s + z), 0, 15) - z) * s).reshape(24, 3, d)
    np.testing.assert_allclose(vd, want_v, atol=1e-5)


@pytest.mark.parametrize("fk, fv", [("u1", "i3"), ("b2", "u5"), ("f6e3m2fn", "u7"),
                                    ("nf4", "f4e2m1fn"), ("u8", "i8"), ("i4", "f8e5m2")])
def test_any_format_for_keys_and_values(fk, fv):
    # values: one scale per token over all 32 channels (scales fold into the weights) for the
    # formats of even bit widths, groups of 16 channels for the others
    cache = QuantKVCache(num_heads=2, head_dim=32, dtype_k=fk, dtype_v=fv, group=16,
                         group_v=32 if lowbitc.dtype(fv).bits % 2 == 0 else 16, residual=16)
    k, v = tokens(70, 2, 32), tokens(70, 2, 32)
    cache.append(k, v)
    kd, vd = cache.dequantize()
    # the window is exact; quantized tokens are near (a few steps of the format)
    np.testing.assert_array_equal(kd[64:], k[64:])
    for x, xd, f in ((k, kd, fk), (v, vd, fv)):
        rel = np.abs(xd - x).mean() / np.abs(x).mean()
        assert rel < {1: 1.0, 2: 0.6, 3: 0.4}.get(lowbitc.dtype(f).bits, 0.25), (f, rel)
    check_attention(cache, 4)


def test_nbytes_is_the_formats_bits_plus_scales_with_no_hidden_copy():
    h, d, g, r = 8, 128, 32, 128
    cache = QuantKVCache(num_heads=h, head_dim=d, dtype_k="u4", dtype_v="u2", group=g,
                         residual=r)
    n = 1000
    cache.append(tokens(n, h, d), tokens(n, h, d))
    quantized = (n - r) // g * g
    window = n - quantized
    per_token_head = (words_for(d, 4) * 4 + words_for(d, 2) * 4  # codes: 64 + 32 bytes
                      + (d // g) * 4 * 2  # value scales and zero points (groups of 32 channels)
                      + d * 4 * 2 / g)  # key scales and zero points per channel, per 32 tokens
    assert per_token_head == 64 + 32 + 32 + 32
    floats = window * h * d * 4 * 2 + window * (4 + 8)  # the f32 window, its score and position
    assert cache.nbytes() == quantized * h * per_token_head + floats
    # every array the cache holds: the pages (grown by doubling) and the window, nothing else
    spare = sum(s.allocated() - s.nbytes() for s in cache.stores)
    assert cache.allocated_nbytes() == cache.nbytes() + spare
    assert spare <= max(s.allocated() for s in cache.stores) / 2 + 1
    # head-major pages: one head's tokens (codes, scales) are one contiguous run
    store = cache.stores[0]
    for name, a in store.arrays.items():
        assert a.shape[:2] == (h, store.cap // (g if name in ("ks", "kz") else 1)), name
        assert a.flags.c_contiguous, name


def test_mikv_keeps_the_tokens_that_mattered_at_the_higher_width():
    d = 32
    cache = QuantKVCache(num_heads=1, head_dim=d, dtype_k="u2", dtype_v="u2", group=4,
                         residual=0, important_dtype_k="u8", important_dtype_v="u8",
                         important_fraction=0.25)
    k, v = tokens(16, 1, d), tokens(16, 1, d)
    importance = np.zeros(16, np.float32)
    importance[[1, 6, 9, 14]] = 1.0
    cache.append(k, v, importance=importance)
    high = [s for s in cache.stores if s.fmt_k.name == "u8"]
    assert [s.n for s in high] == [4]
    kd, _ = cache.dequantize()  # back in append order
    err = np.abs(kd - k).max(axis=(1, 2))
    assert err[[1, 6, 9, 14]].max() < 0.05 < err[[0, 2, 3, 4, 5]].min()
    # decode calls add the window's attention probabilities up
    c2 = QuantKVCache(num_heads=1, head_dim=d, dtype_k="u2", dtype_v="u2", group=4,
                      residual=8, important_dtype_k="u8", important_dtype_v="u8")
    c2.append(k[:8], v[:8])
    ops.attention_decode(k[5] * 3, c2)
    assert np.isclose(c2._score.sum(), 1.0, atol=1e-5) and c2._score.argmax() == 5


def test_batched_cache_and_flush():
    b, h, d = 3, 2, 32
    cache = QuantKVCache(num_heads=h, head_dim=d, group=8, residual=4, batch=b)
    k, v = RNG.standard_normal((2, b, 21, h, d)).astype(np.float32)
    cache.append(k, v)
    cache.flush()  # everything packed, the last group padded
    assert sum(s.n for s in cache.stores) == 21 and cache.float_segments() == []
    cache.append(k[:, :2], v[:, :2])  # later tokens start new pages
    kd, vd = cache.dequantize()
    assert kd.shape == (b, 23, h, d)
    q = RNG.standard_normal((b, 4, d)).astype(np.float32)
    got = ops.attention_decode(q, cache)
    for i in range(b):
        np.testing.assert_allclose(got[i], sdpa(q[i], kd[i], vd[i]), atol=2e-5)


@pytest.mark.parametrize("fk, fv, extra", CASES, ids=["u2", "u4", "f8e4m3fn", "mixed"])
def test_a_batch_of_sequences_of_different_lengths(fk, fv, extra):
    """One call over a list of caches of lengths 1, 17, 1000 (GQA 8:2): each sequence's output
    is SDPA over its own dequantized cache, and the same as attention over it alone."""
    d, kv_heads, heads = 64, 2, 8
    caches = []
    for n in (1, 17, 1000):
        c = QuantKVCache(num_heads=kv_heads, head_dim=d, dtype_k=fk, dtype_v=fv, group=32,
                         residual=64, **extra)
        c.append(tokens(n, kv_heads, d), tokens(n, kv_heads, d))
        caches.append(c)
    q = RNG.standard_normal((3, heads, d)).astype(np.float32) * 2
    got = ops.attention_decode(q, caches)
    assert got.shape == q.shape and got.dtype == np.float32
    for b, c in enumerate(caches):
        k, v = c.dequantize()
        np.testing.assert_allclose(got[b], sdpa(q[b], k, v), rtol=0,
                                   atol=2e-5 * max(1.0, np.abs(v).max()))
    np.testing.assert_allclose(got[2], ops.attention_decode(q[2], caches[2]), atol=1e-6)


def test_batch_of_caches_errors():
    a = QuantKVCache(num_heads=2, head_dim=32)
    a.append(np.ones((3, 2, 32), np.float32), np.ones((3, 2, 32), np.float32))
    q = np.zeros((2, 2, 32), np.float32)
    with pytest.raises(UserArgumentError, match="cache: expected at least one cached token, "
                                                "got an empty cache at position 1"):
        ops.attention_decode(q, [a, QuantKVCache(num_heads=2, head_dim=32)])
    b = QuantKVCache(num_heads=4, head_dim=32)
    b.append(np.ones((3, 4, 32), np.float32), np.ones((3, 4, 32), np.float32))
    with pytest.raises(UserArgumentError, match="2 heads of 32 on 'llvm', got 1 sequence.s. "
                                                "of 4 heads of 32 on 'llvm' at position 1"):
        ops.attention_decode(q, [a, b])
    with pytest.raises(UserArgumentError, match=r"q: expected shape \[2, heads, 32\]"):
        ops.attention_decode(q[0], [a, a])
    with pytest.raises(UserArgumentError, match="non-empty list"):
        ops.attention_decode(q, [])


def test_errors_name_the_argument():
    with pytest.raises(UserArgumentError, match="dtype_k: expected a 1..8-bit"):
        QuantKVCache(num_heads=2, head_dim=32, dtype_k="f32")
    with pytest.raises(UserArgumentError, match="group_v: expected a divisor of head_dim"):
        QuantKVCache(num_heads=2, head_dim=32, group_v=12)
    with pytest.raises(UserArgumentError, match="num_heads: expected an int >= 1"):
        QuantKVCache(num_heads=0, head_dim=32)
    cache = QuantKVCache(num_heads=2, head_dim=32)
    with pytest.raises(UserArgumentError, match=r"K: expected shape \[tokens, 2, 32\]"):
        cache.append(np.zeros((4, 3, 32), np.float32), np.zeros((4, 3, 32), np.float32))
    with pytest.raises(UserArgumentError, match="cache: expected at least one cached token"):
        ops.attention_decode(np.zeros((2, 32), np.float32), cache)
    cache.append(np.ones((1, 2, 32), np.float32), np.ones((1, 2, 32), np.float32))
    with pytest.raises(UserArgumentError, match="q: expected shape"):
        ops.attention_decode(np.zeros((3, 32), np.float32), cache)
    with pytest.raises(UserArgumentError, match="cache: expected a lowbitc.kv.QuantKVCache"):
        ops.attention_decode(np.zeros((2, 32), np.float32), object())
