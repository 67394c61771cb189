"""Run quantized checkpoints other tools wrote: `load_pretrained_quantized(model, source)` swaps
each quantized linear layer for a QuantLinear over the file's own bits (no quantization runs).

Formats whose weights are `q * s - o` (llama.cpp's K-quants, Q4_1, Q5_1) or whose input
columns are grouped out of order (GPTQ act-order) become an `OffsetQuantLinear`: a QuantLinear
over the plain part plus per-group offsets and a column order (see lowbitc.offset).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from lowbitc import interop
from lowbitc.errors import UserArgumentError
from lowbitc.interop.gguf_names import rename_for
from lowbitc.offset import OffsetQTensor
from lowbitc.quant import QTensor
from lowbitc.torch.linear import KINDS, QuantLinear, _set_child


class OffsetQuantLinear(QuantLinear):
    """A QuantLinear whose weight is an OffsetQTensor: y = x[..., perm] @ base.T
    - group_sums(x[..., perm]) @ offsets.T + bias."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_buffer("offsets", None)
        self.register_buffer("perm", None)

    @classmethod
    def from_qtensor(cls, qw: QTensor, bias: torch.Tensor | None = None) -> OffsetQuantLinear:
        if not isinstance(qw, OffsetQTensor):
            raise UserArgumentError(f"qw: expected an OffsetQTensor, got {type(qw).__name__}")
        m = super().from_qtensor(qw.base, bias)
        m.offsets = None if qw.offsets is None else torch.from_numpy(qw.offsets)
        m.perm = None if qw.perm is None else torch.from_numpy(qw.perm)
        m._offset_qtensor = qw
        return m

    @classmethod
    def from_config(cls, config: dict, device=None) -> OffsetQuantLinear:
        """An empty module with offsets / column order buffers when `config` records them."""
        m = super().from_config(config, device)
        if config.get("offsets"):
            m.offsets = torch.zeros_like(m.scales)
        if config.get("perm"):
            m.perm = torch.zeros(m.in_features, dtype=torch.int64, device=device)
        return m

    def config(self) -> dict:
        return {**super().config(), "kind": "offset", "offsets": self.offsets is not None,
                "perm": self.perm is not None}

    @property
    def qweight(self) -> OffsetQTensor:
        base = super().qweight
        off = None if self.offsets is None else self.offsets.detach().cpu().numpy()
        perm = None if self.perm is None else self.perm.detach().cpu().numpy()
        return OffsetQTensor(base.dtype, base.shape, base.group_size, base.codes, base.scales,
                             base.zeros, base.scale_dtype, offsets=off, perm=perm)

    def _group_sums(self, x: torch.Tensor) -> torch.Tensor:
        g, k = self.group_size, self.in_features
        groups = self.scales.shape[1]
        xf = x.to(torch.float32)
        if groups * g != k:
            xf = nn.functional.pad(xf, (0, groups * g - k))
        return xf.reshape(*x.shape[:-1], groups, g).sum(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.perm is not None:
            x = x.index_select(-1, self.perm)
        y = super().forward(x)
        if self.offsets is not None:
            y = (y.to(torch.float32) - self._group_sums(x) @ self.offsets.T).to(y.dtype)
        return y

    def dequantize(self) -> torch.Tensor:
        w = super().dequantize()
        if self.offsets is not None:
            w = w - self.offsets.repeat_interleave(self.group_size, 1)[:, : self.in_features]
        if self.perm is not None:
            out = torch.empty_like(w)
            out[:, self.perm] = w
            w = out
        return w

    def _apply(self, fn, recurse=True):
        keep = self._buffers["offsets"]
        super()._apply(fn, recurse)
        if keep is not None and self._buffers["offsets"].dtype != torch.float32:
            self._buffers["offsets"] = keep.to(self._buffers["offsets"].device)
        return self


KINDS["offset"] = OffsetQuantLinear


def linear_for(qw: QTensor, bias: torch.Tensor | None) -> QuantLinear:
    if isinstance(qw, OffsetQTensor):
        return OffsetQuantLinear.from_qtensor(qw, bias)
    return QuantLinear.from_qtensor(qw, bias)


def _module_name(name: str) -> str:
    return name[: -len(".weight")] if name.endswith(".weight") else name


def load_pretrained_quantized(model: nn.Module, source, format: str | None = None,
                              strict: bool = True) -> nn.Module:
    """Load a GGUF / GPTQ / AWQ / compressed-tensors / bitsandbytes / HQQ checkpoint (a path
    or a state dict; `format` sniffed when None) into `model`, a float model of the same
    architecture with the file's tensor names (or, in a GGUF file written from a Hugging Face
    model, llama.cpp's names for them: lowbitc.interop.gguf_names): each quantized weight
    replaces its nn.Linear by a QuantLinear over the original bits; float tensors are copied
    into the parameters and buffers of the same name. Every tensor is checked before the model
    is touched, so a bad file leaves it as it was. With `strict`, a tensor the model has no
    place for is an error. Returns `model`."""
    params = dict(model.state_dict())
    tensors = rename_for(interop.read(source, format), params)
    swaps, copies = [], []
    for name, t in tensors.items():
        if name.startswith("__"):
            continue
        if isinstance(t.weight, QTensor):
            mod_name = _module_name(name)
            try:
                old = model.get_submodule(mod_name)
            except AttributeError:
                old = None
            if not isinstance(old, nn.Linear):
                if strict:
                    raise UserArgumentError(f"tensor {name!r} ({t.format}): model has no "
                                            f"nn.Linear {mod_name!r}")
                continue
            n, k = t.weight.shape
            if (old.out_features, old.in_features) != (n, k):
                raise UserArgumentError(f"tensor {name!r} ({t.format}): shape {(n, k)} does "
                                        f"not match {mod_name!r} "
                                        f"{(old.out_features, old.in_features)}")
            swaps.append((mod_name, old, t.weight))
        elif name in params:
            value = torch.from_numpy(np.asarray(t.weight, np.float32))
            if tuple(value.shape) != tuple(params[name].shape):
                value = value.reshape(params[name].shape) if value.numel() == \
                    params[name].numel() else None
            if value is None:
                raise UserArgumentError(f"tensor {name!r}: shape {t.shape} does not match the "
                                        f"model's {tuple(params[name].shape)}")
            copies.append((name, value))
        elif strict:
            raise UserArgumentError(f"tensor {name!r} ({t.format}): model has no parameter or "
                                    "buffer of that name")
    new = [(mod_name, linear_for(qw, old.bias).to(old.weight.device))
           for mod_name, old, qw in swaps]
    for mod_name, m in new:
        _set_child(model, mod_name, m)
    state = model.state_dict()
    with torch.no_grad():
        for name, value in copies:
            if name in state:  # a swapped layer's float weight is gone
                state[name].copy_(value)
    return model
