"""Autotuning: spaces and constraints, strategies and budgets, error surfacing, buckets, the
cache record, and executors (threads, inline, a spawn process pool, a local dask cluster).

The kernel family is synthetic: a known cost function of the parameters (best at BM=16,
BN=64, BK=128) and a fake measurer that returns it, so the tests check search logic and
never machine timings. Helpers are module-level so worker processes can unpickle them.
"""

from __future__ import annotations

import itertools
import math
import os
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

try:
    import distributed
except ImportError:  # the dask test is skipped, with this reason printed
    distributed = None

from lowbitc.cache import Cache, CacheKey
from lowbitc.errors import DSLTypeError, SourceLoc, UserArgumentError
from lowbitc.tuning import (
    Constraint,
    RandomSearch,
    SearchSpace,
    SuccessiveHalving,
    TuningError,
    WallClock,
    lookup,
    m_bucket,
    pow2_bucket,
    shape_bucket,
    tune,
    tuning_key,
)

BEST = {"BM": 16, "BN": 64, "BK": 128}
CHOICES = {"BM": [1, 4, 16, 64], "BN": [16, 32, 64, 128], "BK": [32, 64, 128, 256]}
LOC = SourceLoc("gemm.lbk", 7, 11, "  acc = zeros(f32, [BM, BN * BK])")


def cost(config: dict) -> float:
    """1 ms at BEST, one more ms per factor of two away from it in any parameter."""
    return 1e-3 * (1 + sum(abs(math.log2(config[n] / BEST[n])) for n in BEST if n in config))


class FakeRun:
    def __init__(self, config: dict):
        self.config = dict(config)
        self.pid = os.getpid()

    def __call__(self) -> float:
        return cost(self.config)


class FakeMeasurer:
    """The cost plus a fixed per-config error of size `noise / repeats` (ms)."""

    def __init__(self, noise: float = 0.0):
        self.noise = noise

    def measure(self, run: FakeRun, repeats: int | None = None) -> float:
        c = run.config
        wobble = (c["BM"] * 31 + c["BN"] * 17 + c.get("BK", 0) * 7) % 101 / 100 - 0.5
        return run() + 1e-3 * self.noise * wobble / (repeats or 10)


def build(config: dict) -> FakeRun:
    """Fails like a real DSL error for tiles over 8192 elements."""
    if config["BN"] * config.get("BK", 1) > 8192:
        raise DSLTypeError(f"tile [{config['BN']}, {config['BK']}] is too large", LOC)
    return FakeRun(config)


def build_on_dask_worker(config: dict) -> FakeRun:
    distributed.get_worker()  # raises ValueError outside a dask worker
    return build(config)


def build_all_fail(config: dict) -> FakeRun:
    raise DSLTypeError(f"BM={config['BM']} does not divide the grid", LOC)


def build_crash_on_bm64(config: dict) -> FakeRun:
    if config["BM"] == 64:
        os._exit(3)  # like a segfaulting kernel
    return FakeRun(config)


def fake(**kw):
    """tune() options for the synthetic family: fake timings, inline, no progress bar."""
    return {"measurer": FakeMeasurer(), "executor": "inline", "progress": False, **kw}


# -- spaces and constraints -----------------------------------------------------------------------
def test_exhaustive_finds_the_known_best_point():
    r = tune(build, CHOICES, **fake())
    assert r.best == BEST and r.seconds == pytest.approx(1e-3) and r.strategy == "exhaustive"
    assert len(r.trials) == 64
    assert r.seconds == min(cost(c) for c in SearchSpace(CHOICES).points() if build_ok(c))
    assert "best" in r.table().splitlines()[1]


def build_ok(config: dict) -> bool:
    return config["BN"] * config["BK"] <= 8192


def test_constraints_prune_before_any_build():
    built = []

    def recording_build(config):
        built.append(config)
        return build(config)

    r = tune(
        recording_build, CHOICES, constraints=["BN * BK <= 8192", lambda p: p["BM"] <= p["M"]],
        context={"M": 16}, **fake(executor="thread"),
    )  # fmt: skip
    assert built and all(build_ok(c) and c["BM"] <= 16 for c in built)
    assert not r.errors and r.best == BEST
    assert r.pruned == {"BN * BK <= 8192": 12, "<lambda>": 13}
    assert r.valid_points == len(built) == 64 - 25


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.integers(1, 64), min_size=1, max_size=5, unique=True),
    st.lists(st.integers(1, 64), min_size=1, max_size=5, unique=True),
    st.integers(1, 400),
    st.integers(1, 8),
)
def test_valid_points_are_exactly_the_brute_force_filter(bms, bns, limit, div):
    space = SearchSpace({"BM": bms, "BN": bns}, [f"BM * BN <= {limit}", "cdiv(K, BM) % D == 0"])
    expect = [
        {"BM": m, "BN": n}
        for m, n in itertools.product(bms, bns)
        if m * n <= limit and -(-100 // m) % div == 0
    ]
    points, removed = space.partition({"K": 100, "D": div})
    assert points == expect
    assert sum(removed.values()) == len(bms) * len(bns) - len(expect)


@pytest.mark.parametrize(
    "text, match",
    [
        ("__import__('os').system('true')", "unsupported syntax"),
        ("BM.bit_length() > 1", "unsupported syntax"),
        ("BM * ", "not an expression"),
        ("[x for x in (1, 2)]", "unsupported syntax"),
        ("lambda: 1", "unsupported syntax"),
    ],
)
def test_constraint_expressions_only_know_arithmetic(text, match):
    with pytest.raises(UserArgumentError, match=match):
        SearchSpace({"BM": [1]}, [text])


def test_constraint_errors_name_the_constraint():
    with pytest.raises(UserArgumentError, match=r"unknown name 'K' \(known: BM\)"):
        SearchSpace({"BM": [1, 2]}, ["K % BM == 0"]).points()
    with pytest.raises(UserArgumentError, match="constraint 'p' raised KeyError"):
        SearchSpace({"BM": [1]}, [Constraint("p", lambda env: env["nope"])]).points()
    ok = SearchSpace({"BM": [1, 2, 4, 8]}, ["is_pow2(BM) and log2(BM) in (1, 3) if BM > 1 else 0"])
    assert ok.points() == [{"BM": 2}, {"BM": 8}]
    with pytest.raises(UserArgumentError, match="distinct"):
        SearchSpace({"BM": [1, 1]})
    with pytest.raises(UserArgumentError, match="identifier"):
        SearchSpace({"B M": [1]})


def test_no_valid_point_says_which_constraint_removed_what():
    with pytest.raises(TuningError) as e:
        tune(build, CHOICES, constraints=["K % BK == 0"], context={"K": 100}, **fake())
    assert "'K % BK == 0' removed 64" in str(e.value) and "K=100" in str(e.value)


# -- errors reach the user ------------------------------------------------------------------------
def test_failing_candidates_keep_their_full_message_and_location():
    r = tune(build, CHOICES, **fake())
    assert len(r.errors) == 4 * 3  # BN=64,BK=256; BN=128,BK=128|256
    err = next(t for t in r.errors if t.config == {"BM": 1, "BN": 128, "BK": 256})
    assert err.phase == "compile" and err.error_type == "DSLTypeError"
    assert err.error.startswith("gemm.lbk:7:11: DSLTypeError: tile [128, 256] is too large")
    assert LOC.text in err.error and "^" in err.error
    assert "compile error: gemm.lbk:7:11: DSLTypeError" in r.table()


def test_all_candidates_failing_raises_tuning_error_with_the_real_errors():
    with pytest.raises(TuningError) as e:
        tune(build_all_fail, {"BM": [1, 2, 3, 4]}, **fake())
    text = str(e.value)
    assert "all 4 candidates failed" in text
    assert "gemm.lbk:7:11: DSLTypeError: BM=1 does not divide the grid" in text
    assert LOC.text in text and "BM=3 does not divide" in text and "BM=4" not in text


def test_a_measurer_failure_is_a_run_error():
    class Broken:
        def measure(self, run, repeats=None):
            return float("nan") if run.config["BM"] == 1 else cost(run.config)

    r = tune(build, {"BM": [1, 16], "BN": [64], "BK": [128]}, **fake(measurer=Broken()))
    (bad,) = r.errors
    assert bad.phase == "run" and "nan" in bad.error and r.best == BEST


# -- budgeted search ------------------------------------------------------------------------------
BIG = {"BM": [1, 2, 4, 8, 16, 32, 64], "BN": [8, 16, 32, 64, 128, 256], "BK": [32, 64, 128, 256]}


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 120), st.integers(2, 4), st.integers(0, 10**6), st.sampled_from("hr"))
def test_budget_is_never_exceeded(budget, eta, seed, kind):
    strategy = SuccessiveHalving(budget, eta=eta) if kind == "h" else RandomSearch(budget)
    r = tune(FakeRun, BIG, strategy=strategy, seed=seed, **fake(measurer=FakeMeasurer(noise=3)))
    assert 1 <= len(r.trials) <= strategy.plan(len(SearchSpace(BIG).points())) <= budget


def test_successive_halving_finds_a_near_best_point_with_a_small_budget():
    all_costs = sorted(cost(c) for c in SearchSpace(BIG).points() if build_ok(c))
    for seed in range(5):
        r = tune(build, BIG, budget=40, seed=seed, **fake(measurer=FakeMeasurer(noise=3)))
        assert r.strategy == "halving" and len(r.trials) <= 40
        assert cost(r.best) <= all_costs[len(all_costs) // 10], (seed, r.best)
        top = max(t.rung for t in r.trials)
        finalists = [t for t in r.trials if t.rung == top]
        assert len(finalists) == 1 and finalists[0].config == r.best
        # each rung promotes exactly the fastest of the one before
        first = sorted((t for t in r.trials if t.rung == 0 and t.ok), key=lambda t: t.seconds)
        second = [t.config for t in r.trials if t.rung == 1]
        assert second == [t.config for t in first[: len(second)]]


def test_the_default_config_is_always_measured():
    default = {"BM": 1, "BN": 8, "BK": 32}
    for strategy in ("random", "halving"):
        r = tune(build, BIG, budget=5, strategy=strategy, default=default, **fake())
        assert default in [t.config for t in r.trials if t.rung == 0]
        assert r.seconds <= cost(default) == r.time_of(default)
    assert r.time_of({"BM": 3}) is None


# -- buckets and the cache record -----------------------------------------------------------------
@given(st.integers(1, 10**6))
def test_m_buckets_partition_the_sizes(m):
    name = m_bucket(m)
    lo, hi = {"1": (1, 1), "2-4": (2, 4), "5-16": (5, 16), "17-64": (17, 64),
              "65-256": (65, 256), ">256": (257, math.inf)}[name]  # fmt: skip
    assert lo <= m <= hi
    p = pow2_bucket(m)
    assert p >= m and p & (p - 1) == 0 and p < 2 * m


def test_nearby_shapes_share_a_bucket_and_a_key():
    key = CacheKey.make("kernel gemm", {"W": "u4"}, backend="llvm", target="t")
    a = shape_bucket({"M": 3, "N": 4000, "K": 4096})
    assert str(a) == "M=2-4,N=4096,K=4096"
    assert a == shape_bucket({"M": 4, "N": 2049, "K": 4096})
    assert a != shape_bucket({"M": 5, "N": 4000, "K": 4096})
    assert tuning_key(key, a) == tuning_key(key, shape_bucket({"M": 2, "N": 3000, "K": 4000}))
    assert (
        tuning_key(key, a).digest
        != tuning_key(key, shape_bucket({"M": 1, "N": 4000, "K": 4096})).digest
    )
    with pytest.raises(UserArgumentError, match=r"shape\['K'\]"):
        shape_bucket({"M": 1, "K": 0})


def test_the_winner_is_stored_and_looked_up_first(tmp_path):
    cache = Cache(tmp_path / "c")
    kernel = CacheKey.make("kernel gemm", {"W": "u4"}, backend="llvm", target="t")
    key = tuning_key(kernel, shape_bucket({"M": 1, "N": 4096, "K": 4096}))
    first = tune(build, CHOICES, cache=cache, key=key, **fake())
    assert not first.from_cache and lookup(cache, key) == (BEST, first.seconds)
    again = tune(build_all_fail, CHOICES, cache=cache, key=key, **fake())  # would fail if built
    assert again.from_cache and again.best == BEST and again.trials == []
    assert "from the cache" in again.table()
    other = tuning_key(kernel, shape_bucket({"M": 100, "N": 4096, "K": 4096}))
    with pytest.raises(TuningError):
        tune(build_all_fail, CHOICES, cache=cache, key=other, **fake())
    with pytest.raises(TuningError):
        tune(build_all_fail, CHOICES, cache=cache, key=key, force=True, **fake())
    # a stored config that breaks this exact shape's constraints is a miss
    assert lookup(cache, key, SearchSpace(CHOICES, ["K % BK == 0"]), {"K": 4000}) is None
    assert lookup(cache, key, SearchSpace(CHOICES, ["K % BK == 0"]), {"K": 4096}) is not None


# -- measurement, progress, executors -------------------------------------------------------------
def test_wall_clock_runs_warmup_then_batched_samples():
    calls = []
    t = WallClock(warmup=3, repeats=5, min_sample_seconds=0.0).measure(lambda: calls.append(1))
    assert t > 0 and len(calls) == 3 + 1 + 5
    with pytest.raises(UserArgumentError, match="repeats"):
        WallClock(repeats=0)


def test_progress_bar_only_when_asked(capsys):
    tune(build, CHOICES, **fake(progress=True))
    assert "tuning" in capsys.readouterr().err
    tune(build, CHOICES, **fake(progress=False))
    assert capsys.readouterr().err == ""


def test_thread_pool_serialises_measurements():
    active, overlap = [0], []
    lock = threading.Lock()

    class Watching(FakeMeasurer):
        def measure(self, run, repeats=None):
            with lock:
                active[0] += 1
                overlap.append(active[0])
            threading.Event().wait(0.002)
            with lock:
                active[0] -= 1
            return super().measure(run, repeats)

    r = tune(build, CHOICES, **fake(executor="thread", measurer=Watching()))
    assert r.best == BEST and max(overlap) == 1


def test_process_pool_is_the_default_and_survives_a_crashed_worker():
    with pytest.raises(UserArgumentError, match="pickle"):
        tune(lambda c: FakeRun(c), {"BM": [1]}, measurer=FakeMeasurer(), progress=False)
    r = tune(build_crash_on_bm64, {"BM": [1, 16, 64], "BN": [64], "BK": [128]},
             measurer=FakeMeasurer(), progress=False)  # fmt: skip
    assert r.best == BEST
    crashed = [t for t in r.errors if t.config["BM"] == 64]
    assert crashed and all(t.phase == "worker" for t in crashed)


@pytest.mark.skipif(distributed is None, reason="dask.distributed is not installed")
def test_dask_local_cluster_executor():
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=True,
                                  dashboard_address=None) as cluster:  # fmt: skip
        with distributed.Client(cluster) as client:
            executor = client.get_executor()
            space = {"BM": [4, 16], "BN": [32, 64], "BK": [128]}
            r = tune(build_on_dask_worker, space, **fake(executor=executor))
    assert r.best == BEST and len(r.trials) == 4 and not r.errors


def test_random_search_is_reproducible_per_seed():
    runs = [tune(build, BIG, strategy="random", budget=7, seed=s, **fake()) for s in (1, 1, 2)]
    configs = [[t.config for t in r.trials] for r in runs]
    assert configs[0] == configs[1] != configs[2]
