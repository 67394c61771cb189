"""The CUDA toolchain under the numba-cuda backend: PTX, ptxas, SASS, all from pip, no GPU.

`ptx_for` compiles a numba-cuda kernel to LTO-IR and links it with nvJitLink so numba's fp16
C++ shims are inlined (plain `compile_ptx` output calls them as unresolved externs).
`assemble` runs ptxas -v; `sass_mix`/`stats` read the cubin back with nvdisasm.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from lowbitc.backends.numba_cuda import numba_passes, sass
from lowbitc.cache.fsutil import default_cache_dir, ensure_private_dir
from lowbitc.errors import BackendError, UserArgumentError

ARCHES = ("sm_75", "sm_80", "sm_86", "sm_89", "sm_90", "sm_100", "sm_120")
_TOOLS = ("ptxas", "nvdisasm", "cuobjdump")


def cache_dir() -> Path:
    """Where generated kernel sources are written: `<lowbitc cache>/cuda_src`, private (0700)."""
    return ensure_private_dir(default_cache_dir() / "cuda_src")


def find_tool(name: str) -> str:
    """Absolute path of a CUDA binary utility from pip (cuda-pathfinder, then site-packages)."""
    if name not in _TOOLS:
        raise UserArgumentError(f"find_tool: name must be one of {_TOOLS}, got {name!r}")
    try:
        from cuda.pathfinder import find_nvidia_binary_utility
    except ImportError:
        find_nvidia_binary_utility = None
    if find_nvidia_binary_utility is not None:
        found = find_nvidia_binary_utility(name)
        if found:
            return str(found)
    for entry in sys.path:
        candidate = Path(entry) / "nvidia" / "cu13" / "bin" / name
        if candidate.is_file():
            return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    raise BackendError(
        f"CUDA tool {name!r} not found: install the cuda extra "
        f"(pip install 'lowbitc[cuda]', which brings cuda-toolkit[nvcc]==13.0.*, "
        f"nvidia-cuda-nvdisasm and nvidia-cuda-cuobjdump)"
    )


def toolchain_missing() -> str | None:
    """Why the CUDA toolchain cannot be used here, or None when it is complete."""
    for module in ("numba.cuda", "cuda.core"):
        if importlib.util.find_spec(module.split(".")[0]) is None:
            return f"python package for {module} is not installed"
    try:
        import cuda.core  # noqa: F401
        from numba import cuda  # noqa: F401
    except Exception as exc:  # import errors of optional native pieces
        return f"cannot import the CUDA python packages: {exc}"
    for tool in _TOOLS:
        try:
            find_tool(tool)
        except BackendError as exc:
            return str(exc)
    return None


def _cc(arch: str) -> tuple[int, int]:
    match = re.fullmatch(r"sm_(\d+)(\d)", arch)
    if arch not in ARCHES or match is None:
        raise UserArgumentError(f"arch must be one of {ARCHES}, got {arch!r}")
    return int(match.group(1)), int(match.group(2))


def write_source(source: str) -> Path:
    """Write kernel source to the cache under a content-hash name (numba needs a real file)."""
    digest = hashlib.sha256(source.encode()).hexdigest()[:20]
    path = cache_dir() / f"k_{digest}.py"
    if not path.exists() or path.read_text() != source:
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(source)
        os.replace(tmp, path)
    return path


def load_source(source: str, name: str) -> Callable[..., Any]:
    """Import generated Python source from a cached file and return its function `name`."""
    if not name.isidentifier():
        raise UserArgumentError(f"name must be a Python identifier, got {name!r}")
    path = write_source(source)
    module_name = f"lowbitc_cuda_src.{path.stem}"
    module = sys.modules.get(module_name)
    if module is None:
        spec = importlib.util.spec_from_file_location(module_name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[module_name] = module
    func = getattr(module, name, None)
    if not callable(func):
        raise UserArgumentError(f"source defines no function {name!r}")
    return func


def _as_pyfunc(kernel: Callable[..., Any] | str, name: str | None) -> Callable[..., Any]:
    if isinstance(kernel, str):
        if name is None:
            raise UserArgumentError("name: required when the kernel is given as source text")
        return load_source(kernel, name)
    return getattr(kernel, "py_func", kernel)


@contextlib.contextmanager
def _offline_device(cc: tuple[int, int]) -> Iterator[None]:
    """Let kernels call `cuda.jit(device=True)` functions with no driver.

    numba-cuda compiles a called device function for `get_current_device()`'s compute
    capability, which needs a GPU; compile_all itself takes cc as an argument. While this is
    active the dispatcher module sees a stand-in device with the requested cc.
    """
    from numba.cuda import dispatcher

    real = dispatcher.get_current_device
    dispatcher.get_current_device = lambda: SimpleNamespace(compute_capability=cc)
    try:
        yield
    finally:
        dispatcher.get_current_device = real


def ptx_for(
    kernel: Callable[..., Any] | str,
    signature: Any,
    arch: str = "sm_80",
    *,
    name: str | None = None,
    fastmath: bool = False,
) -> str:
    """Standalone PTX (one `.entry`, fp16 shims linked in) of a numba-cuda kernel.

    `kernel` is a Python function (or a cuda.jit dispatcher) or source text defining `name`.
    """
    cc = _cc(arch)
    pyfunc = _as_pyfunc(kernel, name)
    from cuda.core import Linker, LinkerOptions, ObjectCode

    with _offline_device(cc):
        codes = _ltoir(_library(pyfunc, signature, fastmath, cc), cc)
    objects = [ObjectCode.from_ltoir(c) if isinstance(c, bytes) else c for c in codes]
    options = LinkerOptions(arch=arch, link_time_optimization=True, ptx=True)
    linker = Linker(*objects, options=options)
    try:
        code = linker.link("ptx").code
    finally:
        linker.close()
    text = (code.decode() if isinstance(code, bytes) else str(code)).rstrip("\0")
    if ".entry" not in text:
        raise BackendError(f"nvJitLink produced PTX without a .entry for {pyfunc.__name__}")
    return text


# numba-cuda (0.30) reads the compute capability while typing and lowering a kernel only at
# these thresholds (nvvmutils: atomics at 6.0; mathimpl: tanh.approx under fastmath at 7.5;
# its Device.supports_* are not read offline): archs on the same side of each get the same
# LLVM IR, which NVVM then compiles per arch (sm_80 and sm_90 alike)
_NUMBA_CC_THRESHOLDS = ((6, 0), (7, 5))


def _numba_features(cc: tuple[int, int]) -> tuple[bool, ...]:
    return tuple(cc >= t for t in _NUMBA_CC_THRESHOLDS)


_LIBRARIES: dict[tuple, Any] = {}  # (kernel, signature, fastmath, features) -> library


def _library(pyfunc, signature, fastmath: bool, cc: tuple[int, int]):
    """numba-cuda's code library (typed, lowered to LLVM IR: nearly all of a compile's time) of
    a kernel, shared by the archs of one `_numba_features` class (sm_80 and sm_90 alike): the
    first of them asked for compiles it, with numba_passes' stand-ins for the analyses whose
    cost grows with blocks x variables (the same IR, in about half the time for an mma
    kernel). The 16 last libraries are kept."""
    key = (pyfunc, signature, fastmath, _numba_features(cc))
    if key not in _LIBRARIES:
        from numba.cuda.compiler import _compile_pyfunc_with_fixup

        while len(_LIBRARIES) >= 16:
            del _LIBRARIES[next(iter(_LIBRARIES))]
        with numba_passes.faster_analyses():
            _LIBRARIES[key], _ = _compile_pyfunc_with_fixup(
                pyfunc, signature, device=False, fastmath=fastmath, cc=cc, abi="numba",
                lto=True)
    return _LIBRARIES[key]


def _ltoir(lib, cc: tuple[int, int]) -> list:
    """The kernel's LTO-IR for `cc` and the code it links (C++ shims compiled by NVRTC for
    `cc`), as numba-cuda's compile_all(output="ltoir") returns them."""
    from numba.cuda.cudadrv import nvrtc
    from numba.cuda.cudadrv.linkable_code import LinkableCode

    codes = [lib.get_ltoir(cc=cc)]
    for path_or_obj in lib._linking_files:
        obj = LinkableCode.from_path_or_obj(path_or_obj)
        if obj.kind == "cu":
            codes.append(nvrtc.compile(obj.data, obj.name, cc, ltoir=True)[0])
        else:
            codes.append(obj)
    return codes


@dataclass(frozen=True)
class AsmResult:
    """What ptxas -v reports for one assembled kernel, plus the cubin itself."""

    arch: str
    cubin: bytes = field(repr=False)
    log: str = field(repr=False)
    registers: int
    spill_store_bytes: int
    spill_load_bytes: int
    stack_bytes: int
    shared_bytes: int
    barriers: int

    @property
    def spill_bytes(self) -> int:
        return self.spill_store_bytes + self.spill_load_bytes


_NUM = r"(\d+)"


def parse_ptxas_log(log: str) -> dict[str, int]:
    """Resource figures from `ptxas -v` output (maxima over the functions it lists)."""

    def grab(pattern: str) -> int:
        return max((int(m) for m in re.findall(pattern, log)), default=0)

    if "Used" not in log:
        raise BackendError(f"ptxas -v printed no resource line:\n{log}")
    return {
        "registers": grab(r"Used " + _NUM + r" registers"),
        "spill_store_bytes": grab(_NUM + r" bytes spill stores"),
        "spill_load_bytes": grab(_NUM + r" bytes spill loads"),
        "stack_bytes": grab(_NUM + r" bytes stack frame"),
        "shared_bytes": grab(_NUM + r" bytes smem"),
        "barriers": grab(r"used " + _NUM + r" barriers"),
    }


def _run(args: list[str], what: str) -> str:
    proc = subprocess.run(args, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BackendError(f"{what} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}")
    return proc.stdout + proc.stderr


def assemble(ptx: str, arch: str = "sm_80") -> AsmResult:
    """Assemble PTX with the pip ptxas (-v) into a cubin and parse the resource report."""
    _cc(arch)
    ptxas = find_tool("ptxas")
    with tempfile.TemporaryDirectory(prefix="lowbitc_ptxas_") as tmp:
        src, out = Path(tmp) / "kernel.ptx", Path(tmp) / "kernel.cubin"
        src.write_text(ptx.rstrip("\0"))
        log = _run([ptxas, "-v", f"-arch={arch}", str(src), "-o", str(out)], "ptxas")
        cubin = out.read_bytes()
    return AsmResult(arch=arch, cubin=cubin, log=log, **parse_ptxas_log(log))


def disassemble(cubin: bytes) -> str:
    """nvdisasm -c text of a cubin (labels for branch targets make loops visible)."""
    nvdisasm = find_tool("nvdisasm")
    with tempfile.TemporaryDirectory(prefix="lowbitc_sass_") as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        return _run([nvdisasm, "-c", str(path)], "nvdisasm")


def sass_mix(cubin: bytes) -> dict[str, int]:
    """Instruction counts by base opcode (LOP3, PRMT, HFMA2, ...) over the whole cubin."""
    return sass.opcode_mix(sass.parse(disassemble(cubin)))


def stats(
    kernel: Callable[..., Any] | str | AsmResult,
    signature: Any = None,
    arch: str = "sm_80",
    *,
    name: str | None = None,
    weights_per_iteration: int | None = None,
) -> dict[str, Any]:
    """JSON-ready figures of a kernel: resources, SASS mix, and its innermost loop.

    With `weights_per_iteration` (weights one pass of the innermost loop dequantizes) the
    result includes `sass_per_weight`.
    """
    if isinstance(kernel, AsmResult):
        asm = kernel
    else:
        asm = assemble(ptx_for(kernel, signature, arch, name=name), arch)
    instrs = sass.parse(disassemble(asm.cubin))
    loop = sass.innermost_loop(instrs)
    out: dict[str, Any] = {
        "arch": asm.arch,
        "registers": asm.registers,
        "spill_bytes": asm.spill_bytes,
        "spill_store_bytes": asm.spill_store_bytes,
        "spill_load_bytes": asm.spill_load_bytes,
        "stack_bytes": asm.stack_bytes,
        "shared_bytes": asm.shared_bytes,
        "instructions": sass.count(instrs),
        "sass_mix": sass.opcode_mix(instrs),
        "inner_loop": None,
    }
    if loop is not None:
        body = dict(
            instructions=sass.count(loop), sass_mix=sass.opcode_mix(loop), start=loop[0].addr
        )
        if weights_per_iteration:
            body["weights"] = weights_per_iteration
            body["sass_per_weight"] = round(sass.count(loop) / weights_per_iteration, 4)
        out["inner_loop"] = body
    return out


def run_in_simulator(
    args: list[str], timeout: float = 900, cwd: str | os.PathLike | None = None
) -> subprocess.CompletedProcess:
    """Run `python *args` with NUMBA_ENABLE_CUDASIM=1 in a fresh process.

    The simulator is chosen at `import numba.cuda` and is process-wide, so simulated code never
    runs in the calling process. Output is captured; the caller checks returncode.
    """
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    return subprocess.run(
        [sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True,
        timeout=timeout,
    )
