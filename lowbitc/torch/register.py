"""`register_kernel(kernel, "mylib::name", outputs=["y"])`: any compiled kernel as a
torch.library custom op (docs/torch.md).

The op's inputs are the kernel's other parameters in order (tensors; scalars as `int` or
`float`), then, as `int` arguments, the dims no input's shape determines (a dim that appears
only as the last axis of packed words, or only in outputs). Its outputs are allocated from the
signature (zero-filled, their dims bound by the inputs' shapes) and returned (one tensor, or a
tuple). The fake kernel computes the same shapes, so `torch.compile(fullgraph=True)` traces the
op. CPU tensors run the LLVM kernel on their memory; CUDA tensors the same source compiled for
the CUDA backend. Packed formats are passed as their canonical uint32 words viewed as int32;
a weight the kernel reads in a layout-specific packing is transformed once per tensor and
in-place version (`Tensor._version`), as the shipped ops do.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

import numpy as np
import torch

from lowbitc.compiler import Kernel
from lowbitc.compiler import compile as compile_kernel
from lowbitc.errors import UserArgumentError
from lowbitc.ir.types import TensorType, is_float, is_machine
from lowbitc.signature import format_bits, words_for
from lowbitc.torch.ops import DeviceError, _array, _backend, cuda_array

TORCH_DTYPES = {
    "f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16, "f64": torch.float64,
    "i8": torch.int8, "i16": torch.int16, "i32": torch.int32, "i64": torch.int64,
    "u8": torch.uint8, "u16": torch.uint16, "u32": torch.int32, "bool": torch.bool,
}  # u32 (and packed words) travel as int32 of the same bits
_LIBRARIES: dict[str, torch.library.Library] = {}  # namespace -> library (kept alive)
_LOCK = threading.Lock()


def _storage(dtype: str) -> torch.dtype:
    if not is_machine(dtype):
        return torch.int32
    if dtype not in TORCH_DTYPES:
        raise UserArgumentError(f"kernel: tensors of {dtype} have no torch dtype")
    return TORCH_DTYPES[dtype]


@dataclass(frozen=True)
class Signature:
    """The op's view of a kernel: inputs and outputs (param names), extra dims, schema."""

    kernel: Kernel
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    dims: tuple[str, ...]  # int arguments after the inputs
    binders: tuple[tuple[str, int, str], ...]  # (input name, axis, dim) that bind a dim

    @classmethod
    def of(cls, kernel: Kernel, outputs: list[str] | tuple[str, ...]) -> Signature:
        params = {p.name: p for p in kernel.ir.params}
        if isinstance(outputs, str) or not outputs:
            raise UserArgumentError(
                f"outputs: expected a non-empty list of parameter names, got {outputs!r}")
        for o in outputs:
            if o not in params or not isinstance(params[o].type, TensorType):
                tensors = [n for n, p in params.items() if isinstance(p.type, TensorType)]
                raise UserArgumentError(
                    f"outputs: {o!r} is not a tensor parameter of kernel {kernel.name} "
                    f"(its tensors: {', '.join(tensors)})")
        inputs = tuple(n for n in params if n not in outputs)
        binders, bound = [], set()
        for n in inputs:
            t = params[n].type
            if not isinstance(t, TensorType):
                continue
            for axis, d in enumerate(t.shape):
                packed_last = not is_machine(t.dtype) and axis == len(t.shape) - 1
                if isinstance(d, str) and not packed_last and d not in bound:
                    binders.append((n, axis, d))
                    bound.add(d)
        dims = tuple(d.name for d in kernel.ir.dims if d.name not in bound)
        return cls(kernel, inputs, tuple(outputs), dims, tuple(binders))

    def schema(self, name: str) -> str:
        params = {p.name: p for p in self.kernel.ir.params}
        args = []
        for n in self.inputs:
            t = params[n].type
            args.append(f"Tensor {n}" if isinstance(t, TensorType)
                        else f"float {n}" if is_float(t.dtype) else f"int {n}")
        args += [f"int {d}" for d in self.dims]
        outs = ", ".join("Tensor" for _ in self.outputs)
        return f"{name}({', '.join(args)}) -> " + (outs if len(self.outputs) == 1 else f"({outs})")

    def dim_values(self, args: tuple) -> dict[str, object]:
        """{dim: value} from the inputs' shapes and the trailing int arguments."""
        by_name = dict(zip(self.inputs, args))
        values = {d: by_name[n].shape[axis] for n, axis, d in self.binders}
        values.update(zip(self.dims, args[len(self.inputs):]))
        return values

    def output_shapes(self, dims: dict[str, object]) -> list[tuple[tuple, torch.dtype]]:
        params = {p.name: p for p in self.kernel.ir.params}
        out = []
        for n in self.outputs:
            t = params[n].type
            shape = [dims[d] if isinstance(d, str) else d for d in t.shape]
            if not is_machine(t.dtype) and shape:
                shape[-1] = words_for(shape[-1], format_bits(t.dtype))
            out.append((tuple(shape), _storage(t.dtype)))
        return out


class _Runner:
    """Runs the kernel on torch tensors: numpy views on the CPU, CUDA arrays on the GPU."""

    def __init__(self, sig: Signature):
        self.sig = sig
        self._cuda: Kernel | None = None
        self._prepared: dict[int, tuple] = {}  # id(tensor) -> (weakref, ptr, version, words)
        self._i32 = {p.name for p in sig.kernel.ir.params if p.type.dtype == "i32"}

    def __call__(self, *args):
        sig = self.sig
        dims = sig.dim_values(args)
        tensors = [a for a in args[: len(sig.inputs)] if isinstance(a, torch.Tensor)]
        device = tensors[0].device if tensors else torch.device("cpu")
        outs = [torch.zeros(s, dtype=dt, device=device) for s, dt in sig.output_shapes(dims)]
        values = dict(zip(sig.inputs, args))
        values.update(zip(sig.outputs, outs))
        backend = _backend(device)
        kernel = sig.kernel if backend == "llvm" else self._cuda_kernel(device)
        call = []
        for p in kernel.ir.params:
            v = values[p.name]
            if isinstance(v, torch.Tensor):
                last = p.type.shape[-1] if p.type.shape else 0
                count = dims.get(last) if isinstance(last, str) else last
                v = self._operand(kernel, p.name, v, backend, p.name in sig.outputs, count)
            call.append(v)
        kernel(*call, **{d: int(dims[d]) for d in sig.dims})
        return outs[0] if len(outs) == 1 else tuple(outs)

    def _operand(self, kernel: Kernel, name: str, t: torch.Tensor, backend: str, output: bool,
                 count: int | None):
        if not t.is_contiguous():
            raise UserArgumentError(f"argument {name!r}: expected a contiguous tensor, got "
                                    f"strides {t.stride()} (call .contiguous())")
        if backend != "llvm":
            return cuda_array(t)
        if output or name not in kernel.packings or t.is_inference():
            a = _array(t)  # (an inference tensor has no version: the words cache checks)
            return a.view(np.int32) if name in self._i32 else a  # (_array reads int32 as words)
        key, state = id(t), (t.data_ptr(), t._version)
        hit = self._prepared.get(key)
        if hit is not None and hit[0]() is t and hit[1] == state:
            return hit[2]
        words = kernel.prepare(name, _array(t), None if count is None else int(count))
        self._prepared[key] = (weakref.ref(t, lambda _, k=key: self._prepared.pop(k, None)),
                               state, words)
        return words

    def _cuda_kernel(self, device: torch.device) -> Kernel:
        if self._cuda is None:
            k = self.sig.kernel
            try:
                self._cuda = compile_kernel(k.source, backend="cuda", **k.params)
            except Exception as e:  # no numba-cuda, or the source does not build for it
                raise DeviceError(f"lowbitc.torch: kernel {k.name} on {device} needs the CUDA "
                                  f"backend, which failed: {e}") from e
        return self._cuda


def register_kernel(kernel: Kernel, name: str, outputs: list[str]) -> object:
    """Register `kernel` as the torch.library op `name` ("namespace::op") returning the
    params `outputs`; returns the op (`torch.ops.namespace.op`)."""
    if not isinstance(kernel, Kernel):
        raise UserArgumentError(f"kernel: expected a lowbitc.compile(...) Kernel, got "
                                f"{type(kernel).__name__}")
    ns, sep, op = name.partition("::") if isinstance(name, str) else ("", "", "")
    if not sep or not ns.isidentifier() or not op.isidentifier():
        raise UserArgumentError(f"name: expected 'namespace::op', got {name!r}")
    sig = Signature.of(kernel, outputs)
    runner = _Runner(sig)
    with _LOCK:
        lib = _LIBRARIES.get(ns)
        if lib is None:
            lib = _LIBRARIES[ns] = torch.library.Library(ns, "FRAGMENT")
        try:
            lib.define(sig.schema(op))
        except RuntimeError as e:
            raise UserArgumentError(f"name: cannot define {name!r}: {e}") from None
    lib.impl(op, runner, "CPU")
    lib.impl(op, runner, "CUDA")

    def fake(*args):
        dims = sig.dim_values(args)
        like = next((a for a in args if isinstance(a, torch.Tensor)), None)
        outs = [like.new_empty(s, dtype=dt) if like is not None
                else torch.empty(s, dtype=dt, device="meta")
                for s, dt in sig.output_shapes(dims)]
        return outs[0] if len(outs) == 1 else tuple(outs)

    torch.library.register_fake(name, fake, lib=lib)
    return getattr(getattr(torch.ops, ns), op)
