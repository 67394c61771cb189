"""The outside of a rendered CUDA kernel: its parameters and signature, the shared-memory
arrays (static up to 48 KiB, else slices of the dynamic allocation) and constant tables,
joined with the body `Renderer` rendered into the module's source text.
"""

from __future__ import annotations

from lowbitc.backends.numba_cuda.buffers import TensorRef
from lowbitc.backends.numba_cuda.interleave import interleaved_params
from lowbitc.backends.numba_cuda.intrinsics import SIMULATOR
from lowbitc.backends.numba_cuda.mma_dot import MMA_IMPORT
from lowbitc.backends.numba_cuda.shared import DYNAMIC_SHARED_LIMIT
from lowbitc.backends.numba_cuda.source import (
    HEADER,
    SHARED_BYTES,
    SIG_TYPE,
    Rendered,
    _dtype_of,
    f32_bits,
    kernel_name,
    numba_type,
)
from lowbitc.errors import BackendError
from lowbitc.ir.core import Value
from lowbitc.ir.types import TensorType, is_machine
from lowbitc.signature import format_bits

MAX_SHARED = 48 * 1024  # static shared memory per block; beyond it, dynamic (shared.py)
MAX_DYNAMIC = max(DYNAMIC_SHARED_LIMIT.values())
SCALAR_PARAMS = ("i64", "i32", "f32", "f64")


def _round16(n: int) -> int:
    return -(-n // 16) * 16


class KernelAssembly:
    """`Renderer`'s kernel-level half (a mixin): binds the parameters, renders the body
    region, then assembles the module text around it."""

    def render(self) -> Rendered:
        k = self.k
        name = kernel_name(k)
        args, sig = [], []
        for i, p in enumerate(k.params + k.dims):
            a = f"a{i}"
            args.append(a)
            if isinstance(p.type, TensorType):
                sig.append(self._tensor_param(p, a))
            else:
                dt = p.type.dtype
                if dt not in SCALAR_PARAMS:
                    raise BackendError(f"cuda: scalar parameter {p.name} of type {dt} is not "
                                       "supported (use i64, i32, f32 or f64)", k.loc)
                self.scalars[p.id] = self.src.tmp(f"{numba_type(dt)}({a})", "p")
                sig.append(SIG_TYPE[dt])
        self._bind_dims()
        self.region(k.body)
        return self._assemble(name, args, sig)

    def _tensor_param(self, p: Value, a: str) -> str:
        t = p.type
        rank = len(t.shape)
        mma = self.mma_packed.get(p.id)  # u8/i8 in the mma packing are words too
        bits = 0 if is_machine(t.dtype) and mma is None else format_bits(t.dtype)
        elem = SIG_TYPE.get(t.dtype, "uint32") if bits == 0 else "uint32"
        if bits == 0 and t.dtype not in SIG_TYPE:
            raise BackendError(f"cuda: tensor {p.name} of {t} is not supported", self.k.loc)
        self.tensors[p.id] = TensorRef(a, tuple(str(d) for d in t.shape), bits,
                                       mma is None and p.id in interleaved_params(self.k), mma)
        return f"{elem}[{', '.join([':'] * (rank - 1) + ['::1'])}]"

    def _bind_dims(self) -> None:
        dim_of = {d.name: self.scalars[d.id] for d in self.k.dims}
        for vid, t in list(self.tensors.items()):
            dims = tuple(dim_of.get(d, d) for d in t.dims)
            self.tensors[vid] = TensorRef(t.name, dims, t.bits, t.interleaved, t.mma)

    def _assemble(self, name: str, args: list[str], sig: list[str]) -> Rendered:
        top = ["    tid = I64(U32(cuda.threadIdx.x))", f"    nthr = {self.threads}"]
        total = sum(_round16(size * SHARED_BYTES.get(_dtype_of(ty), 4))
                    for _, size, ty in self.shared)
        if total > MAX_DYNAMIC:
            raise BackendError(f"cuda: kernel {self.k.name} needs {total} bytes of shared "
                               f"memory (limit {MAX_DYNAMIC} on any arch); use smaller tiles",
                               self.k.loc)
        dynamic = total if total > MAX_SHARED else 0
        top += self._dynamic_arrays() if dynamic else self._static_arrays()
        tables = []
        for values, lut in self.luts.items():
            words = ", ".join(f"{w:#x}" for w in f32_bits(values))
            tables.append(f"_{lut.upper()} = np.array([{words}], dtype=np.uint32)"
                          f".view(np.float32)")
            top.append(f"    {lut} = cuda.const.array_like(_{lut.upper()})")
        for words, table in self.word_tables.items():
            tables.append(f"_{table.upper()} = np.array([{', '.join(f'{w:#x}' for w in words)}], "
                          "dtype=np.uint32)")
            top.append(f"    {table} = cuda.const.array_like(_{table.upper()})")
        header = HEADER + (MMA_IMPORT + "\n" if self.uses_mma else "")
        text = "\n".join([header, *tables, "", "", f"def {name}({', '.join(args)}):", *top,
                          *self.src.lines, "    return", ""])
        return Rendered(name, text, f"void({', '.join(sig)})", total, dynamic)

    def _static_arrays(self) -> list[str]:
        out = []
        for buf, size, ty in self.shared:
            align = "" if SIMULATOR or ty not in ("F16", "U16") else ", 16"  # ldmatrix: 16 B
            out.append(f"    {buf} = cuda.shared.array({size}, {ty}{align})")
        return out

    def _dynamic_arrays(self) -> list[str]:
        """Every shared tile as a slice of the dynamic shared memory (one array per element
        type, all aliasing the launch's allocation), each at a 16-byte aligned offset."""
        out, seen, at = [], set(), 0
        for buf, size, ty in self.shared:
            width = SHARED_BYTES.get(_dtype_of(ty), 4)
            if ty not in seen:
                seen.add(ty)
                out.append(f"    dyn_{ty} = cuda.shared.array(0, {ty})")
            first = at // width
            out.append(f"    {buf} = dyn_{ty}[{first}:{first + size}]")
            at += _round16(size * width)
        return out
