"""Decode attention over a `QuantKVCache`: one new query token per sequence, flash-decoding
style. Each segment of the cache (packed pages of one format pair, the float32 window, MiKV's
partial groups) is one launch of `attention.lbk`'s attention_split, which writes per-split
partial softmax results; attention_combine merges them."""

from __future__ import annotations

import numpy as np

from lowbitc.errors import UserArgumentError
from lowbitc.kernels import get_kernel
from lowbitc.kv.cache import QuantKVCache, _as_array

FLOAT_TILE = 32  # tokens per tile of the float32 segments
BLOCKS = 64  # about this many (head, split) blocks per segment: enough for every CPU thread


def _split(n: int, heads: int, tile: int) -> int:
    """Tokens per split: a multiple of the tile (a power of two times it) giving about BLOCKS
    blocks over the heads."""
    want = -(-n // max(1, BLOCKS // heads))
    split = tile
    while split < want:
        split *= 2
    return split


def _segments(cache: QuantKVCache) -> list[tuple[dict, list, int]]:
    """(kernel parameters, cache arguments, tokens) of every non-empty segment."""
    segs = [(s.attention_params(), s.attention_args(), s.n) for s in cache.stores if s.n]
    none = np.zeros((cache.heads, 1, cache.head_dim), np.float32)
    dummy = np.zeros((1, 1, 1), np.float32)
    params = {"WK": "f32", "WV": "f32", "QUANT": False, "KZP": False, "VZP": False,
              "G": FLOAT_TILE, "VG": cache.head_dim}
    for k, v in cache.float_segments():
        segs.append((params, [k, none, dummy, v, dummy, dummy], k.shape[1]))
    return segs


def _queries(q: object, cache: QuantKVCache) -> tuple[np.ndarray, tuple]:
    a = _as_array(q, "q")
    lead = () if cache.batch == 1 and a.ndim == 2 else (cache.batch,)
    if a.ndim != 2 + len(lead) or a.shape[:len(lead)] != lead or a.shape[-1] != cache.head_dim \
            or a.shape[-2] % cache.num_heads:
        want = "[" + "".join(f"{b}, " for b in lead) + f"heads, {cache.head_dim}]"
        raise UserArgumentError(f"q: expected shape {want} with heads a multiple of the "
                                f"cache's {cache.num_heads} key/value heads, got {a.shape}")
    return np.ascontiguousarray(a.reshape(-1, cache.head_dim)), a.shape


def attention_decode(q, cache: QuantKVCache, scale: float | None = None,
                     backend: str | None = None) -> np.ndarray:
    """softmax(q K^T * scale) V over every cached token, per query head, float32.

    q: [heads, head_dim] (with a batched cache [batch, heads, head_dim]); heads a multiple of
    the cache's key/value heads (grouped-query attention: query head j reads key/value head
    j // (heads / num_heads)). scale defaults to 1 / sqrt(head_dim)."""
    if not isinstance(cache, QuantKVCache):
        raise UserArgumentError(f"cache: expected a lowbitc.kv.QuantKVCache, got "
                                f"{type(cache).__name__}")
    if cache.length == 0:
        raise UserArgumentError("cache: expected at least one cached token, got an empty cache")
    qa, shape = _queries(q, cache)
    scale = 1.0 / float(np.sqrt(cache.head_dim)) if scale is None else float(scale)
    backend = cache.backend if backend is None else backend
    hq, d = qa.shape
    qh = hq // cache.heads
    segs = [(p, a, n, _split(n, cache.heads, p["G"])) for p, a, n in _segments(cache)]
    slots = sum(-(-n // split) for _, _, n, split in segs)
    m = np.empty((slots, hq), np.float32)
    l, o = np.empty_like(m), np.empty((slots, hq, d), np.float32)
    slot = 0
    for params, args, n, split in segs:
        k = get_kernel("attention", backend, kernel="attention_split", QH=qh, D=d, **params)
        k(qa, *args, m, l, o, n, split, slot, scale)
        slot += -(-n // split)
    y, lse = np.empty((hq, d), np.float32), np.empty(hq, np.float32)
    get_kernel("attention", backend, kernel="attention_combine", D=d)(m, l, o, y, lse)
    if cache.mixed and cache.window_keys().shape[1]:
        # MiKV: the window tokens' attention probabilities add to their importance
        keys = np.repeat(cache.window_keys(), qh, axis=0)  # [hq, tokens, d]
        cache.observe(np.exp(np.einsum("hd,htd->ht", qa, keys) * scale - lse[:, None]))
    return y.reshape(shape)
