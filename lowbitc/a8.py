"""Int8 activations (W*A8, `act="i8"`): which weight formats take the shipped matmul_a8
kernel, and with which parameters.

A format qualifies when, for one of SC in (1, 1/2, 2), every value v times SC minus the least
of them is an integer byte: the kernel then multiplies those bytes (u8) with the activations
quantized to i8 in an integer dot (VNNI). That holds for every unsigned, two's complement
and bipolar integer format of 1..8 bits (bipolar through SC = 1/2: the byte is the code) and
for f4e2m1fn (values times 2 are -12..12), not for code books or wider floats: those keep f32
activations.
The activations are quantized once per call (quantize_a8.lbk) per row and block of QB
columns: the weight group, or its largest divisor of at most MAX_BLOCK that is a multiple of
32; matmul_a8.lbk then multiplies the codes with every weight row.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from lowbitc.compiler import Kernel
from lowbitc.dtypes import dtype
from lowbitc.errors import UserArgumentError
from lowbitc.kernels import get_kernel
from lowbitc.repack import LANES, PackedWords, RowsPacking, planes

ACTS = ("f32", "i8")  # what ops.matmul's `act` takes
MAX_BLOCK = 128  # activation block: at most this many columns share one int8 scale
INLINE = True  # GEMVs of one-plane codes read the inline packing (`params`; False: tile-major)
GEMM_TILE = (4, 64)  # (BM, BN) at most, for several activation rows (`params`, `rows_tile`)
# (SC candidates in order of preference: a byte that is the code itself or the code with bits
# flipped first, since the fused byte dot reads those with no table)
_SCALES = (1.0, 0.5, 2.0)


def check_act(act: object) -> str:
    """`act` as given, or a UserArgumentError naming the values it takes."""
    if act not in ACTS:
        raise UserArgumentError(f"act: expected one of {', '.join(map(repr, ACTS))}, "
                                f"got {act!r}")
    return act


def byte_map(wtype) -> tuple[float, float] | None:
    """(SC, LO) with byte = value * SC - LO an integer in 0..255 for every code of the
    format, or None when no such map exists (the format keeps f32 activations)."""
    v = np.asarray(wtype.values(), np.float64)
    if not np.all(np.isfinite(v)):
        return None
    found = None
    codes = np.arange(len(v))
    for sc in _SCALES:
        b = v * sc
        lo = float(b.min())
        byte = b - lo
        if not (np.array_equal(byte, np.round(byte)) and byte.max() <= 255):
            continue
        if np.array_equal(byte.astype(np.int64), codes ^ int(byte[0])):
            return sc, lo
        found = found or (sc, lo)
    return found


def block(group: int) -> int:
    """Columns per activation block (an int8 scale each): the group, or its largest divisor
    <= MAX_BLOCK that is a multiple of 32 (a group that is no multiple of 32 is its own block)."""
    if group <= MAX_BLOCK or group % 32:
        return group
    for qb in range(MAX_BLOCK, 31, -32):
        if group % qb == 0:
            return qb
    return 32


def rows_tile(M: int, N: int, bits: int = 4) -> int:
    """Weight rows per program, a divisor of N where one exists, so that every window is
    whole 16-row blocks (the fused byte dot's condition). A GEMV takes 32 rows: a program
    then reads its codes (16-row blocks, K contiguous) and its tile-major scales as two
    sequential streams, which the hardware prefetchers follow at the memory's speed (16
    blocks' windows in turn, 32 KB apart, ran at half of it); bytes in memory order (u8/i8,
    each row a stream of its own) and 3-bit codes take 16, the fewest streams (u3 streamed
    from DRAM: 0.90-0.94x the time of 32 rows in one thread, though 1.1x in cache; u5 and
    u6 the same either way: docs/a8.md). Several activation rows take GEMM_TILE's 64: a
    4 x 64 tile's i32 sums and f32 accumulators stay in registers, where 16 x 256 (the
    default before session 11) spilled them and copied its [16, 256] accumulator through
    memcpy every block (docs/performance.md: 0.52-0.65x the time at M = 240 and 15)."""
    widest = (16 if bits in (3, 8) else 32) if M == 1 else GEMM_TILE[1]
    for bn in (256, 128, 64, 32, 16):
        if bn <= widest and N % bn == 0:
            return bn
    return widest


def inline_shape(bits: int, zero_point: bool) -> tuple[int, int]:
    """(P, E) of the inline GEMV packing (`inline_pack`): the scales and zero points of P
    groups (one f32 word per row each) fill E extra steps of the rows packing (`bits` words
    per row each) exactly: P (1 + zero_point) = E bits = their least common multiple."""
    per = 2 if zero_point else 1
    lcm = math.lcm(bits, per)
    return lcm // per, lcm // bits


def params(wtype, group: int, zero_point: bool, M: int, act: str,
           N: int = 4096, inline: bool | None = None) -> dict | None:
    """matmul_a8's parameters for this weight and shape, or None for the f32 path. A GEMV
    of codes in the rows packing of one bit plane (1, 2, 4 or 8 bits) whose group is whole
    steps reads the inline packing (P, XK; `inline_pack`) in 16-row programs unless `inline`
    (default INLINE) is False; u8/i8 codes, a machine type the kernel would read as bytes in
    memory order, are then given as W = b8 (same bytes, a packed format) with RB = -LO: the
    kernel's byte is the code plus RB, mod 256. Codes of several planes (u3: 2 + 1) keep
    tile-major scales (`rows_tile`): inline programs were slower for them (docs/a8.md: 1.16x
    in cache, 1.08-1.35x streamed, with the planes put together in one dot)."""
    m = byte_map(wtype) if act == "i8" else None
    if m is None:
        return None
    sc, lo = m
    bm = 1 if M == 1 else min(GEMM_TILE[0], 1 << (M - 1).bit_length())
    out = {"W": wtype, "SC": sc, "LO": lo, "ZP": bool(zero_point), "QB": block(group),
           "BM": bm, "BN": rows_tile(M, N, wtype.bits)}
    inline = INLINE if inline is None else inline
    if inline and M == 1 and len(planes(wtype.bits)) == 1 and group % 32 == 0:
        p, e = inline_shape(wtype.bits, zero_point)
        out.update(BN=LANES, P=p, XK=32 * e)
        if wtype.bits == 8 and sc == 1.0:  # u8/i8 (machine bytes): their codes as b8
            out.update(W=dtype("b8"), RB=0.0 - lo)
    return out


def inline_pack(qw) -> tuple[PackedWords, np.ndarray]:
    """qw in the inline GEMV packing, (w, sz) as matmul_a8 takes them with its `params`
    P and XK: the rows packing (16 rows per vector, K contiguous per 16-row block; rows
    padded to whole blocks with code 0) of the codes with 32 E extra columns before every run
    of P groups (the last run padded to whole groups), whose words hold, per group of the run
    in turn, the block's 16 scales then (with zero points) its 16 zero points; sz is the same
    memory as float32 [blocks, runs, words of a run per block]. A 16-row program reads its
    codes, scales and zero points as one sequential stream (llama.cpp's repacked q4_0 keeps
    8 rows' blocks and scales in one stream likewise). The scales come before their codes:
    the line a run's first group reads them from follows the previous run's codes, which
    the software prefetch ran ahead of (after them, it missed once per run: u2 1.7x, u4
    1.2x slower streaming from DRAM in one thread, measured under load). Made once and
    cached on qw (QTensor.replica copies it); `from_inline` is the inverse."""
    cache = qw.__dict__.setdefault("_tile_major", {})
    hit = cache.get("inline")
    if hit is None:
        hit = cache["inline"] = _inline(qw.codes, qw.scales, qw.zeros, qw.dtype.bits,
                                        qw.group_size)
    return hit


def _inline(codes, scales, zeros, bits: int, group: int) -> tuple[PackedWords, np.ndarray]:
    n, k = codes.shape
    g = scales.shape[1]
    p, e = inline_shape(bits, zeros is not None)
    runs, nb = -(-g // p), -(-n // LANES)
    ext = np.zeros((nb * LANES, runs, p * group + 32 * e), np.uint8)
    c = np.zeros((n, runs * p * group), np.uint8)
    c[:, :k] = codes
    ext[:n, :, 32 * e:] = c.reshape(n, runs, p * group)
    count = runs * (p * group + 32 * e)
    packing = RowsPacking(bits)
    words = packing.from_codes(ext.reshape(nb * LANES, count))
    run_words = (p * group // 32 + e) * bits * LANES
    sz = words.reshape(-1).view(np.float32).reshape(nb, runs, run_words)
    per = [scales] if zeros is None else [scales, zeros]
    vals = np.zeros((len(per), nb * LANES, runs * p), np.float32)
    for i, a in enumerate(per):
        vals[i, :n, :g] = a
    # [kind, block, lane, run, group of run] -> [block, run, group of run, kind, lane]
    vals = vals.reshape(len(per), nb, LANES, runs, p).transpose(1, 3, 4, 0, 2)
    sz[:, :, : p * len(per) * LANES] = vals.reshape(nb, runs, -1)
    return PackedWords(words, packing, count), sz


def from_inline(w: PackedWords, n: int, k: int, group: int, zero_point: bool):
    """inline_pack's inverse: (codes [n, k] uint8, scales [n, G], zeros [n, G] or None)."""
    bits = w.packing.bits
    p, e = inline_shape(bits, zero_point)
    g = -(-k // group)
    runs = -(-g // p)
    per = 2 if zero_point else 1
    ext = w.packing.to_codes(w.words, w.count).reshape(-1, runs, p * group + 32 * e)
    codes = ext[:n, :, 32 * e:].reshape(n, -1)[:, :k].copy()
    run_words = (p * group // 32 + e) * bits * LANES
    sz = w.words.reshape(-1).view(np.float32).reshape(-1, runs, run_words)
    vals = sz[:, :, : p * per * LANES].reshape(-1, runs, p, per, LANES)
    vals = vals.transpose(3, 0, 4, 1, 2).reshape(per, -1, runs * p)[:, :n, :g]
    return codes, vals[0].copy(), (vals[1].copy() if zero_point else None)


def operands(qw, k: Kernel, storage) -> tuple[object, np.ndarray]:
    """(w, sz) for matmul_a8 `k` on qw: the inline packing where k reads it (XK > 0), else
    `storage(qw, k)` (the weight in k's packing) and the scales tile-major."""
    if k.params.get("XK"):
        return inline_pack(qw)
    return storage(qw, k), tile_scales(qw, k.params["BN"])


def tile_major(scales: np.ndarray, bn: int, zeros: np.ndarray | None = None) -> np.ndarray:
    """Scales and zero points [N, G] as matmul_a8 reads them, in one array: per tile of `bn`
    rows and group, the tile's `bn` scales, then (with zero points) its `bn` zero points,
    [cdiv(N, bn), G, bn or 2 bn] float32 (rows past N read 0). A program reads them as one
    stream beside its codes'."""
    n, g = scales.shape
    nt = -(-n // bn)
    parts = (scales,) if zeros is None else (scales, zeros)
    out = np.zeros((nt, g, len(parts), bn), np.float32)
    for i, a in enumerate(parts):
        rows = np.zeros((nt * bn, g), np.float32)
        rows[:n] = a
        out[:, :, i, :] = rows.reshape(nt, bn, g).transpose(0, 2, 1)
    return out.reshape(nt, g, len(parts) * bn)


def from_tile_major(sz: np.ndarray, n: int, zero_point: bool) -> tuple[np.ndarray,
                                                                        np.ndarray | None]:
    """tile_major's inverse: (scales, zeros or None), each [n, G]."""
    nt, g, width = sz.shape
    parts = 2 if zero_point else 1
    bn = width // parts
    a = sz.reshape(nt, g, parts, bn).transpose(2, 0, 3, 1).reshape(parts, nt * bn, g)[:, :n]
    return a[0].copy(), (a[1].copy() if zero_point else None)


def tile_scales(qw, bn: int) -> np.ndarray:
    """qw's scales and zero points tile-major (`tile_major`) for tiles of `bn` rows, made
    once per tile width and cached on qw (QTensor.replica copies them)."""
    return cached_tile_major(qw, "_tile_major", bn, qw.scales, qw.zeros)


def cached_tile_major(holder, slot: str, bn: int, scales: np.ndarray,
                      zeros: np.ndarray | None) -> np.ndarray:
    """tile_major(scales, bn, zeros), made once per tile width and kept in holder's `slot`
    dict (a QTensor's zero points, an OffsetQTensor's offsets in their place)."""
    cache = holder.__dict__.setdefault(slot, {})
    hit = cache.get(bn)
    if hit is None:
        hit = cache[bn] = tile_major(scales, bn, zeros)
    return hit


def bound(k: Kernel, adt: str, x: np.ndarray, w, sz: np.ndarray, y: np.ndarray,
          group: int) -> Callable[[np.ndarray, np.ndarray], None]:
    """run(x, y) doing what `matmul` does, both kernels' arguments bound once (x and y:
    placeholders of the shapes and dtypes to come). The activations are quantized into
    buffers of the run's own and both launches go as one native call (the backend's
    LaunchChain: no per-call binding, packing or Python between the two kernels); a call
    made while another thread is inside the same run quantizes into fresh buffers through
    two launches of its own, so concurrent calls share nothing."""
    m, kk = x.shape
    kw = w.count if isinstance(w, PackedWords) else kk
    quant = quantizer(k, adt)
    bufs = act_buffers(k, m, kk)
    first = quant.bind(x, *bufs, free=("x",))
    then = getattr(first, "then", None)
    chain = None if then is None else then(k.bind(*bufs, w, sz, y, group, KW=kw, free=("y",)))
    spare: list[tuple] = []  # the launches with every buffer free, bound when first needed

    def fresh(xa: np.ndarray, out: np.ndarray) -> None:
        if not spare:
            spare.append((quant.bind(x, *bufs, free=("x", "xq", "xd", "xs")),
                          k.bind(*bufs, w, sz, y, group, KW=kw, free=("xq", "xd", "xs", "y"))))
        qrun, mrun = spare[0]
        xq, xd, xs = act_buffers(k, m, kk)
        qrun(xa, xq, xd, xs)
        mrun(xq, xd, xs, out)

    def run(xa: np.ndarray, out: np.ndarray) -> None:
        if chain is None or not chain.try_call(xa, out):
            fresh(xa, out)
    return run


def call(qw, k: Kernel, x: np.ndarray, adt: str, y: np.ndarray, storage) -> Callable | None:
    """y = x @ qw.T through matmul_a8 `k` (`storage(qw, k)`: the weight in k's packing). A
    GEMV (one activation row, where the launches' Python cost is a good part of the call)
    runs `bound` launches made once per x dtype and cached on qw (QTensor.replica does not
    copy them: a replica's launches read its own arrays), bound to placeholders of their own
    (the cache holds no caller's array); more rows bind per call (`matmul`). Returns the
    bound launch run(x, y) of a GEMV, None for more rows."""
    if x.shape[0] != 1:
        matmul(k, x, adt, *operands(qw, k, storage), y, qw.group_size)
        return None
    cache = qw.__dict__.setdefault("_a8_runs", {})
    key = (k, adt, x.shape, x.dtype)
    run = cache.get(key)
    if run is None:
        if len(cache) >= MAX_RUNS:  # many kernels or shapes: keep the cache small
            cache.clear()
        w, sz = operands(qw, k, storage)
        run = cache[key] = bound(k, adt, np.empty_like(x), w, sz, np.empty_like(y),
                                 qw.group_size)
    run(x, y)
    return run


MAX_RUNS = 8  # bound GEMV launches kept per weight (one per kernel, K and x dtype)


def matmul(k: Kernel, x: np.ndarray, adt: str, w, sz: np.ndarray, y: np.ndarray,
           group: int) -> None:
    """y = x @ w.T through matmul_a8 `k`: the activations quantized once (quantize_a8, per
    row and block), then the integer dot with every weight row. sz: the scales and zero
    points tile-major (`tile_major`)."""
    M, K = x.shape
    xq, xd, xs = act_buffers(k, M, K)
    quantizer(k, adt)(x, xq, xd, xs)
    k(xq, xd, xs, w, sz, y, group, KW=w.count if isinstance(w, PackedWords) else K)


def quantizer(k: Kernel, adt: str) -> Kernel:
    """The quantize_a8 kernel that feeds matmul_a8 `k` with `adt` activations (memoised)."""
    quant = _QUANTIZERS.get((k, adt))
    if quant is None:
        quant = _QUANTIZERS[k, adt] = get_kernel("quantize_a8", A=adt, BM=k.params["BM"],
                                                 QB=k.params["QB"])
    return quant


def act_buffers(k: Kernel, M: int, K: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fresh (codes int8 [M, K], block scales and block sums f32 [K / QB, M]) for `k`."""
    kb = -(-K // k.params["QB"])
    return (np.empty((M, K), np.int8), np.empty((kb, M), np.float32),
            np.empty((kb, M), np.float32))


_QUANTIZERS: dict[tuple, Kernel] = {}  # (matmul_a8 kernel, activation dtype) -> quantize_a8
