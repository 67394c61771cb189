"""Groups of timed calls: each group's calls and baselines run in the same interleaved rounds.

A group also says which row reads which of its calls (`bindings`: row, lowbitc call, baseline,
extra calls recorded with the row).
"""

from __future__ import annotations

import functools
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

import lowbitc
from lowbitc import dtype, pack
from lowbitc.quant import QTensor

from . import candidates as cand
from .baselines import copy_baseline, numpy_gemm, read_baseline
from .cases import GEMV_FORMATS, MIXTURE_MEMBERS, RowSpec
from .config import Config
from .harness import interleaved_stats
from .peer_ggml import GGML_TYPES
from .user_cases import USER_GEMV, user_case, user_gemv_case

__all__ = ["Binding", "Group", "copy_summary", "groups", "incache_summary", "measure",
           "read_summary"]

MIB = 1 << 20


# llama.cpp's types recorded beside an A8 row of the same bits per weight (q4_K and q2_K as
# llama.cpp's repacked CPU path runs them; q4_0 the simplest block format; q8_0 beside u8)
GGML_PEERS = {"u4": ("q4_K", "q4_0"), "u2": ("q2_K",), "u8": ("q8_0",)}

SLOWEST = "slowest:"  # a baseline "slowest:a,b": whichever of a, b took longest (median)


class Binding(NamedTuple):
    """Row `spec` reads call `candidate` against `baseline` ("copy": the best copy bandwidth;
    SLOWEST + keys: the slowest of those calls in this run) and records `extras` beside it."""

    spec: RowSpec
    candidate: str
    baseline: str
    extras: tuple[str, ...] = ()


@dataclass
class Group:
    """Timed calls measured together, and which row reads which of them."""

    title: str
    kind: str = "rows"  # "rows": feeds table rows; "incache": the roofline's compute figures
    timed: dict[str, cand.Timed] = field(default_factory=dict)
    problems: dict[str, dict] = field(default_factory=dict)  # key -> {"status", "reason"}
    bindings: list[Binding] = field(default_factory=list)

    def add(self, key: str, build: Callable[[], cand.Timed | None], missing: str = "") -> None:
        """Build one timed call; a failure or a missing optional piece is recorded, not raised."""
        if key in self.timed or key in self.problems:
            return
        try:
            made = build()
        except Exception as e:  # a kernel that fails to build fails its rows, not the run
            self.problems[key] = {"status": "error", "reason": f"{type(e).__name__}: {e}",
                                  "traceback": traceback.format_exc(limit=4)}
            return
        if made is None:
            self.problems[key] = {"status": "skipped", "reason": missing}
        else:
            self.timed[key] = made


def _numpy(m: int, n: int, seed: int, name: str | None = None, copies: int = 1) -> cand.Timed:
    """numpy fp32 x[m, n] @ W[n, n].T; its weight bytes are the fp32 matrix."""
    t = cand.from_baseline(numpy_gemm(m, n, n, seed, copies), weight_bytes=4.0 * n * n)
    t.name = name or t.name
    return t


def _streamed(cfg: Config, grp: Group, key: str, x, qw: Callable[[], QTensor],
              act: str = "f32") -> tuple[str, ...]:
    """The lowbitc call `key` rotating through copies of qw(), and (the extra key returned)
    the same call on the one weight, which may stay in cache."""
    grp.add(key, lambda: cand.matmul_case(key, x, qw(), cfg.copies(cand.weight_bytes(qw())),
                                          act))
    if cfg.stream == 0:
        return ()
    one = f"{key}_one_weight"
    grp.add(one, lambda: cand.matmul_case(one, x, qw(), act=act))
    return (one,)


def _a8_group(cfg: Config, specs: list[RowSpec]) -> Group:
    """The W*A8 rows of one M (issue 14): ops.matmul(act="i8") against numpy fp32 and torch
    int4 (recorded beside the u4 row), weights streaming as in the other rows."""
    n, g, m = cfg.size, cfg.group_size, specs[0].M
    grp = Group(f"W*A8 M={m}, K=N={n}")
    w, x = cand.weights(n, n, cfg.seed), cand.activations(m, n, cfg.seed + 1)
    qw = functools.cache(lambda fmt: cand.quantized(w, fmt, g))
    base, torch_key = f"numpy_fp32_M{m}", f"torch_int4_bf16_M{m}"
    grp.add(base, lambda: _numpy(m, n, cfg.seed, copies=cfg.copies(4.0 * n * n)))
    grp.add(torch_key, lambda: cand.torch_case(n, n, g, M=m,
                                               copies=cfg.copies(n * n / 2 + n * n / g * 4)),
            missing="torch is not installed")
    for spec in specs:
        key = f"lowbitc_a8_{spec.fmt}_M{m}"
        one = _streamed(cfg, grp, key, x, lambda f=spec.fmt: qw(f), act="i8")
        peers = []
        for t in GGML_PEERS.get(spec.fmt, ()):
            peers.append(f"ggml_{t}_M{m}")
            grp.add(peers[-1], lambda t=t: cand.ggml_case(
                        w, x, t, cfg.copies(n * n * GGML_TYPES[t][1] / 8)),
                    missing="ggml-python is not installed (the `bench` extra)")
        extras = (torch_key, *peers, *one) if spec.fmt == "u4" else (*peers, *one)
        grp.bindings.append(Binding(spec, key, base, extras))
    return grp


def _gemv_group(cfg: Config, specs: list[RowSpec]) -> Group:
    n, g = cfg.size, cfg.group_size
    grp = Group(f"GEMV M=1, K=N={n}")
    w, x = cand.weights(n, n, cfg.seed), cand.activations(1, n, cfg.seed + 1)
    qw = functools.cache(lambda fmt: cand.quantized(w, fmt, g))

    grp.add("numpy_fp32_M1", lambda: _numpy(1, n, cfg.seed, copies=cfg.copies(4.0 * n * n)))
    for spec in specs:
        key = f"lowbitc_gemv_{spec.fmt}"
        one = _streamed(cfg, grp, key, x, lambda f=spec.fmt: qw(f))
        if spec.kind == "torch":
            grp.add("torch_int4_bf16_M1",
                    lambda: cand.torch_case(n, n, g, copies=cfg.copies(n * n / 2 + n * n / g * 4)),
                    missing="torch is not installed")
            xb = cand.activations(1, n, cfg.seed + 1, "bf16")
            extra = "lowbitc_gemv_u4_bf16"
            grp.add(extra, lambda e=extra, x1=xb: cand.matmul_case(
                e, x1, qw("u4"), cfg.copies(cand.weight_bytes(qw("u4")))))
            grp.bindings.append(Binding(spec, key, "torch_int4_bf16_M1", (extra, *one)))
        else:
            grp.bindings.append(Binding(spec, key, "numpy_fp32_M1", one))
    return grp


def _rotated(cfg: Config, key: str, x, qw: QTensor) -> cand.Timed:
    """`key`'s matmul rotating through copies of qw (weights from DRAM, as _streamed)."""
    return cand.matmul_case(key, x, qw, cfg.copies(cand.weight_bytes(qw)))


def _outliers_group(cfg: Config, specs: list[RowSpec]) -> Group:
    """Each format's GEMV with 0.5% of the weights kept as outliers, against the same format
    without them, interleaved (issue 18)."""
    n, g = cfg.size, cfg.group_size
    grp = Group(f"GEMV M=1, K=N={n}, with and without 0.5% outliers")
    w, x = cand.weights(n, n, cfg.seed), cand.activations(1, n, cfg.seed + 1)
    for spec in specs:
        plain, kept = f"lowbitc_gemv_{spec.fmt}_plain", f"lowbitc_gemv_{spec.fmt}_outliers"
        for key, share in ((plain, 0), (kept, 0.005)):
            grp.add(key, lambda k=key, f=spec.fmt, o=share: _rotated(
                cfg, k, x, cand.quantized(w, f, g, outliers=o)))
        grp.bindings.append(Binding(spec, kept, plain))
    return grp


def _mixture_group(cfg: Config, spec: RowSpec) -> Group:
    """The per-group mixture's GEMV and each member format's own GEMV, interleaved; the row
    reads the mixture against the slowest member (issue 18)."""
    n, g = cfg.size, cfg.group_size
    grp = Group(f"GEMV M=1, K=N={n}, a per-group mixture and its member formats")
    w, x = cand.weights(n, n, cfg.seed), cand.activations(1, n, cfg.seed + 1)
    members = [f"lowbitc_gemv_{f}_member" for f in MIXTURE_MEMBERS]
    for key, f in zip(members, MIXTURE_MEMBERS):
        grp.add(key, lambda k=key, f=f: _rotated(cfg, k, x, cand.quantized(w, f, g)))
    key = "lowbitc_gemv_mixture_4fmt"
    grp.add(key, lambda: _rotated(cfg, key, x, cand.quantized(w, list(MIXTURE_MEMBERS), g)))
    grp.bindings.append(Binding(spec, key, SLOWEST + ",".join(members), tuple(members)))
    return grp


def _gemm_group(cfg: Config, spec: RowSpec) -> Group:
    n, m = cfg.size, spec.M
    grp = Group(f"GEMM M={m}, K=N={n}")
    w, x = cand.weights(n, n, cfg.seed), cand.activations(m, n, cfg.seed + 1)
    base = f"numpy_fp32_M{m}"
    grp.add(base, lambda: _numpy(m, n, cfg.seed, copies=cfg.copies(4.0 * n * n)))
    key = f"lowbitc_gemm_{spec.fmt}_M{m}"
    qw = functools.cache(lambda: cand.quantized(w, spec.fmt, cfg.group_size))
    one = _streamed(cfg, grp, key, x, qw)
    grp.bindings.append(Binding(spec, key, base, one))
    return grp


def _dequant_group(cfg: Config, specs: list[RowSpec]) -> Group:
    """Copy bandwidth on 1 and on `threads` threads, the read bandwidth on `threads` threads
    (what the GEMV rows' fraction of it is taken against), and the dequantize rows,
    interleaved."""
    n = cfg.size
    grp = Group(f"dequantize {n}x{n}, copy and read bandwidth")
    grp.add(f"read_{cfg.threads}t",
            lambda: cand.from_baseline(read_baseline(cfg.read_mib * MIB, threads=cfg.threads)))
    nbytes = cfg.copy_mib * MIB
    grp.add("copy_1t", lambda: cand.from_baseline(copy_baseline(nbytes, threads=1)))
    if cfg.threads > 1:
        grp.add(f"copy_{cfg.threads}t",
                lambda: cand.from_baseline(copy_baseline(nbytes, threads=cfg.threads)))
    w = cand.weights(n, n, cfg.seed)
    qw = functools.cache(lambda fmt: cand.quantized(w, fmt, cfg.group_size))
    for spec in specs:
        key, extra = f"lowbitc_dequant_{spec.fmt}", f"lowbitc_dequant_{spec.fmt}_alloc"
        grp.add(key, lambda k=key, f=spec.fmt: cand.dequant_case(k, qw(f), reuse_output=True))
        grp.add(extra, lambda k=extra, f=spec.fmt: cand.dequant_case(k, qw(f), False))
        grp.bindings.append(Binding(spec, key, "copy", (extra,)))
    return grp


def _interop_group(cfg: Config, specs: list[RowSpec]) -> Group:
    """Other tools' 4-bit layers (exact lowbitc tensors) against lowbitc's own u4, same w, x."""
    n, g = cfg.size, cfg.group_size
    grp = Group(f"interop GEMV M=1, K=N={n}")
    w, x = cand.weights(n, n, cfg.seed), cand.activations(1, n, cfg.seed + 1)
    base = "lowbitc_gemv_u4_ref"
    _streamed(cfg, grp, base, x, functools.cache(lambda: cand.quantized(w, "u4", g)))
    for spec in specs:
        key = f"lowbitc_interop_{spec.fmt}"
        one = _streamed(cfg, grp, key, x,
                        functools.cache(lambda f=spec.fmt: cand.imported(w, f, g)))
        grp.bindings.append(Binding(spec, key, base, one))
    return grp


def _small_group(cfg: Config, spec: RowSpec) -> Group:
    n = cfg.small
    grp = Group(f"ops.matmul call overhead, M=1 K=N={n}")
    w, x = cand.weights(n, n, cfg.seed), cand.activations(1, n, cfg.seed + 1)
    grp.add("numpy_fp32_small", lambda: _numpy(1, n, cfg.seed, "numpy_fp32_small"))
    key = "lowbitc_small_u4"
    grp.add(key, lambda: cand.matmul_case(key, x, cand.quantized(w, spec.fmt, cfg.group_size)))
    grp.bindings.append(Binding(spec, key, "numpy_fp32_small"))
    return grp


def _repack_group(cfg: Config, specs: list[RowSpec]) -> Group:
    """Per format: the user GEMV on canonical words vs on words prepared once."""
    n = cfg.size
    grp = Group(f"user GEMV on canonical vs prepared words, K=N={n}")
    rng = np.random.default_rng(cfg.seed)
    x = cand.activations(1, n, cfg.seed + 1)
    for spec in specs:
        fmt = dtype(spec.fmt)
        codes = rng.integers(0, 1 << fmt.bits, (n, n), dtype=np.uint8)
        canon = pack(codes, fmt.bits)
        ref = x.astype(np.float64) @ fmt.decode(codes).astype(np.float64).T
        k = lowbitc.compile(USER_GEMV, W=fmt)
        prepared = k.prepare("w", canon)
        key, base = f"user_canonical_{spec.fmt}", f"user_prepared_{spec.fmt}"
        grp.add(key, lambda k=k, c=canon, r=ref, key=key:
                user_gemv_case(key, k, x, c, r, c.nbytes))
        grp.add(base, lambda k=k, p=prepared, r=ref, c=canon, base=base:
                user_gemv_case(base, k, x, p, r, c.nbytes))
        grp.bindings.append(Binding(spec, key, base))
    return grp


def _user_group(cfg: Config, spec: RowSpec) -> Group:
    """An examples/user kernel and ops.matmul on a QTensor of the same format and bytes, each
    rotating through the same number of copies of its weights (from DRAM, cfg.copies)."""
    which = spec.name[len("user_"):].rsplit("_M", 1)[0]
    grp = Group(f"user kernel {which}, M={spec.M}, K=N={cfg.size}")
    key, base = f"{spec.name}_kernel", f"{spec.name}_ops_matmul"
    made: dict = {}

    def kernel() -> cand.Timed:
        t, made["qw"], made["x"] = user_case(key, which, cfg.size, spec.M, cfg.seed,
                                             cfg.copies)
        made["copies"] = t.info["weights_in_turn"]  # the baseline rotates as many
        return t

    grp.add(key, kernel)
    if "qw" in made:
        grp.add(base, lambda: cand.matmul_case(base, made["x"], made["qw"], made["copies"]))
    grp.bindings.append(Binding(spec, key, base))
    return grp


def incache_group(cfg: Config, fmts: list[str]) -> Group:
    """Each GEMV format at two sizes whose weights stay in cache: the time difference per
    weight is what a weight costs in instructions, free of DRAM and of per-call overhead."""
    grp = Group(f"in-cache GEMV M=1, K=N={cfg.incache_sizes}", kind="incache")
    for n in cfg.incache_sizes:
        w, x = cand.weights(n, n, cfg.seed), cand.activations(1, n, cfg.seed + 1)
        for f in fmts:
            key = f"incache_{f}_{n}"
            grp.add(key, lambda k=key, f=f, w=w, x=x:
                    cand.matmul_case(k, x, cand.quantized(w, f, cfg.group_size)))
    return grp


def incache_summary(grp: Group, stats: dict, cfg: Config, clock_mhz: float | None) -> dict:
    """Per format: seconds and cycles (per core, nominal clock) one weight costs in cache.

    From the p10 times (the rounds least disturbed by other processes: an instruction cost is
    a lower bound) and, for comparison, from the medians.
    """
    big, small = cfg.incache_sizes
    out = {}
    for f in GEMV_FORMATS:
        kb, ks = f"incache_{f}_{big}", f"incache_{f}_{small}"
        if kb not in stats or ks not in stats:
            continue
        entry: dict = {"time": {str(big): stats[kb], str(small): stats[ks]}}
        for stat in ("p10", "median"):
            tb, ts = stats[kb][stat], stats[ks][stat]
            per_weight = (tb - ts) / (big * big - small * small)
            entry[stat] = {
                "seconds_per_weight": per_weight,
                "cycles_per_weight_core": per_weight * clock_mhz * 1e6 * cfg.threads
                if clock_mhz else None,
                # the difference must stand well above the small call's time to mean anything
                "reliable": tb - ts > 0.5 * ts,
            }
        out[f] = entry
    return out


def groups(cfg: Config) -> Iterator[Callable[[], Group]]:
    """Group builders in run order (built lazily so big operands are freed between groups)."""
    by_kind: dict[str, list[RowSpec]] = {}
    for spec in cfg.rows:
        by_kind.setdefault(spec.kind, []).append(spec)
    gemv = by_kind.get("gemv", []) + by_kind.get("torch", [])
    gemv.sort(key=lambda s: (s.kind == "torch", GEMV_FORMATS.index(s.fmt)))
    if gemv:
        yield lambda: _gemv_group(cfg, gemv)
        fmts = [s.fmt for s in gemv if s.kind == "gemv"]
        if fmts:
            yield lambda: incache_group(cfg, fmts)
    if by_kind.get("outliers"):
        yield lambda: _outliers_group(cfg, by_kind["outliers"])
    for spec in by_kind.get("mixture", []):
        yield lambda s=spec: _mixture_group(cfg, s)
    for spec in by_kind.get("gemm", []):
        yield lambda s=spec: _gemm_group(cfg, s)
    if by_kind.get("interop"):
        yield lambda: _interop_group(cfg, by_kind["interop"])
    yield lambda: _dequant_group(cfg, by_kind.get("dequant", []))  # copy bandwidth: always
    a8_by_m: dict[int, list[RowSpec]] = {}
    for spec in by_kind.get("a8", []):
        a8_by_m.setdefault(spec.M, []).append(spec)
    for specs in a8_by_m.values():
        yield lambda s=specs: _a8_group(cfg, s)
    for spec in by_kind.get("user", []):
        yield lambda s=spec: _user_group(cfg, s)
    if by_kind.get("repack"):
        yield lambda: _repack_group(cfg, by_kind["repack"])
    for spec in by_kind.get("small", []):
        yield lambda s=spec: _small_group(cfg, s)


def measure(grp: Group, rounds: int, burst_ms: float = 5.0) -> dict:
    """Time every correct call of the group in the same interleaved rounds, each sample a
    burst of at least `burst_ms` of one candidate's calls."""
    fns = {k: t.fn for k, t in grp.timed.items() if t.correct}
    stats = interleaved_stats(fns, rounds, min_run=burst_ms / 1e3) if fns else {}
    return stats


def read_summary(stats: dict, timed: dict[str, cand.Timed]) -> dict:
    """The read bandwidth (GB/s) from the read_<threads>t baseline, if it was measured."""
    keys = [k for k in stats if k.startswith("read_")]
    if not keys:
        return {}
    k = keys[0]
    return {"gbs": timed[k].bytes_moved / stats[k]["median"] / 1e9, "name": k,
            "bytes_per_call": timed[k].bytes_moved, "threads": timed[k].info.get("threads")}


def copy_summary(stats: dict, timed: dict[str, cand.Timed]) -> dict:
    bw = {k: timed[k].bytes_moved / s["median"] / 1e9 for k, s in stats.items()
          if k.startswith("copy_")}
    if not bw:
        return {}
    best = max(bw, key=bw.get)
    return {"per_threads_gbs": bw, "best_gbs": bw[best], "best": best,
            "bytes_per_call": timed[best].bytes_moved}
