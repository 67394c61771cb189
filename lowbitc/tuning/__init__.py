"""Autotuning: search spaces with constraints, strategies, pluggable measurers, any
`concurrent.futures.Executor`, shape buckets and winners remembered in the compile cache."""

from lowbitc.tuning.buckets import ShapeBucket, m_bucket, pow2_bucket, shape_bucket, tuning_key
from lowbitc.tuning.measure import Measurer, WallClock
from lowbitc.tuning.runner import InlineExecutor, Task, run_task
from lowbitc.tuning.space import Config, Constraint, SearchSpace
from lowbitc.tuning.strategies import Exhaustive, RandomSearch, Strategy, SuccessiveHalving
from lowbitc.tuning.trials import Trial, TuneResult, TuningError
from lowbitc.tuning.tuner import lookup, tune

__all__ = [
    "Config",
    "Constraint",
    "Exhaustive",
    "InlineExecutor",
    "Measurer",
    "RandomSearch",
    "SearchSpace",
    "ShapeBucket",
    "Strategy",
    "SuccessiveHalving",
    "Task",
    "Trial",
    "TuneResult",
    "TuningError",
    "WallClock",
    "lookup",
    "m_bucket",
    "pow2_bucket",
    "run_task",
    "shape_bucket",
    "tune",
    "tuning_key",
]
