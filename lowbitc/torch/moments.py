"""Data-free input statistics of a transformer encoder's linear layers, from its parameters.

`input_moments(model)` gives E[x_k^2] of every input column of the Q/K/V, attention-output,
FFN-up and FFN-down layers (HQQ's column weights: `quantize_(..., method="hqq",
moments="analytic")`) with no text and no forward pass: the embedding tables' row statistics
are propagated as a Gaussian (mean and covariance over the hidden size) through each
post-LayerNorm block. Each token attends to itself (the attention output's input is the value
projection of the block input), LayerNorm divides by its expected scale, and the FFN
activation is linearised statistically (Gauss-Hermite moments; Stein's lemma for its
covariance with its input). Each sampled row of the position table is propagated on its own
(a mixture over positions) and the moments are averaged. docs/quantization.md has the
measurements on MiniLM.

The structure is found by module types, not names: an embedding stage (a module with
nn.Embedding tables and a nn.LayerNorm) and a nn.ModuleList of post-LayerNorm blocks (BERT's
order: four square nn.Linear q, k, v, o; a LayerNorm; the FFN's up and down nn.Linear around
one parameter-free activation module; a LayerNorm). Anything else raises UserArgumentError;
the order of operations is assumed (post-LayerNorm), not read from the modules.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lowbitc.errors import UserArgumentError

LENGTH = 16  # the sequence length whose positions are averaged over (docs/quantization.md)
SAMPLES = 16  # position rows propagated (evenly spaced, the first included)
NODES = 64  # Gauss-Hermite nodes of the activation's moments


@dataclass(frozen=True)
class Block:
    """One post-LayerNorm encoder block: the qualified names and modules of its parts."""

    linears: tuple[tuple[str, nn.Linear], ...]  # q, k, v, o, up, down
    norms: tuple[nn.LayerNorm, nn.LayerNorm]  # after attention, after the FFN
    act: nn.Module


@dataclass(frozen=True)
class Encoder:
    tables: tuple[nn.Embedding, ...]  # largest first: tokens, positions, the rest (row 0)
    norm: nn.LayerNorm
    blocks: tuple[Block, ...]


def check_moments(moments, method: str, calibrate) -> int | None:
    """The sequence length `moments` asks for ("analytic": LENGTH, "analytic:L": L), None
    for None; UserArgumentError for anything else or a method that cannot use it."""
    if moments is None:
        return None
    kind, _, length = moments.partition(":") if isinstance(moments, str) else ("", "", "")
    if kind != "analytic" or not (length == "" or length.isdigit() and int(length) > 0):
        raise UserArgumentError(f"moments: expected 'analytic', 'analytic:L' (L > 0 tokens) "
                                f"or None, got {moments!r}")
    if method != "hqq" or calibrate is not None:
        raise UserArgumentError(f"moments: {moments!r} weights method='hqq' without "
                                f"calibration, got method={method!r}, calibrate="
                                f"{'None' if calibrate is None else 'a function'}")
    return int(length) if length else LENGTH


def input_moments(model: nn.Module, length: int | None = LENGTH, samples: int = SAMPLES
                  ) -> dict[str, np.ndarray]:
    """{qualified name of a block's nn.Linear: E[x^2] of its input columns [in_features]}
    for sequences of `length` tokens (None: the position table's size); `samples` position
    rows of the first `length`, evenly spaced, are propagated."""
    enc = find_encoder(model)
    if len(enc.tables) > 1:
        count = enc.tables[1].num_embeddings
        rows = _rows(count if length is None else min(length, count), samples)
    else:
        rows = [None]
    total: dict[str, np.ndarray] = {}
    for row in rows:
        for name, d in _propagate(enc, row).items():
            total[name] = total.get(name, 0) + d / len(rows)
    return total


def find_encoder(model: nn.Module) -> Encoder:
    """The embedding stage and the blocks of a post-LayerNorm encoder (see the module doc)."""
    stages = [m for m in model.modules()
              if any(isinstance(c, nn.Embedding) for c in m.children())
              and sum(isinstance(c, nn.LayerNorm) for c in m.children()) == 1]
    names = {id(m): n for n, m in model.named_modules()}
    lists = [[_block(b, names) for b in m] for m in model.modules()
             if isinstance(m, nn.ModuleList) and len(m)]
    lists = [blocks for blocks in lists if all(blocks)]
    if len(stages) != 1 or len(lists) != 1:
        raise UserArgumentError(
            "model: moments='analytic' needs one embedding stage (nn.Embedding tables beside "
            "one nn.LayerNorm) and one nn.ModuleList of post-LayerNorm encoder blocks (four "
            "square nn.Linear, a LayerNorm, FFN up/down nn.Linear around one activation "
            f"module, a LayerNorm), found {len(stages)} embedding stages and {len(lists)} "
            f"such block lists in {type(model).__name__}")
    tables = sorted((c for c in stages[0].children() if isinstance(c, nn.Embedding)),
                    key=lambda t: -t.num_embeddings)
    norm = next(c for c in stages[0].children() if isinstance(c, nn.LayerNorm))
    return Encoder(tuple(tables), norm, tuple(lists[0]))


def _block(module: nn.Module, names: dict[int, str]) -> Block | None:
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    norms = [m for m in module.modules() if isinstance(m, nn.LayerNorm)]
    acts = [m for m in module.modules()
            if not list(m.children()) and not list(m.parameters())
            and not isinstance(m, nn.Dropout | nn.Identity)]
    if len(linears) != 6 or len(norms) != 2 or len(acts) != 1:
        return None
    h, f = linears[0].in_features, linears[4].out_features
    shapes = [(m.in_features, m.out_features) for m in linears]
    if shapes != [(h, h)] * 4 + [(h, f), (f, h)] \
            or any(n.normalized_shape != (h,) for n in norms):
        return None
    return Block(tuple((names[id(m)], m) for m in linears), (norms[0], norms[1]), acts[0])


def _rows(count: int, samples: int) -> list[int]:
    return sorted({int(r) for r in np.linspace(0, count - 1, min(samples, count))})


def _array(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


def _optional(t: torch.Tensor | None, n: int, fill: float) -> np.ndarray:
    """An optional parameter (a bias, a LayerNorm's gain) or its neutral value."""
    return np.full(n, fill) if t is None else _array(t)


def _linear(m: nn.Linear) -> tuple[np.ndarray, np.ndarray]:
    return _array(m.weight), _optional(m.bias, m.out_features, 0.0)


def _embedded(enc: Encoder, row: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of the summed embeddings: the token table over all its rows, the
    position table at `row`, any other table at row 0."""
    tokens = _array(enc.tables[0].weight)
    mean = tokens.mean(axis=0)
    for i, t in enumerate(enc.tables[1:]):
        mean = mean + _array(t.weight[row if i == 0 else 0])
    return mean, np.cov(tokens.T, bias=True)


def _layer_norm(mean, cov, norm: nn.LayerNorm) -> tuple[np.ndarray, np.ndarray]:
    """Moments of LayerNorm(u) for u ~ (mean, cov), dividing by the expected scale."""
    n = len(mean)
    g = _optional(norm.weight, n, 1.0)
    b = _optional(norm.bias, n, 0.0)
    centred = mean - mean.mean()
    c = cov - cov.mean(axis=0, keepdims=True)
    c = c - c.mean(axis=1, keepdims=True)
    var = (centred @ centred + np.trace(c)) / n + norm.eps
    return g * centred / np.sqrt(var) + b, np.outer(g, g) * c / var


def _activation(act: nn.Module, mean, var):
    """E[a(h)], E[a(h)^2] and E[a'(h)] for h ~ N(mean, var) per channel (Gauss-Hermite;
    the slope by Stein's lemma, E[a(h) (h - mean)] / var, exact for kinks like ReLU's)."""
    x, w = np.polynomial.hermite_e.hermegauss(NODES)
    w = w / w.sum()
    sd = np.sqrt(np.maximum(var, 0))
    with torch.no_grad():
        a = act(torch.from_numpy(mean[:, None] + sd[:, None] * x[None])).numpy()
    at = torch.from_numpy(mean).requires_grad_(True)  # channels with no spread: a'(mean)
    (slope,) = torch.autograd.grad(act(at).sum(), at)
    wide = sd > 1e-6
    slope = np.where(wide, (a * x) @ w / np.where(wide, sd, 1), slope.numpy())
    return a @ w, (a * a) @ w, slope


def _diag(w: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """The diagonal of w @ cov @ w.T."""
    return ((w @ cov) * w).sum(axis=1)


def _propagate(enc: Encoder, row: int | None) -> dict[str, np.ndarray]:
    mean, cov = _layer_norm(*_embedded(enc, row), enc.norm)
    d = {}
    for block in enc.blocks:
        (q, _), (k, _), (v, mv), (o, mo), (up, mu), (down, md) = block.linears
        x2 = mean * mean + np.diag(cov)
        d.update({q: x2, k: x2, v: x2})
        (wv, bv), (wo, bo), (w1, b1), (w2, b2) = map(_linear, (mv, mo, mu, md))
        vmean = wv @ mean + bv
        d[o] = vmean * vmean + _diag(wv, cov)
        a = np.eye(len(mean)) + wo @ wv  # each token attends to itself: x + o(v(x))
        mean, cov = _layer_norm(mean + wo @ vmean + bo, a @ cov @ a.T, block.norms[0])
        d[up] = mean * mean + np.diag(cov)
        hmean, hvar = w1 @ mean + b1, _diag(w1, cov)
        g, g2, slope = _activation(block.act, hmean, hvar)
        d[down] = g2
        b = np.eye(len(mean)) + w2 @ (slope[:, None] * w1)  # x + down(act(up(x))), linearised
        rest = np.maximum(g2 - g * g - slope * slope * hvar, 0)  # what the slope misses
        mean, cov = _layer_norm(mean + w2 @ g + b2, b @ cov @ b.T + (w2 * rest) @ w2.T,
                                block.norms[1])
    return d
