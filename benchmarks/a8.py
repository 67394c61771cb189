"""The W*A8 rows (issue 14): `ops.matmul(x, qw, act="i8")` against numpy fp32 and torch's
int4 kernel, with every weight streaming from memory.

Each timed call takes the next of several distinct weight tensors (as a model's layers come
in turn in decoding), enough of them to total at least ROTATE x the last-level cache (read
from sysfs), for lowbitc and for the baselines alike; numpy, torch and lowbitc calls
interleave in the same rounds. The one-weight (cache-resident) A8 time is recorded beside each
GEMV row, labelled. Rows whose name matches no spec are not built.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import numpy as np

from lowbitc import ops
from lowbitc.quant import QTensor

from . import candidates as cand
from .baselines import torch_int4_gemv
from .cases import RowSpec
from .config import Config
from .groups import Binding, Group

__all__ = ["a8_groups", "last_level_cache_bytes"]

ROTATE = 4  # weights in rotation total at least this many times the last-level cache
DEFAULT_LLC = 32 << 20


def last_level_cache_bytes() -> int:
    """The largest cache of cpu0 (sysfs), or DEFAULT_LLC when it cannot be read."""
    best = 0
    for d in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (d / "size").read_text().strip()
        except OSError:
            continue
        unit = {"K": 1 << 10, "M": 1 << 20}.get(text[-1:], 1)
        digits = text.rstrip("KM")
        if digits.isdigit():
            best = max(best, int(digits) * unit)
    return best or DEFAULT_LLC


def _copies(nbytes: float, llc: int) -> int:
    return max(2, -(-ROTATE * llc // max(int(nbytes), 1)))


def _rotating(name: str, calls: list[Callable[[], object]], like: cand.Timed) -> cand.Timed:
    """`like`'s work, each call on the next of `calls`' distinct operands."""
    nxt = itertools.cycle(calls).__next__
    return cand.Timed(name=name, fn=lambda: nxt()(), flops=like.flops,
                      bytes_moved=like.bytes_moved, weight_bytes=like.weight_bytes,
                      check=like.check, info={**like.info, "rotating_weights": len(calls)})


def _clone(qw: QTensor) -> QTensor:
    """The same weight in memory of its own."""
    return QTensor(qw.dtype, qw.shape, qw.group_size, qw.codes.copy(), qw.scales.copy(),
                   None if qw.zeros is None else qw.zeros.copy(), qw.scale_dtype)


def a8_case(name: str, x: np.ndarray, qw: QTensor, llc: int) -> cand.Timed:
    """ops.matmul(x, qw, act="i8") rotating over copies of qw; checked against the bound
    int8 rounding of the activations implies (2% of max |y| is far above it)."""
    one = cand.matmul_case(name, x, qw)  # the f32 path's work figures and check
    y = ops.matmul(x, qw, act="i8")
    ref = x.astype(np.float64) @ qw.dequantize().astype(np.float64).T
    qws = [qw] + [_clone(qw) for _ in range(_copies(one.weight_bytes, llc) - 1)]
    for q in qws:
        ops.weight_storage(q, None)  # (the repacked words are made by the first call)
        ops.matmul(x, q, act="i8")
    t = _rotating(name, [lambda q=q: ops.matmul(x, q, act="i8") for q in qws], one)
    t.check = cand._compare(y, ref, 2e-2)
    t.info["act"] = "i8"
    return t


def _numpy_rotating(m: int, n: int, llc: int, seed: int) -> cand.Timed:
    x = cand.activations(m, n, seed + 1)
    ws = [cand.weights(n, n, seed + i) for i in range(_copies(4.0 * n * n, llc))]
    t = cand.Timed(name=f"numpy_fp32_M{m}_dram", fn=lambda: None, flops=2.0 * m * n * n,
                   bytes_moved=4.0 * n * n, weight_bytes=4.0 * n * n)
    return _rotating(t.name, [lambda w=w: x @ w.T for w in ws], t)


def _torch_rotating(m: int, n: int, group: int, llc: int) -> cand.Timed | None:
    first = cand.torch_case(n, n, group, M=m)
    if first is None:
        return None
    more = [torch_int4_gemv(n, n, M=m, group_size=group, seed=i)
            for i in range(1, _copies(first.weight_bytes, llc))]
    return _rotating(f"torch_int4_bf16_M{m}_dram", [first.fn] + [b.fn for b in more], first)


def a8_groups(cfg: Config, specs: list[RowSpec]):
    """Group builders: one per M among the specs (GEMV rows share theirs)."""
    llc = last_level_cache_bytes()
    by_m: dict[int, list[RowSpec]] = {}
    for s in specs:
        by_m.setdefault(s.M, []).append(s)

    def build(m: int, rows: list[RowSpec]) -> Group:
        n, g = cfg.size, cfg.group_size
        grp = Group(f"W*A8 M={m}, K=N={n}, weights from memory (>= {ROTATE}x LLC "
                    f"{llc >> 20} MiB rotating)")
        w, x = cand.weights(n, n, cfg.seed), cand.activations(m, n, cfg.seed + 1)
        base = f"numpy_fp32_M{m}_dram"
        grp.add(base, lambda: _numpy_rotating(m, n, llc, cfg.seed))
        grp.add(f"torch_int4_bf16_M{m}_dram", lambda: _torch_rotating(m, n, g, llc),
                missing="torch is not installed")
        for spec in rows:
            key = f"lowbitc_a8_{spec.fmt}_M{m}"
            qw = cand.quantized(w, spec.fmt, g)
            grp.add(key, lambda k=key, q=qw: a8_case(k, x, q, llc))
            extras: tuple[str, ...] = (f"torch_int4_bf16_M{m}_dram",) if spec.fmt == "u4" else ()
            if m == 1:
                one = f"{key}_one_weight_in_cache"
                grp.add(one, lambda k=one, q=qw: _one_weight(k, x, q))
                extras += (one,)
            grp.bindings.append(Binding(spec, key, base, extras))
        return grp

    for m, rows in sorted(by_m.items()):
        yield lambda m=m, rows=rows: build(m, rows)


def _one_weight(name: str, x: np.ndarray, qw: QTensor) -> cand.Timed:
    t = cand.matmul_case(name, x, qw)
    t.fn = lambda: ops.matmul(x, qw, act="i8")
    t.check = None
    t.info["act"] = "i8"
    return t
