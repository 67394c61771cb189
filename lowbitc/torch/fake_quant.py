"""Fake quantization for training: `torch.ops.lowbitc.fake_quantize`, `FakeQuantLinear` and
`stochastic_round_`.

`fake_quantize(x, fmt, scales, group_size, rounding, seed)` returns
decode(encode(x / s, rounding)) * s with one scale per row and group of `group_size` along the
last dim (no scales: s = 1), computed by the compiled `chop` kernel. Its gradient is
straight-through for x (zero where x / s fell outside the format's range) and, when the scales
require grad, LSQ's (Esser et al., 2020) for them: sum over the group of grad * (q - x / s)
inside the range and grad * q outside, without LSQ's 1/sqrt(n * Qp) scale (apply it with a
hook or a learning rate). A fake kernel makes the op traceable by torch.compile.
"""

import numpy as np
import torch
from torch import nn

from lowbitc import formats
from lowbitc.emulate import chop, run_chop
from lowbitc.errors import UserArgumentError
from lowbitc.quant import quantize
from lowbitc.rounding import check_rounding, check_seed

_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


def _check(x: torch.Tensor, fmt: str, scales: torch.Tensor | None, group_size: int,
           rounding: str) -> int:
    """The group size in use (the whole row for 0), after checking every argument."""
    if x.dtype not in _FLOATS:
        raise UserArgumentError(f"fake_quantize: x: expected float32, float16 or bfloat16, "
                                f"got {x.dtype}")
    if x.device.type != "cpu":
        raise UserArgumentError(f"fake_quantize: x: expected a CPU tensor, got {x.device}")
    check_rounding(rounding, "fake_quantize: rounding")
    if formats.lookup(fmt).bits > 8:
        raise UserArgumentError(f"fake_quantize: fmt: expected a format of 1-8 bits, got {fmt}")
    k = x.shape[-1] if x.dim() else 1
    g = k if group_size <= 0 else group_size
    if scales is not None:
        rows, groups = x.numel() // max(k, 1), -(-k // g)
        if scales.dtype != torch.float32 or tuple(scales.shape) != (rows, groups):
            raise UserArgumentError(
                f"fake_quantize: scales: expected float32 [{rows}, {groups}] (rows of x, groups "
                f"of {g}), got {scales.dtype} {list(scales.shape)}")
    return g


@torch.library.custom_op("lowbitc::fake_quantize", mutates_args=())
def fake_quantize(x: torch.Tensor, fmt: str, scales: torch.Tensor | None, group_size: int,
                  rounding: str, seed: int) -> torch.Tensor:
    """decode(encode(x / s, rounding)) * s, groups of `group_size` along the last dim."""
    g = _check(x, fmt, scales, group_size, rounding)
    xf = x.detach().to(torch.float32).contiguous()
    if xf.numel() == 0:
        return x.clone()
    k = xf.shape[-1] if xf.dim() else 1
    a = xf.numpy().reshape(-1, k)
    y = np.empty_like(a)
    sc = None if scales is None else scales.detach().contiguous().numpy()
    s = check_seed(seed & (2**64 - 1), "fake_quantize: seed") if rounding == "stochastic" else 0
    run_chop(a, formats.lookup(fmt), rounding, True, True, s, y, sc, g)
    return torch.from_numpy(y).reshape(x.shape).to(x.dtype)


@fake_quantize.register_fake
def _fake_quantize_fake(x, fmt, scales, group_size, rounding, seed):
    return torch.empty_like(x)


def _expand(scales: torch.Tensor, shape: torch.Size, g: int) -> torch.Tensor:
    """Per-element scales of x (rows x groups repeated over each group, cut to K)."""
    k = shape[-1]
    return scales.repeat_interleave(g, dim=1)[:, :k].reshape(shape)


def _setup(ctx, inputs, output) -> None:
    x, fmt, scales, group_size, rounding, seed = inputs
    ctx.fmt, ctx.group, ctx.rounding, ctx.seed = fmt, group_size, rounding, seed
    ctx.has_scales = scales is not None
    ctx.save_for_backward(x, scales if scales is not None else x.new_ones(()), output)


def _backward(ctx, grad: torch.Tensor):
    x, scales, y = ctx.saved_tensors
    f = formats.lookup(ctx.fmt)
    k = x.shape[-1] if x.dim() else 1
    g = k if ctx.group <= 0 else ctx.group
    s = _expand(scales, x.shape, g) if ctx.has_scales else torch.ones_like(x)
    v = x.to(torch.float32) / s
    inside = (v >= f.min) & (v <= f.max)
    gx = torch.where(inside, grad, torch.zeros_like(grad)) if ctx.needs_input_grad[0] else None
    gs = None
    if ctx.has_scales and ctx.needs_input_grad[2]:
        q = y.to(torch.float32) / s  # the rounded value in units of s
        q = torch.where(inside, q - v, q)
        per = (grad.to(torch.float32) * q).reshape(-1, k)
        pad = -k % g
        per = torch.nn.functional.pad(per, (0, pad)).reshape(per.shape[0], -1, g).sum(-1)
        gs = per.reshape(scales.shape)
    return gx, None, gs, None, None, None


fake_quantize.register_autograd(_backward, setup_context=_setup)


class FakeQuantLinear(nn.Module):
    """nn.Linear whose weight is fake-quantized on every forward (quantization-aware
    training): the float weight and per-group scales (LSQ-trained when `learn_scales`) are
    parameters; stochastic rounding draws a new seed per training step."""

    def __init__(self, in_features: int, out_features: int, dtype: str, group_size: int,
                 bias: bool = True, rounding: str = "nearest_even", learn_scales: bool = True):
        super().__init__()
        self.fmt = formats.register(formats.lookup(dtype) if isinstance(dtype, str) else dtype)
        self.group_size = group_size
        self.rounding = check_rounding(rounding)
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        groups = -(-in_features // group_size)
        self.scales = nn.Parameter(torch.ones(out_features, groups), requires_grad=learn_scales)
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))
        self.init_scales()

    @classmethod
    def from_linear(cls, linear: nn.Linear, dtype: str, group_size: int,
                    **kw) -> "FakeQuantLinear":
        m = cls(linear.in_features, linear.out_features, dtype, group_size,
                bias=linear.bias is not None, **kw)
        with torch.no_grad():
            m.weight.copy_(linear.weight)
            if linear.bias is not None:
                m.bias.copy_(linear.bias)
        m.init_scales()
        return m

    def init_scales(self) -> None:
        """Scales from lowbitc.quantize's search on the current weight (as quantize_ picks)."""
        w = self.weight.detach().to(torch.float32).numpy()
        with torch.no_grad():
            self.scales.copy_(torch.from_numpy(quantize(w, self.fmt, self.group_size).scales))

    def quantized_weight(self) -> torch.Tensor:
        seed = int(self.step) if self.rounding == "stochastic" else 0
        if self.training and self.rounding == "stochastic":
            self.step += 1
        return torch.ops.lowbitc.fake_quantize(self.weight, self.fmt, self.scales,
                                               self.group_size, self.rounding, seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.quantized_weight().to(x.dtype), self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.weight.shape[1]}, out_features={self.weight.shape[0]}, "
                f"dtype={self.fmt}, group_size={self.group_size}, rounding={self.rounding}")


def stochastic_round_(tensor: torch.Tensor, fmt: str = "bf16", seed: int | None = None,
                      ) -> torch.Tensor:
    """Round a float32 tensor's values in place to `fmt` ("bf16" or any lowbitc format)
    with stochastic rounding (for low-precision weight updates); returns the tensor."""
    if not isinstance(tensor, torch.Tensor) or tensor.dtype != torch.float32:
        got = tensor.dtype if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise UserArgumentError(f"stochastic_round_: tensor: expected a float32 tensor, got {got}")
    if tensor.device.type != "cpu":
        raise UserArgumentError(f"stochastic_round_: tensor: expected a CPU tensor, got "
                                f"{tensor.device}")
    with torch.no_grad():
        a = tensor.detach().contiguous().numpy()
        tensor.copy_(torch.from_numpy(chop(a, fmt, rounding="stochastic",
                                           seed=check_seed(seed))))
    return tensor
