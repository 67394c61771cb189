"""Code books fitted to the weights: 1-D k-means, optionally weighted per weight by a
Fisher or Hessian diagonal as SqueezeLLM does (`lowbitc.codebook.fit`).

Lloyd's iterations run on the sorted values: a cluster is a run of them between two
midpoints, so each step is a search of the midpoints and cumulative sums, exact and
O(codes * log(values)). They stop at a fixed point (no value changes cluster).

`per="tensor"` fits one code book to the weights divided by their group's largest magnitude
(so it suits `quantize(w, book, group_size)`, whose scales do the rest), returned as a
lowbitc code-book format; `per="row"` fits one table per row to the raw weights and returns
`RowCodebooks`, which `quantize` turns into a `TableQTensor` (one table per row, no scales).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lowbitc.dtypes import Format, codebook
from lowbitc.errors import UserArgumentError

MAX_ITERS = 200


@dataclass(frozen=True, eq=False)
class RowCodebooks:
    """One fitted table per row: float32 [N, 2**bits], each row ascending."""

    tables: np.ndarray
    bits: int


def kmeans_1d(x: np.ndarray, k: int, weights: np.ndarray | None = None,
              iters: int = MAX_ITERS) -> np.ndarray:
    """Ascending centroids [k] of the (weighted) 1-D k-means of `x`, run to a fixed point."""
    order = np.argsort(x, kind="stable")
    xs = x[order].astype(np.float64)
    ws = np.ones_like(xs) if weights is None else weights[order].astype(np.float64)
    cw = np.concatenate([[0.0], np.cumsum(ws)])
    cx = np.concatenate([[0.0], np.cumsum(ws * xs)])
    # start at the weighted quantiles (i + 1/2) / k
    c = np.interp((np.arange(k) + 0.5) / k * cw[-1], cw[1:], xs)
    cuts = None
    for _ in range(iters):
        new = np.searchsorted(xs, (c[1:] + c[:-1]) / 2, side="right")
        if cuts is not None and (new == cuts).all():
            break
        cuts = new
        edges = np.concatenate([[0], cuts, [len(xs)]])
        mass = cw[edges[1:]] - cw[edges[:-1]]
        c = np.where(mass > 0, (cx[edges[1:]] - cx[edges[:-1]]) / np.where(mass > 0, mass, 1), c)
        c = np.sort(c)
    return c


def _check(w, bits, weights, per, group_size):
    a = np.asarray(w, np.float32)
    if a.ndim != 2:
        raise UserArgumentError(f"w: expected a 2-D [N, K] weight, got shape {a.shape}")
    if isinstance(bits, bool) or not isinstance(bits, int | np.integer) or not 1 <= bits <= 8:
        raise UserArgumentError(f"bits: expected an int in 1..8, got {bits!r}")
    if per not in ("tensor", "row"):
        raise UserArgumentError(f"per: expected 'tensor' or 'row', got {per!r}")
    if group_size is not None and (not isinstance(group_size, int) or group_size < 1):
        raise UserArgumentError(f"group_size: expected an int >= 1 or None, got {group_size!r}")
    if weights is not None:
        weights = np.broadcast_to(np.asarray(weights, np.float64), a.shape) \
            if np.ndim(weights) in (1, 2) and np.shape(weights)[-1] == a.shape[1] else None
        if weights is None or (weights < 0).any():
            raise UserArgumentError(f"weights: expected non-negative weights of shape {a.shape} "
                                    f"or [{a.shape[1]}] (one per input column)")
    return a, weights


def fit(w, bits: int, weights=None, per: str = "tensor",
        group_size: int | None = None) -> Format | RowCodebooks:
    """A code book of 2**bits values fitted to `w` [N, K] (see the module docstring);
    `weights` [N, K] or [K] weighs each weight's squared error (e.g. a Hessian diagonal)."""
    a, wt = _check(w, bits, weights, per, group_size)
    k = 1 << bits
    if per == "row":
        tables = np.stack([kmeans_1d(a[r], k, None if wt is None else wt[r])
                           for r in range(a.shape[0])]).astype(np.float32)
        return RowCodebooks(tables, bits)
    g = group_size or a.shape[1]
    n, cols = a.shape
    pad = -cols % g
    amax = np.abs(np.pad(a, ((0, 0), (0, pad)))).reshape(n, -1, g).max(axis=2)
    norm = a / np.maximum(np.repeat(amax, g, axis=1)[:, :cols], 1e-30)
    c = kmeans_1d(norm.ravel(), k, None if wt is None else wt.ravel()).astype(np.float32)
    c = np.unique(c / np.abs(c).max())
    if c.size < 2:
        raise UserArgumentError("w: the weights have fewer than 2 distinct values to fit")
    return codebook(c)


class CodebookFactory:
    """`lowbitc.codebook`: call it with values to make a code-book format (as
    `lowbitc.dtypes.codebook`), or `.fit(...)` one to weights."""

    def __call__(self, values, name: str | None = None) -> Format:
        return codebook(values, name)

    fit = staticmethod(fit)

    @staticmethod
    def fitter(bits: int, per: str = "row", group_size: int | None = None):
        """A per-layer dtype for lowbitc.torch.quantize_: (weight, column weights) -> the
        code book(s) `fit` gives, weighted by the layer's Hessian diagonal when calibrating."""
        return lambda w, weights=None: fit(w, bits, weights, per, group_size)

    kmeans_1d = staticmethod(kmeans_1d)

    def __repr__(self) -> str:
        return "lowbitc.codebook"
