"""Named baselines that lowbitc's kernels are measured against, in the same run.

Each `Baseline` wraps a no-argument callable over pre-built data (so it can go straight into
`harness.interleaved`) plus the work it does, for throughput and bandwidth figures.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

try:
    import torch
except ImportError:  # the torch baseline is optional
    torch = None

from lowbitc.backends.llvm.digest import Digest

from .harness import in_turn, timeit

__all__ = [
    "Baseline",
    "copy_bandwidth",
    "copy_bandwidths",
    "copy_baseline",
    "numpy_gemm",
    "numpy_gemv",
    "read_baseline",
    "torch_available",
    "torch_int4_gemv",
]

MIB = 1 << 20


@dataclass
class Baseline:
    """A timed reference: `fn()` does the work; flops and bytes_moved describe one call."""

    name: str
    fn: Callable[[], object]
    flops: float = 0.0
    bytes_moved: float = 0.0
    info: dict = field(default_factory=dict)  # JSON-safe facts about the run
    data: dict = field(default_factory=dict, repr=False)  # the operands, for checking results


def copy_baseline(nbytes: int = 256 * MIB, threads: int = 2) -> Baseline:
    """`np.copyto` of `nbytes` split into `threads` contiguous slices on a thread pool.

    bytes_moved counts the read and the write (2 * nbytes), as STREAM's copy does.
    """
    if nbytes < 4096 or threads < 1:
        raise ValueError(
            f"copy_baseline: need nbytes >= 4096 and threads >= 1, got "
            f"nbytes={nbytes}, threads={threads}"
        )
    src = np.ones(nbytes // 8, dtype=np.float64)
    dst = np.zeros_like(src)  # written once so the pages exist before timing
    cuts = [src.size * t // threads for t in range(threads + 1)]
    parts = [(dst[a:b], src[a:b]) for a, b in zip(cuts, cuts[1:], strict=False)]
    if threads == 1:

        def run() -> None:
            np.copyto(dst, src)
    else:
        pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="copy-bw")

        def run() -> None:
            for future in [pool.submit(np.copyto, d, s) for d, s in parts]:
                future.result()

    return Baseline(
        name=f"copy_{threads}t",
        fn=run,
        bytes_moved=2.0 * src.nbytes,
        info={"nbytes": src.nbytes, "threads": threads},
    )


def read_baseline(nbytes: int = 512 * MIB, threads: int = 2) -> Baseline:
    """A streaming read of `nbytes` on `threads` threads of lowbitc's own pool: the content
    digest of the weights cache (`backends/llvm/digest.py`: 64-byte vector loads, a multiply
    and an add per 8 bytes, 64 KiB blocks as a grid), what a GEMV's weight bytes cost at best.
    (BLAS dot on Python threads, the earlier baseline, read ~25 % below numpy's sgemv.)
    `fn()` returns the digest; bytes_moved counts the bytes read once."""
    if nbytes < 4096 or threads < 1:
        raise ValueError(
            f"read_baseline: need nbytes >= 4096 and threads >= 1, got "
            f"nbytes={nbytes}, threads={threads}"
        )
    src = np.arange(nbytes // 8, dtype=np.uint64)
    read = Digest(threads)
    return Baseline(
        name=f"read_{threads}t",
        fn=lambda: read(src),
        bytes_moved=float(src.nbytes),
        info={"nbytes": src.nbytes, "threads": threads,
              "how": "lowbitc's content digest (64-byte vector loads) on its thread pool"},
        data={"words": src},
    )


def copy_bandwidth(nbytes: int = 256 * MIB, threads: int = 2, repeat: int = 10) -> float:
    """Memory copy bandwidth in GB/s (read + write bytes per second), median of `repeat`."""
    baseline = copy_baseline(nbytes, threads)
    stats = timeit(baseline.fn, warmup=1, repeat=repeat)
    return baseline.bytes_moved / stats["median"] / 1e9


def copy_bandwidths(nbytes: int = 256 * MIB, repeat: int = 10) -> dict[str, float]:
    """Copy bandwidth (GB/s) on one thread, on two, and the better of the two.

    On shared VMs two threads do not always beat one, so ratios against "the copy bandwidth"
    should use `best`.
    """
    one = copy_bandwidth(nbytes, threads=1, repeat=repeat)
    two = copy_bandwidth(nbytes, threads=2, repeat=repeat)
    return {"1_thread": one, "2_threads": two, "best": max(one, two)}


def numpy_gemm(M: int, K: int, N: int, seed: int = 0, copies: int = 1) -> Baseline:
    """numpy (OpenBLAS) fp32 `x @ W.T` with x [M, K] and W [N, K] (nn.Linear orientation);
    with `copies` > 1 each call reads the next of that many distinct copies of W."""
    if min(M, K, N) < 1:
        raise ValueError(f"numpy_gemm: M, K, N must be >= 1, got {(M, K, N)}")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((M, K), dtype=np.float32)
    w = rng.standard_normal((N, K), dtype=np.float32)
    ws = [w] + [w.copy() for _ in range(copies - 1)]
    return Baseline(
        name=f"numpy_fp32_M{M}",
        fn=in_turn([lambda w=w: x @ w.T for w in ws]),
        flops=2.0 * M * N * K,
        bytes_moved=4.0 * (M * K + N * K + M * N),
        info={"M": M, "K": K, "N": N, "weights_in_turn": copies},
        data={"x": x, "w": w},
    )


def numpy_gemv(K: int, N: int, seed: int = 0) -> Baseline:
    """numpy fp32 GEMV `x @ W.T` with x [1, K] (the M = 1 case of `numpy_gemm`)."""
    return numpy_gemm(1, K, N, seed)


def torch_available() -> bool:
    """Whether PyTorch can be imported (the torch baseline is skipped without it)."""
    return torch is not None


def torch_int4_gemv(
    K: int, N: int, M: int = 1, group_size: int = 128, seed: int = 0, copies: int = 1
) -> Baseline | None:
    """torch's CPU int4 kernel `_weight_int4pack_mm_for_cpu`, bf16 activations; None without torch.

    Weights are random codes 0..15 in [N, K] packed by `_convert_weight_to_int4pack_for_cpu`
    (inner-k tiles of 2); scales and zeros are bf16 [K / group_size, N, 2], and the kernel
    computes x @ ((q - 8) * scale + zero).T. K must be a multiple of group_size. With
    `copies` > 1 each call reads the next of that many copies of the packed weights and scales.
    """
    if torch is None:
        return None
    if K % group_size or group_size not in (32, 64, 128, 256) or K % 2:
        raise ValueError(
            f"torch_int4_gemv: K={K} must be a multiple of group_size={group_size} "
            "(32, 64, 128 or 256)"
        )
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (N, K), dtype=torch.int32, generator=gen)
    packed = torch._convert_weight_to_int4pack_for_cpu(codes, 2)
    groups = K // group_size
    scales = torch.rand(groups, N, generator=gen) * 0.01 + 1e-3
    zeros = torch.randn(groups, N, generator=gen) * 1e-2
    scales_zeros = torch.stack([scales, zeros], dim=-1).to(torch.bfloat16).contiguous()
    x = torch.randn(M, K, generator=gen).to(torch.bfloat16)

    weights = [(packed, scales_zeros)] + [(packed.clone(), scales_zeros.clone())
                                          for _ in range(copies - 1)]
    run = in_turn([lambda p=p, sz=sz: torch._weight_int4pack_mm_for_cpu(x, p, group_size, sz)
                   for p, sz in weights])

    return Baseline(
        name=f"torch_int4_bf16_M{M}",
        fn=run,
        flops=2.0 * M * N * K,
        bytes_moved=N * K / 2 + scales_zeros.numel() * 2 + 2.0 * (M * K + M * N),
        info={
            "M": M,
            "K": K,
            "N": N,
            "group_size": group_size,
            "torch_threads": torch.get_num_threads(),
            "weights_in_turn": copies,
        },
        data={"codes": codes, "scales_zeros": scales_zeros, "x": x, "packed": packed},
    )
