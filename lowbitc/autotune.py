"""`lowbitc.tune`: search a kernel's `tune` choices for the fastest on given shapes and store
the winner per shape bucket, where `lowbitc.ops` finds it.

The space is the kernel's `tune` clause; its `require` clauses prune points before anything is
compiled (a pruned point is not an error). Each candidate is compiled (through the compile
cache) and timed on random inputs of the shapes; a candidate whose compile fails for another
reason keeps its real message and source position, in the results table and in a warning.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import statistics
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lowbitc.cache import default_cache
from lowbitc.compiler import compile, load, pick_kernel
from lowbitc.dsl import ast as A
from lowbitc.dsl.lower import lower_kernel
from lowbitc.dtypes import dtype as to_dtype
from lowbitc.errors import DSLTypeError, LowbitcError, UserArgumentError
from lowbitc.ir.types import TensorType, is_float, is_machine, numpy_dtype
from lowbitc.mma_plan import mma_params
from lowbitc.ops import (
    kernel_path,
    launch_matmul,
    matmul_kernel_name,
    matmul_params,
    weight_storage,
)
from lowbitc.quant import QTensor
from lowbitc.signature import format_bits, storage_dtype, words_for
from lowbitc.tuned import forget, kernel_key, record_key
from lowbitc.tuning import Constraint, Measurer, SearchSpace, TuneResult, WallClock
from lowbitc.tuning import tune as search
from lowbitc.tuning.trials import record

OPS = {"matmul": ("M", "N", "K"), "dequantize": ("N", "K")}


@dataclass(frozen=True)
class WeightSpec:
    """What `ops.matmul_params` reads from a QTensor: format, group size, zero points."""

    dtype: Any
    group_size: int
    zeros: object = None


class TuningWarning(UserWarning):
    """Some candidates failed for a reason other than a `require` clause."""


@dataclass(frozen=True)
class Target:
    """What is tuned: kernel source (a path or text), which kernel, the fixed parameters,
    the runtime scalars, the dims and the default point."""

    source_or_path: str
    kernel: str | None
    fixed: dict[str, Any]
    scalars: dict[str, Any]
    dims: dict[str, int]
    default: dict[str, Any] = field(default_factory=dict)
    op: str | None = None
    derived: dict[str, int] = field(default_factory=dict)  # dims that follow from `dims`

    def text_and_base(self) -> tuple[str, Path]:
        if self.source_or_path.endswith(".lbk") and "\n" not in self.source_or_path:
            path = Path(self.source_or_path)
            return path.read_text(encoding="utf-8"), path.parent
        return self.source_or_path, Path.cwd()


def tune(kernel_or_op: str | Path, shapes: Mapping[str, int] | Sequence, budget: int | None = None,
         backend: str = "llvm", executor=None, progress: bool | None = None, *,
         wtype: Any = "u4", group: int = 128, zero_point: bool = False, act: str = "f32",
         params: Mapping[str, Any] | None = None, scalars: Mapping[str, Any] | None = None,
         kernel: str | None = None, strategy: str = "auto", measurer: Measurer | None = None,
         force: bool = False, seed: int = 0) -> TuneResult | list[TuneResult]:
    """Tune `kernel_or_op` ("matmul", "dequantize", a .lbk path or source) for `shapes`.

    shapes: one shape, {"M": 1, "N": 4096, "K": 4096} or for an op (M, N, K) / (N, K); or a
        list of them (then a list of results). budget: most trials (default: every point
        when there are at most 64, else successive halving over 64 trials).
    Ops take wtype, group, zero_point and act; other kernels take `params` (fixed
    compile-time parameters) and `scalars` (runtime scalar arguments).
    The winner is stored in the compile cache for the shape's bucket, where ops find it.
    """
    if _is_many(shapes):
        return [tune(kernel_or_op, s, budget, backend, executor, progress, wtype=wtype,
                     group=group, zero_point=zero_point, act=act, params=params,
                     scalars=scalars, kernel=kernel, strategy=strategy, measurer=measurer,
                     force=force, seed=seed) for s in shapes]
    if isinstance(kernel_or_op, str) and kernel_or_op in OPS:
        target = _op_target(kernel_or_op, shapes, wtype, group, zero_point, act, backend)
    else:
        target = Target(str(kernel_or_op), kernel, dict(params or {}), dict(scalars or {}),
                        _dims(shapes, None))
    space, declared = space_of(target)
    cache = default_cache()
    key = None
    if cache is not None:
        text, base = target.text_and_base()
        key = record_key(kernel_key(text, base, None if target.op else target.kernel,
                                    target.fixed, target.scalars, backend), target.dims)
    # the point the kernel runs without tuning (ops: what ops picks; the declared defaults
    # fill the rest); it need not be a point of the space to be re-timed against the winner
    default = {**declared, **target.default}
    default = {n: default[n] for n in space.names} if set(space.names) <= set(default) else None
    result = search(Candidate(target, backend, seed), space, context=target.dims,
                    budget=budget, strategy=strategy, measurer=measurer, executor=executor,
                    progress=progress, cache=cache, key=key, force=force, seed=seed,
                    default=default if default is not None and space.find(default) else None)
    if default is not None and not result.from_cache and result.best != default:
        result = _confirm(result, Candidate(target, backend, seed), default,
                          measurer or WallClock(), cache, key, target.dims)
    forget()
    failed = [t for t in result.errors if t.phase == "compile"]
    if failed:
        warnings.warn(f"{len(failed)} of {len(result.trials)} candidates failed to compile; "
                      f"the first ({_point(failed[0].config)}):\n{failed[0].error}",
                      TuningWarning, stacklevel=2)
    return result


def _confirm(result: TuneResult, build: Candidate, default: dict, measurer: Measurer,
             cache, key, context: dict, rounds: int = 5) -> TuneResult:
    """Re-time the winner against the default here, alternating, with no compiles running
    beside them (search timings share the CPU with other candidates' compiles); keep the
    default unless the winner is faster, so tuning never makes ops slower."""
    runs = {"best": build(result.best), "default": build(default)}
    times: dict[str, list[float]] = {"best": [], "default": []}
    for r in range(rounds):
        for name in (("best", "default") if r % 2 == 0 else ("default", "best")):
            times[name].append(measurer.measure(runs[name]))
    best, base = statistics.median(times["best"]), statistics.median(times["default"])
    if best < base:
        return dataclasses.replace(result, seconds=best)
    result = dataclasses.replace(result, best=dict(default), seconds=base)
    if cache is not None:
        cache.put_json(key, {**record(result), "context": dict(context), "confirmed": True})
    return result


def _is_many(shapes: object) -> bool:
    return (isinstance(shapes, Sequence) and not isinstance(shapes, str) and bool(shapes)
            and not isinstance(shapes[0], (int, np.integer)))


def _dims(shapes: object, names: Sequence[str] | None) -> dict[str, int]:
    if isinstance(shapes, Mapping):
        dims = dict(shapes)
    elif names is not None and isinstance(shapes, Sequence) and len(shapes) == len(names):
        dims = dict(zip(names, shapes, strict=True))
    else:
        want = f"{'(' + ', '.join(names) + ') or ' if names else ''}a dict of dim sizes"
        raise UserArgumentError(f"shapes: expected {want}, got {shapes!r}")
    for name, v in dims.items():
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise UserArgumentError(f"shapes[{name!r}]: expected a positive int, got {v!r}")
    if names is not None and set(dims) != set(names):
        raise UserArgumentError(f"shapes: expected the dims {', '.join(names)}, got {dims!r}")
    return {n: int(v) for n, v in dims.items()}


def _op_target(op: str, shapes: object, wtype: Any, group: int, zero_point: bool,
               act: str, backend: str = "llvm") -> Target:
    dims = _dims(shapes, OPS[op])
    fmt = to_dtype(wtype) if isinstance(wtype, str) else wtype
    if isinstance(group, bool) or not isinstance(group, int) or group < 1:
        raise UserArgumentError(f"group: expected a positive group size, got {group!r}")
    if op == "matmul":
        # ops' own choice for these operands (matmul_mma on cuda for f16/bf16 activations):
        # its tuned names are the default to beat
        name = matmul_kernel_name(fmt, act, backend)
        params = (mma_params(dims["M"], fmt, group, zero_point, act, dims["N"], dims["K"])
                  if name == "matmul_mma"
                  else matmul_params(dims["M"], WeightSpec(fmt, group, () if zero_point else None),
                                     act, N=dims.get("N", 0)))
        tuned = _tuned_names(kernel_path(name))
        return Target(kernel_path(name), None, {n: v for n, v in params.items() if n not in tuned},
                      {"group": group}, dims, {n: v for n, v in params.items() if n in tuned},
                      op)
    G = math.ceil(dims["K"] / group)
    derived = {"G": G, "NZ": dims["N"] if zero_point else 1, "GZ": G if zero_point else 1}
    return Target(kernel_path(op), None, {"W": fmt, "ZP": bool(zero_point)}, {"group": group},
                  dims, {}, op, derived)


# ---- the space -------------------------------------------------------------------------


def _literal(e: A.Expr) -> Any:
    if isinstance(e, (A.Int, A.Float, A.Bool)):
        return e.value
    if isinstance(e, A.Name):
        return e.id
    raise DSLTypeError("tune choices must be literals (numbers, true/false or names)", e.loc)


def _tuned_names(source_or_path: str, kernel: str | None = None) -> set[str]:
    module, _ = load(source_or_path)
    return {t.name for t in pick_kernel(module, kernel).tunes}


def space_of(target: Target) -> tuple[SearchSpace, dict[str, Any]]:
    """The kernel's `tune` choices, pruned by its `require` clauses, and the defaults its
    parameter declarations give the tuned names."""
    module, _ = load(target.source_or_path)
    k = pick_kernel(module, target.kernel)
    if not k.tunes:
        raise UserArgumentError(f"kernel: {k.name} has no `tune` clause to search ({k.loc})")
    choices = {t.name: [_literal(v) for v in t.values] for t in k.tunes}
    clash = sorted(set(choices) & set(target.fixed))
    if clash:
        raise UserArgumentError(f"params: {', '.join(clash)} are tuned; do not fix them")
    declared = {c.name: _literal(c.default) for c in k.cparams
                if c.name in choices and c.default is not None}
    prune = []
    if k.requires:
        holds = functools.partial(_requires_hold, module, k, target.fixed, tuple(choices))
        prune.append(Constraint("require " + "; ".join(_text(r) for r in k.requires), holds))
    return SearchSpace(choices, prune), declared


def _text(e: A.Expr) -> str:
    line = e.loc.text.strip()
    return line.removeprefix("require").strip() or str(e.loc)


def _requires_hold(module: A.Module, k: A.Kernel, fixed: Mapping[str, Any],
                   names: tuple[str, ...], env: Mapping[str, Any]) -> bool:
    """False only when lowering stops at one of the kernel's `require` clauses; any other
    error is the candidate's to report when it compiles."""
    try:
        lower_kernel(module, k, {**fixed, **{n: env[n] for n in names}})
    except DSLTypeError as e:
        return e.loc not in {r.loc for r in k.requires}
    except LowbitcError:
        return True
    return True


def _point(config: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in config.items())


# ---- candidates --------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """`build(config) -> run` for the tuner (pickles to worker processes): compile with the
    point, prepare random inputs of the target's shapes, check the result once."""

    target: Target
    backend: str
    seed: int = 0

    def __call__(self, config: Mapping[str, Any]):
        t = self.target
        k = compile(t.source_or_path, self.backend, t.kernel, **t.fixed, **config)
        rng = np.random.default_rng(self.seed)
        if t.op == "matmul":
            args, kwargs, check = _matmul_inputs(t, k, rng)
            run = functools.partial(k, *args, **kwargs)
            if k.params.get("SK", 1) > 1:  # split-K: both passes (launch_matmul) are timed
                run = functools.partial(launch_matmul, k, *args, kwargs["K"])
        else:
            args, kwargs, check = *_generic_inputs(k.lowered, t, rng), None
            run = functools.partial(k, *args, **kwargs)
        run()
        if check is not None:
            check()
        return run


def _generic_inputs(k, t: Target, rng: np.random.Generator) -> tuple[list, dict]:
    """Random arrays for every tensor parameter (dims from the shapes), scalars from
    `scalars` or the shapes, every dim by keyword."""
    args = []
    for p in k.params:
        if isinstance(p.type, TensorType):
            shape = [d if isinstance(d, int) else _dim(t, d, p.name) for d in p.type.shape]
            args.append(_random_tensor(p.type.dtype, shape, rng))
        elif p.name in t.scalars or p.name in t.dims:
            args.append(t.scalars.get(p.name, t.dims.get(p.name)))
        else:
            raise UserArgumentError(f"scalars: the kernel's argument {p.name!r} "
                                    f"({p.type}) needs a value; pass scalars={{{p.name!r}: ...}}")
    kwargs = {d.name: _dim(t, d.name, "the kernel") for d in k.dims}
    return args, kwargs


def _dim(t: Target, name: str, where: str) -> int:
    dims = {**t.derived, **t.dims}
    if name not in dims:
        raise UserArgumentError(f"shapes: dim {name!r} (used by {where}) is missing; "
                                f"got {t.dims!r}")
    return dims[name]


def _random_tensor(dt: str, shape: list[int], rng: np.random.Generator) -> np.ndarray:
    if not is_machine(dt):
        shape = [*shape[:-1], words_for(shape[-1], format_bits(dt))]
        return rng.integers(0, 2**32, shape, dtype=np.uint64).astype(np.uint32)
    if is_float(dt):
        return rng.uniform(-1, 1, shape).astype(numpy_dtype(dt))
    return rng.integers(0, 4, shape).astype(storage_dtype(dt))


def kernel_weights(qw: QTensor, k) -> object:
    """The weights as ops.matmul passes them to kernel `k`: in the kernel's own packing where
    ops.weight_storage takes the kernel (docs/packing.md), else the canonical words (so a
    candidate is timed on what ops would run, not on a per-call repacking)."""
    try:
        return weight_storage(qw, k)
    except TypeError:
        return weight_storage(qw)


def _matmul_inputs(t: Target, k, rng: np.random.Generator):
    """x, packed weights, scales, zeros, y and group for ops' matmul, plus a check of y
    against numpy on the decoded weights."""
    M, N, K = t.dims["M"], t.dims["N"], t.dims["K"]
    group, fmt = t.scalars["group"], t.fixed["W"]
    G = math.ceil(K / group)
    values = fmt.values()
    finite = np.flatnonzero(np.isfinite(values) & (np.abs(values) < 2.0**20))
    codes = rng.choice(finite, (N, K)).astype(np.uint8)
    s = rng.uniform(0.5, 1.5, (N, G)).astype(np.float32)
    z = rng.uniform(0, 2, (N, G) if t.fixed["ZP"] else (1, 1)).astype(np.float32)
    w = kernel_weights(QTensor(fmt, (N, K), group, codes, s, z if t.fixed["ZP"] else None), k)
    x32 = rng.uniform(-1, 1, (M, K)).astype(np.float32)
    x = x32.astype(numpy_dtype(t.fixed["A"]))
    y = np.empty((M, N), np.float32)
    deq = values[codes]
    if t.fixed["ZP"]:
        deq = deq - np.repeat(z, group, axis=1)[:, :K]
    deq = deq * np.repeat(s, group, axis=1)[:, :K]
    ref = x.astype(np.float32) @ deq.T

    def check() -> None:
        tol = 1e-3 * (float(np.abs(ref).max()) + 1.0)
        if not np.allclose(y, ref, rtol=1e-3, atol=tol):
            bad = float(np.abs(y - ref).max())
            raise ValueError(f"wrong result: max |y - reference| = {bad:g} > {tol:g}")

    return [x, w, s, z, y, group], {"K": K}, check
