"""Low-bit KV caches: `QuantKVCache` (KIVI, MiKV) and decode attention over them
(`attention_decode`, also `lowbitc.ops.attention_decode`). See docs/kv.md."""

from lowbitc.kv.attention import attention_decode
from lowbitc.kv.cache import QuantKVCache

__all__ = ["QuantKVCache", "attention_decode"]
