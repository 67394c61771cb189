"""TableLinear: an nn.Linear whose weight is a lowbitc TableQTensor (a per-group choice of
format, or one fitted code book per row; lowbitc.mixture). A mixture of named formats runs
up to 8 rows (inference on the CPU) in the compiled kernel, matmul_mix.lbk, which decodes
each group with its member's table; more rows, autograd and fitted per-row code books
multiply the weight dequantized once (float32)."""

from __future__ import annotations

import torch
from torch import nn

from lowbitc import ops
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
        """Up to GEMM_ROWS rows of a mixture of named formats (on the CPU, no autograd) run
        the compiled kernel (lowbitc.ops.matmul, matmul_mix.lbk); others the dense weight."""
        x2 = x.reshape(-1, self.in_features)
        if (x2.shape[0] <= ops.GEMM_ROWS and self.qweight.member_formats is not None
                and x.device.type == "cpu" and not torch.is_grad_enabled()):
            xs = x2.detach().to(torch.float32).contiguous().numpy()
            y = torch.from_numpy(ops.matmul(xs, self.qweight))
            if self.bias is not None:
                y = y + self.bias
        else:
            y = torch.nn.functional.linear(x2.to(torch.float32), self.weight, self.bias)
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def bits_per_weight(self) -> float:
        return self.qweight.bits_per_weight()

    def extra_repr(self) -> str:
        q = self.qweight
        kind = f"formats={list(q.names)}" if q.names else f"row code books of {q.bits} bits"
        return (f"in_features={self.in_features}, out_features={self.out_features}, {kind}, "
                f"group_size={q.group_size}")
