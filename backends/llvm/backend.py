"""The LLVM CPU backend: render (pure) and compile (MCJIT) a lowered kernel; run its grid
over the thread pool with arguments checked before any native code runs."""

from __future__ import annotations

from dataclasses import dataclass

from lowbitc.backends.llvm import jit
from lowbitc.backends.llvm.launch import ArgPacker, ArrayArg, GridLauncher, ScalarArg
from lowbitc.cache import CacheKey, default_cache
from lowbitc.interp import compile_grid, grid_of_bound
from lowbitc.ir.core import Kernel
from lowbitc.ir.types import TensorType
from lowbitc.passes import CPU_PIPELINE
from lowbitc.signature import Binder, storage_dtype

_SCALAR_KIND = {"i64": "i64", "i32": "i32", "f32": "f32", "f64": "f64"}


def _load(llvm_ir: str, symbol: str) -> jit.CompiledModule:
    """JIT the module, reusing object code from the persistent cache when it has it (the key
    covers the IR text, the host CPU and features, toolchain versions and lowbitc's codegen)."""
    cache = default_cache()
    if cache is None:
        return jit.compile_ir(llvm_ir, symbol)
    key = CacheKey.make(llvm_ir, {"symbol": symbol}, backend="llvm",
                        target=jit.host_target_id())
    obj = cache.get_or_build(key, lambda: jit.object_code(llvm_ir, symbol))
    return jit.load_object(obj, symbol)


def _render(k: Kernel):
    # codegen loads on first use: a kernel loaded by `load` (compile cache hit) never renders
    from lowbitc.backends.llvm.codegen import render

    return render(k)


class Executable:
    """A JIT-compiled kernel: checks and binds arguments, evaluates the grid, launches."""

    def __init__(self, k: Kernel, llvm_ir: str, symbol: str,
                 module: jit.CompiledModule | None = None):
        self.k = k
        self.llvm_ir = llvm_ir
        self.module = module if module is not None else _load(llvm_ir, symbol)
        sig = []
        for p in k.params:
            if isinstance(p.type, TensorType):
                sig.append(ArrayArg(p.name, storage_dtype(p.type.dtype), len(p.type.shape)))
            else:
                sig.append(ScalarArg(p.name, _SCALAR_KIND[p.type.dtype]))
        sig += [ScalarArg(d.name, "i64") for d in k.dims]
        sig += [ScalarArg("grid.x", "i64"), ScalarArg("grid.y", "i64")]
        self.packer = ArgPacker(sig)
        # grids of fewer than 8 blocks run on the calling thread: waking a worker costs more
        self.launcher = GridLauncher(self.module.address(symbol), 0, min_blocks_per_thread=4)
        self.grid = compile_grid(k)
        self.binder = Binder(k)

    def __call__(self, *args, **kwargs) -> None:
        b = self.binder(args, kwargs)
        gx, gy, gz = grid_of_bound(self.k, b, self.grid)
        packed = self.packer(b.ordered(self.k) + [gx, gy])
        self.launcher(packed, gx * gy * gz)

    def text(self, stage: str) -> str:
        if stage == "llvm":
            return self.llvm_ir
        if stage == "asm":
            return jit.assembly(self.llvm_ir)
        raise ValueError(f"stage: expected ir, lowered, llvm or asm, got {stage!r}")


@dataclass(frozen=True)
class LLVMBackend:
    name: str = "llvm"
    pipeline: tuple[str, ...] = CPU_PIPELINE

    def emit(self, k: Kernel) -> str:
        return _render(k).text

    def compile(self, k: Kernel) -> Executable:
        r = _render(k)
        return Executable(k, r.text, r.name)

    def save(self, exe: Executable) -> tuple[dict, bytes]:
        """What `load` needs to rebuild `exe` (for lowbitc.compile's cache): JSON-able data
        (the symbol, the LLVM IR text for `text("llvm")`) and the object code."""
        return {"symbol": exe.module.name, "llvm": exe.llvm_ir}, exe.module.object_code

    def load(self, k: Kernel, meta: dict, obj: bytes) -> Executable:
        """The Executable that `save` described, from its object code: no rendering and no
        LLVM passes. A bad `meta` or `obj` raises BackendError/KeyError."""
        symbol = meta["symbol"]
        return Executable(k, meta["llvm"], symbol, jit.load_object(obj, symbol))


BACKEND = LLVMBackend()
