"""`lowbitc compile FILE.lbk [--kernel NAME] [-D NAME=VALUE ...] [--emit STAGE]`.

Compiles every kernel of a .lbk file (or the one named) for the LLVM CPU backend and prints
one summary line per kernel, or the text of one stage: `ir` (tile IR from the DSL), `lowered`
(after the pass pipeline), `llvm` (LLVM IR) or `asm` (x86 assembly); `--explain` prints the
path each dot, load and store took (`Kernel.explain`). `-D` sets compile-time
parameters; a kernel only takes the ones it declares.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from lowbitc.compiler import Kernel, compile, load, pick_kernel
from lowbitc.errors import UserArgumentError
from lowbitc.ir import walk

NAME = "compile"
STAGES = ("ir", "lowered", "llvm", "asm")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", metavar="FILE.lbk", nargs="+",
                        help="kernel source files (each is compiled in turn)")
    parser.add_argument("--kernel", metavar="NAME", default=None,
                        help="compile only this kernel (default: every kernel in the file)")
    add_define_argument(parser)
    parser.add_argument("--emit", choices=STAGES, default=None,
                        help="print this stage's text instead of the summary")
    parser.add_argument("--explain", action="store_true",
                        help="print the path each dot, load and store took and the packing "
                             "of each parameter, with the reason and position of every "
                             "fallback (docs/dsl.md, Performance)")


def add_define_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-D", dest="defines", action="append", default=[],
                        metavar="NAME=VALUE",
                        help="a compile-time parameter, e.g. -D W=u3 -D BM=16 -D ZP=true "
                             "(repeatable)")


def parse_defines(defines: list[str]) -> dict[str, object]:
    """`NAME=VALUE` strings -> params: true/false are bools, numbers are int/float, the rest
    are format names (u4, f6e3m2, ...)."""
    params: dict[str, object] = {}
    for d in defines:
        name, sep, value = d.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name.isidentifier() or not value:
            raise UserArgumentError(f"-D: expected NAME=VALUE (e.g. -D BM=16), got {d!r}")
        params[name] = _value(value)
    return params


def _value(text: str) -> object:
    if text in ("true", "false"):
        return text == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def compile_file(path: str, kernel: str | None, params: dict[str, object],
                 backend: str = "llvm") -> list[tuple[Kernel, float]]:
    """Compile the named kernel, or each kernel of the file with the params it declares."""
    if not Path(path).is_file():
        raise UserArgumentError(f"FILE: no such .lbk file: {path!r}")
    module, _ = load(Path(path))
    chosen = [pick_kernel(module, kernel)] if kernel else list(module.kernels)
    if not chosen:
        pick_kernel(module, None)  # raises "the source defines no kernel"
    declared = {c.name for k in chosen for c in k.cparams}
    unused = sorted(set(params) - declared)
    if unused:
        raise UserArgumentError(f"compile-time parameter {', '.join(unused)}: no kernel "
                                f"compiled here declares it (declared: "
                                f"{', '.join(sorted(declared)) or 'none'})")
    out = []
    for k in chosen:
        mine = {n: v for n, v in params.items() if n in {c.name for c in k.cparams}}
        t0 = time.perf_counter()
        compiled = compile(Path(path), backend=backend, kernel=k.name, **mine)
        out.append((compiled, time.perf_counter() - t0))
    return out


def summary(k: Kernel, seconds: float) -> str:
    """One line: name, specialised parameters, op counts, threads, LLVM size, time."""
    meta = " ".join(f"{n}={v}" for n, v in k.ir.meta) or "-"
    n_ir = sum(1 for _ in walk(k.ir.body.ops))
    n_low = sum(1 for _ in walk(k.lowered.body.ops))
    tensors = sum(1 for p in k.ir.params if hasattr(p.type, "shape"))
    llvm_lines = k.text("llvm").count("\n") if k.backend == "llvm" else 0
    return (f"{k.name}: [{meta}] {tensors} tensors, {len(k.ir.params) - tensors} scalars, "
            f"{n_ir} ops -> {n_low} lowered, threads {k.ir.threads}, "
            f"{llvm_lines} lines of LLVM IR, compiled in {seconds:.2f} s")


def run(args: argparse.Namespace) -> int:
    defines = parse_defines(args.defines)
    compiled = [c for f in args.files for c in compile_file(f, args.kernel, defines)]
    for i, (k, seconds) in enumerate(compiled):
        if args.explain:
            print(("" if i == 0 else "\n") + k.explain())
            continue
        if args.emit is None:
            print(summary(k, seconds))
            continue
        if len(compiled) > 1:
            print(("" if i == 0 else "\n") + f"# ---- kernel {k.name}")
        print(k.text(args.emit), end="" if k.text(args.emit).endswith("\n") else "\n")
    return 0
