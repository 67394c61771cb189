"""A content digest of host arrays fast enough to check on every call (`lowbitc.repack_cache.
WordsCache`): a kernel that reads a weight in a layout-specific packing keeps the transformed
words while the canonical array's digest is unchanged (digested whole per call where its pages
cannot be watched, else only the segments holding a written page).

The digest of a chunk of 8-byte words x_i is sum_i x_i * k_i mod 2^64 with odd keys
k_i = 2*i*G + 1 (G the 64-bit golden ratio): any change of one word changes it (an odd key is
invertible mod 2^64), and swapped or shifted words change it unless the differences happen to
cancel. It is not a cryptographic hash: it detects accidental writes, not chosen collisions.
Chunks of CHUNK words run as the blocks of a grid on the kernels' thread pool, at memory speed
(about the cost of reading the array once).
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
from lowbitc.repack_cache import WordsCache

CHUNK = 1 << 13  # 8-byte words per block (64 KiB)
_G = 0x9E3779B97F4A7C15
_MASK = (1 << 64) - 1
_NAME = "lowbitc_digest"


def _signed(v: int) -> int:
    v &= _MASK
    return v - (1 << 64) if v >> 63 else v


def _ir() -> str:
    keys = ", ".join(f"i64 {_signed(2 * lane * _G + 1)}" for lane in range(8))
    step = ", ".join([f"i64 {_signed(16 * _G)}"] * 8)
    g2 = _signed(2 * _G)
    return f"""
define void @{_NAME}(ptr %args, i64 %begin, i64 %end) {{
entry:
  %p.data = load ptr, ptr %args
  %a1 = getelementptr ptr, ptr %args, i64 1
  %p.out = load ptr, ptr %a1
  %a2 = getelementptr ptr, ptr %args, i64 2
  %p.total = load ptr, ptr %a2
  %total = load i64, ptr %p.total
{block_range_ir(CHUNK, "%total", "tail.done")}  %n = sub i64 %hi, %lo
  %nv = and i64 %n, -8
  %base = getelementptr i64, ptr %p.data, i64 %lo
  br label %vloop
vloop:
  %i = phi i64 [ 0, %body ], [ %i.next, %vbody ]
  %acc = phi <8 x i64> [ zeroinitializer, %body ], [ %acc.next, %vbody ]
  %key = phi <8 x i64> [ <{keys}>, %body ], [ %key.next, %vbody ]
  %vmore = icmp slt i64 %i, %nv
  br i1 %vmore, label %vbody, label %vdone
vbody:
  %ptr = getelementptr i64, ptr %base, i64 %i
  %x = load <8 x i64>, ptr %ptr, align 1
  %m = mul <8 x i64> %x, %key
  %acc.next = add <8 x i64> %acc, %m
  %key.next = add <8 x i64> %key, <{step}>
  %i.next = add i64 %i, 8
  br label %vloop
vdone:
  %s.v = call i64 @llvm.vector.reduce.add.v8i64(<8 x i64> %acc)
  br label %tail
tail:
  %j = phi i64 [ %nv, %vdone ], [ %j.next, %tbody ]
  %s = phi i64 [ %s.v, %vdone ], [ %s.next, %tbody ]
  %tmore = icmp slt i64 %j, %n
  br i1 %tmore, label %tbody, label %tail.done
tbody:
  %tptr = getelementptr i64, ptr %base, i64 %j
  %tx = load i64, ptr %tptr, align 1
  %tk.0 = mul i64 %j, {g2}
  %tk = add i64 %tk.0, 1
  %tm = mul i64 %tx, %tk
  %s.next = add i64 %s, %tm
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

declare i64 @llvm.vector.reduce.add.v8i64(<8 x i64>)
"""


class Digest:
    """`digest(array) -> bytes`: the per-chunk digests of a C-contiguous array's bytes."""

    def __init__(self, threads: int | None = None):
        """threads: the pool threads a call runs on (default: the kernels' `num_threads()`)."""
        module = native.module(_ir(), _NAME)
        self._packer = ArgPacker([ArrayArg("data", np.uint64, 1), ArrayArg("out", np.uint64, 1,
                                  output=True), ScalarArg("total", "i64")])
        self._launch = GridLauncher(module.address(_NAME), 0, threads=threads,
                                    min_blocks_per_thread=4)
        self._lock = threading.Lock()  # the launcher's grid size is per call

    def __call__(self, array: np.ndarray) -> bytes:
        raw = array.reshape(-1).view(np.uint8)
        whole = raw.size // 8
        words = raw[: whole * 8].view(np.uint64)
        out = np.empty(-(-whole // CHUNK), np.uint64)
        with self._lock:
            self._launch(self._packer([words, out, whole]), out.size)
        return out.tobytes() + raw[whole * 8 :].tobytes()


_DIGEST: Digest | None = None
_DIGEST_LOCK = threading.Lock()


def digest(array: np.ndarray) -> bytes:
    """The content digest of a C-contiguous array (compiled on first use, then cached)."""
    global _DIGEST
    if _DIGEST is None:
        with _DIGEST_LOCK:
            if _DIGEST is None:
                _DIGEST = Digest()
    return _DIGEST(array)


WORDS = WordsCache(digest)  # canonical words of the LLVM kernels' packed params, transformed
