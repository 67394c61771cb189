"""The LLVM CPU backend: render (pure) and compile (MCJIT) a lowered kernel; run its grid
over the thread pool with arguments checked before any native code runs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lowbitc.abi import ABI, grid_of
from lowbitc.backends.llvm import native
from lowbitc.backends.llvm.digest import WORDS
from lowbitc.backends.llvm.launch import (
    ArgPacker,
    ArrayArg,
    GridLauncher,
    PreparedLaunch,
    ScalarArg,
)
from lowbitc.errors import UserArgumentError
from lowbitc.ir.types import TensorType
from lowbitc.signature import Binder, storage_dtype

if TYPE_CHECKING:
    from lowbitc.backends.llvm.jit import CompiledModule
    from lowbitc.ir.core import Kernel

GRIDS_KEPT = 64  # grids remembered per kernel (by scalar arguments and dims)
_SCALAR_KIND = {"i64": "i64", "i32": "i32", "f32": "f32", "f64": "f64"}


def _render(k: Kernel):
    # codegen loads on first use: a kernel loaded by `load` (compile cache hit) never renders
    from lowbitc.backends.llvm.codegen import render

    return render(k)


class Executable:
    """A JIT-compiled kernel: checks and binds arguments, evaluates the grid, launches.

    Built from the kernel's `ABI` alone; `kernel` returns the lowered IR, asked for only when
    the grid is not plain integer arithmetic (the interpreter evaluates it then).
    """

    def __init__(self, abi: ABI, llvm_ir: str, module: CompiledModule | native.SharedModule,
                 kernel: Callable[[], Kernel]):
        self.abi = abi
        self.llvm_ir = llvm_ir
        self.module = module
        self._kernel = kernel
        sig = []
        for p in abi.params:
            if isinstance(p.type, TensorType):
                sig.append(ArrayArg(p.name, storage_dtype(p.type.dtype), len(p.type.shape)))
            else:
                sig.append(ScalarArg(p.name, _SCALAR_KIND[p.type.dtype]))
        sig += [ScalarArg(d.name, "i64") for d in abi.dims]
        sig += [ScalarArg("grid.x", "i64"), ScalarArg("grid.y", "i64")]
        self.packer = ArgPacker(sig)
        # grids of fewer than 8 blocks run on the calling thread: waking a worker costs more
        self.launcher = GridLauncher(module.address(module.name), 0, min_blocks_per_thread=4)
        self.grid = abi.grid_function()
        self.binder = Binder(abi, abi.packings(), WORDS.get)
        # the grid depends only on the scalar arguments and the dims: remembered per value
        self._grid_of = (tuple(p.name for p in abi.params if not isinstance(p.type, TensorType)),
                         tuple(d.name for d in abi.dims))
        self._grids: dict[tuple, tuple[int, int, int]] = {}

    def __call__(self, *args, **kwargs) -> None:
        packed, nblocks = self._pack(args, kwargs)
        self.launcher(packed, nblocks)

    def _pack(self, args: tuple, kwargs: dict):
        """(the packed `void*[]`, grid blocks) of a call: arguments bound and checked."""
        b = self.binder(args, kwargs)
        scalars, dims = self._grid_of
        key = (*[b.values[n] for n in scalars], *[b.dims[n] for n in dims])
        g = self._grids.get(key)
        if g is None:
            g = self._grid(b)
            if len(self._grids) < GRIDS_KEPT:
                self._grids[key] = g
        gx, gy, gz = g
        return self.packer(b.ordered(self.abi) + [gx, gy]), gx * gy * gz

    def prepare(self, args: tuple, kwargs: dict, free: tuple[str, ...]) -> PreparedLaunch:
        """This call, checked and packed once; the returned launch takes new arrays for the
        parameters named in `free` (array parameters in the kernel's own storage, not
        repacked words) and reuses everything else."""
        packed, nblocks = self._pack(args, kwargs)
        sig = self.packer.signature
        slots = []
        for name in free:
            i = next((i for i, p in enumerate(sig) if p.name == name), None)
            if i is None or not isinstance(sig[i], ArrayArg) or name in self.binder.packings:
                raise UserArgumentError(f"free: {name!r} is not an array parameter of "
                                        f"{self.abi.name} passed as is")
            slots.append((i, sig[i], packed.keep[i].shape))
        return PreparedLaunch(packed, slots, self.launcher, nblocks)

    def _grid(self, b) -> tuple[int, int, int]:
        if self.grid is not None:
            return grid_of(self.abi, b.values, b.dims, self.grid)
        from lowbitc.interp import grid_of_bound  # the interpreter, for unusual grids only

        return grid_of_bound(self._kernel(), b)

    def text(self, stage: str) -> str:
        if stage == "llvm":
            return self.llvm_ir
        if stage == "asm":
            from lowbitc.backends.llvm import jit  # llvmlite: not needed to run a kernel

            return jit.assembly(self.llvm_ir)
        raise ValueError(f"stage: expected ir, lowered, llvm or asm, got {stage!r}")


@dataclass(frozen=True)
class LLVMBackend:
    name: str = "llvm"

    @property
    def pipeline(self) -> tuple[str, ...]:
        """CPU_PIPELINE, vectorizing for this host's vector registers and decoding small floats
        through f16 where they fit (`vcvtph2ps`: see lower_formats)."""
        # the passes load on first use: a kernel served by `load` never runs them
        from lowbitc.backends.llvm.target import host_vector_bits
        from lowbitc.passes import CPU_PIPELINE

        options = {"vectorize": f"bits={host_vector_bits()}", "lower-formats": "half=1"}
        return tuple(f"{p}{{{options[p]}}}" if p in options else p for p in CPU_PIPELINE)

    def emit(self, k: Kernel) -> str:
        return _render(k).text

    def compile(self, k: Kernel) -> Executable:
        r = _render(k)
        return Executable(ABI.of(k), r.text, native.module(r.text, r.name), lambda: k)

    def save(self, exe: Executable) -> tuple[dict, bytes]:
        """What `load` needs to rebuild `exe` (for lowbitc.compile's cache): JSON-able data
        (the symbol, the ABI, the LLVM IR text for `text("llvm")`) and the machine code (a
        shared library, or an object file where no linker was found)."""
        meta = {"symbol": exe.module.name, "abi": exe.abi.to_json(), "llvm": exe.llvm_ir}
        return meta, exe.module.object_code

    def load(self, meta: dict, obj: bytes, kernel: Callable[[], Kernel]) -> Executable:
        """The Executable that `save` described, from its machine code and ABI: no IR, no
        rendering, no LLVM passes, and for a shared library no llvmlite (`kernel` gives the
        lowered IR if the grid needs it). A bad `meta` or `obj` raises BackendError,
        LowbitcError or KeyError."""
        return Executable(ABI.from_json(meta["abi"]), meta["llvm"],
                          native.load(obj, meta["symbol"]), kernel)


BACKEND = LLVMBackend()
