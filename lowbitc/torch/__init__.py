"""PyTorch integration: `torch.ops.lowbitc.matmul` / `torch.ops.lowbitc.dequantize` /
`torch.ops.lowbitc.attention_decode` (registered on import), `QuantLinear`, `quantize_`,
quantized-model save/load (see docs/torch.md) and attention over a quantized KV cache
(docs/kv.md)."""

from lowbitc.torch import ops  # noqa: F401  (registers the torch.library ops)
from lowbitc.torch.attention import attention_decode, cache_handle, quantized_kv_attention
from lowbitc.torch.linear import QuantLinear, load_quantized, quantize_, save_quantized
from lowbitc.torch.ops import DeviceError

__all__ = ["DeviceError", "QuantLinear", "attention_decode", "cache_handle", "load_quantized",
           "quantize_", "quantized_kv_attention", "save_quantized"]
