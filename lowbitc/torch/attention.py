"""`torch.ops.lowbitc.attention_decode` over a `lowbitc.kv.QuantKVCache` (and
`attention_decode_batch` over a list of them: sequences of different lengths), and an attention
forward (Hugging Face transformers' attention-interface signature) whose keys and values go
through a quantized cache.

torch.library ops cannot take a Python object, so the op takes the cache's handle
(`cache_handle(cache)`, an int kept in a weak registry); `attention_decode(q, cache)` is the
convenience wrapper. The fake kernel gives the output's shape and dtype for tracing. CPU
tensors run on the cache's backend, CUDA tensors on the CUDA backend (the cache's pages stay
in host memory: each launch copies them to the device).
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Callable

import torch

from lowbitc.errors import UserArgumentError
from lowbitc.kv import QuantKVCache
from lowbitc.kv import attention_decode as kv_attention_decode

_LIB = torch.library.Library("lowbitc", "FRAGMENT")
_LIB.define("attention_decode(Tensor q, int cache, float? scale=None) -> Tensor")
_LIB.define("attention_decode_batch(Tensor q, int[] caches, float? scale=None) -> Tensor")
_CACHES: weakref.WeakValueDictionary[int, QuantKVCache] = weakref.WeakValueDictionary()
_HANDLES = itertools.count(1)


def cache_handle(cache: QuantKVCache) -> int:
    """The int that names `cache` in torch.ops.lowbitc.attention_decode (while it lives)."""
    if not isinstance(cache, QuantKVCache):
        raise UserArgumentError(f"cache: expected a lowbitc.kv.QuantKVCache, got "
                                f"{type(cache).__name__}")
    handle = getattr(cache, "_torch_handle", None)
    if handle is None:
        handle = next(_HANDLES)
        cache._torch_handle = handle
        _CACHES[handle] = cache
    return handle


def _cache(handle: int) -> QuantKVCache:
    cache = _CACHES.get(handle)
    if cache is None:
        raise UserArgumentError(f"lowbitc::attention_decode: cache: expected the handle of a "
                                f"live QuantKVCache (lowbitc.torch.cache_handle), got {handle}")
    return cache


def _check_q(q: torch.Tensor, batch: int | None = None) -> None:
    dims = (2, 3) if batch is None else (3,)
    if not isinstance(q, torch.Tensor) or q.dim() not in dims or not q.is_floating_point() \
            or (batch is not None and q.shape[0] != batch):
        op = "attention_decode" if batch is None else "attention_decode_batch"
        want = ("[heads, head_dim] or [batch, heads, head_dim]" if batch is None
                else f"[{batch}, heads, head_dim] (one sequence per cache)")
        raise UserArgumentError(f"lowbitc::{op}: q: expected a float tensor {want}, got "
                                f"{getattr(q, 'shape', type(q).__name__)}")


def _run(q: torch.Tensor, cache, scale: float | None, backend: str | None) -> torch.Tensor:
    y = kv_attention_decode(q.detach().cpu().float().numpy(), cache, scale, backend)
    return torch.from_numpy(y).to(q.device)


def _attention_decode_impl(q: torch.Tensor, cache: int, scale: float | None = None,
                           backend: str | None = None):
    _check_q(q)
    return _run(q, _cache(cache), scale, backend)


def _attention_decode_batch_impl(q: torch.Tensor, caches: list[int], scale: float | None = None,
                                 backend: str | None = None):
    _check_q(q, len(caches))
    return _run(q, [_cache(c) for c in caches], scale, backend)


def _attention_decode_cuda(q: torch.Tensor, cache: int, scale: float | None = None):
    """CUDA tensors run the kernels on the CUDA backend, whichever backend the cache names."""
    return _attention_decode_impl(q, cache, scale, backend="cuda")


def _attention_decode_batch_cuda(q: torch.Tensor, caches: list[int], scale: float | None = None):
    return _attention_decode_batch_impl(q, caches, scale, backend="cuda")


_LIB.impl("attention_decode", _attention_decode_impl, "CPU")
_LIB.impl("attention_decode", _attention_decode_cuda, "CUDA")
_LIB.impl("attention_decode_batch", _attention_decode_batch_impl, "CPU")
_LIB.impl("attention_decode_batch", _attention_decode_batch_cuda, "CUDA")


@torch.library.register_fake("lowbitc::attention_decode")
def _attention_decode_fake(q, cache, scale=None):
    _check_q(q)
    return q.new_empty(q.shape, dtype=torch.float32)


@torch.library.register_fake("lowbitc::attention_decode_batch")
def _attention_decode_batch_fake(q, caches, scale=None):
    _check_q(q, len(caches))
    return q.new_empty(q.shape, dtype=torch.float32)


def attention_decode(q: torch.Tensor, cache: QuantKVCache | list[QuantKVCache],
                     scale: float | None = None) -> torch.Tensor:
    """torch.ops.lowbitc.attention_decode(q, cache_handle(cache), scale); for a list of
    caches (sequences of any lengths, q [len(cache), heads, head_dim])
    torch.ops.lowbitc.attention_decode_batch(q, [cache_handle(c) for c in cache], scale)."""
    if isinstance(cache, (list, tuple)):
        return torch.ops.lowbitc.attention_decode_batch(q, [cache_handle(c) for c in cache],
                                                        scale)
    return torch.ops.lowbitc.attention_decode(q, cache_handle(cache), scale)


def _valid_keys(mask: torch.Tensor | None, b: int, length: int) -> torch.Tensor:
    """Key positions sequence b attends to (a padding mask: boolean, or additive floats)."""
    if mask is None:
        return torch.ones(length, dtype=torch.bool)
    m = mask[b] if mask.dim() > 2 else mask[b:b + 1]
    m = m.reshape(-1, m.shape[-1])
    return (m if m.dtype == torch.bool else m > torch.finfo(m.dtype).min / 2).any(dim=0)


def quantized_kv_attention(flush: bool = True, **cache_kwargs) -> Callable:
    """An attention forward for transformers' attention interface
    (`AttentionInterface.register(name, quantized_kv_attention(dtype_k="u4", ...))`): each
    sequence's keys and values are appended to a fresh QuantKVCache(**cache_kwargs) (one
    prefill; `flush` quantizes every token, as an encoder has no later tokens) and all its
    queries attend over the cache through torch.ops.lowbitc.attention_decode, as one
    grouped-query batch per key/value head. Padding keys (from the mask) are left out. A
    MiKV cache ranks the prompt's tokens by the attention they receive (the float scores'
    softmax summed over heads and queries, as H2O and MiKV accumulate it)."""

    def forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                **kwargs):
        batch, heads, length, dim = query.shape
        kv_heads = key.shape[1]
        out = torch.empty(batch, length, heads, dim, dtype=torch.float32)
        for b in range(batch):
            keep = _valid_keys(attention_mask, b, key.shape[2])
            cache = QuantKVCache(num_heads=kv_heads, head_dim=dim, **cache_kwargs)
            k, v = key[b][:, keep], value[b][:, keep]
            importance = None
            if cache.mixed:
                scores = query[b] @ k.repeat_interleave(heads // kv_heads, 0).transpose(1, 2)
                importance = torch.softmax(scores * (scaling or dim ** -0.5), -1).sum((0, 1))
            cache.append(k.transpose(0, 1), v.transpose(0, 1), importance=importance)
            if flush:
                cache.flush()
            q = query[b].reshape(heads * length, dim)  # query head h's tokens, head by head
            y = attention_decode(q, cache, scaling)
            out[b] = y.reshape(heads, length, dim).transpose(0, 1)
        return out.to(query.dtype), None

    return forward
