"""Launching a generated kernel: a block of `threads` threads per grid block, and, when its
shared tiles need more than the 48 KiB of static shared memory (`Rendered.dynamic_bytes`),
that much dynamic shared memory, after raising the function's
CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES to it (the opt-in the CUDA driver requires
beyond 48 KiB; numba-cuda has no launch option for it). The simulator takes the dynamic size
at launch and has no attribute to set."""

from __future__ import annotations

from lowbitc.backends.numba_cuda.intrinsics import SIMULATOR
from lowbitc.backends.numba_cuda.shared import DYNAMIC_SHARED_LIMIT
from lowbitc.errors import BackendError


def launch(dispatcher, grid: tuple[int, int, int], threads: int, args: list,
           dynamic: int = 0) -> None:
    """Run `dispatcher` (a numba-cuda kernel) on `args`; see the module doc."""
    if not dynamic:
        dispatcher[grid, threads](*args)
        return
    if not SIMULATOR:
        dispatcher = dispatcher.specialize(*args)  # compiled for these argument types
        for kernel in dispatcher.overloads.values():
            allow_dynamic_shared(kernel._codelibrary.get_cufunc(), dynamic)
    dispatcher[grid, threads, 0, dynamic](*args)


def allow_dynamic_shared(cufunc, nbytes: int) -> None:
    """Let `cufunc` (numba-cuda's CudaPythonFunction) launch with `nbytes` of dynamic shared
    memory; a located error when its device's architecture cannot."""
    major, minor = cufunc.device.compute_capability
    arch = f"sm_{major}{minor}"
    limit = DYNAMIC_SHARED_LIMIT.get(arch, 48 * 1024)
    if nbytes > limit:
        raise BackendError(f"cuda: the kernel needs {nbytes} bytes of shared memory per block, "
                           f"more than the {limit} bytes {arch} allows; use smaller tiles")
    set_max_dynamic_shared(cufunc.handle, cufunc.device.id, int(nbytes))


def set_max_dynamic_shared(handle, device: int, nbytes: int) -> None:
    """cuKernelSetAttribute(CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, nbytes), as
    numba-cuda's own `set_shared_memory_carveout` sets its attribute."""
    from numba.cuda.cudadrv.driver import binding, driver

    attr = binding.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
    driver.cuKernelSetAttribute(attr, nbytes, handle, device)
