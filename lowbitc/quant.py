"""Group-wise weight quantization into any lowbitc format, and the QTensor that holds it.

`quantize(w[N, K], dtype, group_size)` splits every row into groups of `group_size` along K
(the last group may be partial) and chooses, per group, the scale (and for unsigned integer
formats with `zero_point=True`, the zero point) that minimises the squared reconstruction
error over a clipping grid, then refines it around the best point (with zero points, then
fits the line through the chosen codes by least squares, kept where it lowers the error).
Scales are rounded to `scale_dtype` inside the search, so the codes are always chosen for
the stored scale.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
from dataclasses import dataclass

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from lowbitc.dtypes import Format, codebook
from lowbitc.dtypes import dtype as get_dtype
from lowbitc.errors import UserArgumentError
from lowbitc.outliers import Sparse
from lowbitc.packing import pack, unpack
from lowbitc.quant_errors import _affine_sums, _compiled, _errors
from lowbitc.repack import PackedWords, Packing, aligned_copy, cached_packing

# Search grids: clipping ratios (of the largest magnitude, or of the half range), then a
# finer grid in units of the coarse step around the best. Non-uniform formats (floats, code
# books) are slower to evaluate and less sensitive to clipping: they use every other point.
COARSE = np.linspace(0.1, 1.0, 24)
FINE = np.linspace(-1.0, 1.0, 9)
SHIFTS = np.linspace(-0.4, 0.4, 9)  # zero-point search: shift of the range centre
OVERSHOOT = np.array([1.125, 1.25, 1.5, 1.75, 2.0])  # ratios > 1 where they can win
REFITS = 4  # least-squares polish rounds after the zero-point grid search


@dataclass(frozen=True, eq=False)
class QTensor:
    """A quantized [N, K] weight: codes, per-group scales and optional zero points.

    `dequantize()` is w_hat[n, k] = (decode(codes[n, k]) - zeros[n, g]) * scales[n, g] with
    g = k // group_size, evaluated in float32 in exactly this order: one float32 subtraction
    (skipped when `zeros` is None), then one float32 multiplication; with outliers (`sparse`),
    then one float32 addition of the sparse value where there is one. Compiled kernels match it
    bit for bit.
    """

    dtype: Format
    shape: tuple[int, int]
    group_size: int
    codes: np.ndarray  # uint8 [N, K]
    scales: np.ndarray  # float32 [N, ceil(K / group_size)]
    zeros: np.ndarray | None = None  # float32, same shape as scales
    scale_dtype: str = "f32"
    sparse: Sparse | None = None  # outliers kept in float (lowbitc.outliers), added on top

    def __post_init__(self) -> None:
        n, k = self.shape
        if self.sparse is not None and self.sparse.shape != (n, k):
            raise UserArgumentError(f"sparse: expected an outlier matrix of shape {(n, k)}, "
                                    f"got {self.sparse.shape}")
        groups = (n, -(-k // self.group_size))
        if self.codes.shape != (n, k) or self.codes.dtype != np.uint8:
            raise UserArgumentError(f"codes: expected uint8 {(n, k)}, got "
                                    f"{self.codes.dtype} {self.codes.shape}")
        if self.scales.shape != groups or self.scales.dtype != np.float32:
            raise UserArgumentError(f"scales: expected float32 {groups}, got "
                                    f"{self.scales.dtype} {self.scales.shape}")
        if self.zeros is not None and (self.zeros.shape != groups
                                       or self.zeros.dtype != np.float32):
            raise UserArgumentError(f"zeros: expected float32 {groups} or None, got "
                                    f"{self.zeros.dtype} {self.zeros.shape}")

    @property
    def zero_point(self) -> bool:
        return self.zeros is not None

    @property
    def num_groups(self) -> int:
        return self.scales.shape[1]

    @functools.cached_property
    def packed(self) -> np.ndarray:
        """Canonical packed codes: uint32 [N, ceil(K * bits / 32)] (see lowbitc.packing)."""
        return pack(self.codes, self.dtype.bits)

    def packed_as(self, packing: Packing) -> PackedWords:
        """The codes in a kernel's layout-specific packing (`Kernel.packings`), transformed
        once and cached on this QTensor (never saved in its file)."""
        return cached_packing(self, self.codes, packing)

    @functools.cached_property
    def group_major(self) -> tuple[np.ndarray, np.ndarray | None]:
        """scales and zeros (or None) transposed to group-major, C-contiguous float32 [G, N]:
        what the CPU matmul reads (one group's scales of consecutive rows are one contiguous
        load); made once and cached (never saved)."""
        zeros = None if self.zeros is None else np.ascontiguousarray(self.zeros.T)
        return np.ascontiguousarray(self.scales.T), zeros

    def __getstate__(self) -> dict:
        """Pickling and copy.deepcopy leave out the bound launches of lowbitc.a8.call
        (`_a8_runs`, and ops.matmul's `_a8_fast` of the same launches: ctypes objects bound
        to this tensor's arrays); a copy binds its own on its first int8-activation GEMV."""
        state = dict(self.__dict__)
        state.pop("_a8_runs", None)
        state.pop("_a8_fast", None)
        return state

    def replica(self) -> QTensor:
        """The same weight in fresh memory for what kernels read: scales, zero points and every
        packing made so far copied (codes too for u8/i8, which kernels read as bytes; other
        formats share them). Timings rotate through replicas to read weights from DRAM, as a
        model's layers are read in decoding (lowbitc.memory)."""
        codes = self.codes.copy() if self.dtype.name in ("u8", "i8") else self.codes
        twin = QTensor(self.dtype, self.shape, self.group_size, codes,
                       self.scales.copy(), None if self.zeros is None else self.zeros.copy(),
                       self.scale_dtype, None if self.sparse is None else self.sparse.copy())
        if "packed" in self.__dict__:
            twin.__dict__["packed"] = self.packed.copy()
        if "group_major" in self.__dict__:
            twin.__dict__["group_major"] = tuple(
                None if a is None else a.copy() for a in self.group_major)
        twin.__dict__["_tile_major"] = {  # lowbitc.a8.tile_scales and inline_pack
            key: _copied(v) for key, v in self.__dict__.get("_tile_major", {}).items()}
        twin.__dict__["_repacked"] = {
            p: PackedWords(aligned_copy(w.words), w.packing, w.count)
            for p, w in self.__dict__.get("_repacked", {}).items()}
        return twin

    def dequantize(self) -> np.ndarray:
        """float32 [N, K] reconstruction, bit-exact with the formula in the class docstring."""
        v = self.dtype.decode(self.codes)
        g = self.group_size
        if self.zeros is not None:
            v = v - np.repeat(self.zeros, g, axis=1)[:, : self.shape[1]]
        v = v * np.repeat(self.scales, g, axis=1)[:, : self.shape[1]]
        if self.sparse is not None:
            v[self.sparse.rows, self.sparse.indices] += self.sparse.values.astype(np.float32)
        return v

    def save(self, path) -> None:
        """Write packed codes, scales, zeros and the metadata to rebuild this to safetensors."""
        tensors = {"packed": self.packed, "scales": self.scales}
        if self.zeros is not None:
            tensors["zeros"] = self.zeros
        if self.sparse is not None:
            tensors.update({f"outlier_{k}": getattr(self.sparse, k)
                            for k in ("indptr", "indices", "values")})
        meta = {
            "format": self.dtype.name,
            "kind": self.dtype.kind,
            "shape": json.dumps(list(self.shape)),
            "group_size": str(self.group_size),
            "scale_dtype": self.scale_dtype,
            "layout": "canonical-lsb-uint32",
            "lowbitc_version": _version(),
        }
        if self.dtype.kind == "codebook":
            meta["codebook"] = json.dumps(list(self.dtype.table))
        save_file(tensors, str(path), metadata=meta)


def _copied(v):
    """A copy of a cached matmul_a8 operand (lowbitc.a8): tile-major scales, or the inline
    packing's (PackedWords, its words as floats) over one fresh copy of the words."""
    if isinstance(v, np.ndarray):
        return v.copy()
    w, sz = v
    words = aligned_copy(w.words)
    return PackedWords(words, w.packing, w.count), words.reshape(-1).view(np.float32).reshape(
        sz.shape)


def load(path) -> QTensor:
    """Read a QTensor written by `QTensor.save`."""
    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata() or {}
        missing = {"format", "shape", "group_size", "scale_dtype"} - set(meta)
        if missing or "packed" not in f.keys():
            raise UserArgumentError(f"path: {path} is not a lowbitc QTensor file "
                                    f"(missing {sorted(missing) or ['packed']})")
        t = {k: f.get_tensor(k) for k in f.keys()}
    if "codebook" in meta:
        fmt = codebook(json.loads(meta["codebook"]), name=meta["format"])
    else:
        fmt = get_dtype(meta["format"])
    n, k = json.loads(meta["shape"])
    codes = unpack(t["packed"], fmt.bits, k) if n else np.zeros((0, k), np.uint8)
    sparse = (Sparse((n, k), t["outlier_indptr"], t["outlier_indices"], t["outlier_values"])
              if "outlier_indptr" in t else None)
    return QTensor(fmt, (n, k), int(meta["group_size"]), codes, t["scales"], t.get("zeros"),
                   meta["scale_dtype"], sparse)


def _version() -> str:
    try:
        return importlib.metadata.version("lowbitc")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# ---------------------------------------------------------------- argument checks
def _check_weight(w) -> np.ndarray:
    a = np.asarray(w)
    if a.dtype.kind != "f" and not (a.dtype.kind == "V" and a.dtype.itemsize <= 2):
        raise TypeError(f"w: expected a float array, got dtype {a.dtype}")
    if a.ndim != 2:
        raise UserArgumentError(f"w: expected a 2-D [N, K] weight, got shape {a.shape}")
    a = a.astype(np.float32)
    if not np.isfinite(a).all():
        where = tuple(int(i) for i in np.argwhere(~np.isfinite(a))[0])
        raise UserArgumentError(f"w: expected finite values, got {a[where]} at index {where}")
    return a


def _check_args(fmt_arg, group_size, zero_point, scale_dtype) -> tuple[Format, Format]:
    if isinstance(fmt_arg, list | tuple):
        raise TypeError(f"dtype: expected one format here, got a {type(fmt_arg).__name__} "
                        f"{list(fmt_arg)!r}; a per-group mixture of formats is "
                        "lowbitc.quantize(w, [...], group_size)")
    fmt = get_dtype(fmt_arg)
    if fmt.bits > 8:
        raise UserArgumentError(f"dtype: expected a 1-8-bit format, got {fmt.name}")
    if isinstance(group_size, bool) or not isinstance(group_size, int | np.integer):
        raise TypeError(f"group_size: expected an int >= 1, got {group_size!r}")
    if group_size < 1:
        raise UserArgumentError(f"group_size: expected an int >= 1, got {group_size}")
    if not isinstance(zero_point, bool | np.bool_):
        raise TypeError(f"zero_point: expected a bool, got {zero_point!r}")
    if zero_point and fmt.kind != "uint":
        raise UserArgumentError(
            f"zero_point: zero points need an unsigned integer format (u1..u8); {fmt.name} "
            f"is {fmt.kind} and is quantized symmetrically (use zero_point=False)")
    sfmt = get_dtype(scale_dtype)
    if sfmt.kind != "float" or not sfmt.max > 0:
        raise UserArgumentError(f"scale_dtype: expected a float format such as f32, f16, "
                                f"bf16, f8e8m0fnu, f8e4m3fn; got {sfmt.name}")
    return fmt, sfmt


# ---------------------------------------------------------------- the search
def quantize(w, dtype: str | Format, group_size: int, zero_point: bool = False,
             scale_dtype: str = "f32") -> QTensor:
    """Quantize float weight `w[N, K]` group-wise along K into `dtype` (see module docstring).

    Symmetric (scale only) for every format except unsigned integers with zero_point=True.
    `scale_dtype="f8e8m0fnu", group_size=32` gives MX formats; `"f8e4m3fn", 16` NVFP4-style.
    """
    w = _check_weight(w)
    fmt, sfmt = _check_args(dtype, group_size, zero_point, scale_dtype)
    n, k = w.shape
    g = int(group_size)
    full, rest = divmod(k, g)
    pieces = []  # [groups, members]: the full groups, then the partial last group
    if full:
        pieces.append(np.ascontiguousarray(w[:, : full * g]).reshape(n * full, g))
    if rest:
        pieces.append(np.ascontiguousarray(w[:, full * g:]))
    search = _search_affine if zero_point else _search_symmetric
    found = [search(fmt, sfmt, p) for p in pieces]
    scales = np.concatenate([f[0].reshape(n, -1) for f in found], axis=1)
    zeros = np.concatenate([f[1].reshape(n, -1) for f in found], axis=1)
    y = w / np.repeat(scales, g, axis=1)[:, :k]
    if zero_point:
        y = y + np.repeat(zeros, g, axis=1)[:, :k]
    codes = fmt.encode(y)
    return QTensor(fmt, (n, k), g, codes, scales, zeros if zero_point else None, sfmt.name)


def _round_scale(s: np.ndarray, sfmt: Format) -> np.ndarray:
    """Scales as stored in `sfmt`, kept strictly positive and finite."""
    s = s.astype(np.float32)
    if sfmt.bits < 32:
        s = sfmt.decode(sfmt.encode(s))
    return np.clip(s, max(sfmt.min_subnormal, float(np.finfo(np.float32).tiny)), sfmt.max)


def _pick(cand: np.ndarray, err: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per group, the candidate with the least error, and that error."""
    best = err.argmin(axis=0)
    cols = np.arange(err.shape[1])
    return cand[best, cols], err[best, cols]


def _search_symmetric(fmt: Format, sfmt: Format, wg: np.ndarray):
    """Best scale per group wg[M, gs] over the clipping grid, then a finer grid around it."""
    amax = np.abs(wg).max(axis=1).astype(np.float64)
    lo, hi = fmt.min, fmt.max  # the largest magnitude reachable on both sides, if any
    vmax = min(hi, -lo) if lo < 0 < hi else max(hi, -lo)
    s0 = np.where(amax > 0, amax / vmax, 2.0**-20)
    uniform = fmt.kind in ("uint", "int", "bipolar")
    coarse, fine = (COARSE, FINE) if uniform else (COARSE[1::2], FINE[::2])
    if sfmt.bits < 32 or not uniform:  # rounded scales, or sparse top levels (fp4: 4, 6)
        coarse = np.concatenate([coarse, OVERSHOOT])
    step = coarse[1] - coarse[0]
    best_s, best_e = _best_scale(fmt, sfmt, wg, coarse[:, None] * s0)
    ratios = np.clip(best_s / s0 + fine[:, None] * step, 0.01, None)
    s2, e2 = _best_scale(fmt, sfmt, wg, ratios * s0)
    return np.where(e2 < best_e, s2, best_s), np.zeros(len(s0), np.float32)


def _best_scale(fmt, sfmt, wg, cands: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per group, the best of the candidate scales [C, M] (ascending along C) once rounded."""
    scales = _distinct(_round_scale(cands, sfmt))
    return _pick(scales, _errors(fmt, wg, scales, np.zeros_like(scales)))


def _distinct(c: np.ndarray) -> np.ndarray:
    """Candidates [C, M], sorted along C -> [C', M]: each column's distinct values (padded
    with its largest), so coarse scale formats (f8e8m0fnu) evaluate each scale once."""
    rank = np.zeros(c.shape, np.int32)
    for i in range(1, len(c)):
        rank[i] = rank[i - 1] + (c[i] != c[i - 1])
    k = int(rank[-1].max()) + 1
    if k == len(c):
        return c
    out = np.repeat(c[-1:], k, axis=0)
    for i in range(len(c)):
        np.put_along_axis(out, rank[i][None], c[i][None], axis=0)
    return out


def _search_affine(fmt: Format, sfmt: Format, wg: np.ndarray):
    """Best (scale, zero) per group for unsigned codes: shrink [min, max] around its centre
    over the clipping grid, then shift the centre, then refine the shrink."""
    qmax = float(fmt.max)
    lo, hi = wg.min(axis=1).astype(np.float64), wg.max(axis=1).astype(np.float64)
    centre, half = (lo + hi) / 2, np.maximum((hi - lo) / 2, 2.0**-20)

    def candidates(ratio, shift):  # ratio, shift: [C, M]
        s = _round_scale(2 * half * ratio / qmax, sfmt)
        z = (qmax / 2 - (centre + shift * half) / s).astype(np.float32)
        return s, z

    def best(ratio, shift):
        s, z = candidates(ratio, shift)
        return _errors(fmt, wg, s, z).argmin(axis=0), np.arange(len(half))

    ones = np.ones((1, len(half)))
    coarse = COARSE if sfmt.bits == 32 else np.concatenate([COARSE, OVERSHOOT])
    r = coarse[:, None] * ones
    ratio = r[best(r, 0 * r)]
    t = SHIFTS[:, None] * ratio[None]
    shift = t[best(ratio[None] + 0 * t, t)]
    step = COARSE[1] - COARSE[0]
    r = np.clip(ratio[None] + FINE[:, None] * step, 0.01, None)
    ratio = r[best(r, shift[None] + 0 * r)]
    s, z = candidates(ratio[None], shift[None])
    return _refit_affine(fmt, sfmt, wg, s[0], z[0])


def _refit_affine(fmt: Format, sfmt: Format, wg: np.ndarray, s: np.ndarray, z: np.ndarray):
    """Polish the grid's (scale, zero) per group: fit the line w ~ scale * (code - zero) to
    the codes they give by least squares, and keep the fit where its error is lower. The grid
    only moves the range's ends; this weighs every weight (MiniLM u4 cosine 0.967 -> 0.971)."""
    g, top = wg.shape[1], float(fmt.max)
    sums = _compiled(_affine_sums)
    cur = np.empty((len(s), 5))
    sums(wg, s, z, top, cur)
    new = np.empty_like(cur)
    for _ in range(REFITS):
        qm, wm = cur[:, 1] / g, cur[:, 4] / g
        var, cov = cur[:, 2] / g - qm * qm, cur[:, 3] / g - qm * wm
        fit = (var > 0) & (cov > 0)
        s2 = _round_scale(np.where(fit, cov / np.where(fit, var, 1), s), sfmt)
        z2 = (qm - wm / s2).astype(np.float32)
        sums(wg, s2, z2, top, new)
        better = new[:, 0] < cur[:, 0]
        if not better.any():
            break
        s, z = np.where(better, s2, s), np.where(better, z2, z)
        cur = np.where(better[:, None], new, cur)
    return s, z
