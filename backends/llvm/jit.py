"""MCJIT runtime for the LLVM CPU backend: LLVM IR text -> optimized host machine code.

One `TargetMachine` (the target CPU's name and features from target.py: the host's, or the
CPU LOWBITC_TARGET_CPU names; opt level 3) serves every module. A compiled module keeps its
execution engine alive in a module-level registry, so the function addresses it hands out
stay valid for the life of the process. Object code is captured from
MCJIT itself and can be reloaded into a fresh engine (the persistent compile cache's path).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import llvmlite
import llvmlite.binding as llvm

from lowbitc.backends.llvm.target import cpu_feature_string, cpu_name
from lowbitc.errors import BackendError

__all__ = [
    "CompiledModule",
    "assembly",
    "compile_ir",
    "host_target_id",
    "load_object",
    "object_code",
    "optimize_ir",
]

# llvmlite/LLVM state is not safe to mutate from several threads at once.
_LOCK = threading.RLock()
_TARGET_MACHINE: llvm.TargetMachine | None = None
# position-independent code (small code model) for objects linked into shared libraries
_PIC_TARGET_MACHINE: llvm.TargetMachine | None = None
# Every engine ever created: dropping one would free the code its function pointers point at.
_ENGINES: list[CompiledModule] = []


@dataclass(eq=False)
class CompiledModule:
    """Machine code loaded in this process: function addresses by name plus the object bytes."""

    name: str
    object_code: bytes
    _engine: llvm.ExecutionEngine = field(repr=False)
    _addresses: dict[str, int] = field(default_factory=dict, repr=False)

    def address(self, symbol: str) -> int:
        """The entry address of the function `symbol`; BackendError if the module lacks it."""
        addr = self._addresses.get(symbol)
        if addr is None:
            with _LOCK:
                addr = self._engine.get_function_address(symbol)
            if not addr:
                raise BackendError(f"module {self.name!r} has no function {symbol!r}")
            self._addresses[symbol] = addr
        return addr


def _target_machine() -> llvm.TargetMachine:
    """The host target machine, created once (targets initialized on first use)."""
    global _TARGET_MACHINE
    with _LOCK:
        if _TARGET_MACHINE is None:
            llvm.initialize_all_targets()
            llvm.initialize_all_asmprinters()
            target = llvm.Target.from_triple(llvm.get_process_triple())
            _TARGET_MACHINE = target.create_target_machine(
                cpu=cpu_name(),
                features=cpu_feature_string(),
                opt=3,
                jit=True,
            )
        return _TARGET_MACHINE


def _pic_target_machine() -> llvm.TargetMachine:
    """The host target machine for shared-library objects (PIC, default code model)."""
    global _PIC_TARGET_MACHINE
    with _LOCK:
        if _PIC_TARGET_MACHINE is None:
            jit_tm = _target_machine()
            target = llvm.Target.from_triple(jit_tm.triple)
            _PIC_TARGET_MACHINE = target.create_target_machine(
                cpu=cpu_name(),
                features=cpu_feature_string(),
                opt=3,
                reloc="pic",
                codemodel="default",
            )
        return _PIC_TARGET_MACHINE


def host_target_id() -> str:
    """A key naming the code this machine's JIT produces: triple, CPU, sorted features, LLVM."""
    _target_machine()
    version = ".".join(map(str, llvm.llvm_version_info))
    return (
        f"{llvm.get_process_triple()}:{cpu_name()}:{cpu_feature_string()}"
        f":llvm{version}:llvmlite{llvmlite.__version__}"
    )


def _parse(llvm_ir: str, name: str) -> llvm.ModuleRef:
    """Parse and verify IR text; malformed IR is a BackendError naming the module."""
    try:
        module = llvm.parse_assembly(llvm_ir)
        module.verify()
    except RuntimeError as exc:
        raise BackendError(f"invalid LLVM IR in module {name!r}: {exc}") from None
    module.name = name
    tm = _target_machine()
    module.triple = tm.triple
    module.data_layout = str(tm.target_data)
    return module


def _optimize(module: llvm.ModuleRef) -> None:
    """Run LLVM's O3 pipeline (loop and SLP vectorizers on) over `module` in place."""
    tm = _target_machine()
    pto = llvm.create_pipeline_tuning_options(speed_level=3)
    pto.loop_vectorization = True
    pto.slp_vectorization = True
    pto.loop_interleaving = True
    pto.loop_unrolling = True
    pb = llvm.create_pass_builder(tm, pto)
    pb.getModulePassManager().run(module, pb)


def _register(name: str, engine: llvm.ExecutionEngine, obj: bytes) -> CompiledModule:
    compiled = CompiledModule(name=name, object_code=obj, _engine=engine)
    _ENGINES.append(compiled)
    return compiled


def compile_ir(llvm_ir: str, name: str) -> CompiledModule:
    """Parse, verify, optimize (O3) and JIT `llvm_ir` for the host; the result lives forever."""
    with _LOCK:
        module = _parse(llvm_ir, name)
        _optimize(module)
        captured: list[bytes] = []
        engine = llvm.create_mcjit_compiler(module, _target_machine())
        engine.set_object_cache(lambda _mod, buf: captured.append(buf), None)
        engine.finalize_object()
        if not captured:
            raise BackendError(f"MCJIT produced no object code for module {name!r}")
        return _register(name, engine, captured[0])


def load_object(obj: bytes, name: str) -> CompiledModule:
    """Load object code from `object_code`/`CompiledModule.object_code` into a new engine."""
    if not isinstance(obj, (bytes, bytearray)) or not obj:
        raise BackendError(f"object code for module {name!r} is empty or not bytes")
    with _LOCK:
        engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), _target_machine())
        try:
            engine.add_object_file(llvm.ObjectFileRef.from_data(bytes(obj)))
            engine.finalize_object()
        except RuntimeError as exc:
            raise BackendError(f"cannot load object code for module {name!r}: {exc}") from None
        return _register(name, engine, bytes(obj))


def object_code(llvm_ir: str, name: str = "module", pic: bool = False) -> bytes:
    """The host object file (ELF bytes) for `llvm_ir` after O3, loadable by `load_object`;
    `pic=True` emits position-independent code for linking into a shared library."""
    with _LOCK:
        module = _parse(llvm_ir, name)
        _optimize(module)
        return (_pic_target_machine() if pic else _target_machine()).emit_object(module)


def optimize_ir(llvm_ir: str, name: str = "module") -> str:
    """The IR after the O3 pipeline, as text (for inspection and golden tests)."""
    with _LOCK:
        module = _parse(llvm_ir, name)
        _optimize(module)
        return str(module)


def assembly(llvm_ir: str, name: str = "module") -> str:
    """Host assembly for `llvm_ir` after the O3 pipeline (`emit --format asm`)."""
    with _LOCK:
        module = _parse(llvm_ir, name)
        _optimize(module)
        return _target_machine().emit_assembly(module)
