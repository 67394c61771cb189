"""Search spaces: named choices (from a kernel's `tune` clause) and constraints that prune
points before anything is compiled.

A constraint is a callable taking the point (plus context such as shape dims) as one mapping,
or an expression string over those names, e.g. ``"BM * BN <= 8192"`` or ``"K % BK == 0"``.
Expressions are parsed with `ast` and evaluated by a small interpreter (never `eval`).
"""

from __future__ import annotations

import ast
import itertools
import math
import operator
import random
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lowbitc.cache import canonical_json
from lowbitc.errors import UserArgumentError

Config = dict[str, Any]

_BINOPS = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
    ast.Pow: operator.pow, ast.LShift: operator.lshift, ast.RShift: operator.rshift,
    ast.BitAnd: operator.and_, ast.BitOr: operator.or_, ast.BitXor: operator.xor,
}  # fmt: skip
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: operator.not_,
          ast.Invert: operator.invert}  # fmt: skip
_COMPARE = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
    ast.Gt: operator.gt, ast.GtE: operator.ge,
    ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b,
}  # fmt: skip
_FUNCS: dict[str, Callable[..., Any]] = {
    "min": min, "max": max, "abs": abs,
    "cdiv": lambda a, b: -(-a // b),
    "log2": lambda a: int(a).bit_length() - 1,
    "is_pow2": lambda a: a > 0 and a & (a - 1) == 0,
}  # fmt: skip
_MAX_POW = 256  # keeps `2 ** 10 ** 9` from hanging the tuner


class _Expr:
    """A parsed constraint expression; evaluation only knows arithmetic, comparisons,
    and/or/not, `x if c else y`, tuple literals and the functions in `_FUNCS`."""

    def __init__(self, text: str):
        self.text = text
        try:
            self.tree = ast.parse(text.strip(), mode="eval").body
        except SyntaxError as e:
            raise UserArgumentError(f"constraint {text!r}: not an expression ({e.msg})") from e
        self.names = {n.id for n in ast.walk(self.tree) if isinstance(n, ast.Name)}
        self._ev(self.tree, None)  # reject unsupported syntax now, not per point

    def __call__(self, env: Mapping[str, Any]) -> bool:
        return bool(self._ev(self.tree, env))

    def _ev(self, node: ast.AST, env: Mapping[str, Any] | None) -> Any:
        check = env is None  # validation pass: walk every node, compute nothing
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool)):
            return node.value
        if isinstance(node, ast.Name):
            if check:
                return None
            if node.id not in env:
                raise UserArgumentError(
                    f"constraint {self.text!r}: unknown name {node.id!r} "
                    f"(known: {', '.join(sorted(env))})"
                )
            return env[node.id]
        if isinstance(node, (ast.Tuple, ast.List)):
            return tuple(self._ev(e, env) for e in node.elts)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            a, b = self._ev(node.left, env), self._ev(node.right, env)
            if check:
                return None
            if isinstance(node.op, ast.Pow) and abs(b) > _MAX_POW:
                raise UserArgumentError(f"constraint {self.text!r}: exponent {b} too large")
            return _BINOPS[type(node.op)](a, b)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            a = self._ev(node.operand, env)
            return None if check else _UNARY[type(node.op)](a)
        if isinstance(node, ast.BoolOp):
            if check:
                return [self._ev(v, env) for v in node.values]
            is_and = isinstance(node.op, ast.And)
            for v in node.values:
                result = self._ev(v, env)
                if bool(result) != is_and:
                    return result
            return result
        if isinstance(node, ast.Compare) and all(type(op) in _COMPARE for op in node.ops):
            left = self._ev(node.left, env)
            rights = [self._ev(c, env) for c in node.comparators]
            if check:
                return None
            for op, right in zip(node.ops, rights, strict=True):
                if not _COMPARE[type(op)](left, right):
                    return False
                left = right
            return True
        if isinstance(node, ast.IfExp):
            if check:
                return [self._ev(n, env) for n in (node.test, node.body, node.orelse)]
            return self._ev(node.body if self._ev(node.test, env) else node.orelse, env)
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in _FUNCS
            and not node.keywords
        ):
            args = [self._ev(a, env) for a in node.args]
            return None if check else _FUNCS[node.func.id](*args)
        raise UserArgumentError(
            f"constraint {self.text!r}: unsupported syntax {ast.unparse(node)!r} (allowed: "
            f"arithmetic, comparisons, and/or/not, if-else, {', '.join(sorted(_FUNCS))})"
        )


@dataclass(frozen=True)
class Constraint:
    """A named predicate over a point merged with the context (shape dims and the like)."""

    text: str
    predicate: Callable[[Mapping[str, Any]], bool]

    @classmethod
    def of(cls, c: str | Callable[[Mapping[str, Any]], bool] | Constraint) -> Constraint:
        """Wrap an expression string or a callable (taking one mapping) as a Constraint."""
        if isinstance(c, Constraint):
            return c
        if isinstance(c, str):
            return cls(c, _Expr(c))
        if callable(c):
            return cls(getattr(c, "__name__", repr(c)), c)
        raise UserArgumentError(f"constraint: expected a string or a callable, got {c!r}")

    def holds(self, env: Mapping[str, Any]) -> bool:
        """Whether the point satisfies it; a predicate that raises is a user error."""
        try:
            return bool(self.predicate(env))
        except UserArgumentError:
            raise
        except Exception as e:
            raise UserArgumentError(
                f"constraint {self.text!r} raised {type(e).__name__}: {e} on {dict(env)}"
            ) from e


class SearchSpace:
    """The product of named choices, minus the points a constraint rejects."""

    ENUMERATE_LIMIT = 1_000_000  # larger spaces are sampled, never listed

    def __init__(
        self,
        choices: Mapping[str, Sequence[Any]],
        constraints: Iterable[str | Callable[[Mapping[str, Any]], bool] | Constraint] = (),
    ):
        if not isinstance(choices, Mapping) or not choices:
            raise UserArgumentError(
                f"choices: expected a non-empty dict name -> list, got {choices!r}"
            )
        self.choices: dict[str, tuple[Any, ...]] = {}
        for name, values in choices.items():
            if not isinstance(name, str) or not name.isidentifier():
                raise UserArgumentError(f"choices: expected identifier names, got {name!r}")
            if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
                raise UserArgumentError(f"choices[{name!r}]: expected a list, got {values!r}")
            values = tuple(values)
            spelled = [canonical_json(v, f"choices[{name!r}]") for v in values]
            if not values or len(set(spelled)) != len(spelled):
                raise UserArgumentError(
                    f"choices[{name!r}]: expected distinct values, at least one, got {values!r}"
                )
            self.choices[name] = values
        self.constraints = tuple(Constraint.of(c) for c in constraints)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.choices)

    @property
    def size(self) -> int:
        """Number of points before pruning."""
        return math.prod(len(v) for v in self.choices.values())

    def __repr__(self) -> str:
        body = ", ".join(f"{n} in {list(v)}" for n, v in self.choices.items())
        return f"SearchSpace({body}; {len(self.constraints)} constraints)"

    def rejected_by(self, config: Mapping[str, Any], context: Mapping[str, Any] | None = None):
        """The first constraint `config` breaks, or None if it is a valid point."""
        env = {**(context or {}), **config}
        return next((c for c in self.constraints if not c.holds(env)), None)

    def all_points(self) -> Iterator[Config]:
        """Every point of the product, in order, pruned or not."""
        for values in itertools.product(*self.choices.values()):
            yield dict(zip(self.names, values, strict=True))

    def partition(
        self, context: Mapping[str, Any] | None = None
    ) -> tuple[list[Config], dict[str, int]]:
        """The valid points in product order, and how many points each constraint removed
        (counted by the first one they break). Refuses spaces over ENUMERATE_LIMIT."""
        if self.size > self.ENUMERATE_LIMIT:
            raise UserArgumentError(
                f"space: {self.size} points are too many to list; use a budgeted strategy"
            )
        valid, counts = [], {c.text: 0 for c in self.constraints}
        for p in self.all_points():
            broken = self.rejected_by(p, context)
            if broken is None:
                valid.append(p)
            else:
                counts[broken.text] += 1
        return valid, counts

    def points(self, context: Mapping[str, Any] | None = None) -> list[Config]:
        """Every valid point, in product order."""
        return self.partition(context)[0]

    def sample(
        self, n: int, rng: random.Random, context: Mapping[str, Any] | None = None
    ) -> list[Config]:
        """Up to `n` distinct valid points drawn uniformly."""
        if self.size <= self.ENUMERATE_LIMIT:
            valid = self.points(context)
            return rng.sample(valid, min(n, len(valid)))
        seen: dict[str, Config] = {}
        for _ in range(100 * n):
            p = {name: rng.choice(values) for name, values in self.choices.items()}
            if self.rejected_by(p, context) is None:
                seen.setdefault(canonical_json(p), p)
                if len(seen) == n:
                    break
        return list(seen.values())

    def find(self, config: Mapping[str, Any]) -> Config | None:
        """The point equal to `config` (e.g. one read back from JSON), or None if absent."""
        if set(config) != set(self.names):
            return None
        point = {}
        for name, values in self.choices.items():
            want = canonical_json(config[name])
            match = [v for v in values if canonical_json(v) == want]
            if not match:
                return None
            point[name] = match[0]
        return point
