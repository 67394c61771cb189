"""QuantLinear: an nn.Linear whose weight is a lowbitc QTensor, and safetensors save/load that
rebuilds a quantized model without quantizing again (`quantize_`, which swaps a model's
linear layers in place, is lowbitc.torch.quantize_model).

The weight lives in buffers (`qdata`: kernel storage, `scales`, optional `zeros`), so the
module moves between devices and its state_dict holds exactly what the kernels read.
"""

from __future__ import annotations

import json

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_model, save_model
from torch import nn

from lowbitc import formats
from lowbitc.a8 import check_act
from lowbitc.dtypes import Format
from lowbitc.dtypes import codebook as make_codebook
from lowbitc.dtypes import dtype as lookup_dtype
from lowbitc.errors import UserArgumentError
from lowbitc.methods import quantize
from lowbitc.outliers import Sparse
from lowbitc.packing import unpack
from lowbitc.quant import QTensor
from lowbitc.torch import ops as tops

META_KEY = "lowbitc.quantized"  # safetensors metadata: JSON {module name: QuantLinear config}
# QuantLinear subclasses by their config's "kind" (registered where they are defined), so
# load_quantized rebuilds the class save_quantized saw
KINDS: dict[str, type] = {}


def _format(fmt: str | Format) -> Format:
    f = fmt if isinstance(fmt, Format) else lookup_dtype(fmt)
    if f.kind == "codebook":  # code books become findable by name for the ops
        try:
            known = formats.lookup(f.name)
        except ValueError:
            known = None
        if getattr(known, "table", None) != f.table:
            formats.register(f)
    return f


def _eager(x: torch.Tensor) -> bool:
    """True when the kernel can be called directly: a plain CPU tensor, no autograd, no
    tracing (torch.compile, torch.jit.trace), no dispatch modes, no torch.func transform (the
    op's Python dispatch costs tens of microseconds per call)."""
    return (type(x) is torch.Tensor
            and x.is_cpu
            and not (x.requires_grad and torch.is_grad_enabled())
            and not torch.compiler.is_compiling()
            and torch._C._len_torch_dispatch_stack() == 0
            and torch._C._get_tracing_state() is None
            and torch._C._functorch.peek_interpreter_stack() is None)


class QuantLinear(nn.Module):
    """y = x @ dequantize(qweight).T + bias for x of shape [..., in_features] in float32,
    float16 or bfloat16 (the output has x's dtype; accumulation is float32). `act="i8"`
    quantizes the activations to int8 in the kernel (lowbitc.ops.matmul's `act`)."""

    def __init__(self, in_features: int, out_features: int, dtype: str | Format,
                 group_size: int = 128, bias: bool = True, zero_point: bool = False,
                 scale_dtype: str = "f32", device: torch.device | str | None = None,
                 outliers: int = 0, outlier_dtype: str = "f16", act: str = "f32",
                 input_scale: bool = False):
        super().__init__()
        self.act = check_act(act)
        fmt = _format(dtype)
        if group_size < 1:
            raise UserArgumentError(f"group_size: expected an int >= 1, got {group_size}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.format, self.group_size = fmt, int(group_size)
        self.scale_dtype = scale_dtype
        width = tops.storage_width(fmt.name, self.in_features)
        groups = (self.out_features, -(-self.in_features // self.group_size))
        self.register_buffer("qdata", torch.zeros((self.out_features, width),
                                                  dtype=tops.storage_dtype(fmt.name),
                                                  device=device))
        self.register_buffer("scales", torch.ones(groups, dtype=torch.float32, device=device))
        self.register_buffer("zeros", torch.zeros(groups, dtype=torch.float32, device=device)
                             if zero_point else None)
        self.bias = nn.Parameter(torch.zeros(self.out_features, device=device)) if bias else None
        # outliers (lowbitc.outliers): CSR by rows, added after the low-bit matmul
        vdt = torch.float16 if outlier_dtype == "f16" else torch.float32
        for name, size, dt in (("outlier_indptr", self.out_features + 1, torch.int32),
                               ("outlier_indices", outliers, torch.int32),
                               ("outlier_values", outliers, vdt)):
            self.register_buffer(name, torch.zeros(size, dtype=dt, device=device)
                                 if outliers else None)
        # activation-aware input scaling (lowbitc.awq): the layer computes (x / s) @ W_q^T
        self.register_buffer("input_scale", torch.ones(self.in_features, dtype=torch.float32,
                                                       device=device) if input_scale else None)
        self._qtensor: QTensor | None = None
        self._bound: tops.BoundMatmul | None = None

    # ------------------------------------------------------------ construction
    @classmethod
    def from_qtensor(cls, qw: QTensor, bias: torch.Tensor | None = None,
                     act: str = "f32", input_scale: np.ndarray | None = None) -> QuantLinear:
        """Wrap an existing QTensor (its storage is shared, not copied). `input_scale` [K]:
        the layer divides its input by it, y = (x / input_scale) @ qw.dequantize().T + bias
        (lowbitc.awq)."""
        if not isinstance(qw, QTensor):
            raise UserArgumentError(f"qw: expected a lowbitc QTensor, got {type(qw).__name__}")
        n, k = qw.shape
        m = cls(k, n, qw.dtype, qw.group_size, bias is not None, qw.zeros is not None,
                qw.scale_dtype, act=act)
        m.qdata = tops.weight_tensor(qw)
        m.scales = torch.from_numpy(qw.scales)
        m.zeros = None if qw.zeros is None else torch.from_numpy(qw.zeros)
        if qw.sparse is not None:
            m.outlier_indptr = torch.from_numpy(qw.sparse.indptr)
            m.outlier_indices = torch.from_numpy(qw.sparse.indices)
            m.outlier_values = torch.from_numpy(qw.sparse.values)
        if bias is not None:
            m.bias = nn.Parameter(bias.detach().to(torch.float32).reshape(n).clone(),
                                  requires_grad=bias.requires_grad)
        if input_scale is not None:
            scale = np.asarray(input_scale, np.float32)
            if scale.shape != (k,) or not (np.isfinite(scale).all() and (scale > 0).all()):
                raise UserArgumentError(f"input_scale: expected {k} positive finite values, got "
                                        f"shape {scale.shape}")
            m.input_scale = torch.from_numpy(scale.copy())
        m._qtensor = qw
        return m

    @classmethod
    def from_linear(cls, linear: nn.Linear, dtype: str | Format, group_size: int = 128,
                    zero_point: bool | None = None, scale_dtype: str = "f32",
                    act: str = "f32") -> QuantLinear:
        """Quantize `linear`'s weight group-wise along in_features. `zero_point=None` means
        True for unsigned integer formats (u1..u8, which cannot hold negative weights
        otherwise) and False for the rest."""
        if not isinstance(linear, nn.Linear):
            raise UserArgumentError(f"linear: expected a torch.nn.Linear, "
                                    f"got {type(linear).__name__}")
        fmt = _format(dtype)
        if zero_point is None:
            zero_point = fmt.kind == "uint"
        w = linear.weight.detach().to("cpu", torch.float32).numpy()
        qw = quantize(w, fmt, group_size, zero_point=zero_point, scale_dtype=scale_dtype)
        return cls.from_qtensor(qw, linear.bias, act).to(linear.weight.device)

    @classmethod
    def from_config(cls, config: dict, device: torch.device | str | None = None) -> QuantLinear:
        """An empty module of the shape `config()` describes, ready for load_state_dict."""
        fmt = (make_codebook(config["codebook"], name=config["format"])
               if config.get("codebook") else config["format"])
        return cls(config["in_features"], config["out_features"], fmt, config["group_size"],
                   config["bias"], config["zero_point"], config["scale_dtype"], device,
                   config.get("outliers", 0), config.get("outlier_dtype", "f16"),
                   config.get("act", "f32"), config.get("input_scale", False))

    def config(self) -> dict:
        """Everything besides the tensors needed to rebuild this module (JSON-friendly)."""
        table = self.format.table if self.format.kind == "codebook" else None
        return {"in_features": self.in_features, "out_features": self.out_features,
                "format": self.format.name, "group_size": self.group_size,
                "zero_point": self.zeros is not None, "scale_dtype": self.scale_dtype,
                "bias": self.bias is not None, "act": self.act,
                "codebook": None if table is None else [float(v) for v in table],
                "outliers": 0 if self.outlier_values is None else self.outlier_values.numel(),
                "input_scale": self.input_scale is not None,
                "outlier_dtype": "f32" if getattr(self.outlier_values, "dtype", None)
                == torch.float32 else "f16"}

    # ------------------------------------------------------------ the weight
    @property
    def qweight(self) -> QTensor:
        """The weight as a QTensor (rebuilt from the buffers after a load or a move)."""
        if self._qtensor is None:
            words = self.qdata.detach().cpu().numpy()
            k = self.in_features
            if tops.storage_dtype(self.format.name) == torch.int32:
                codes = unpack(words.view(np.uint32), self.format.bits, k)
            else:
                codes = np.ascontiguousarray(words.view(np.uint8))
            zeros = None if self.zeros is None else self.zeros.detach().cpu().numpy()
            sparse = None
            if self.outlier_values is not None:
                sparse = Sparse((self.out_features, k),
                                *(t.detach().cpu().numpy() for t in (
                                    self.outlier_indptr, self.outlier_indices,
                                    self.outlier_values)))
            self._qtensor = QTensor(self.format, (self.out_features, k), self.group_size,
                                    codes, self.scales.detach().cpu().numpy(), zeros,
                                    self.scale_dtype, sparse)
        return self._qtensor

    def dequantize(self) -> torch.Tensor:
        """The float32 weight [out_features, in_features] the kernels compute with."""
        w = torch.ops.lowbitc.dequantize(self.qdata, self.scales, self.zeros,
                                         self.format.name, self.group_size, self.in_features)
        return w if self.outlier_values is None else w + self._outliers().to_dense()

    def _outliers(self) -> torch.Tensor:
        """The outliers as a torch sparse CSR matrix [out_features, in_features] (float32)."""
        return torch.sparse_csr_tensor(self.outlier_indptr, self.outlier_indices,
                                       self.outlier_values.float(),
                                       (self.out_features, self.in_features))

    # ------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.in_features
        if x.shape[-1:] != (k,):
            raise UserArgumentError(f"QuantLinear: x: expected a last dim of in_features = {k}, "
                                    f"got shape {tuple(x.shape)}")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, k)
        b = self._buffers  # (read directly: nn.Module's attribute lookup costs ~0.4 us each)
        if (b["input_scale"] is None and b["outlier_values"] is None
                and x.dtype is torch.float32 and x2.is_contiguous() and _eager(x2)):
            # the common eager call, nothing before or after the kernel
            y = self._matmul()(x2, self._parameters.get("bias"))
            return y.view(*lead, self.out_features)
        if self.input_scale is not None:  # one f32 division per activation element
            x2 = x2.to(torch.float32) / self.input_scale
        if not x2.is_contiguous():
            x2 = x2.contiguous()
        if _eager(x2):
            y = self._matmul()(x2, self._parameters.get("bias"))  # None is not kept there
        else:
            y = torch.ops.lowbitc.matmul(x2, self.qdata, self.scales, self.zeros,
                                         self.format.name, self.group_size, k, self.act)
            if self.bias is not None:
                y = y + self.bias
        if self.outlier_values is not None:  # the second pass: y += x @ outliers.T
            y = y + (self._outliers() @ x2.to(torch.float32).T).T.to(y.dtype)
        if y.dtype != x.dtype:
            y = y.to(x.dtype)
        return y.reshape(*lead, self.out_features)

    def _matmul(self) -> tops.BoundMatmul:
        """The kernel bound to the current weight buffers (rebound when one is replaced)."""
        b, bound = self._buffers, self._bound
        if (bound is None or bound.tensors[0] is not b["qdata"]
                or bound.tensors[1] is not b["scales"] or bound.tensors[2] is not b["zeros"]):
            if bound is not None:  # a buffer was replaced: so is the weight
                self._qtensor = None
            bound = self._bound = tops.BoundMatmul(b["qdata"], b["scales"], b["zeros"],
                                                   self.format.name, self.group_size,
                                                   self.in_features, self.act)
        return bound

    # ------------------------------------------------------------ module plumbing
    def __getstate__(self) -> dict:
        state = super().__getstate__()
        return {**state, "_bound": None}  # compiled kernels are rebound, not copied

    def _apply(self, fn, recurse=True):
        """Moves follow `fn`; scales and zeros stay float32 (model.half() must not round them)."""
        keep = {n: self._buffers[n] for n in ("scales", "zeros", "input_scale")
                if self._buffers[n] is not None}
        super()._apply(fn, recurse)
        for n, old in keep.items():
            if self._buffers[n].dtype != torch.float32:
                self._buffers[n] = old.to(self._buffers[n].device)
        self._qtensor = self._bound = None
        return self

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._qtensor = self._bound = None  # loaded in place: repacked words would be stale

    def extra_repr(self) -> str:
        zp = ", zero_point=True" if self.zeros is not None else ""
        act = f", act={self.act!r}" if self.act != "f32" else ""
        act += ", input_scale=True" if self.input_scale is not None else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, dtype={self.format.name}, "
                f"group_size={self.group_size}{zp}{act}")


# ---------------------------------------------------------------- whole models
def _set_child(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def save_quantized(model: nn.Module, path: str) -> None:
    """Write `model`'s state_dict and its QuantLinear configs to one safetensors file."""
    configs = {name: m.config() for name, m in model.named_modules()
               if isinstance(m, QuantLinear)}
    save_model(model, str(path), metadata={META_KEY: json.dumps(configs)})


def load_quantized(model: nn.Module, path: str, strict: bool = True) -> nn.Module:
    """Load a file from `save_quantized` into `model`, a float model of the same architecture:
    its layers are swapped for empty QuantLinear modules as recorded, then filled (no
    quantization runs). Returns `model`."""
    with safe_open(str(path), framework="pt") as f:
        meta = (f.metadata() or {}).get(META_KEY)
    if meta is None:
        raise UserArgumentError(f"path: {path} has no {META_KEY!r} metadata; write it with "
                                "lowbitc.torch.save_quantized")
    for name, config in json.loads(meta).items():
        try:
            old = model.get_submodule(name)
        except AttributeError:
            raise UserArgumentError(f"path: {path} holds a quantized layer {name!r} that "
                                    f"model has no module for") from None
        device = next((t.device for t in old.parameters()), None)
        kind = KINDS.get(config.get("kind", ""), QuantLinear)
        _set_child(model, name, kind.from_config(config, device))
    load_model(model, str(path), strict=strict)
    return model
