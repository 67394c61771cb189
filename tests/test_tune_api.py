"""lowbitc.tune on real kernels with a deterministic fake measurer: the known-best point is
found, `require` prunes before compiling, budgets hold, a dask executor works, real DSL errors
reach the user with their position, ops use the stored winner for the shape's bucket, and
`lowbitc tune` prints a table and the winner. No timing is asserted."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

import lowbitc
from lowbitc import ops
from lowbitc.autotune import TuningWarning
from lowbitc.cli import main as cli_main
from lowbitc.tuning import TuningError

SOURCE = """kernel scale[BN: int = 64, U: int = 1](x: f32[N], y: f32[N])
  grid (cdiv(N, BN),)
  tune BN in [16, 32, 64, 128], U in [1, 2]
  require BN * U <= 128
{
  a = load(x[block.x*BN :+ BN])
  store(y[block.x*BN :+ BN], a * 2.0)
}
"""
BIG = SOURCE.replace("[16, 32, 64, 128], U in [1, 2]",
                     "[8, 16, 24, 32, 40, 48, 56, 64], U in [1, 2, 3, 4]")


@dataclass(frozen=True)
class Fake:
    """Seconds = a fixed function of the compiled kernel's parameters (never runs it)."""

    best: tuple = (("BN", 32), ("U", 1))

    def measure(self, run, repeats=None) -> float:
        params = run.func.params  # run is functools.partial(kernel, *inputs)
        return 1e-3 * (1 + sum(abs(params.get(k, 0) - v) for k, v in self.best))


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWBITC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("LOWBITC_NO_CACHE", raising=False)
    return tmp_path / "cache"


def test_finds_the_known_best_point_and_require_prunes():
    r = lowbitc.tune(SOURCE, {"N": 1000}, measurer=Fake(), executor="inline", progress=False)
    assert r.best == {"BN": 32, "U": 1} and not r.errors
    assert {"BN": 128, "U": 2} not in [t.config for t in r.trials]
    assert r.pruned == {"require BN * U <= 128": 1} and r.valid_points == 7
    again = lowbitc.tune(SOURCE, {"N": 1000}, measurer=Fake(), executor="inline")
    assert again.from_cache and again.best == r.best
    other_bucket = lowbitc.tune(SOURCE, {"N": 5000}, measurer=Fake((("BN", 64), ("U", 2))),
                                executor="inline", progress=False)
    assert not other_bucket.from_cache and other_bucket.best == {"BN": 64, "U": 2}


@pytest.mark.parametrize("strategy", ["random", "halving"])
def test_budgeted_search_stays_within_budget(strategy):
    r = lowbitc.tune(BIG, {"N": 256}, budget=9, strategy=strategy, measurer=Fake(),
                     executor="inline", progress=False)
    assert len(r.trials) <= 9 and r.space_size == 32 and not r.errors
    assert r.best == r.final_trials()[0].config
    assert r.time_of({"BN": 64, "U": 1}) is not None  # the declared defaults are always tried


def test_dask_executor_through_lowbitc_tune():
    distributed = pytest.importorskip("distributed", reason="dask.distributed is not installed")
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=1,
                            dashboard_address=None) as client:
        r = lowbitc.tune(SOURCE.replace("[16, 32, 64, 128]", "[32, 64]"), {"N": 300},
                         measurer=Fake(), executor=client.get_executor(), progress=False)
    assert r.best == {"BN": 32, "U": 1} and len(r.trials) == 4 and not r.errors


BROKEN = SOURCE.replace("  store(", "  b = load(x[0 :+ BN - 16])\n  store(")


def test_a_real_dsl_error_reaches_the_user_with_its_position():
    with pytest.warns(TuningWarning) as caught:
        r = lowbitc.tune(BROKEN, {"N": 512}, measurer=Fake(), executor="inline",
                         progress=False)
    assert r.best["BN"] > 16
    errors = {t.config["BN"]: t.error for t in r.errors}
    assert set(errors) == {16}
    assert errors[16].startswith("<string>:7:")
    assert "slice size must be >= 1" in errors[16]
    assert "<string>:7:" in str(caught[0].message)
    assert "slice size must be >= 1" in r.table()


def test_an_error_in_a_worker_process_keeps_its_position_and_caret():
    with pytest.warns(TuningWarning, match="<string>:7:"):
        r = lowbitc.tune(BROKEN.replace("[16, 32, 64, 128], U in [1, 2]", "[16, 32], U in [1]"),
                         {"N": 512}, executor="process", progress=False)  # real timing
    (failed,) = r.errors
    lines = failed.error.splitlines()
    assert failed.config == {"BN": 16, "U": 1} and lines[0].startswith("<string>:7:")
    assert "slice size must be >= 1" in lines[0] and "load(x[0 :+ BN - 16])" in lines[1]
    assert lines[2].strip() and set(lines[2].strip()) <= {"^", "~"}  # the caret line
    assert r.best in ({"BN": 32, "U": 1}, {"BN": 64, "U": 1})  # 64: the declared default


def test_when_every_candidate_fails_the_error_quotes_them():
    only_bad = BROKEN.replace("[16, 32, 64, 128]", "[16]")
    with pytest.raises(TuningError, match=r"(?s)all 2 candidates failed.*<string>:7:.*slice"):
        lowbitc.tune(only_bad, {"N": 512}, measurer=Fake(), executor="inline", progress=False)


def test_bad_shapes_are_user_errors():
    with pytest.raises(ValueError, match=r"shapes: expected \(M, N, K\)"):
        lowbitc.tune("matmul", (1, 2))
    with pytest.raises(ValueError, match="shapes\\['N'\\]: expected a positive int"):
        lowbitc.tune(SOURCE, {"N": 0})


@dataclass(frozen=True)
class PreferTiles:
    """Fastest at BN=16, BK=128 (not ops' default tiles), any BM."""

    def measure(self, run, repeats=None) -> float:
        p = run.func.params
        return 1e-3 * (1 + (p["BN"] != 16) + (p["BK"] != 128))


def test_ops_use_the_winner_for_the_shape_bucket():
    r = lowbitc.tune("matmul", (3, 64, 256), wtype="u3", group=64, budget=6, strategy="random",
                     measurer=PreferTiles(), executor="inline", progress=False)
    w = np.random.default_rng(0).standard_normal((64, 256)).astype(np.float32)
    qw = lowbitc.quantize(w, "u3", 64)
    default = ops.matmul_params(3, qw, "f32")
    assert r.best["BN"] == 16 != default["BN"]  # beat the default (always measured)
    for m, tuned in ((4, True), (1, False)):  # 4 is in the bucket 2-4, 1 is not
        ops._KERNELS.clear()
        x = np.random.default_rng(m).standard_normal((m, 256)).astype(np.float32)
        y = ops.matmul(x, qw)
        np.testing.assert_allclose(y, x @ qw.dequantize().T, rtol=1e-4, atol=1e-3)
        (key,) = [key for key in ops._KERNELS if key[0] == "matmul"]
        params = dict(key[2])
        assert ({n: params[n] for n in r.best} == r.best) == tuned


@dataclass(frozen=True)
class PreferOpsChoice:
    """Fastest at exactly the tiles ops.matmul picks, even one outside the `tune` space."""

    tiles: tuple

    def measure(self, run, repeats=None) -> float:
        p = run.func.params
        return 1e-3 * (1 + sum(p[n] != v for n, v in self.tiles))


def test_the_winner_is_re_timed_against_what_ops_would_pick():
    w = np.random.default_rng(0).standard_normal((64, 256)).astype(np.float32)
    qw = lowbitc.quantize(w, "u3", 64)
    params = ops.matmul_params(33, qw, "f32")
    tiles = {n: params[n] for n in ("BM", "BN", "BK")}
    assert tiles["BM"] == 48  # not one of the kernel's BM choices
    r = lowbitc.tune("matmul", (33, 64, 256), wtype="u3", group=64, budget=4,
                     strategy="random", measurer=PreferOpsChoice(tuple(tiles.items())),
                     executor="inline", progress=False)
    assert r.best == tiles  # every searched point was slower: the default stays
    ops._KERNELS.clear()
    x = np.random.default_rng(1).standard_normal((33, 256)).astype(np.float32)
    np.testing.assert_allclose(ops.matmul(x, qw), x @ qw.dequantize().T, rtol=1e-4, atol=1e-3)
    (key,) = [key for key in ops._KERNELS if key[0] == "matmul"]
    assert {n: dict(key[2])[n] for n in tiles} == tiles


def test_cli_prints_a_table_and_the_winner(tmp_path, capsys):
    path = tmp_path / "scale.lbk"
    path.write_text(SOURCE.replace("[16, 32, 64, 128], U in [1, 2]", "[32, 64], U in [1]"))
    assert cli_main(["tune", str(path), "--shape", "N=2048", "--executor", "inline",
                     "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "BN" in out and "time" in out and "winner: BN=" in out
    assert cli_main(["tune", str(path), "--shape", "N=2048", "--executor", "inline"]) == 0
    assert "(stored earlier)" in capsys.readouterr().out
    assert cli_main(["tune", "matmul", "--shape", "1,2"]) == 2


@dataclass(frozen=True)
class PreferDequantTiles:
    """Fastest at BN=16, BK=32: a K tile that fits a group of 32 (ops' default BK is 128)."""

    def measure(self, run, repeats=None) -> float:
        p = run.func.params
        return 1e-3 * (1 + (p["BN"] != 16) + (p["BK"] != 32))


def test_dequantize_tunes_its_k_tile_down_to_a_group_of_32_and_ops_use_it():
    qw = lowbitc.quantize(np.random.default_rng(2).standard_normal((64, 256)).astype(np.float32),
                          "u4", 32)
    r = lowbitc.tune("dequantize", (64, 256), wtype="u4", group=32, budget=6, strategy="random",
                     measurer=PreferDequantTiles(), executor="inline", progress=False)
    assert not r.errors and any(t.config["BK"] == 32 for t in r.trials)
    assert r.best["BK"] == 32 and r.best != {"BN": 8, "BK": 128}
    ops._KERNELS.clear()
    np.testing.assert_array_equal(ops.dequantize(qw), qw.dequantize())  # still bit-identical
    (key,) = [key for key in ops._KERNELS if key[0] == "dequantize"]
    assert {n: dict(key[2])[n] for n in r.best} == r.best
