"""Decode attention over a `QuantKVCache` (or a batch of them, sequences of any lengths): one
new query token per sequence, flash-decoding style. Each segment of a cache (packed pages of
one format pair, the float32 window, MiKV's partial groups) is one launch of `attention.lbk`'s
attention_split, which writes per-split partial softmax results; attention_combine merges
them, every sequence's in one launch."""

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


def _caches(cache) -> tuple[list[QuantKVCache], bool]:
    """(caches, listed): one cache, or a list of single-sequence caches with the same heads,
    dims and backend (a batch of sequences of any lengths)."""
    listed = not isinstance(cache, QuantKVCache)
    if not listed:
        caches = [cache]
    elif isinstance(cache, (list, tuple)) and cache and all(
            isinstance(c, QuantKVCache) for c in cache):
        caches = list(cache)
    else:
        raise UserArgumentError(f"cache: expected a lowbitc.kv.QuantKVCache or a non-empty "
                                f"list of them, got {type(cache).__name__}")
    first = caches[0]
    for i, c in enumerate(caches):
        at = f" at position {i}" if listed else ""
        if c.length == 0:
            raise UserArgumentError(f"cache: expected at least one cached token, got an empty "
                                    f"cache{at}")
        if listed and (c.batch != 1 or c.num_heads != first.num_heads
                       or c.head_dim != first.head_dim or c.backend != first.backend):
            raise UserArgumentError(
                f"cache: expected caches of one sequence each with the first one's "
                f"{first.num_heads} heads of {first.head_dim} on {first.backend!r}, got "
                f"{c.batch} sequence(s) of {c.num_heads} heads of {c.head_dim} on "
                f"{c.backend!r}{at}")
    return caches, listed


def _queries(q: object, caches: list[QuantKVCache], listed: bool) -> tuple[np.ndarray, tuple]:
    """q as [sequences, query heads, head_dim] (a batched cache's sequences share one
    launch: their heads are the kernels' head axis) and the shape to return."""
    a = _as_array(q, "q")
    cache = caches[0]
    batch = len(caches) if listed else cache.batch
    lead = () if batch == 1 and a.ndim == 2 and not listed else (batch,)
    if a.ndim != 2 + len(lead) or a.shape[:len(lead)] != lead or a.shape[-1] != cache.head_dim \
            or a.shape[-2] % cache.num_heads:
        want = "[" + "".join(f"{b}, " for b in lead) + f"heads, {cache.head_dim}]"
        raise UserArgumentError(f"q: expected shape {want} with heads a multiple of the "
                                f"cache's {cache.num_heads} key/value heads, got {a.shape}")
    return np.ascontiguousarray(a.reshape(len(caches), -1, cache.head_dim)), a.shape


def attention_decode(q, cache, scale: float | None = None,
                     backend: str | None = None) -> np.ndarray:
    """softmax(q K^T * scale) V over every cached token, per query head, float32.

    q: [heads, head_dim] (with a batched cache [batch, heads, head_dim]); heads a multiple of
    the cache's key/value heads (grouped-query attention: query head j reads key/value head
    j // (heads / num_heads)). `cache` may also be a list of B caches of one sequence each,
    of any lengths (q [B, heads, head_dim]): one launch per segment of each sequence and one
    combine for all. scale defaults to 1 / sqrt(head_dim)."""
    caches, listed = _caches(cache)
    qa, shape = _queries(q, caches, listed)
    first = caches[0]
    scale = 1.0 / float(np.sqrt(first.head_dim)) if scale is None else float(scale)
    backend = first.backend if backend is None else backend
    nseq, hq, d = qa.shape
    qh = hq // first.heads
    plans = [[(p, a, n, _split(n, c.heads, p["G"])) for p, a, n in _segments(c)]
             for c in caches]
    slots = max(sum(-(-n // split) for _, _, n, split in segs) for segs in plans)
    # slots a sequence does not fill weigh 0 in the combine (m = -3e38, l = 0, o = 0)
    m = np.full((nseq, slots, hq), -3.0e38, np.float32)
    l, o = np.zeros_like(m), np.zeros((nseq, slots, hq, d), np.float32)
    for b, segs in enumerate(plans):
        slot = 0
        for params, args, n, split in segs:
            k = get_kernel("attention", backend, kernel="attention_split", QH=qh, D=d, **params)
            k(qa[b], *args, m[b], l[b], o[b], n, split, slot, scale)
            slot += -(-n // split)
    y, lse = np.empty((nseq, hq, d), np.float32), np.empty((nseq, hq), np.float32)
    get_kernel("attention", backend, kernel="attention_combine", D=d)(m, l, o, y, lse)
    for b, c in enumerate(caches):
        if c.mixed and c.window_keys().shape[1]:
            # MiKV: the window tokens' attention probabilities add to their importance
            keys = np.repeat(c.window_keys(), qh, axis=0)  # [hq, tokens, d]
            c.observe(np.exp(np.einsum("hd,htd->ht", qa[b], keys) * scale - lse[b, :, None]))
    return y.reshape(shape)
