"""`lowbitc.compile`: .lbk source -> parse -> lower (with compile-time params) -> passes ->
backend. The result is a `Kernel` callable on numpy arrays."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lowbitc.dsl import ast as A
from lowbitc.dsl.lower import lower_kernel
from lowbitc.dsl.modules import load_module, load_source
from lowbitc.errors import DSLNameError, UserArgumentError
from lowbitc.interp import run as interpret
from lowbitc.ir.core import Kernel as IRKernel
from lowbitc.ir.printer import print_kernel
from lowbitc.passes import run_pipeline
from lowbitc.backends import get_backend


def load(source_or_path: str | Path) -> tuple[A.Module, str]:
    """Parse a .lbk file (a path) or source text; returns the module and its source text."""
    if isinstance(source_or_path, Path) or (
        isinstance(source_or_path, str) and source_or_path.endswith(".lbk")
        and "\n" not in source_or_path
    ):
        path = Path(source_or_path)
        return load_module(path), path.read_text(encoding="utf-8")
    if not isinstance(source_or_path, str):
        raise UserArgumentError(
            f"source_or_path: expected .lbk source text or a path, got "
            f"{type(source_or_path).__name__}")
    return load_source(source_or_path), source_or_path


def pick_kernel(module: A.Module, name: str | None) -> A.Kernel:
    if not module.kernels:
        raise DSLNameError("the source defines no kernel", module.loc)
    if name is None:
        return module.kernels[-1] if len(module.kernels) == 1 else _ambiguous(module)
    for k in module.kernels:
        if k.name == name:
            return k
    raise DSLNameError(f"no kernel named {name!r}; the source defines "
                       f"{', '.join(k.name for k in module.kernels)}", module.loc)


def _ambiguous(module: A.Module) -> A.Kernel:
    raise UserArgumentError(
        "kernel: the source defines several kernels ("
        + ", ".join(k.name for k in module.kernels) + "); pass kernel=NAME")


@dataclass
class Kernel:
    """A compiled kernel. Call it with numpy arrays (outputs are written in place)."""

    name: str
    backend: str
    ir: IRKernel  # after lowering from the DSL, before passes
    lowered: IRKernel  # after the backend's pipeline
    source: str
    params: dict[str, object]
    _exe: object = field(repr=False, default=None)

    def __call__(self, *args, **kwargs) -> None:
        self._exe(*args, **kwargs)

    def interpret(self, *args, **kwargs) -> None:
        """Run the numpy reference interpreter on the same arguments (the semantics)."""
        interpret(self.ir, *args, **kwargs)

    def text(self, stage: str = "ir") -> str:
        """`ir` (tile IR), `lowered` (after passes) or the backend's own text (`llvm`, `ptx`)."""
        if stage == "ir":
            return print_kernel(self.ir)
        if stage == "lowered":
            return print_kernel(self.lowered)
        return self._exe.text(stage)


def compile(source_or_path: str | Path, backend: str = "llvm", kernel: str | None = None,
            **params) -> Kernel:
    """Compile a .lbk kernel for `backend` with compile-time `params` (defaults fill the rest)."""
    be = get_backend(backend)
    module, source = load(source_or_path)
    ast_kernel = pick_kernel(module, kernel)
    ir = lower_kernel(module, ast_kernel, params)
    lowered = run_pipeline(ir, be.pipeline)
    exe = be.compile(lowered)
    return Kernel(ir.name, backend, ir, lowered, source, dict(params), exe)
