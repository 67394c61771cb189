"""`lowbitc emit KERNEL --wtype T --backend llvm|cuda [--arch sm_80] --format FMT`.

KERNEL is a shipped kernel (`matmul`, `matmul_mma`, `dequantize`) or a .lbk path; `--wtype`
binds the kernel's weight format parameter `W`. On cuda, `matmul -D A=f16` (or `A=bf16`) is
the kernel `ops.matmul` runs for f16 (bf16) activations (`matmul_mma`, tensor cores, when the
format allows). Formats: `ir`, `lowered`, `llvm`, `asm`, `stats` (an instruction mix of the
generated code; on cuda ptxas/nvdisasm figures, with `mma_loop` for tensor-core kernels)
and, for the CUDA backend, `ptx`.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import re
from collections import Counter
from importlib import resources
from pathlib import Path

from lowbitc.commands.compile import add_define_argument, compile_file, parse_defines
from lowbitc.compiler import Kernel
from lowbitc.errors import UserArgumentError
from lowbitc.ir import walk

NAME = "emit"
SHIPPED = ("matmul", "matmul_mma", "dequantize")
FORMATS = ("ir", "lowered", "llvm", "asm", "ptx", "stats")
CUDA_MODULE = "lowbitc.backends.numba_cuda.backend"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kernel", metavar="KERNEL",
                        help=f"a shipped kernel ({', '.join(SHIPPED)}) or a .lbk file")
    parser.add_argument("--name", metavar="NAME", default=None,
                        help="which kernel of a .lbk file that defines several")
    parser.add_argument("--wtype", metavar="T", default=None,
                        help="weight format for the kernel's W parameter (u4, i3, nf4, ...)")
    parser.add_argument("--backend", choices=("llvm", "cuda"), default="llvm")
    parser.add_argument("--arch", default=None, help="CUDA architecture (cuda only), e.g. sm_80")
    parser.add_argument("--format", choices=FORMATS, default="ir", help="what to print")
    add_define_argument(parser)


def kernel_file(name: str) -> str:
    """A shipped kernel's path, or name itself if it is a .lbk file."""
    if name in SHIPPED:
        return str(resources.files("lowbitc.kernels").joinpath(f"{name}.lbk"))
    if name.endswith(".lbk") and Path(name).is_file():
        return name
    raise UserArgumentError(f"KERNEL: expected one of {', '.join(SHIPPED)} or a .lbk file, "
                            f"got {name!r}")


def cuda_available() -> bool:
    try:
        return importlib.util.find_spec(CUDA_MODULE) is not None
    except ModuleNotFoundError:
        return False


def stats(k: Kernel) -> str:
    """Op counts of the lowered IR and the x86 instruction mix of the LLVM backend's code."""
    ops = Counter(op.opcode for op in walk(k.lowered.body.ops))
    lines = [f"kernel {k.name} ({k.backend})",
             "lowered ops: " + ", ".join(f"{o} {n}" for o, n in sorted(ops.items()))]
    if k.backend == "llvm":
        asm = [ln.split()[0] for ln in k.text("asm").splitlines()
               if ln.startswith("\t") and not ln.strip().startswith((".", "#"))]
        body = "\n".join(k.text("asm").splitlines())
        regs = {r: len(re.findall(rf"%{r}mm\d+", body)) for r in ("z", "y", "x")}
        top = Counter(asm).most_common(12)
        lines += [f"instructions: {len(asm)} (calls {sum(i.startswith('call') for i in asm)})",
                  f"vector register uses: zmm {regs['z']}, ymm {regs['y']}, xmm {regs['x']}",
                  "most common: " + ", ".join(f"{i} {n}" for i, n in top)]
    return "\n".join(lines)


def cuda_text(k: Kernel, fmt: str, arch: str) -> str:
    """Standalone PTX for `arch`, or JSON figures from ptxas and nvdisasm (`stats`)."""
    backend = importlib.import_module(CUDA_MODULE).BACKEND
    toolchain = importlib.import_module("lowbitc.backends.numba_cuda.toolchain")
    ptx = backend.ptx(k.lowered, arch)
    if fmt == "ptx":
        return ptx
    asm = toolchain.assemble(ptx, arch)
    out = toolchain.stats(asm)
    out["_cubin"] = asm.cubin
    steady = backend.steady_state_stats(k.lowered, arch)  # f16 pair path: docs/cuda.md
    loop = mma_loop(toolchain, out)
    if loop is not None:
        out["mma_loop"] = loop
    if steady is not None:
        out["steady_state"] = {"registers": steady["registers"],
                               "spill_bytes": steady["spill_bytes"],
                               "inner_loop": steady["inner_loop"]}
    return json.dumps(out, indent=2)


def mma_loop(toolchain, out: dict) -> dict | None:
    """The steady-state K loop of a tensor-core kernel: the innermost SASS loop holding HMMA
    (its body counted statically, nested staging loops once), HMMA count and non-HMMA
    instructions per HMMA. None without HMMA."""
    sass = importlib.import_module("lowbitc.backends.numba_cuda.sass")
    instrs = sass.parse(toolchain.disassemble(out.pop("_cubin")))
    spans = [(a, b) for a, b in sass.loops(instrs)
             if any(ins.base == "HMMA" for ins in instrs[a:b + 1])]
    if not spans:
        return None
    a, b = min(spans, key=lambda s: s[1] - s[0])
    body = instrs[a:b + 1]
    total, hmma = sass.count(body), sum(ins.base == "HMMA" for ins in body)
    return {"instructions": total, "hmma": hmma,
            "non_hmma_per_hmma": round((total - hmma) / hmma, 2),
            "nested_loops": sum(1 for c, d in sass.loops(instrs) if a <= c and d <= b) - 1,
            "sass_mix": sass.opcode_mix(body)}


def shipped_choice(kernel: str, backend: str, params: dict) -> str:
    """`matmul` with f16 or bf16 activations on cuda is `matmul_mma` when ops.matmul would run
    it."""
    from lowbitc.mma_plan import MMA_ACTIVATIONS, mma_format

    if kernel != "matmul" or backend != "cuda" or params.get("A") not in MMA_ACTIVATIONS:
        return kernel
    from lowbitc.formats import lookup

    if not mma_format(lookup(str(params.get("W", "u4")))):
        return kernel
    params.pop("EARLY", None)
    return "matmul_mma"


def run(args: argparse.Namespace) -> int:
    if args.backend == "cuda" and not cuda_available():
        raise UserArgumentError("--backend cuda: the CUDA backend is not available yet "
                                "(use --backend llvm)")
    if args.arch is not None and args.backend != "cuda":
        raise UserArgumentError(f"--arch {args.arch}: only the cuda backend takes an arch")
    if args.format == "ptx" and args.backend != "cuda":
        raise UserArgumentError("--format ptx: PTX comes from --backend cuda")
    params = parse_defines(args.defines)
    if args.wtype is not None:
        params["W"] = args.wtype
    kernel = shipped_choice(args.kernel, args.backend, params)
    compiled = compile_file(kernel_file(kernel), args.name, params, backend=args.backend)
    if len(compiled) != 1:
        raise UserArgumentError(f"KERNEL: {args.kernel} defines several kernels ("
                                + ", ".join(k.name for k, _ in compiled) + "); pick one with "
                                "--name")
    k = compiled[0][0]
    if args.backend == "cuda" and args.format in ("ptx", "stats"):
        text = cuda_text(k, args.format, args.arch or "sm_80")
    else:
        text = stats(k) if args.format == "stats" else k.text(args.format)
    print(text, end="" if text.endswith("\n") else "\n")
    return 0
