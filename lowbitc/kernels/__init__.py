"""The shipped .lbk kernels (matmul, dequantize, attention, kv_quantize): their text, their
path, and each compiled once per (kernel, backend, parameters) for the life of the process."""

from __future__ import annotations

import threading
from importlib import resources

from lowbitc.compiler import Kernel, compile

_KERNELS: dict[tuple, Kernel] = {}
_LOCK = threading.Lock()


def kernel_source(name: str) -> str:
    """The text of a shipped kernel (`matmul`, `dequantize`, `attention`, ...)."""
    return resources.files("lowbitc.kernels").joinpath(f"{name}.lbk").read_text("utf-8")


def kernel_path(name: str) -> str:
    return str(resources.files("lowbitc.kernels").joinpath(f"{name}.lbk"))


def get_kernel(name: str, backend: str = "llvm", **params) -> Kernel:
    """A shipped kernel compiled for `backend` with `params` (cached in this process)."""
    key = (name, backend, tuple(sorted(params.items())))
    k = _KERNELS.get(key)
    if k is None:
        with _LOCK:
            k = _KERNELS.get(key)
            if k is None:
                k = compile(kernel_path(name), backend=backend, **params)
                _KERNELS[key] = k
    return k
