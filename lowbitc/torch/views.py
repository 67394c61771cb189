"""Numpy views of torch tensors as lowbitc's CPU kernels read them, memoised per tensor: the
plain view, a weight's words in a kernel's packing, scales and zero points tile-major (what
matmul_a8 reads). A memo is keyed by the tensor's identity, data pointer and in-place version,
so writing a buffer in place (load_state_dict) is seen."""

from __future__ import annotations

import weakref

import ml_dtypes
import numpy as np
import torch

from lowbitc import a8, formats
from lowbitc.packing import unpack
from lowbitc.quant import QTensor


def array(t: torch.Tensor) -> np.ndarray:
    """A numpy view of a contiguous CPU tensor (no copy); int32 words read as uint32."""
    if t.requires_grad:
        t = t.detach()
    if t.dtype is torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    a = t.numpy()
    return a.view(np.uint32) if a.dtype == np.int32 else a


_VIEWS: dict[int, tuple] = {}  # id(tensor) -> (weakref, data_ptr, numpy view)


def weight_array(t: torch.Tensor) -> np.ndarray:
    """`array` memoised per weight tensor: a fresh numpy view of a torch tensor costs
    10-20 us inside a kernel call here, and weights stay put across calls."""
    hit = _VIEWS.get(id(t))
    if hit is not None and hit[0]() is t and hit[1] == t.data_ptr():
        return hit[2]
    a = array(t)
    key = id(t)
    _VIEWS[key] = (weakref.ref(t, lambda _, key=key: _VIEWS.pop(key, None)), t.data_ptr(), a)
    return a


_REPACKED: dict[int, tuple] = {}  # id(weight) -> (weakref, data_ptr, version, packing, words)
_TILE_MAJOR: dict[tuple, tuple] = {}  # (id(scales), tile) -> (weakref, state, copy)


def kernel_weight(kern, weight: torch.Tensor, scales: torch.Tensor,
                  zeros: torch.Tensor | None, fmt: str, group_size: int, k: int):
    """`weight` as `kern` reads it: the canonical words, or, for a kernel compiled with a
    layout-specific packing of its `w`, the words in that packing, transformed once per weight
    tensor and in-place version (the kernel would otherwise transform them on every call)."""
    packing = getattr(kern, "packings", {}).get("w")
    if packing is None:
        return weight_array(weight)
    version = 0 if weight.is_inference() else weight._version  # inference tensors have none
    state = (weight.data_ptr(), version, packing)
    hit = _REPACKED.get(id(weight))
    if hit is not None and hit[0]() is weight and hit[1:4] == state:
        return hit[4]
    n = weight.shape[0]
    codes = unpack(array(weight), formats.lookup(fmt).bits, k)
    qw = QTensor(formats.lookup(fmt), (n, k), group_size, codes, array(scales),
                 None if zeros is None else array(zeros))
    words = qw.packed_as(packing)
    key = id(weight)
    _REPACKED[key] = (weakref.ref(weight, lambda _, key=key: _REPACKED.pop(key, None)), *state,
                      words)
    return words


def tile_major(scales: torch.Tensor, zeros: torch.Tensor | None, bn: int) -> np.ndarray:
    """Scales and zero points [N, G] tile-major for tiles of `bn` rows, in one array
    (lowbitc.a8.tile_major: what matmul_a8 reads), made once per tensor pair, tile width and
    in-place versions."""
    state = tuple((id(t), t.data_ptr(), 0 if t.is_inference() else t._version)
                  for t in (scales, zeros) if t is not None)
    key = (id(scales), bn)  # GEMV and GEMM tiles differ: both kept
    hit = _TILE_MAJOR.get(key)
    if hit is not None and hit[0]() is scales and hit[1] == state:
        return hit[2]
    a = a8.tile_major(array(scales), bn, None if zeros is None else array(zeros))
    _TILE_MAJOR[key] = (weakref.ref(scales, lambda _, key=key: _TILE_MAJOR.pop(key, None)),
                        state, a)
    return a
