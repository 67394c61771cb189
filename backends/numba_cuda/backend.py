"""The numba-cuda backend: `emit` renders Python source (pure), `compile` jit-compiles it with
numba-cuda (on a GPU, or in Numba's CUDA simulator under NUMBA_ENABLE_CUDASIM=1) and returns
an `Executable` that takes numpy arrays (copied to and from the device) or device arrays
(anything with `__cuda_array_interface__`, torch CUDA tensors included). bf16 tensors travel
as their 16-bit patterns: a bfloat16 numpy array, or a device array of 2-byte integers (torch
bf16 tensors have no array interface: pass `t.view(torch.int16)`)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from lowbitc.backends.numba_cuda import toolchain
from lowbitc.backends.numba_cuda.halves import UNITS, steady_state
from lowbitc.backends.numba_cuda.interleave import HOST_WORDS, device_words, interleaved_params
from lowbitc.backends.numba_cuda.launch import launch as run
from lowbitc.backends.numba_cuda.mma_dot import mma_tiling
from lowbitc.backends.numba_cuda.mma_packed import mma_packings
from lowbitc.backends.numba_cuda.render import Rendered, render
from lowbitc.errors import UserArgumentError
from lowbitc.interp import grid_of_bound
from lowbitc.ir.core import Kernel, walk
from lowbitc.ir.types import TensorType, is_machine, numpy_dtype
from lowbitc.passes import magic_convert  # noqa: F401  (registers magic-convert)
from lowbitc.repack import PackedWords
from lowbitc.repack_cache import WORDS
from lowbitc.signature import bind

# the CPU pipeline plus the magic-number code conversion
CUDA_PIPELINE = ("infer-layouts", "cse", "lower-formats", "bitpack", "lower-encode",
                 "magic-convert", "cse", "dce")
_SCALAR = {"i64": np.int64, "i32": np.int32, "f32": np.float32, "f64": np.float64}


def _is_device(a: object) -> bool:
    """A CUDA array interface object, or a numba device array (the simulator's have no
    interface dict, only the device-array methods)."""
    return not isinstance(a, np.ndarray) and (
        hasattr(a, "__cuda_array_interface__") or hasattr(a, "copy_to_host"))


def _shape_proxy(a: object, bf16: bool = False) -> np.ndarray:
    """A numpy array with a device array's dtype and shape (no memory) for argument checks
    (`bf16`: a parameter of bf16 values, which a 2-byte integer device array holds as bits)."""
    cai = getattr(a, "__cuda_array_interface__", None)
    if cai is not None:
        dtype, shape, strides = np.dtype(cai["typestr"]), tuple(cai["shape"]), cai.get("strides")
    else:  # a numba device array (the simulator's have no interface dict)
        dtype, shape, strides = np.dtype(a.dtype), tuple(a.shape), None
    dense = tuple(dtype.itemsize * int(np.prod(shape[i + 1:])) for i in range(len(shape)))
    if strides is not None and tuple(strides) != dense:
        raise UserArgumentError("device array arguments must be C-contiguous")
    if bf16 and dtype.kind in "iu" and dtype.itemsize == 2:
        dtype = numpy_dtype("bf16")
    return np.lib.stride_tricks.as_strided(np.zeros(1, dtype), shape, dense)


class Executable:
    """A compiled kernel: checks and binds arguments, evaluates the grid on the host,
    launches one CUDA block of `threads` threads per grid block."""

    def __init__(self, k: Kernel, rendered: Rendered, threads: int):
        from numba import cuda

        self.k = k
        self.rendered = rendered
        self.threads = threads
        self.kernel = cuda.jit(toolchain.load_source(rendered.source, rendered.name))
        stored = {op.operands[0].id for op in walk(k.body.ops)
                  if op.opcode in ("store", "store_codes")}
        self.outputs = {p.name for p in k.params if p.id in stored}
        self.bf16 = {p.name for p in k.params
                     if isinstance(p.type, TensorType) and p.type.dtype == "bf16"}
        mma = mma_packings(k, threads, mma_tiling)
        self.mma = {p.name: mma[p.id] for p in k.params if p.id in mma}
        self.bytes = {p.name: numpy_dtype(p.type.dtype) for p in k.params
                      if p.id in mma and is_machine(p.type.dtype)}
        order = interleaved_params(k)
        self.interleaved = {p.name: order[p.id] for p in k.params
                            if p.id in order and p.id not in mma}
        self.abi = _Abi(self.mma)

    def __call__(self, *args, **kwargs) -> None:
        from numba import cuda

        names = [p.name for p in self.k.params]
        given = dict(zip(names, args, strict=False))
        given |= {n: v for n, v in kwargs.items() if n in names}
        dims = {n: v for n, v in kwargs.items() if n not in names}
        checked = {n: _shape_proxy(v, n in self.bf16) if _is_device(v) else v
                   for n, v in given.items()}
        for n in self.mma:
            if isinstance(given.get(n), PackedWords):
                checked[n] = _packed_proxy(n, given[n], self.mma[n], self.bytes.get(n))
        b = bind(self.k, (), checked | dims)
        for p in self.k.params:
            if p.name in self.mma:
                given[p.name] = _mma_words(given[p.name], self.mma[p.name],
                                           b.dims.get(str(p.type.shape[1]), p.type.shape[1]))
        gx, gy, gz = grid_of_bound(self.k, b)
        launch, copies = [], []
        for p in self.k.params:
            v = given[p.name]
            if not isinstance(p.type, TensorType):
                launch.append(_SCALAR[p.type.dtype](b.values[p.name]))
            elif isinstance(v, np.ndarray):
                v = v.view(np.uint16) if p.type.dtype == "bf16" else v  # bf16 as its bits
                bits = self.interleaved.get(p.name)
                d = cuda.to_device(v if bits is None else HOST_WORDS.get(v, bits))
                launch.append(d)
                if p.name in self.outputs:
                    copies.append((d, v))
            else:
                d = cuda.as_cuda_array(v) if hasattr(v, "__cuda_array_interface__") else v
                d = d.view(np.uint16) if p.name in self.bf16 else d
                bits = self.interleaved.get(p.name)
                launch.append(d if bits is None else device_words(d, bits))
        launch += [np.int64(b.dims[d.name]) for d in self.k.dims]
        if gx * gy * gz == 0:
            return
        run(self.kernel, (gx, gy, gz), self.threads, launch, self.rendered.dynamic_bytes)
        for d, host in copies:
            d.copy_to_host(host)

    def text(self, stage: str) -> str:
        if stage == "python":
            return self.rendered.source
        if stage == "ptx":
            return toolchain.ptx_for(self.rendered.source, self.rendered.signature,
                                     name=self.rendered.name)
        raise UserArgumentError(f"stage: the cuda backend emits ir, lowered, python or ptx, "
                                f"got {stage!r}")


@dataclass(frozen=True)
class _Abi:
    """What `Kernel.packings` reads: the params this kernel reads in the mma packing."""

    mma: dict

    def packings(self) -> dict:
        return dict(self.mma)


def _packed_proxy(name: str, a: PackedWords, packing, codes=None) -> np.ndarray:
    """A canonical-shaped stand-in for binding dims from words already in the mma packing
    (`codes`: the numpy dtype of a u8/i8 param, whose canonical form is its codes)."""
    if a.packing != packing or a.rows is None:
        raise UserArgumentError(f"argument {name!r}: expected PackedWords in {packing.name} with"
                                f" rows (QTensor.packed_as), got {a.packing} rows={a.rows}")
    if codes is not None:
        return np.lib.stride_tricks.as_strided(np.zeros(1, codes), (a.rows, a.count),
                                               (a.count, 1))
    cols = -(-a.count * packing.bits // 32)
    return np.lib.stride_tricks.as_strided(np.zeros(1, np.uint32), (a.rows, cols), (4 * cols, 4))


def _mma_words(a, packing, count: int):
    """The words of a param read in the mma packing: PackedWords as given, canonical host words
    transformed once and cached while unchanged (`repack_cache.WORDS`), device words through
    the host (transformed on every call: pass PackedWords to avoid it). u8/i8 codes (one byte
    each) are transformed on every call too."""
    if isinstance(a, PackedWords):
        return a.words
    if isinstance(a, np.ndarray) and a.dtype.itemsize != 1:
        return WORDS.get(packing, np.ascontiguousarray(a), int(count))
    host = a if isinstance(a, np.ndarray) else (
        a.copy_to_host() if hasattr(a, "copy_to_host") else np.asarray(a))
    from numba import cuda

    if host.dtype.itemsize == 1:  # u8/i8 codes
        return cuda.to_device(packing.from_codes(np.ascontiguousarray(host).view(np.uint8)))
    return cuda.to_device(packing.from_canonical(np.asarray(host, np.uint32), int(count)))


@dataclass(frozen=True)
class CudaBackend:
    """`threads`: CUDA block size when the kernel has no `threads` clause (or says 1);
    `sim_threads` replaces it in the simulator, where every thread is a Python thread."""

    name: str = "cuda"
    pipeline: tuple[str, ...] = CUDA_PIPELINE
    threads: int = 128
    sim_threads: int = 16

    def emit(self, k: Kernel) -> str:
        return render(k, self.block_size(k)).source

    def rendered(self, k: Kernel) -> Rendered:
        return render(k, self.block_size(k))

    def block_size(self, k: Kernel) -> int:
        from numba.cuda import config

        if k.threads > 1:
            return k.threads
        return self.sim_threads if config.ENABLE_CUDASIM else self.threads

    def ptx(self, k: Kernel, arch: str = "sm_80") -> str:
        """Standalone PTX (fp16 shims linked in) with one `.entry`."""
        r = render(k, self.block_size(k))
        return toolchain.ptx_for(r.source, r.signature, arch, name=r.name)

    def steady_state_stats(self, k: Kernel, arch: str = "sm_80") -> dict | None:
        """`toolchain.stats` of the kernel's steady state (`halves.steady_state`: every unit
        on the f16 pair path) with its unit loop's SASS per weight; None without a pair path."""
        r = render(k, self.block_size(k))
        per_unit = re.findall(re.escape(UNITS) + r"(\d+)", r.source)
        if not per_unit:
            return None
        return toolchain.stats(steady_state(r.source), r.signature, arch, name=r.name,
                               weights_per_iteration=int(per_unit[0]))

    def compile(self, k: Kernel) -> Executable:
        threads = self.block_size(k)
        return Executable(k, render(k, threads), threads)


BACKEND = CudaBackend()
