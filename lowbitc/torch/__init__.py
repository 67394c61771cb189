"""PyTorch integration: `torch.ops.lowbitc.matmul` / `torch.ops.lowbitc.dequantize` (registered
on import), `QuantLinear`, `quantize_`, and quantized-model save/load (see docs/torch.md)."""

from lowbitc.torch import ops  # noqa: F401  (registers the torch.library ops)
from lowbitc.torch.linear import QuantLinear, load_quantized, quantize_, save_quantized
from lowbitc.torch.ops import DeviceError

__all__ = ["DeviceError", "QuantLinear", "load_quantized", "quantize_", "save_quantized"]
