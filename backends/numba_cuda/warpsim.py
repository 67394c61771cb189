"""Simulator twins of the warp-collective tensor-core instructions (mma.sync, ldmatrix) and of
cp.async, with the PTX ISA's warp semantics.

Numba's CUDA simulator runs one Python thread per CUDA thread and has no warp operations. A
collective twin posts its lane's operands into a per-warp slot list kept on the simulator's
block (its BlockManager) and meets the other 31 lanes at a `threading.Barrier(32)` (with a
timeout) whose action computes the whole warp's result once with the `*_warp` function; each
lane returns its row. The `*_warp` functions are plain numpy over all 32 lanes and are the
executable statement of the ISA tables (PTX ISA 9.7.14.5.8, 9.7.14.5.10 and 9.7.14.5.15
"ldmatrix"); they run anywhere, the per-lane twins only inside a simulated kernel whose blocks
are whole warps.
"""

from __future__ import annotations

import threading

import numpy as np

from lowbitc.errors import BackendError, UserArgumentError

WARP = 32
TIMEOUT = 120.0  # seconds a lane waits for the rest of its warp before giving up
_LANE = np.arange(WARP)
_GROUP, _TIG = _LANE >> 2, _LANE & 3  # groupID and threadID_in_group of the ISA tables
_CREATE = threading.Lock()


# -- the whole-warp semantics ------------------------------------------------------------------
def _halves_f64(words: np.ndarray, kind: str) -> np.ndarray:
    """uint32 words [..., r] -> their 16-bit halves as float64 [..., 2r], low half first."""
    u16 = np.ascontiguousarray(words, dtype=np.uint32).view(np.uint16)
    if kind == "f16":
        return u16.view(np.float16).astype(np.float64)
    return (u16.astype(np.uint32) << 16).view(np.float32).astype(np.float64)  # bf16


def mma_m16n8k16_warp(a: np.ndarray, b: np.ndarray, c: np.ndarray, kind: str = "f16"):
    """mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32 for a whole warp.

    a: uint32 [32, 4] (lane l's a0..a3, two halves each), b: uint32 [32, 2], c: float32
    [32, 4]; returns d float32 [32, 4]. Products and sums are exact in float64, then rounded
    once to f32 (the hardware accumulates in f32 with its own internal ordering, so a GPU may
    differ from this by a few f32 ulps of the largest partial sum).
    """
    if kind not in ("f16", "bf16"):
        raise UserArgumentError(f"mma kind: expected 'f16' or 'bf16', got {kind!r}")
    ah, bh = _halves_f64(a, kind), _halves_f64(b, kind)  # [32, 8], [32, 4]
    A, B = np.zeros((16, 16)), np.zeros((16, 8))
    for i in range(8):  # ISA: row = g + 8*((i>>1)&1), col = 2*tig + (i&1) + 8*(i>>2)
        A[_GROUP + 8 * ((i >> 1) & 1), 2 * _TIG + (i & 1) + 8 * (i >> 2)] = ah[:, i]
    for i in range(4):  # row (k) = 2*tig + (i&1) + 8*(i>>1), col (n) = g
        B[2 * _TIG + (i & 1) + 8 * (i >> 1), _GROUP] = bh[:, i]
    return _accumulate(A @ B, c, np.float32)


def mma_m16n8k32_s8_warp(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 for a whole warp (wrapping int32 sums).

    a: uint32 [32, 4] (four s8 each, byte 0 lowest), b: uint32 [32, 2], c: int32 [32, 4].
    """
    a8 = np.ascontiguousarray(a, dtype=np.uint32).view(np.int8).astype(np.int64)  # [32, 16]
    b8 = np.ascontiguousarray(b, dtype=np.uint32).view(np.int8).astype(np.int64)  # [32, 8]
    A, B = np.zeros((16, 32), np.int64), np.zeros((32, 8), np.int64)
    for i in range(16):  # ISA: row = g + 8*((i>>2)&1), col = 4*tig + (i&3) + 16*(i>>3)
        A[_GROUP + 8 * ((i >> 2) & 1), 4 * _TIG + (i & 3) + 16 * (i >> 3)] = a8[:, i]
    for i in range(8):  # row (k) = 4*tig + (i&3) + 16*(i>>2), col (n) = g
        B[4 * _TIG + (i & 3) + 16 * (i >> 2), _GROUP] = b8[:, i]
    return _accumulate(A @ B, c, np.int32)


def _accumulate(prod: np.ndarray, c: np.ndarray, dtype) -> np.ndarray:
    """D = prod + C in the C/D fragment (row = g + 8*(i>>1), col = 2*tig + (i&1))."""
    c = np.asarray(c)
    d = np.empty((WARP, 4), dtype)
    for i in range(4):
        total = prod[_GROUP + 8 * (i >> 1), 2 * _TIG + (i & 1)] + c[:, i].astype(prod.dtype)
        if dtype == np.int32:
            d[:, i] = (total.astype(np.int64) & 0xFFFFFFFF).astype(np.uint32).view(np.int32)
        else:
            d[:, i] = total.astype(np.float32)
    return d


def ldmatrix_warp(mem: np.ndarray, addrs, num: int, trans: bool) -> np.ndarray:
    """ldmatrix.sync.aligned.m8n8.x{num}{.trans}.shared.b16 for a whole warp.

    mem: the shared bytes (uint8), addrs: each lane's byte address of one 16-byte row; lanes
    8m..8m+7 give rows 0..7 of matrix m (lanes beyond 8*num are ignored). Returns uint32
    [32, num]: register m of lane l holds row l//4, halves 2*(l%4) and 2*(l%4)+1 of matrix m
    (of its transpose with .trans).
    """
    if num not in (1, 2, 4):
        raise UserArgumentError(f"ldmatrix num: expected 1, 2 or 4, got {num!r}")
    out = np.empty((WARP, num), np.uint32)
    for m in range(num):
        rows = []
        for r in range(8):
            at = int(addrs[8 * m + r])
            if at % 16 or at < 0 or at + 16 > mem.size:
                raise BackendError(f"ldmatrix: lane {8 * m + r}'s row address {at} is not a "
                                   f"16-byte aligned row inside {mem.size} shared bytes")
            rows.append(mem[at : at + 16].view(np.uint16))
        mat = np.stack(rows).astype(np.uint32)  # [8 rows, 8 halves]
        if trans:
            mat = mat.T
        out[:, m] = mat[_GROUP, 2 * _TIG] | mat[_GROUP, 2 * _TIG + 1] << 16
    return out


# -- per-lane twins inside a simulated kernel --------------------------------------------------
class _Warp:
    """Exchange state of one simulated warp. Collective g uses buffer g % 2: the lanes post
    their operands, meet at one barrier whose action (run by the last lane to arrive) computes
    the warp's result once, and read their rows. A lane can only post collective g + 1 while
    others still read g, never g + 2, so two buffers need no second barrier."""

    def __init__(self) -> None:
        self.calls = [0] * WARP  # collectives each lane has entered
        self.gen = 0  # collectives completed
        self.slots: list[list] = [[None] * WARP, [None] * WARP]
        self.compute: list = [None, None]
        self.result: list = [None, None]
        self.error: list[Exception | None] = [None, None]
        self.done = threading.Barrier(WARP, action=self._run)

    def _run(self) -> None:
        buf = self.gen & 1
        self.gen += 1
        try:
            self.result[buf], self.error[buf] = self.compute[buf](list(self.slots[buf])), None
        except Exception as exc:  # re-raised in every lane
            self.result[buf], self.error[buf] = None, exc


def _lane_and_warp() -> tuple[int, _Warp]:
    """(lane, warp state) of the calling simulator thread: the state lives on the simulator's
    BlockManager, keyed by (block index, warp)."""
    thread = threading.current_thread()
    manager = getattr(thread, "_manager", None)
    if manager is None:
        raise BackendError("warp-collective twins run only inside a simulated CUDA kernel "
                           "(NUMBA_ENABLE_CUDASIM=1)")
    size = int(np.prod(manager._block_dim))
    if size % WARP:
        raise BackendError(f"warp-collective twins need blocks of whole warps (a multiple of "
                           f"{WARP} threads); this block has {size}")
    tid = thread.thread_id
    key = (tuple(thread.blockIdx), tid // WARP)
    warps = manager.__dict__.get("_lowbitc_warps")
    state = warps.get(key) if warps is not None else None
    if state is None:
        with _CREATE:
            warps = manager.__dict__.setdefault("_lowbitc_warps", {})
            state = warps.setdefault(key, _Warp())
    return tid % WARP, state


def collective(value, compute):
    """This lane's row of `compute(values)`, where `values` lists the 32 lanes' `value`s by
    lane; `compute` (the same for every lane) runs once per warp-collective instruction."""
    lane, warp = _lane_and_warp()
    buf = warp.calls[lane] & 1
    warp.calls[lane] += 1
    warp.slots[buf][lane] = value
    warp.compute[buf] = compute
    try:
        warp.done.wait(TIMEOUT)
    except threading.BrokenBarrierError:
        raise BackendError(f"lane {lane}: the rest of its warp did not reach the same "
                           f"warp-collective instruction within {TIMEOUT:.0f} s (divergent "
                           f"control flow or an exited lane)") from None
    if warp.error[buf] is not None:
        raise warp.error[buf]
    return warp.result[buf][lane]


def _u32(x) -> int:
    return int(x) & 0xFFFFFFFF


def _mma_compute(kind: str):
    def compute(lanes):
        a = np.array([x[0] for x in lanes], np.uint32)
        b = np.array([x[1] for x in lanes], np.uint32)
        if kind == "s8":
            c = np.array([x[2] for x in lanes], np.int64).astype(np.int32)
            return mma_m16n8k32_s8_warp(a, b, c)
        return mma_m16n8k16_warp(a, b, np.array([x[2] for x in lanes], np.float32), kind)

    return compute


_MMA = {kind: _mma_compute(kind) for kind in ("f16", "bf16", "s8")}


def _mma_py(kind, a0, a1, a2, a3, b0, b1, c0, c1, c2, c3):
    acc = int if kind == "s8" else float
    value = ((_u32(a0), _u32(a1), _u32(a2), _u32(a3)), (_u32(b0), _u32(b1)),
             (acc(c0), acc(c1), acc(c2), acc(c3)))
    return tuple(collective(value, _MMA[kind]))


def mma_f16_py(a0, a1, a2, a3, b0, b1, c0, c1, c2, c3):
    """One lane's part of mma.sync m16n8k16 .f32.f16.f16.f32 (warp-collective)."""
    return _mma_py("f16", a0, a1, a2, a3, b0, b1, c0, c1, c2, c3)


def mma_bf16_py(a0, a1, a2, a3, b0, b1, c0, c1, c2, c3):
    """One lane's part of mma.sync m16n8k16 .f32.bf16.bf16.f32 (warp-collective)."""
    return _mma_py("bf16", a0, a1, a2, a3, b0, b1, c0, c1, c2, c3)


def mma_s8_py(a0, a1, a2, a3, b0, b1, c0, c1, c2, c3):
    """One lane's part of mma.sync m16n8k32 .s32.s8.s8.s32 (warp-collective)."""
    return _mma_py("s8", a0, a1, a2, a3, b0, b1, c0, c1, c2, c3)


def host_array(a) -> np.ndarray:
    """The numpy array behind a simulator kernel argument or shared array."""
    while hasattr(a, "_item"):
        a = a.__dict__["_item"]
    return getattr(a, "_ary", a)


def _bytes_of(a) -> np.ndarray:
    arr = host_array(a)
    if not arr.flags.c_contiguous:
        raise BackendError("tensor-core twins need C-contiguous arrays")
    # a plain ndarray view: the twins' own byte copies are not the kernel's accesses
    # (bank_trace records those at the call)
    return np.asarray(arr).reshape(-1).view(np.uint8)


def _ldmatrix(smem, index, num: int, trans: bool):
    arr = host_array(smem)
    if arr.dtype.itemsize not in (2, 4):
        raise BackendError(f"ldmatrix: shared array of 16- or 32-bit elements expected, got "
                           f"{arr.dtype}")
    mem = _bytes_of(arr)
    row = collective(int(index) * arr.dtype.itemsize,
                     lambda addrs: ldmatrix_warp(mem, addrs, num, trans))
    return tuple(np.uint32(x) for x in row)


def ldmatrix_x4_py(smem, index):
    """ldmatrix .x4 .b16: `index` is the element index of the 16-byte row this lane supplies."""
    return _ldmatrix(smem, index, 4, False)


def ldmatrix_x4_trans_py(smem, index):
    return _ldmatrix(smem, index, 4, True)


def ldmatrix_x2_py(smem, index):
    """ldmatrix .x2 .b16: lanes 0-15 supply the rows; every lane receives two registers."""
    return _ldmatrix(smem, index, 2, False)


def ldmatrix_x2_trans_py(smem, index):
    return _ldmatrix(smem, index, 2, True)


_ASYNC = threading.local()  # per simulated thread: copies not yet committed, committed groups


def _async_state():
    if not hasattr(_ASYNC, "groups"):
        _ASYNC.open, _ASYNC.groups = [], []
    return _ASYNC


def cp_async16_zfill_py(smem, smem_index, gmem, gmem_index, src_bytes) -> None:
    """cp.async.cg 16 bytes with src-size `src_bytes` (0..16): bytes beyond it are zero.

    The twin checks the addresses now and copies when a `cp_async_wait` needs the copy's
    group (the latest moment the ISA allows), so reading a stage before waiting for it, or
    before the barrier after the wait, reads stale data in the simulator as on a GPU.
    """
    dst, src = _bytes_of(smem), _bytes_of(gmem)
    d = int(smem_index) * host_array(smem).dtype.itemsize
    s = int(gmem_index) * host_array(gmem).dtype.itemsize
    n = int(src_bytes)
    if d % 16 or s % 16 or not 0 <= n <= 16 or d + 16 > dst.size or s + n > src.size:
        raise BackendError(f"cp.async: need 16-byte aligned addresses inside the arrays and "
                           f"0 <= src_bytes <= 16 (shared byte {d} of {dst.size}, global byte "
                           f"{s} of {src.size}, src_bytes {n})")
    _async_state().open.append((dst, d, src, s, n))


def cp_async16_py(smem, smem_index, gmem, gmem_index) -> None:
    """cp.async.cg 16 bytes global -> shared (deferred like `cp_async16_zfill_py`)."""
    cp_async16_zfill_py(smem, smem_index, gmem, gmem_index, 16)


def cp_async_commit_py() -> None:
    """cp.async.commit_group: this thread's copies since the last commit form one group."""
    state = _async_state()
    state.groups.append(state.open)
    state.open = []


def cp_async_wait_py(n) -> None:
    """cp.async.wait_group n: complete this thread's oldest groups until at most n are
    pending (the copies are done here, in issue order)."""
    state = _async_state()
    while len(state.groups) > int(n):
        for dst, d, src, s, size in state.groups.pop(0):
            dst[d : d + 16] = 0
            dst[d : d + size] = src[s : s + size]


def aligned16_py(arr) -> bool:
    """The array's first element is 16-byte aligned (in host memory, as the twins see it)."""
    return host_array(arr).ctypes.data % 16 == 0
