"""Ready-made ops on quantized weights, compiled from the shipped .lbk kernels.

`matmul(x, qw)` = x @ qw.dequantize().T and `dequantize(qw)` (bit-identical to
QTensor.dequantize()), for every format, any shapes, zero points and partial groups.
Compiled kernels are kept per (kernel, backend, parameters) for the life of the process.
Tile parameters come from `lowbitc.tune`'s stored winner for the shape's bucket when there is
one, else from the defaults below.
"""

from __future__ import annotations

import numpy as np

from lowbitc import a8, tuned
from lowbitc.compiler import Kernel
from lowbitc.errors import UserArgumentError
from lowbitc.ir.types import is_bfloat16, is_machine, numpy_dtype
from lowbitc.kernels import (  # noqa: F401 (re-exported: ops.get_kernel, ops._KERNELS)
    _KERNELS,
    get_kernel,
    kernel_path,
    kernel_source,
)
from lowbitc.kv.attention import attention_decode as kv_attention_decode
from lowbitc.mixture import TableQTensor
from lowbitc.mma_plan import MMA_ACTIVATIONS, mma_format, mma_params
from lowbitc.offset import OffsetQTensor, finish_dequantize, permute_input, subtract_offsets
from lowbitc.quant import QTensor
from lowbitc.repack import planes_format
from lowbitc.tuned import tuned_config

_ACTIVATIONS = {np.dtype(np.float32): "f32", np.dtype(np.float16): "f16"}
_NO_ZEROS = np.zeros((1, 1), np.float32)
_OUT_DTYPES = {np.dtype(np.float32): "f32", np.dtype(np.float16): "f16"}
_F32 = np.dtype(np.float32)
# CUDA dequantize rows per block for f16 outputs (docs/cuda.md): 128-code units, two per
# thread of a 128-thread block (f32 outputs keep the kernel's default)
CUDA_DEQUANT_BN = {"f16": 256}


def weight_storage(qw: QTensor, k: Kernel | None = None, param: str = "w"):
    """What a kernel's weight parameter takes: the canonical packed words, or for u8/i8
    (which are also machine types) the codes as a plain byte array; for a kernel `k` that
    reads `param` in a layout-specific packing (u8/i8 included), the words in it (cached on
    the QTensor)."""
    packing = k.packings.get(param) if k is not None else None
    if packing is not None:
        return qw.packed_as(packing)
    if is_machine(qw.dtype.name):
        return np.ascontiguousarray(qw.codes).view(numpy_dtype(qw.dtype.name))
    return qw.packed


def _check_qtensor(qw: object) -> QTensor:
    if not isinstance(qw, QTensor | TableQTensor):
        raise UserArgumentError(f"qw: expected a lowbitc QTensor, got {type(qw).__name__}")
    return qw


GEMM_ROWS = 8  # more activation rows than this take the dequantize-then-GEMM path


def gemm_rows(M: int) -> int:
    """The row tile of the GEMM path: at most 128 rows (each weight tile is decoded once per
    row tile), a multiple of 16, as few padding rows as the number of row tiles allows."""
    tiles = -(-M // 128)
    rows = -(-M // tiles)
    return min(128, (rows + 15) // 16 * 16)


def matmul_fixed(wtype, act: str, zero_point: bool, M: int = 1) -> dict:
    """The matmul parameters that follow from the operands (never tuned)."""
    values = wtype.values()
    # scaling after the dot needs sum |code value * x| to stay far inside f32's range; with
    # more than GEMM_ROWS rows each weight tile is dequantized to f32 once and the dot is one
    # of f32 tiles (the backend's register-blocked microkernel)
    early = float(np.max(np.abs(values[np.isfinite(values)]))) > 2.0**40 or M > GEMM_ROWS
    return {"W": wtype, "A": act, "ZP": bool(zero_point), "EARLY": early}


PLANES_BN = 256  # GEMV rows per block for the planes packing's formats (<= 3-bit integers)
# ... on hosts without AVX-512: their table dot's step costs more beside the tables it shares,
# and half the code streams per program read faster (Zen 3's code on Zen 4, streamed, 2
# threads: u1 / u2 / u3 0.94 / 0.97 / 0.93x the time of 256; docs/performance.md)
PLANES_BN_AVX2 = 128


def planes_bn() -> int:
    """GEMV rows per block for the planes packing's formats on this host."""
    from lowbitc.backends.llvm import decode

    return PLANES_BN if decode.permutes() else PLANES_BN_AVX2


# GEMV tiles up to this many rows read their scales tile-major (matmul TM): every GEMV tile
# now, the planes packing's 256 rows included (with the run prefetched, streamed u1 / u2 / u3
# 0.91 / 0.94 / 0.94x the time of their 1 KB group-major rows; docs/performance.md)
TILE_MAJOR_BN = 256


def matmul_params(M: int, qw: QTensor, act: str, backend: str = "llvm", N: int = 0) -> dict:
    """Default tile parameters by problem shape (GEMV for M = 1, GEMM tiles otherwise); the
    LLVM backend's GEMM path (M > 8) takes tall row tiles, other backends keep 8 x 32; a GEMV
    of a <= 3-bit integer format over N rows, a multiple of planes_bn(), takes that many rows
    per block."""
    # up to 8 rows share each decoded weight vector in registers (the backend's fused dot)
    bm = 1 if M == 1 else 2 if M == 2 else 4 if M <= 4 else 8
    g = qw.group_size
    # the K tile should not run past a group (the rest of it would be masked away) and stays
    # a multiple of 32 so the backend can decode whole words in registers
    bk = 128 if g % 128 == 0 else 64 if g % 64 == 0 else 32
    bn = 64
    if M <= GEMM_ROWS and backend == "llvm" and N and N % planes_bn() == 0 and \
            planes_format(qw.dtype.values(), qw.dtype.bits):
        # the planes dot builds its tables of partial activation sums once per block and
        # K window: wider blocks share them (u2 GEMV 1.3x less work in cache than BN = 64)
        bn = planes_bn()
    elif M > GEMM_ROWS and backend == "llvm":
        bm = gemm_rows(M)
        bn = 128 if bm >= 64 else 64  # tall row tiles amortise their activation loads wider
    elif M > GEMM_ROWS:
        bn = 32  # the tiles the CUDA backend's figures (docs/cuda.md) were taken with
    return {**matmul_fixed(qw.dtype, act, qw.zeros is not None, M), "BM": bm, "BN": bn,
            "BK": bk}


def matmul_kernel_name(wtype, act: str, backend: str) -> str:
    """`matmul_mma` (tensor cores) for f16 and bf16 activations on cuda when every code value
    of the format is an f16 (`lowbitc.mma_plan`), else `matmul`."""
    if backend == "cuda" and act in MMA_ACTIVATIONS and mma_format(wtype):
        return "matmul_mma"
    return "matmul"


def matmul_choice(M: int, N: int, K: int, qw, adt: str, act: str = "f32",
                  backend: str = "llvm") -> tuple[str, dict]:
    """(shipped kernel, parameters) of a matmul with `adt` activations: matmul_a8 for int8
    activations (`act="i8"`) where the format allows (LLVM only, lowbitc/a8.py); matmul_mma
    (tensor cores, `lowbitc.mma_plan`) for f16 and bf16 activations on cuda when the format
    allows; else matmul with its defaults; then lowbitc.tune's winner for the shape's bucket. `qw`
    needs .dtype, .group_size and .zeros (None or not)."""
    if backend == "llvm":
        p = a8.params(qw.dtype, qw.group_size, qw.zeros is not None, M, act, N)
        if p is not None:
            return "matmul_a8", p
    name = matmul_kernel_name(qw.dtype, adt, backend)
    if name == "matmul_mma":
        params = mma_params(M, qw.dtype, qw.group_size, qw.zeros is not None, adt, N, K)
        fixed = {n: params[n] for n in ("W", "A", "ZP", "TH")}
    else:
        params = matmul_params(M, qw, adt, backend, N)
        fixed = {n: params[n] for n in ("W", "A", "ZP", "EARLY")}
    params.update(tuned_params(name, fixed, qw.group_size, {"M": M, "N": N, "K": K}, backend))
    return name, params


def launch_matmul(k: Kernel, x, w, scales, zeros, y, group: int, K: int, workspace=None) -> None:
    """Run a matmul kernel into y; for split-K (`matmul_mma` with SK > 1) the kernel writes
    the SK slices of partial sums into `workspace` ([SK * M, N] float32, a numpy array unless
    given: a device array for device operands) and `splitk_sum` adds them into y in order."""
    sk = k.params.get("SK", 1)
    if sk == 1:
        k(x, w, scales, zeros, y, group, K=K)
        return
    M, N = y.shape
    ws = np.empty((sk * M, N), np.float32) if workspace is None else workspace
    k(x, w, scales, zeros, ws, group, K=K)
    get_kernel("splitk_sum", k.backend, SK=sk)(ws, y)


_PLANS: dict[tuple, Kernel] = {}
_PLANS_GENERATION = [-1]


def _plan(key: tuple) -> Kernel | None:
    """The kernel chosen before for this exact call signature (until a new tuning result)."""
    if _PLANS_GENERATION[0] != tuned.GENERATION:
        _PLANS.clear()
        _PLANS_GENERATION[0] = tuned.GENERATION
    return _PLANS.get(key)


def _remember(key: tuple, k: Kernel) -> Kernel:
    _PLANS[key] = k
    return k


def tuned_params(name: str, fixed: dict, group: int, shape: dict, backend: str) -> dict:
    """`lowbitc.tune`'s winner for this shipped kernel and shape bucket ({} if none)."""
    return tuned_config(kernel_path(name), None, fixed, {"group": group}, shape, backend) or {}


def matmul(x: np.ndarray, qw: QTensor, backend: str = "llvm",
           out: np.ndarray | None = None, act: str = "f32") -> np.ndarray:
    """x[M, K] (float32, float16 or bfloat16) @ qw.dequantize().T -> float32 [M, N]
    (written to `out` if given). Outliers (`qw.sparse`) are a second pass over the output;
    a TableQTensor mixing named formats per group runs matmul_mix.lbk (LLVM, up to 8 rows);
    fitted per-row tables multiply their dequantized weights. `act="i8"` quantizes the
    activations to int8 in the kernel (per row and block, lowbitc/a8.py) and multiplies
    integers (VNNI) for the formats that allow it on the LLVM backend; other formats and
    backends keep exact f32 activations."""
    fast = _bound_gemv(x, qw, backend, out, act)
    if fast is not None:
        y = _line_aligned((1, qw.shape[0]), _F32) if out is None else out
        fast(x, y)
        return y
    qw = _check_qtensor(qw)
    act = a8.check_act(act)
    if not isinstance(x, np.ndarray):
        raise UserArgumentError(f"x: expected a numpy array, got {type(x).__name__}")
    adt = _ACTIVATIONS.get(x.dtype) or ("bf16" if is_bfloat16(x.dtype) else None)
    if adt is None:
        raise UserArgumentError(f"x: expected float32, float16 or bfloat16, got {x.dtype}")
    if x.ndim != 2:
        raise UserArgumentError(f"x: expected a 2-D array [M, K], got shape {x.shape}")
    N, K = qw.shape
    if x.shape[1] != K:
        raise UserArgumentError(f"x: expected K = {K} columns to match qw {qw.shape}, "
                                f"got shape {x.shape}")
    x = np.ascontiguousarray(x)
    offsets = None  # an OffsetQTensor whose offsets the kernel subtracts (OFF)
    if isinstance(qw, OffsetQTensor):  # the plain part through the kernel, and the offsets
        x = permute_input(qw, x)
        act = "f32"  # offset tensors keep exact f32 activations
        if qw.offsets is not None and (backend != "llvm" or qw.zeros is not None):
            return subtract_offsets(qw, x, matmul(x, qw.base, backend, out))
        offsets = None if qw.offsets is None else qw
        qw = qw.base
    M = x.shape[0]
    y = _out(out, (M, N))
    if M == 0 or N == 0:
        return y
    if isinstance(qw, TableQTensor):
        return _table_matmul(x, qw, y, adt, backend)
    plan = ("matmul", backend, qw.dtype, adt, qw.zeros is not None, qw.group_size, M, N, K,
            act, offsets is not None)
    k = _plan(plan)
    if k is None:
        name, params = matmul_choice(M, N, K, qw, adt, act, backend)
        if name == "matmul" and backend == "llvm":
            # the GEMV path reads scales and zeros (or offsets, subtracted in the kernel)
            # tile-major, one contiguous run per program (a8.tile_scales,
            # OffsetQTensor.tile_scales), or group-major (QTensor.group_major)
            gemv, bn = not params["EARLY"], params["BN"]
            params.update(GM=gemv, TM=gemv and N % bn == 0 and bn <= TILE_MAJOR_BN,
                          OFF=offsets is not None)
        k = _remember(plan, get_kernel(name, backend, **params))
    if k.name == "matmul_a8":  # scales and zeros tile-major, activations quantized first
        run = a8.call(qw, k, x, adt, y, weight_storage)
        if qw.sparse is not None:
            qw.sparse.matmul_add(x, y, backend)
        elif run is not None and offsets is None:
            _remember_gemv(qw, _gemv_key(backend, act, x), plan, k, run)
        return y
    scales, zeros = _gemv_scales(qw, k, offsets)
    launch_matmul(k, x, weight_storage(qw, k), scales, zeros, y, qw.group_size, K)
    if qw.sparse is not None:
        qw.sparse.matmul_add(x, y, backend)
    return y


def _bound_gemv(x, qw, backend: str, out, act: str):
    """The bound int8 GEMV (a8.call's) that an earlier call with the same backend, act, x
    shape and dtype took on this weight, when x and `out` need no conversion or check the
    launch does not make; else None, and `matmul` takes its full path. A model decoding
    calls each layer's GEMV with one signature: this skips the ~3 us (more when the weight
    stream has left Python's objects out of cache) of checks, plan lookup and dispatch."""
    runs = getattr(qw, "_a8_fast", None)
    if runs is None or type(x) is not np.ndarray:
        return None
    hit = runs.get(_gemv_key(backend, act, x))
    if hit is None or _PLANS.get(hit[0]) is not hit[1] or not x.flags.c_contiguous:
        return None  # (a plan forgotten or replaced: the full path chooses again)
    if out is not None and not (type(out) is np.ndarray and out.dtype == _F32
                                and out.shape == (1, qw.shape[0]) and out.flags.c_contiguous
                                and out.flags.writeable):
        return None
    return hit[2]


def _gemv_key(backend: str, act: str, x: np.ndarray) -> tuple:
    """What a bound GEMV kept for `_bound_gemv` is found by (with the tuning generation)."""
    return backend, act, x.shape, x.dtype, tuned.GENERATION


def _remember_gemv(qw: QTensor, key: tuple, plan: tuple, k: Kernel, run) -> None:
    """Keep `run` (a8.call's bound GEMV with kernel `k`, the plan of `plan`) under `key`
    (`_gemv_key`) for `_bound_gemv` on qw (a few signatures)."""
    runs = qw.__dict__.setdefault("_a8_fast", {})
    if len(runs) >= a8.MAX_RUNS:
        runs.clear()
    runs[key] = (plan, k, run)


def _gemv_scales(qw: QTensor, k: Kernel, offsets: OffsetQTensor | None):
    """qw's scales and zero points (or the offsets) as matmul kernel `k` reads them:
    both tile-major in one array viewed as [P * G, N] (TM: a8.tile_scales or the offsets'
    OffsetQTensor.tile_scales), group-major
    [G, N] (GM) or as stored [N, G]; a [1, 1] placeholder for no zero points."""
    if k.params.get("TM"):  # scales and zero points (or offsets) in one array, z unread
        sz = a8.tile_scales(qw, k.params["BN"]) if offsets is None else \
            offsets.tile_scales(k.params["BN"])
        return sz.reshape(-1, qw.shape[0]), _NO_ZEROS
    gm = k.params.get("GM")
    scales, zeros = qw.group_major if gm else (qw.scales, qw.zeros)
    if offsets is not None:
        zeros = offsets.by_group if gm else offsets.offsets
    return scales, zeros if zeros is not None else _NO_ZEROS


# the GEMV's one K loop over all groups (matmul_mix.lbk FLAT): each row's lane sums carried
# across groups, scaled per group in registers, reduced once (Zen 4, one thread, 4096^2:
# 0.93x the nested loops' time streamed, 0.89x in cache; docs/performance.md)
MIX_FLAT = True


def mix_params(qw: TableQTensor, M: int, adt: str) -> dict:
    """matmul_mix's parameters for a mixture of named formats (members padded to 4)."""
    members, g = qw.member_formats, qw.group_size
    params = {f"W{i}": f for i, f in enumerate(members + (members[0],) * (4 - len(members)))}
    bk = 128 if g % 128 == 0 else 64 if g % 64 == 0 else 32
    flat = MIX_FLAT and M == 1 and g % bk == 0
    # 128 rows a block where there are enough: the row-table dot's per-window work (the
    # group's scales and indices, the output tile) is spread over more rows; the flat GEMV
    # carries 64 rows' lane sums
    params.update(T=len(members), A=adt, ZP=qw.zeros is not None,
                  BM=1 if M == 1 else 2 if M == 2 else 4 if M <= 4 else 8,
                  BN=128 if qw.shape[0] >= 2048 and not flat else 64, BK=bk, FLAT=flat)
    return params


def _table_matmul(x: np.ndarray, qw: TableQTensor, y: np.ndarray, adt: str,
                  backend: str) -> np.ndarray:
    """A per-group mixture of named formats with few activation rows runs matmul_mix.lbk on
    the LLVM backend (each group decoded with its member's table); fitted tables, more rows
    and other backends multiply the dequantized weights."""
    M, K = x.shape
    members = qw.member_formats
    if backend != "llvm" or M > GEMM_ROWS or members is None:
        np.matmul(x.astype(np.float32), qw.dequantize().T, out=y)
    else:
        plan = ("matmul_mix", backend, members, adt, qw.zeros is not None, qw.group_size, M)
        k = _plan(plan)
        if k is None:
            k = _remember(plan, get_kernel("matmul_mix", backend, **mix_params(qw, M, adt)))
        scales, zeros, index = qw.group_major
        packing = k.packings.get("w")
        words = qw.packed if packing is None else qw.packed_as(packing)
        k(x, words, scales, zeros if zeros is not None else _NO_ZEROS, index, y,
          qw.group_size, K=K)
    if qw.sparse is not None:
        qw.sparse.matmul_add(x, y, backend)
    return y


def _line_aligned(shape: tuple[int, int], dtype: np.dtype) -> np.ndarray:
    """An uninitialised C-contiguous array; from 64 KiB on, its data starts on a 64-byte line."""
    nbytes = shape[0] * shape[1] * np.dtype(dtype).itemsize
    if nbytes < 1 << 16:  # too small for streaming stores to matter: skip the extra work
        return np.empty(shape, dtype)
    raw = np.empty(nbytes + 64, np.uint8)
    first = -raw.ctypes.data % 64
    return raw[first:first + nbytes].view(dtype).reshape(shape)


def _out(out: np.ndarray | None, shape: tuple[int, int],
         dtype: np.dtype = _F32) -> np.ndarray:
    """The result array: `out` when given (checked), else a new one. Reusing an output saves
    the page faults of a fresh large array on every call. A new array of 64 KiB or more
    starts on a 64-byte line, so dequantize can write it with streaming stores."""
    if out is None:
        return _line_aligned(shape, dtype)
    if not (isinstance(out, np.ndarray) and out.dtype == dtype and out.shape == shape
            and out.flags.c_contiguous and out.flags.writeable):
        got = f"{out.dtype} {out.shape}" if isinstance(out, np.ndarray) else type(out).__name__
        raise UserArgumentError(f"out: expected a writeable C-contiguous {dtype} array of shape "
                                f"{shape}, got {got}")
    return out


def dequantize(qw: QTensor, backend: str = "llvm", out: np.ndarray | None = None,
               out_dtype=np.float32) -> np.ndarray:
    """qw's float32 weights [N, K], bit-identical to qw.dequantize() (written to `out` if given).

    `out_dtype=np.float16` returns float16 weights instead: on "llvm" the float32 result
    rounded once; on "cuda" the f16 path of docs/cuda.md (within 2^-10 * (|scale * value| +
    |zero term|) plus half an f16 ulp of the float32 result)."""
    qw = _check_qtensor(qw)
    N, K = qw.shape
    try:
        odt = _OUT_DTYPES.get(np.dtype(out_dtype))
    except TypeError:
        odt = None
    if odt is None:
        raise UserArgumentError(f"out_dtype: expected float32 or float16, got {out_dtype!r}")
    if isinstance(qw, OffsetQTensor):  # the plain part through the kernel, then the offsets
        y = _out(out, qw.shape, np.dtype(out_dtype))
        y[...] = finish_dequantize(qw, dequantize(qw.base, backend))  # f16: rounded once
        return y
    y = _out(out, (N, K), np.dtype(out_dtype))
    if N == 0 or K == 0:
        return y
    if isinstance(qw, TableQTensor):
        y[...] = qw.dequantize()
        return y
    plan = ("dequantize", backend, qw.dtype, qw.zeros is not None, qw.group_size, N, K, odt)
    k = _plan(plan)
    if k is None:
        params = {"W": qw.dtype, "ZP": qw.zeros is not None}
        if odt != "f32":
            params["O"] = odt
        tuned = tuned_params("dequantize", dict(params), qw.group_size, {"N": N, "K": K},
                             backend)
        if backend == "cuda" and odt in CUDA_DEQUANT_BN:
            params["BN"] = CUDA_DEQUANT_BN[odt]
        elif backend == "llvm" and qw.group_size % 128:
            # a K tile that fits the group (MX formats use 32): every chunk whole, none a
            # masked group end
            params["BK"] = 64 if qw.group_size % 64 == 0 else 32
        params.update(tuned)
        k = _remember(plan, get_kernel("dequantize", backend, **params))
    zeros = qw.zeros if qw.zeros is not None else _NO_ZEROS
    k(weight_storage(qw, k), qw.scales, zeros, y, qw.group_size, K=K)
    if qw.sparse is not None:
        y[qw.sparse.rows, qw.sparse.indices] += qw.sparse.values.astype(y.dtype)
    return y


def attention_decode(q, cache, scale: float | None = None,
                     backend: str | None = None) -> np.ndarray:
    """Decode attention of one new query token per sequence over a `lowbitc.kv.QuantKVCache`
    (`lowbitc.kv.attention_decode`): q [heads, head_dim] (or [batch, heads, head_dim]) ->
    softmax(q K^T / sqrt(head_dim)) V, float32, computed from the packed cache. `cache` may
    be a list of B caches (sequences of different lengths) with q [B, heads, head_dim]."""
    return kv_attention_decode(q, cache, scale, backend)
