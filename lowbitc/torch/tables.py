"""TableLinear: an nn.Linear whose weight is a lowbitc TableQTensor (a per-group choice of
format, or one fitted code book per row; lowbitc.mixture). No fused kernel reads per-group
tables yet: the forward dequantizes the weight once (kept while the buffers are unchanged)
and multiplies in float32, so it shows these methods' accuracy, not their speed."""

from __future__ import annotations

import torch
from torch import nn

from lowbitc.mixture import TableQTensor


class TableLinear(nn.Module):
    """y = x @ qweight.dequantize().T + bias (float32 accumulation, x's dtype out)."""

    def __init__(self, qw: TableQTensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.out_features, self.in_features = qw.shape
        self.qweight = qw
        self.bias = None if bias is None else nn.Parameter(
            bias.detach().to(torch.float32).clone(), requires_grad=bias.requires_grad)
        self.register_buffer("weight", torch.from_numpy(qw.dequantize()), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.nn.functional.linear(x.to(torch.float32), self.weight, self.bias)
        return y.to(x.dtype)

    def bits_per_weight(self) -> float:
        return self.qweight.bits_per_weight()

    def extra_repr(self) -> str:
        q = self.qweight
        kind = f"formats={list(q.names)}" if q.names else f"row code books of {q.bits} bits"
        return (f"in_features={self.in_features}, out_features={self.out_features}, {kind}, "
                f"group_size={q.group_size}")
