"""What a search produces: one Trial per measured candidate, a TuneResult with the winner and
a results table, and TuningError when no candidate works (carrying their real errors)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from lowbitc.errors import LowbitcError
from lowbitc.tuning.space import Config


class TuningError(LowbitcError):
    """No candidate could be compiled and measured; the message quotes their errors."""


@dataclass(frozen=True)
class Trial:
    """One candidate at one fidelity: its time, or the error that stopped it.

    `phase` is where an error happened: "compile" (the build callable), "run" (the
    measurement) or "worker" (the executor itself, e.g. a crashed process).
    """

    config: Config
    seconds: float | None = None
    error: str | None = None
    error_type: str | None = None
    phase: str | None = None
    repeats: int | None = None
    rung: int = 0
    compile_seconds: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.seconds is not None and math.isfinite(self.seconds)

    def sort_key(self) -> float:
        return self.seconds if self.ok else math.inf


@dataclass
class TuneResult:
    """The winner of a search plus every trial; `table()` renders them for people."""

    best: Config
    seconds: float
    trials: list[Trial]
    strategy: str
    from_cache: bool = False
    space_size: int = 0
    valid_points: int = 0
    pruned: dict[str, int] = field(default_factory=dict)

    @property
    def errors(self) -> list[Trial]:
        return [t for t in self.trials if not t.ok]

    def final_trials(self) -> list[Trial]:
        """Each configuration once, at the highest fidelity it reached, fastest first."""
        last: dict[str, Trial] = {}
        for t in self.trials:
            k = _config_text(t.config)
            if k not in last or t.rung >= last[k].rung:
                last[k] = t
        return sorted(last.values(), key=lambda t: (-t.rung, t.sort_key()))

    def time_of(self, config: Config) -> float | None:
        """The time `config` measured at the highest fidelity it reached (None: not measured
        or failed), e.g. to compare the kernel's default with the winner."""
        for t in self.final_trials():
            if t.config == config:
                return t.seconds if t.ok else None
        return None

    def table(self, limit: int | None = None) -> str:
        """A plain-text table: one row per configuration, time or first line of the error."""
        rows = self.final_trials()[:limit]
        names = list(self.best) if self.best else list(rows[0].config) if rows else []
        head = ["#", *names, "time", "runs", "status"]
        body = []
        for i, t in enumerate(rows, 1):
            status = "best" if t.config == self.best and t.ok else ""
            if not t.ok:
                first = (t.error or "").strip().splitlines()[0] if t.error else "failed"
                status = f"{t.phase or 'error'} error: {first}"
            time_text = format_seconds(t.seconds) if t.ok else "-"
            cells = [str(i), *(str(t.config.get(n)) for n in names)]
            body.append([*cells, time_text, str(t.repeats or "-"), status])
        widths = [max(len(r[c]) for r in [head, *body]) for c in range(len(head) - 1)]
        lines = []
        for r in [head, *body]:
            cells = (c.ljust(w) for c, w in zip(r[:-1], widths, strict=True))
            lines.append("  ".join(cells) + "  " + r[-1])
        if self.from_cache:
            when = format_seconds(self.seconds)
            lines.append(f"(from the cache: {_config_text(self.best)} at {when})")
        return "\n".join(line.rstrip() for line in lines)


def format_seconds(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if s >= scale:
            return f"{s / scale:.3f} {unit}"
    return f"{s / 1e-9:.1f} ns"


def _config_text(config: Config) -> str:
    return ", ".join(f"{k}={v}" for k, v in config.items())


def failure_message(trials: list[Trial], what: str, show: int = 3) -> str:
    """`what` plus the first `show` distinct error messages, each with its configuration."""
    failed = [t for t in trials if not t.ok]
    lines = [f"{what}: all {len(failed)} candidates failed; the first distinct errors:"]
    seen: set[str] = set()
    for t in failed:
        if t.error in seen:
            continue
        seen.add(t.error or "")
        same = sum(1 for u in failed if u.error == t.error)
        more = f" (and {same - 1} more with the same error)" if same > 1 else ""
        lines.append(f"- [{_config_text(t.config)}] {t.phase} error{more}:")
        lines.extend("    " + ln for ln in (t.error or "unknown error").splitlines())
        if len(seen) == show:
            break
    return "\n".join(lines)


def record(result: TuneResult) -> dict[str, Any]:
    """The JSON stored in the cache for a tuning result."""
    return {
        "config": result.best,
        "seconds": result.seconds,
        "strategy": result.strategy,
        "trials": len(result.trials),
        "failed": len(result.errors),
    }
