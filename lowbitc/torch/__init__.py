"""PyTorch integration: `torch.ops.lowbitc.matmul` / `torch.ops.lowbitc.dequantize` /
`torch.ops.lowbitc.attention_decode` / `attention_decode_batch` (registered on import),
`QuantLinear`, `quantize_`, `register_kernel` (any compiled kernel as an op), quantized-model
save/load (see docs/torch.md), attention over a quantized KV cache (docs/kv.md),
`load_pretrained_quantized` for other tools' checkpoints (docs/interop.md) and fake
quantization for training: `torch.ops.lowbitc.fake_quantize`, `FakeQuantLinear`,
`stochastic_round_` (docs/rounding.md)."""

from lowbitc.torch import ops  # noqa: F401  (registers the torch.library ops)
from lowbitc.torch.attention import attention_decode, cache_handle, quantized_kv_attention
from lowbitc.torch.fake_quant import FakeQuantLinear, fake_quantize, stochastic_round_
from lowbitc.torch.linear import QuantLinear, load_quantized, save_quantized
from lowbitc.torch.ops import DeviceError
from lowbitc.torch.pretrained import OffsetQuantLinear, load_pretrained_quantized
from lowbitc.torch.quantize_model import quantize_
from lowbitc.torch.register import register_kernel

__all__ = ["DeviceError", "FakeQuantLinear", "OffsetQuantLinear", "QuantLinear",
           "attention_decode", "cache_handle", "fake_quantize", "load_pretrained_quantized",
           "load_quantized", "quantize_", "quantized_kv_attention", "register_kernel",
           "save_quantized", "stochastic_round_"]
