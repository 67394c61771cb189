"""PyTorch custom ops over lowbitc's compiled kernels: `torch.ops.lowbitc.matmul` and
`torch.ops.lowbitc.dequantize`.

torch.library ops cannot take a QTensor, so both take its pieces as plain tensors: the weight
storage (canonical packed words as int32 `[N, ceil(K*bits/32)]`, or for u8/i8 the codes as
uint8/int8 `[N, K]`), float32 scales and optional zeros `[N, ceil(K/G)]`, and the format
name, group size and K as static arguments. The CPU kernel runs lowbitc's compiled LLVM code
directly on the tensors' memory (no copies); CUDA tensors go to the CUDA backend. Fake kernels
make the ops traceable by torch.compile; matmul has a gradient for its activations only.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import torch

from lowbitc import a8, formats
from lowbitc import ops as lops
from lowbitc.errors import BackendError, LowbitcError
from lowbitc.quant import QTensor
from lowbitc.torch.checks import (  # noqa: F401  (re-exported: lowbitc.torch.ops.check_matmul, ...)
    ACTIVATIONS,
    check_matmul,
    check_weight,
    storage_dtype,
    storage_width,
)
from lowbitc.torch.views import array as _array
from lowbitc.torch.views import kernel_weight as _kernel_weight
from lowbitc.torch.views import tile_major as _tile_major
from lowbitc.torch.views import weight_array as _weight_array

_NO_ZEROS = np.zeros((1, 1), np.float32)
_KERNELS: dict[tuple, object] = {}
_MAX_KERNELS = 4096  # one entry per (format, dtype, shape): forgotten wholesale past this
_LOCK = threading.Lock()


class DeviceError(BackendError, NotImplementedError):
    """Tensors live on a device lowbitc has no usable kernels for."""


_LIB = torch.library.Library("lowbitc", "DEF")
_LIB.define("matmul(Tensor x, Tensor weight, Tensor scales, Tensor? zeros, str fmt, "
            "int group_size, int k, str act=\"f32\") -> Tensor")
_LIB.define("dequantize(Tensor weight, Tensor scales, Tensor? zeros, str fmt, "
            "int group_size, int k) -> Tensor")


# ---------------------------------------------------------------- storage
def weight_tensor(qw: QTensor) -> torch.Tensor:
    """qw's kernel storage as a CPU tensor sharing its memory (uint32 words viewed as int32)."""
    a = lops.weight_storage(qw)
    if a.dtype == np.uint32:
        a = a.view(np.int32)
    return torch.from_numpy(a)


def _launch(kern, x: np.ndarray, adt: str, w, s: np.ndarray, z: np.ndarray | None, y: np.ndarray,
            group_size: int, k: int) -> None:
    """Run a CPU matmul kernel on numpy arrays: matmul_a8 through lowbitc.a8 (activations
    quantized first; s: scales and zero points tile-major, z unused), any other directly."""
    if kern.name == "matmul_a8":
        a8.matmul(kern, x, adt, w, s, y, group_size)  # s: scales and zeros tile-major
    else:
        kern(x, w, s, z, y, group_size, K=k)


# ---------------------------------------------------------------- kernels
def _backend(device: torch.device) -> str:
    if device.type == "cpu":
        return "llvm"
    if device.type == "cuda":
        return "cuda"
    raise DeviceError(f"lowbitc.torch: no kernels for tensors on device {device}; "
                      "use cpu or cuda tensors")


def _kernel(name: str, backend: str, device: torch.device, key: tuple,
            params: Callable[[], dict]):
    """The compiled kernel for `key` (memoised here; `params()` runs on a miss only)."""
    k = _KERNELS.get(key)
    if k is not None:
        return k
    try:
        k = lops.get_kernel(name, backend, **params())
    except (ImportError, LowbitcError) as e:
        if backend == "llvm":
            raise
        raise DeviceError(f"lowbitc.torch: tensors on device {device} need the lowbitc "
                          f"{backend!r} backend, which is not available here: {e}") from e
    with _LOCK:
        if len(_KERNELS) > _MAX_KERNELS:
            _KERNELS.clear()
        _KERNELS[key] = k
    return k


class _Spec:
    """What `lowbitc.ops.matmul_params` reads from a QTensor: format, groups, zero points."""

    __slots__ = ("dtype", "group_size", "zeros")

    def __init__(self, fmt: str, group_size: int, has_zeros: bool):
        self.dtype = formats.lookup(fmt)
        self.group_size = group_size
        self.zeros = _NO_ZEROS if has_zeros else None


def _matmul_kernel(backend: str, device: torch.device, fmt: str, adt: str, zp: bool,
                   group: int, m: int, n: int, k: int, act: str, group_major: bool = False):
    """The kernel lowbitc.ops.matmul would pick (memoised per call signature); with
    `group_major`, as ops.matmul calls it: scales and zeros [G, N] on the CPU GEMV path."""
    key = ("matmul", backend, fmt, adt, zp, group, m, n, k, act, group_major)
    k_ = _KERNELS.get(key)
    if k_ is not None:
        return k_
    name, params = lops.matmul_choice(m, n, k, _Spec(fmt, group, zp), adt, act, backend)
    if name == "matmul_a8":  # scales tile-major here (lowbitc.a8.inline_pack: QTensors only)
        params = a8.params(formats.lookup(fmt), group, zp, m, act, n, inline=False)
    if group_major and name == "matmul" and backend == "llvm":
        params = {**params, "GM": not params["EARLY"]}
    return _kernel(name, backend, device, key, lambda: params)


def _dequantize_params(fmt: str, zp: bool, group: int, n: int, k: int, backend: str) -> dict:
    params = {"W": formats.lookup(fmt), "ZP": zp}
    params.update(lops.tuned_params("dequantize", dict(params), group, {"N": n, "K": k},
                                    backend))
    return params


def _operand(t: torch.Tensor | None, backend: str, weight: bool = True):
    if t is None:
        return _NO_ZEROS
    if backend == "llvm":
        return _weight_array(t) if weight else _array(t)
    return cuda_array(t)


def cuda_array(t: torch.Tensor):
    """A CUDA tensor as a numba device array (no copy); bf16 as its 16-bit patterns (int16:
    torch gives bf16 no array interface), which the CUDA backend reads as bf16."""
    from numba import cuda  # imported only when CUDA tensors are seen (numba-cuda is heavy)

    t = t.detach()
    return cuda.as_cuda_array(t.view(torch.int16) if t.dtype == torch.bfloat16 else t)


def matmul_into(y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor,
                zeros: torch.Tensor | None, fmt: str, group_size: int, k: int,
                act: str = "f32") -> None:
    """y[M, N] = x @ dequant(weight).T on checked, contiguous tensors (no copies); `act`
    as lowbitc.ops.matmul takes it."""
    m, n = y.shape
    if m == 0 or n == 0:
        return
    if k == 0:
        y.zero_()
        return
    backend = _backend(x.device)
    kern = _matmul_kernel(backend, x.device, fmt, ACTIVATIONS[x.dtype], zeros is not None,
                          group_size, m, n, k, act)
    if backend == "llvm":
        bn = kern.params["BN"] if kern.name == "matmul_a8" else 0  # tile-major (memoised)
        s = _tile_major(scales, zeros, bn) if bn else _operand(scales, backend)
        z = None if bn else _operand(zeros, backend)
        _launch(kern, _array(x), ACTIVATIONS[x.dtype],
                _kernel_weight(kern, weight, scales, zeros, fmt, group_size, k), s, z,
                _array(y), group_size, k)
        return
    sk = kern.params.get("SK", 1)  # split-K: partial sums in a device workspace, then summed
    ws = (None if sk == 1 else
          _operand(torch.empty((sk * m, n), dtype=torch.float32, device=y.device), backend, False))
    lops.launch_matmul(kern, _operand(x, backend, False), _operand(weight, backend),
                       _operand(scales, backend), _operand(zeros, backend),
                       _operand(y, backend, False), group_size, k, ws)


class BoundMatmul:
    """lowbitc::matmul's CPU kernel bound to one weight, for eager calls (no autograd, no
    tracing): the checks, the kernel lookup, the weight's numpy views (or repacked words,
    and group-major or tile-major scales) and the kernels' packed arguments are made once per
    activation dtype and shape, so a call is the launches (`Kernel.bind`) plus a fresh output
    tensor. Bind again after writing the weight (or its scales) in place."""

    __slots__ = ("tensors", "_static", "_plans", "_bias")

    def __init__(self, weight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
                 fmt: str, group_size: int, k: int, act: str = "f32"):
        self.tensors = (weight, scales, zeros)
        self._static = (fmt, group_size, k, a8.check_act(act))
        self._plans: dict[tuple, tuple | None] = {}
        self._bias: tuple | None = None  # (the last f32 bias tensor, its numpy view)

    def __call__(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x [M, K] (a contiguous CPU tensor) @ W_hat.T (+ bias [N]) -> float32 [M, N]."""
        plan = self._plans.get((x.dtype, x.shape), False)
        if plan is False:
            plan = self._plan(x)
        if plan is None:  # an empty dimension, a CUDA tensor: the op's own function
            y = matmul_impl(x, *self.tensors, *self._static)
            return y if bias is None else y.add_(bias.detach())
        run, shape = plan[:2]
        y = torch.empty(shape, dtype=torch.float32)  # 64-byte aligned, unlike numpy's
        out = y.numpy()
        run(_array(x), out)
        if bias is not None:
            if bias.dtype is torch.float32:
                # in numpy: torch's add wakes its OpenMP threads, whose spinning afterwards
                # slows the next kernel's own threads (u4 M=16 4096^2: 7 -> 13 ms)
                seen = self._bias
                if seen is None or seen[0] is not bias:  # a view per bias tensor, kept
                    seen = self._bias = (bias, _array(bias))
                np.add(out, seen[1], out=out)
            else:
                y.add_(bias.detach())
        return y

    def _plan(self, x: torch.Tensor) -> tuple | None:
        weight, scales, zeros = self.tensors
        fmt, g, k, act = self._static
        n = check_matmul(x, weight, scales, zeros, fmt, g, k)
        m = x.shape[0]
        plan = None
        if x.device.type == "cpu" and m and n and k:
            adt = ACTIVATIONS[x.dtype]
            kern = _matmul_kernel("llvm", x.device, fmt, adt, zeros is not None, g, m, n, k,
                                  act, group_major=True)
            s, z = _array(scales), _operand(zeros, "llvm", False)
            w = _kernel_weight(kern, weight, scales, zeros, fmt, g, k)
            xa = np.empty((m, k), _array(x[:0]).dtype)  # placeholders for the free arrays
            y = np.empty((m, n), np.float32)
            if kern.name == "matmul_a8":  # tile-major, as ops.matmul
                sz = a8.tile_major(s, kern.params["BN"], None if zeros is None else z)
                run = a8.bound(kern, adt, xa, w, sz, y, g)
            else:
                if kern.params.get("GM"):  # the GEMV path reads them group-major
                    s = np.ascontiguousarray(s.T)
                    z = z if zeros is None else np.ascontiguousarray(z.T)
                run = kern.bind(xa, w, s, z, y, g, K=k, free=("x", "y"))
            plan = (run, (m, n), kern, s)  # (the kernel and scales as read: for tests)
        if len(self._plans) > 64:  # many batch shapes: keep the cache small
            self._plans.clear()
        self._plans[(x.dtype, x.shape)] = plan
        return plan


# ---------------------------------------------------------------- lowbitc::matmul
def matmul_impl(x, weight, scales, zeros, fmt, group_size, k, act="f32"):
    n = check_matmul(x, weight, scales, zeros, fmt, group_size, k, act)
    y = torch.empty((x.shape[0], n), dtype=torch.float32, device=x.device)
    matmul_into(y, x, weight, scales, zeros, fmt, group_size, k, act)
    return y


_LIB.impl("matmul", matmul_impl, "CPU")
_LIB.impl("matmul", matmul_impl, "CUDA")


@torch.library.register_fake("lowbitc::matmul")
def _matmul_fake(x, weight, scales, zeros, fmt, group_size, k, act="f32"):
    n = check_matmul(x, weight, scales, zeros, fmt, group_size, k, act)
    return x.new_empty((x.shape[0], n), dtype=torch.float32)


def _matmul_setup(ctx, inputs, output) -> None:
    x, weight, scales, zeros, fmt, group_size, k, *_ = inputs  # (act: no effect on it)
    ctx.save_for_backward(weight, scales, zeros)
    ctx.static = (fmt, group_size, k)
    ctx.x_dtype = x.dtype


def _matmul_backward(ctx, grad: torch.Tensor):
    """d(x @ W_hat.T)/dx = grad @ W_hat; the quantized weights are frozen (no gradient)."""
    gx = None
    if ctx.needs_input_grad[0]:
        weight, scales, zeros = ctx.saved_tensors
        w_hat = torch.ops.lowbitc.dequantize(weight, scales, zeros, *ctx.static)
        gx = (grad.to(torch.float32) @ w_hat).to(ctx.x_dtype)
    return gx, None, None, None, None, None, None, None


torch.library.register_autograd("lowbitc::matmul", _matmul_backward,
                                setup_context=_matmul_setup)


# ---------------------------------------------------------------- lowbitc::dequantize
def dequantize_impl(weight, scales, zeros, fmt, group_size, k):
    dev = weight.device if isinstance(weight, torch.Tensor) else torch.device("cpu")
    n = check_weight("dequantize", weight, scales, zeros, fmt, group_size, k, dev)
    y = torch.empty((n, k), dtype=torch.float32, device=dev)
    if n == 0 or k == 0:
        return y
    backend = _backend(dev)
    zp = zeros is not None
    kern = _kernel("dequantize", backend, dev, ("dequantize", backend, fmt, zp, group_size, n, k),
                   lambda: _dequantize_params(fmt, zp, group_size, n, k, backend))
    w = (_kernel_weight(kern, weight, scales, zeros, fmt, group_size, k) if backend == "llvm"
         else _operand(weight, backend))
    kern(w, _operand(scales, backend), _operand(zeros, backend), _operand(y, backend, False),
         group_size, K=k)
    return y


_LIB.impl("dequantize", dequantize_impl, "CPU")
_LIB.impl("dequantize", dequantize_impl, "CUDA")


@torch.library.register_fake("lowbitc::dequantize")
def _dequantize_fake(weight, scales, zeros, fmt, group_size, k):
    n = check_weight("dequantize", weight, scales, zeros, fmt, group_size, k, weight.device)
    return weight.new_empty((n, k), dtype=torch.float32)
