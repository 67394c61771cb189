"""A streaming read on lowbitc's own thread pool: what a GEMV's weight bytes cost at best.

Every 64 KiB block of the array is read once with 64-byte vector loads (an xor of them is
the block's result, so no load can be dropped), and the blocks are a grid launched like a
kernel's: contiguous ranges claimed by the calling thread and the pool's workers. BLAS dot
on Python threads (the bench's earlier read baseline) reached about 30 GB/s on the Zen 5
host where numpy's sgemv streams at about 40 GB/s and this read at 45-55 GB/s.
"""

from __future__ import annotations

import threading

import numpy as np

from lowbitc.backends.llvm import native
from lowbitc.backends.llvm.launch import (
    ArgPacker,
    ArrayArg,
    GridLauncher,
    ScalarArg,
    block_range_ir,
)

__all__ = ["BLOCK", "StreamRead"]

BLOCK = 1 << 13  # 8-byte words per block (64 KiB)
_NAME = "lowbitc_bench_stream_read"

_IR = f"""
define void @{_NAME}(ptr %args, i64 %begin, i64 %end) {{
entry:
  %p.data = load ptr, ptr %args
  %a1 = getelementptr ptr, ptr %args, i64 1
  %p.out = load ptr, ptr %a1
  %a2 = getelementptr ptr, ptr %args, i64 2
  %p.total = load ptr, ptr %a2
  %total = load i64, ptr %p.total
{block_range_ir(BLOCK, "%total", "tail.done")}  %n = sub i64 %hi, %lo
  %nv = and i64 %n, -8
  %base = getelementptr i64, ptr %p.data, i64 %lo
  br label %vloop
vloop:
  %i = phi i64 [ 0, %body ], [ %i.next, %vbody ]
  %acc = phi <8 x i64> [ zeroinitializer, %body ], [ %acc.next, %vbody ]
  %vmore = icmp slt i64 %i, %nv
  br i1 %vmore, label %vbody, label %vdone
vbody:
  %ptr = getelementptr i64, ptr %base, i64 %i
  %x = load <8 x i64>, ptr %ptr, align 1
  %acc.next = xor <8 x i64> %acc, %x
  %i.next = add i64 %i, 8
  br label %vloop
vdone:
  %s.v = call i64 @llvm.vector.reduce.xor.v8i64(<8 x i64> %acc)
  br label %tail
tail:
  %j = phi i64 [ %nv, %vdone ], [ %j.next, %tbody ]
  %s = phi i64 [ %s.v, %vdone ], [ %s.next, %tbody ]
  %tmore = icmp slt i64 %j, %n
  br i1 %tmore, label %tbody, label %tail.done
tbody:
  %tptr = getelementptr i64, ptr %base, i64 %j
  %tx = load i64, ptr %tptr, align 1
  %s.next = xor i64 %s, %tx
  %j.next = add i64 %j, 1
  br label %tail
tail.done:
  %optr = getelementptr i64, ptr %p.out, i64 %b
  store i64 %s, ptr %optr
  %b.next = add i64 %b, 1
  br label %block
exit:
  ret void
}}

declare i64 @llvm.vector.reduce.xor.v8i64(<8 x i64>)
"""


class StreamRead:
    """`read(words) -> uint64 [blocks]`: per 64 KiB block the xor of its 8-byte words, read
    on `threads` threads of lowbitc's pool (compiled once per instance)."""

    def __init__(self, threads: int):
        module = native.module(_IR, _NAME)
        self._packer = ArgPacker([ArrayArg("data", np.uint64, 1),
                                  ArrayArg("out", np.uint64, 1, output=True),
                                  ScalarArg("total", "i64")])
        self._launch = GridLauncher(module.address(_NAME), 0, threads=threads)
        self._lock = threading.Lock()  # the launcher's grid size is per call

    def __call__(self, words: np.ndarray, out: np.ndarray) -> np.ndarray:
        with self._lock:
            self._launch(self._packer([words, out, words.size]), out.size)
        return out

    @staticmethod
    def blocks(words: np.ndarray) -> int:
        """How many blocks (results) a read of `words` gives."""
        return -(-words.size // BLOCK)
