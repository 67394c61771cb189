"""Search strategies: which configurations to try, at which fidelity (measurement repeats).

A strategy gets the valid points and an `evaluate(configs, repeats, rung) -> trials` callable,
and never runs more than `plan(n)` trials, which is its budget.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from lowbitc.cache import canonical_json
from lowbitc.errors import UserArgumentError
from lowbitc.tuning.space import Config
from lowbitc.tuning.trials import Trial

Evaluate = Callable[[list[Config], "int | None", int], list[Trial]]
DEFAULT_BUDGET = 64


class Strategy(Protocol):
    name: str

    def plan(self, n_points: int) -> int:
        """The most trials `search` will run over `n_points` valid points."""
        ...

    def search(
        self,
        points: Sequence[Config],
        evaluate: Evaluate,
        rng: random.Random,
        first: Sequence[Config],
    ) -> None:
        """Evaluate some points; `first` (e.g. the kernel's default) must be among them."""
        ...


def _with_first(chosen: list[Config], first: Sequence[Config], n: int) -> list[Config]:
    """`first` followed by `chosen`, without duplicates, at most `n` points."""
    out, seen = [], set()
    for p in [*first, *chosen]:
        k = canonical_json(p)
        if k not in seen:
            seen.add(k)
            out.append(p)
    return out[:n]


@dataclass(frozen=True)
class Exhaustive:
    """Every valid point once, at the measurer's default fidelity."""

    name: str = "exhaustive"

    def plan(self, n_points: int) -> int:
        return n_points

    def search(self, points, evaluate, rng, first=()) -> None:
        evaluate(list(points), None, 0)


@dataclass(frozen=True)
class RandomSearch:
    """`budget` points drawn uniformly without replacement."""

    budget: int = DEFAULT_BUDGET
    name: str = "random"

    def plan(self, n_points: int) -> int:
        return min(self.budget, n_points)

    def search(self, points, evaluate, rng, first=()) -> None:
        n = self.plan(len(points))
        evaluate(_with_first(rng.sample(list(points), n), first, n), None, 0)


@dataclass(frozen=True)
class SuccessiveHalving:
    """Measure many points cheaply, keep the best 1/eta, measure those eta times longer, ...

    Rung r measures with `min_repeats * eta**r` repeats; every measurement of a point at a
    rung counts as one trial against `budget`. Failed points are never promoted.
    """

    budget: int = DEFAULT_BUDGET
    eta: int = 3
    min_repeats: int = 3
    name: str = "halving"

    def __post_init__(self):
        if self.budget < 1 or self.eta < 2 or self.min_repeats < 1:
            raise UserArgumentError(
                f"SuccessiveHalving: expected budget >= 1, eta >= 2, min_repeats >= 1, got "
                f"{self.budget}, {self.eta}, {self.min_repeats}"
            )

    def rungs(self, n0: int) -> list[int]:
        """How many points each rung measures, starting from n0."""
        sizes = [n0]
        while sizes[-1] > 1:
            sizes.append(math.ceil(sizes[-1] / self.eta))
        return sizes

    def first_rung(self, n_points: int) -> int:
        """The largest first rung whose whole schedule fits the budget."""
        n0 = min(n_points, self.budget)
        while n0 > 1 and sum(self.rungs(n0)) > self.budget:
            n0 -= 1
        return n0

    def plan(self, n_points: int) -> int:
        return sum(self.rungs(self.first_rung(n_points))) if n_points else 0

    def search(self, points, evaluate, rng, first=()) -> None:
        n0 = self.first_rung(len(points))
        alive = _with_first(rng.sample(list(points), n0), first, n0)
        for rung, size in enumerate(self.rungs(n0)):
            trials = evaluate(alive[:size], self.min_repeats * self.eta**rung, rung)
            ranked = sorted((t for t in trials if t.ok), key=Trial.sort_key)
            if not ranked:
                return
            alive = [t.config for t in ranked]


def choose(strategy: str | Strategy, n_points: int, budget: int | None) -> Strategy:
    """The strategy object for a name: "auto" is exhaustive when the valid points fit the
    budget (default 64) and successive halving otherwise."""
    if not isinstance(strategy, str):
        return strategy
    limit = DEFAULT_BUDGET if budget is None else budget
    if budget is not None and budget < 1:
        raise UserArgumentError(f"budget: expected a positive number of trials, got {budget}")
    if strategy == "auto":
        strategy = "exhaustive" if n_points <= limit else "halving"
    if strategy == "exhaustive":
        return Exhaustive()
    if strategy == "random":
        return RandomSearch(limit)
    if strategy == "halving":
        return SuccessiveHalving(limit)
    raise UserArgumentError(
        f"strategy: expected 'auto', 'exhaustive', 'random', 'halving' or a Strategy, "
        f"got {strategy!r}"
    )
