"""`tune`: search a space of kernel configurations for the fastest, remember the winner.

The compiler supplies `build(config) -> run`: compile the kernel with `config` and return a
zero-argument callable that runs it once on prepared inputs (raising a `LowbitcError` if the
configuration does not compile, or any error if its result is wrong). Everything else here
is generic: pruning, strategy, executor, measurement, progress, results table, cache record.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Executor
from typing import Any

from lowbitc.cache import Cache, CacheKey
from lowbitc.errors import UserArgumentError
from lowbitc.tuning.measure import Measurer, WallClock
from lowbitc.tuning.runner import Build, Evaluator
from lowbitc.tuning.space import Config, Constraint, SearchSpace
from lowbitc.tuning.strategies import DEFAULT_BUDGET, Strategy, choose
from lowbitc.tuning.trials import TuneResult, TuningError, failure_message, record

ConstraintLike = str | Callable[[Mapping[str, Any]], bool] | Constraint


def lookup(
    cache: Cache,
    key: CacheKey,
    space: SearchSpace | None = None,
    context: Mapping[str, Any] | None = None,
) -> tuple[Config, float] | None:
    """The stored winner (config, seconds) under `key`, if any and still valid.

    With `space`, the config must still be a point of it (and satisfy its constraints for
    `context`, e.g. the exact shape), else this is a miss.
    """
    rec = cache.get_json(key)
    if not isinstance(rec, dict) or not isinstance(rec.get("config"), dict):
        return None
    config = rec["config"]
    if space is not None:
        config = space.find(config)
        if config is None or space.rejected_by(config, context) is not None:
            return None
    return config, float(rec.get("seconds") or 0.0)


def _no_points_message(
    space: SearchSpace, context: Mapping[str, Any] | None, removed: dict[str, int]
) -> str:
    why = "; ".join(f"{text!r} removed {n}" for text, n in removed.items() if n)
    ctx = f" with {', '.join(f'{k}={v}' for k, v in (context or {}).items())}" if context else ""
    return f"no point of {space!r}{ctx} satisfies the constraints ({why} of {space.size})"


def tune(
    build: Build,
    space: SearchSpace | Mapping[str, Iterable[Any]],
    *,
    constraints: Iterable[ConstraintLike] = (),
    context: Mapping[str, Any] | None = None,
    budget: int | None = None,
    strategy: str | Strategy = "auto",
    measurer: Measurer | None = None,
    executor: Executor | str | None = None,
    progress: bool | None = None,
    cache: Cache | None = None,
    key: CacheKey | None = None,
    default: Mapping[str, Any] | None = None,
    force: bool = False,
    seed: int = 0,
) -> TuneResult:
    """Find the fastest valid point of `space` for `build`.

    space: a SearchSpace or a dict name -> choices (then `constraints` apply to it).
    context: extra names for constraints, e.g. the shape {"M": 1, "N": 4096, "K": 4096}.
    budget: most trials (compile + measure) a budgeted strategy may run; "auto" strategy is
        exhaustive when the valid points fit the budget (default 64), else successive halving.
    executor: any concurrent.futures.Executor (e.g. a dask `Client.get_executor()`), or
        "process" (default: a spawn-based pool, measurements serialised), "thread", "inline".
    cache, key: look the winner up under `key` first (unless `force`) and store it there;
        make the key with `tuning_key(kernel_key, shape_bucket(shape))`.
    default: the kernel's default configuration, always measured when valid, so the winner
        is never slower than it (within noise).
    Raises TuningError, quoting the candidates' real errors, when none compiles and runs.
    """
    if not isinstance(space, SearchSpace):
        space = SearchSpace(space, constraints)
    elif constraints:
        space = SearchSpace(space.choices, [*space.constraints, *constraints])
    if (cache is None) != (key is None):
        raise UserArgumentError("cache, key: pass both (to remember the winner) or neither")
    if cache is not None and not force:
        hit = lookup(cache, key, space, context)
        if hit is not None:
            config, seconds = hit
            return TuneResult(config, seconds, [], "cache", from_cache=True, space_size=space.size)
    rng = random.Random(seed)
    if space.size <= SearchSpace.ENUMERATE_LIMIT:
        points, pruned = space.partition(context)
    else:
        points, pruned = space.sample(budget or DEFAULT_BUDGET, rng, context), {}
    if not points:
        raise TuningError(_no_points_message(space, context, pruned))
    first = []
    if default is not None:
        point = space.find(default)
        if point is None:
            raise UserArgumentError(f"default: {dict(default)!r} is not a point of {space!r}")
        if space.rejected_by(point, context) is None:
            first.append(point)
    chosen = choose(strategy, len(points), budget)
    evaluate = Evaluator(
        build, measurer or WallClock(), executor, progress, chosen.plan(len(points))
    )
    try:
        chosen.search(points, evaluate, rng, first)
    finally:
        evaluate.close()
    trials = evaluate.trials
    good = [t for t in trials if t.ok]
    if not good:
        raise TuningError(failure_message(trials, f"tuning {space!r}"))
    top = max(t.rung for t in good)
    best = min((t for t in good if t.rung == top), key=lambda t: t.seconds)
    result = TuneResult(
        best=best.config,
        seconds=best.seconds,
        trials=trials,
        strategy=chosen.name,
        space_size=space.size,
        valid_points=len(points),
        pruned={text: n for text, n in pruned.items() if n},
    )
    if cache is not None:
        cache.put_json(key, {**record(result), "context": dict(context or {})})
    return result
