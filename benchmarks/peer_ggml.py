"""llama.cpp's own CPU matmul kernels as a peer in the bench, through `ggml-python`.

`pip install -e ".[bench]"` builds ggml from the ggml-python sdist (cmake, a C compiler; a few
minutes). Weights are quantized by ggml itself (`ggml_quantize_chunk`) and uploaded into the
CPU backend's extra "CPU_REPACK" buffer type, which is what llama.cpp uses for repacked weights
(q4_0 and q4_K interleaved for AVX2/AVX-512, the kernels behind llama.cpp's published CPU
figures); ggml quantizes the activations to q8_0 / q8_K itself inside `mul_mat`. Types without
a repacked form (q8_0, and q2_K on x86) go to the plain CPU buffer. Without ggml-python every
entry here is None and the bench records the row as skipped.
"""

from __future__ import annotations

import ctypes
import functools

import numpy as np

try:
    import ggml
except ImportError:  # optional: the `bench` extra
    ggml = None

from .baselines import Baseline
from .harness import in_turn

__all__ = ["GGML_TYPES", "ggml_available", "ggml_gemm"]

# ggml type name -> (ggml enum attribute, bits per weight incl. the block scales)
GGML_TYPES = {"q4_0": ("GGML_TYPE_Q4_0", 4.5), "q4_K": ("GGML_TYPE_Q4_K", 4.5),
              "q8_0": ("GGML_TYPE_Q8_0", 8.5), "q2_K": ("GGML_TYPE_Q2_K", 2.625)}


def ggml_available() -> bool:
    """Whether ggml-python can be imported (its rows are skipped without it)."""
    return ggml is not None


class _Backend:
    """One ggml CPU backend for the process, and the CPU_REPACK buffer type if ggml has it."""

    def __init__(self, threads: int) -> None:
        self.quiet = ggml.ggml_log_callback(lambda level, text, data: None)  # kept alive here
        ggml.ggml_log_set(self.quiet, None)  # ggml logs each repacked tensor on stderr
        self.backend = ggml.ggml_backend_cpu_init()
        ggml.ggml_backend_cpu_set_n_threads(self.backend, threads)
        self.repack = None
        dev = ggml.ggml_backend_dev_by_type(ggml.GGML_BACKEND_DEVICE_TYPE_CPU)
        # the device's buffer type: ggml-python 0.0.45 declares ggml_backend_cpu_buffer_type()
        # with an int result, which truncates the pointer
        self.cpu = ggml.ggml_backend_dev_buffer_type(dev)
        reg = ggml.ggml_backend_dev_backend_reg(dev)
        addr = ggml.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_dev_get_extra_bufts")
        if addr:
            get = ctypes.CFUNCTYPE(ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p)(addr)
            bufts = get(dev)
            i = 0
            while bufts and bufts[i]:
                if ggml.ggml_backend_buft_name(bufts[i]) == b"CPU_REPACK":
                    self.repack = bufts[i]
                i += 1
        self.keep: list[object] = []  # contexts, buffers and host arrays the graphs use


@functools.cache
def _backend(threads: int) -> _Backend:
    return _Backend(threads)


def _context(tensors: int, graph: bool) -> object:
    size = ggml.ggml_tensor_overhead() * tensors + (ggml.ggml_graph_overhead() if graph else 0)
    return ggml.ggml_init(ggml.ggml_init_params(mem_size=size, mem_buffer=None, no_alloc=True))


def _upload(tensor, data: np.ndarray) -> None:
    ggml.ggml_backend_tensor_set(tensor, data.ctypes.data_as(ctypes.c_void_p), 0, data.nbytes)


def _quantize(kind: int, w: np.ndarray) -> np.ndarray:
    """w [N, K] as ggml's blocks of type `kind` (ggml_quantize_chunk), one row after another."""
    n, k = w.shape
    src = np.ascontiguousarray(w, dtype=np.float32)
    q = np.empty(ggml.ggml_row_size(kind, k) * n, dtype=np.uint8)
    ggml.ggml_quantize_chunk(kind, src.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
                             q.ctypes.data_as(ctypes.c_void_p), 0, n, k, None)
    return q


def _weight(be: _Backend, kind: int, q: np.ndarray, n: int, k: int, repack: bool):
    """A [N, K] tensor of type `kind` in a buffer of its own (repacked when asked), holding q."""
    ctx = _context(1, graph=False)
    t = ggml.ggml_new_tensor_2d(ctx, kind, k, n)
    buf = ggml.ggml_backend_alloc_ctx_tensors_from_buft(ctx, be.repack if repack else be.cpu)
    _upload(t, q)
    be.keep += [ctx, buf]
    return t


def ggml_gemm(w: np.ndarray, x: np.ndarray, qtype: str, copies: int = 1,
              threads: int = 2) -> Baseline | None:
    """llama.cpp's `mul_mat` of x [M, K] (f32, quantized by ggml inside) by w [N, K] quantized
    to `qtype` (a GGML_TYPES key), rotating through `copies` weights; None without ggml-python.

    `data["y"]()` runs the first weight's graph and returns its output [M, N]; `data["words"]`
    is that weight's ggml blocks as quantized (before any repacking), for the check."""
    if ggml is None:
        return None
    if qtype not in GGML_TYPES:
        raise ValueError(f"qtype: expected one of {sorted(GGML_TYPES)}, got {qtype!r}")
    be = _backend(threads)
    kind = getattr(ggml, GGML_TYPES[qtype][0])
    repack = be.repack is not None and qtype in ("q4_0", "q4_K")
    m, k = x.shape
    n = w.shape[0]
    xs = np.ascontiguousarray(x, dtype=np.float32)
    q = _quantize(kind, w)  # every copy holds the same blocks in a buffer of its own
    calls, outs = [], []
    for _ in range(copies):
        wt = _weight(be, kind, q, n, k, repack)
        ctx = _context(3, graph=True)
        xt = ggml.ggml_new_tensor_2d(ctx, ggml.GGML_TYPE_F32, k, m)
        yt = ggml.ggml_mul_mat(ctx, wt, xt)
        graph = ggml.ggml_new_graph(ctx)
        ggml.ggml_build_forward_expand(graph, yt)
        buf = ggml.ggml_backend_alloc_ctx_tensors_from_buft(ctx, be.cpu)
        _upload(xt, xs)
        be.keep += [ctx, buf]
        calls.append(lambda g=graph: ggml.ggml_backend_graph_compute(be.backend, g))
        outs.append(yt)

    def first_output() -> np.ndarray:
        calls[0]()
        y = np.empty((m, n), dtype=np.float32)
        ggml.ggml_backend_tensor_get(outs[0], y.ctypes.data_as(ctypes.c_void_p), 0, y.nbytes)
        return y

    return Baseline(
        name=f"ggml_{qtype}_M{m}",
        fn=in_turn(calls),
        flops=2.0 * m * n * k,
        bytes_moved=q.nbytes + 4.0 * (m * k + m * n),
        info={"M": m, "K": k, "N": n, "type": qtype, "repacked": repack,
              "buffer": "CPU_REPACK" if repack else "CPU", "threads": threads,
              "weights_in_turn": copies, "ggml_python": getattr(ggml, "__version__", "?")},
        data={"y": first_output, "words": q, "weight_bytes": q.nbytes},
    )
