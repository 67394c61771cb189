"""The rows of the CPU benchmark (issue 5's table): what each row measures and its goal.

A row compares one lowbitc call with a named baseline measured in the same interleaved rounds.
Its `Goal` is stated on one metric: `speedup` (baseline seconds / lowbitc seconds),
`bandwidth_fraction` (effective bandwidth / copy bandwidth) or `seconds` (per call).
"""

from __future__ import annotations

import fnmatch
import operator
from dataclasses import asdict, dataclass

from lowbitc.errors import UserArgumentError

__all__ = ["GEMV_FORMATS", "INTEROP_FORMATS", "ROWS", "Goal", "RowSpec", "row_names", "select_rows"]

_OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le}


@dataclass(frozen=True)
class Goal:
    """`metric op value`, e.g. speedup >= 4; `text` is the issue's wording."""

    text: str
    metric: str  # "speedup" | "bandwidth_fraction" | "seconds"
    op: str  # ">=" | ">" | "<="
    value: float

    def holds(self, measured: float) -> bool:
        return bool(_OPS[self.op](measured, self.value))

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class RowSpec:
    """One row: `kind` picks the measurement (gemv, torch, gemm, dequant, small, interop,
    outliers)."""

    name: str
    kind: str
    fmt: str
    M: int
    goal: Goal
    case: str  # one line saying what is timed against what


def _faster(x: float) -> Goal:
    if x == 1.0:
        return Goal("faster than numpy fp32", "speedup", ">", 1.0)
    return Goal(f">= {x:g}x faster than numpy fp32", "speedup", ">=", x)


GEMV_FORMATS = (
    "u1", "u2", "u3", "u4", "u5", "u6", "u7", "u8", "f4e2m1fn", "f6e3m2fn", "f8e4m3fn", "nf4",
)
MIXTURE_MEMBERS = ("u4", "nf4", "f4e2m1fn", "i4")  # issue 18's 4-format mixture
INTEROP_FORMATS = ("Q4_0", "Q4_K", "GPTQ4")  # GGUF types and a 4-bit GPTQ layer
_GEMV_GOALS = {"u2": 6.0, "u3": 4.5, "u4": 4.0, "f4e2m1fn": 3.5}
# issue 14: int8 activations, weights streaming from memory
A8_GEMV_GOALS = {"u2": 8.0, "u3": 8.0, "u4": 7.0, "u8": 3.5, "f4e2m1fn": 6.0}

ROWS: tuple[RowSpec, ...] = (
    *(
        RowSpec(
            f"gemv_{f}", "gemv", f, 1, _faster(_GEMV_GOALS.get(f, 1.0)),
            f"ops.matmul M=1 {f} weights vs numpy fp32 x @ W.T",
        )
        for f in GEMV_FORMATS
    ),
    RowSpec(
        "gemv_u4_vs_torch", "torch", "u4", 1,
        Goal("at least as fast as torch int4 (bf16 activations)", "speedup", ">=", 1.0),
        "ops.matmul M=1 u4, f32 activations vs torch._weight_int4pack_mm_for_cpu, bf16",
    ),
    *(
        RowSpec(
            f"outliers_gemv_{f}", "outliers", f, 1,
            Goal("within 1.3x of the same format without outliers", "speedup", ">=", 1 / 1.3),
            f"ops.matmul M=1 {f} g128 + 0.5% outliers (CSR second pass) vs {f} without",
        )
        for f in ("u3", "u4")
    ),
    RowSpec(
        "mixture_gemv_4fmt", "mixture", "u4", 1,
        Goal("within 1.2x of its slowest member format", "speedup", ">=", 1 / 1.2),
        f"ops.matmul M=1 g128 per-group mixture of {', '.join(MIXTURE_MEMBERS)} "
        "(matmul_mix.lbk) vs the slowest member's own GEMV",
    ),
    RowSpec(
        "gemm_u4_M16", "gemm", "u4", 16, _faster(1.5),
        "ops.matmul M=16 u4 vs numpy fp32 x @ W.T",
    ),
    RowSpec(
        "gemm_u4_M128", "gemm", "u4", 128,
        Goal("at least half the speed of numpy fp32 (sgemm)", "speedup", ">=", 0.5),
        "ops.matmul M=128 u4 vs numpy fp32 x @ W.T",
    ),
    *(
        RowSpec(
            f"a8_gemv_{f}", "a8", f, 1, _faster(x),
            f"ops.matmul M=1 {f}, act=\"i8\" vs numpy fp32 x @ W.T",
        )
        for f, x in A8_GEMV_GOALS.items()
    ),
    *(
        RowSpec(
            f"a8_gemm_u4_M{m}", "a8", "u4", m, _faster(x),
            f"ops.matmul M={m} u4, act=\"i8\" vs numpy fp32 x @ W.T",
        )
        for m, x in ((16, 4.0), (128, 1.5))
    ),
    RowSpec(
        "dequant_u3", "dequant", "u3", 0,
        Goal(">= 50% of the copy bandwidth", "bandwidth_fraction", ">=", 0.5),
        "ops.dequantize(qw, out=) u3 to fp32: (bytes read + written) / time vs np.copyto",
    ),
    *(
        RowSpec(
            f"repack_{f}", "repack", f, 1,
            Goal("every call after the first within 1.2x of prepared words", "speedup", ">=",
                 1 / 1.2),
            f"user GEMV M=1 {f} on canonical words (cached transform, content digest per call) "
            "vs on Kernel.prepare words",
        )
        for f in ("b2", "u4")
    ),
    *(
        RowSpec(
            f"user_{which}_M{m}", "user", fmt, m,
            Goal("within 1.5x of ops.matmul on a QTensor of the same bytes", "speedup", ">=",
                 1 / 1.5),
            f"examples/user {which} kernel M={m} vs ops.matmul on a {fmt} QTensor",
        )
        for which, fmt in (("b2_act", "b2"), ("q8_0", "i8"), ("gptq", "u4"), ("gptq_act", "u4"),
                           ("awq", "u4"), ("q4_0", "u4"), ("q5_0", "u5"), ("q4_k", "u4"),
                           ("nf4", "nf4"))
        for m in (1, 16)
    ),
    *(
        RowSpec(
            f"interop_{f.lower()}", "interop", f, 1,
            Goal("within 1.5x of lowbitc's own u4 GEMV", "speedup", ">=", 1 / 1.5),
            f"ops.matmul M=1 on a {f} tensor read as lowbitc does (docs/interop.md) "
            "vs ops.matmul u4 with zero points",
        )
        for f in INTEROP_FORMATS
    ),
    RowSpec(
        "ops_matmul_small", "small", "u4", 1,
        Goal("<= 50 us per call, Python overhead included", "seconds", "<=", 50e-6),
        "ops.matmul M=1 K=N=256 u4, one Python call (numpy fp32 shown for reference)",
    ),
)


def row_names() -> list[str]:
    return [r.name for r in ROWS]


def select_rows(patterns: str | None) -> tuple[RowSpec, ...]:
    """Rows matching comma-separated names or shell patterns (`gemv_*`); None means all."""
    if not patterns:
        return ROWS
    wanted = [p.strip() for p in patterns.split(",") if p.strip()]
    for p in wanted:
        if not any(fnmatch.fnmatchcase(r.name, p) for r in ROWS):
            raise UserArgumentError(
                f"--rows: expected row names or patterns among {', '.join(row_names())}; "
                f"got {p!r}"
            )
    return tuple(r for r in ROWS if any(fnmatch.fnmatchcase(r.name, p) for p in wanted))
