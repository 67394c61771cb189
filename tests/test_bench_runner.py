"""The CPU benchmark runner (`lowbitc bench`): JSON schema, every row, PNG, checks (no timing
asserts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lowbitc.benchmarks import candidates as cand
from lowbitc.benchmarks import environment, groups, runner
from lowbitc.benchmarks.cases import GEMV_FORMATS, ROWS, Goal, row_names, select_rows
from lowbitc.benchmarks.harness import in_turn
from lowbitc.benchmarks.report import format_markdown, format_table, make_row
from lowbitc.benchmarks.roofline import (
    context_markdown,
    incache_markdown,
    roofline_markdown,
    roofline_rows,
)
from lowbitc.errors import UserArgumentError
from lowbitc.memory import copies_for, llc_bytes

STATUSES = {"pass", "fail", "wrong", "error", "skipped"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    done = subprocess.run(
        [sys.executable, "-m", "lowbitc.cli", "bench", "--quick", "--size", "256",
         "--rounds", "2", "--copy-mib", "4", "--read-mib", "8", "--threads", "2",
         "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    return done, out


@pytest.mark.slow
def test_quick_run_writes_json_and_png(quick_run):
    done, out = quick_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((out / "cpu-quick.json").read_text())
    png = (out / "cpu-quick.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    for key in ("schema", "config", "threads", "load_average", "git", "machine",
                "copy_bandwidth", "rows", "summary", "command"):
        assert key in results, key
    assert results["quick"] is True and results["config"]["size"] == 256
    assert results["command"].startswith("lowbitc bench --quick --out ")
    assert "--size 256 --rounds 2 --copy-mib 4" in results["command"]
    assert results["threads"]["lowbitc"] == 2 and results["threads"]["requested"] == 2
    assert len(results["load_average"]["start"]) == 3 and len(results["load_average"]["end"]) == 3
    assert len(results["git"]["commit"]) == 40 and results["machine"]["cpu_count"] >= 1
    repo = Path(__file__).resolve().parents[1]
    for path in results["git"]["modified_tracked_files"]:  # whole paths, first letter kept
        assert (repo / path.split("/")[0]).exists(), path
    assert results["copy_bandwidth"]["best_gbs"] > 0
    read = results["read_bandwidth"]
    assert read["gbs"] > 0 and read["threads"] == 2 and read["bytes_per_call"] == 8 << 20
    assert "read bandwidth (2 threads, 8 MiB streamed)" in done.stdout
    for g in results["groups"]:
        assert g["cpu_usage"]["wall_seconds"] > 0 and g["cpu_usage"]["others_cpus"] >= 0
    assert [r["name"] for r in results["rows"]] == row_names()
    # every row of the table is printed
    for name in row_names():
        assert name in done.stdout


@pytest.mark.slow
def test_quick_run_rows_are_complete(quick_run):
    done, out = quick_run
    results = json.loads((out / "cpu-quick.json").read_text())
    for r in results["rows"]:
        assert r["status"] in STATUSES
        assert set(r["goal"]) == {"text", "metric", "op", "value"}
        if r["status"] == "skipped":  # only torch may be missing
            assert r["kind"] == "torch" and "torch" in r["reason"]
            continue
        assert r["status"] in ("pass", "fail"), (r["name"], r.get("reason"))
        assert r["lowbitc"]["check"]["ok"]
        assert r["lowbitc"]["check"]["max_rel_error"] <= r["lowbitc"]["check"]["tolerance"]
        t, b = r["time"], r["baseline_time"]
        assert 0 < t["p10"] <= t["median"] <= t["p90"] and t["runs"] == 2
        assert b["median"] > 0 and r["ratio"] > 0
        assert r["passed"] == Goal(**r["goal"]).holds(r["measured"])
        assert r["lowbitc"]["bandwidth_gbs"] > 0
        # interop rows name the source format; the kernel runs its exact lowbitc codes
        want_w = {"Q4_0": "i4", "Q4_K": "u4", "GPTQ4": "u4"}.get(r["format"], r["format"])
        if r["kind"] == "a8" and r["M"] == 1 and want_w in ("u8", "i8"):
            want_w = "b8"  # the inline GEMV reads u8/i8 bytes as b8 codes (docs/a8.md)
        params = r["lowbitc"]["info"]["kernel_params"]  # a mixture's first member is W0
        assert params.get("W", params.get("W0")) == want_w
        if r["kind"] in ("gemv", "torch", "gemm", "a8"):
            assert r["lowbitc"]["gflops"] > 0
        if r["kind"] in ("gemv", "gemm", "a8"):  # weights stream; one weight beside
            assert r["lowbitc"]["info"]["weights_in_turn"] > 1
            assert r["baseline"]["info"]["weights_in_turn"] >= 2
            one = [e for e in r["extra"] if e["name"].endswith("_one_weight")]
            assert len(one) == 1 and one[0]["info"]["weights_in_turn"] == 1
            assert one[0]["time"]["median"] > 0
        if r["kind"] in ("gemv", "torch") or (r["kind"] == "a8" and r["M"] == 1):
            # weight bytes / time / the read bandwidth
            want = r["lowbitc"]["weight_bandwidth_gbs"] / results["read_bandwidth"]["gbs"]
            assert r["read_bandwidth_fraction"] == pytest.approx(want)
        else:
            assert "read_bandwidth_fraction" not in r
    # llama.cpp's kernels beside the W*A8 rows (the bench extra, installed with the tests)
    for r in results["rows"]:
        want = groups.GGML_PEERS.get(r["format"], ()) if r["kind"] == "a8" else ()
        peers = {e["name"]: e for e in r["extra"] if e["name"].startswith("ggml_")}
        assert sorted(peers) == sorted(f"ggml_{t}_M{r['M']}" for t in want), r["name"]
        for e in peers.values():
            assert e["check"]["ok"] and e["time"]["median"] > 0, e
            assert e["info"]["weights_in_turn"] > 1
        if peers:
            assert f"peers {r['name']} vs numpy_fp32_M{r['M']}" in done.stdout
    dequant = next(r for r in results["rows"] if r["name"] == "dequant_u3")
    assert dequant["lowbitc"]["check"]["max_abs_error"] == 0.0  # bit-exact
    assert dequant["baseline"]["name"].startswith("copy_")


@pytest.mark.slow
def test_roofline_from_the_quick_run(quick_run):
    _, out = quick_run
    results = json.loads((out / "cpu-quick.json").read_text())
    entries = roofline_rows(results)
    names = [e["name"] for e in entries]
    assert names[0] == "numpy fp32" and "dequant_u3" in names
    assert [n for n in names if n.startswith("gemv_")] == [f"gemv_{f}" for f in GEMV_FORMATS]
    for e in entries:
        # bytes per call / time is the bandwidth; the floor is bytes / copy bandwidth
        assert e["bandwidth_gbs"] == pytest.approx(e["bytes_per_call"] / e["time"] / 1e9)
        assert e["time_over_floor"] == pytest.approx(e["time"] / e["memory_floor"])
    u4 = next(e for e in entries if e["name"] == "gemv_u4")
    assert u4["weight_bytes_per_weight"] == pytest.approx(4 / 8 + 8 / 128)  # codes, scale, zero
    assert set(results["incache"]) == set(GEMV_FORMATS)
    assert len(roofline_markdown(results).splitlines()) == len(entries) + 2
    assert "Load average" in context_markdown(results)
    assert len(incache_markdown(results).splitlines()) == len(GEMV_FORMATS) + 2


def test_select_rows_by_name_and_pattern():
    assert select_rows(None) == ROWS
    gemv = select_rows("gemv_u*")
    assert [r.name for r in gemv] == [f"gemv_u{b}" for b in range(1, 9)] + ["gemv_u4_vs_torch"]
    assert [r.name for r in select_rows("dequant_u3, gemm_*")] == [
        "gemm_u4_M16", "gemm_u4_M128", "dequant_u3"]
    with pytest.raises(UserArgumentError, match="--rows"):
        select_rows("gemv_u9")


def test_bad_rows_argument_is_a_cli_error(capsys):
    from lowbitc.cli import main

    assert main(["bench", "--quick", "--rows", "nope"]) == 2
    assert "--rows" in capsys.readouterr().err


def test_goal_operators():
    assert Goal("x", "speedup", ">=", 4.0).holds(4.0)
    assert not Goal("x", "speedup", ">", 1.0).holds(1.0)
    assert Goal("x", "seconds", "<=", 5e-5).holds(4e-5)
    assert not Goal("x", "seconds", "<=", 5e-5).holds(6e-5)


def test_a_wrong_result_fails_its_row_and_is_not_timed():
    spec = next(r for r in ROWS if r.name == "gemv_u4")
    grp = groups.Group("t")
    grp.add("numpy_fp32_M1", lambda: cand.Timed("numpy_fp32_M1", lambda: None, flops=2.0,
                                                bytes_moved=8.0))
    check = cand._compare(np.ones(4), np.zeros(4) + 0.5, cand.MATMUL_TOLERANCE)
    assert not check["ok"] and check["max_abs_error"] == 0.5
    grp.add("bad", lambda: cand.Timed("bad", lambda: None, flops=2.0, bytes_moved=8.0,
                                      check=check))
    stats = groups.measure(grp, rounds=2)
    assert set(stats) == {"numpy_fp32_M1"}
    row = make_row(spec, runner.quick_config(size=8), grp, stats, "bad", "numpy_fp32_M1", (),
                   [0.0, 0.0, 0.0])
    assert row["status"] == "wrong" and row["passed"] is False and "time" not in row
    results = {"rows": [row]}
    assert "WRONG" in format_table(results) and "WRONG" in format_markdown(results)
    assert "p10-p90" not in format_markdown(results, compact=True)


def test_a_failing_build_is_recorded_not_raised():
    grp = groups.Group("t")
    grp.add("boom", lambda: 1 / 0)
    grp.add("none", lambda: None, missing="torch is not installed")
    assert grp.problems["boom"]["status"] == "error"
    assert "ZeroDivisionError" in grp.problems["boom"]["reason"]
    assert grp.problems["none"] == {"status": "skipped", "reason": "torch is not installed"}


def test_matmul_case_checks_against_numpy():
    w = cand.weights(24, 40)
    qw = cand.quantized(w, "u3", 16)
    t = cand.matmul_case("c", cand.activations(2, 40), qw)
    assert t.correct and t.check["max_rel_error"] <= cand.MATMUL_TOLERANCE
    assert t.flops == 2 * 2 * 24 * 40
    assert t.weight_bytes == cand.weight_bytes(qw) > 0
    d = cand.dequant_case("d", qw, reuse_output=True)
    assert d.correct and d.check["max_abs_error"] == 0.0
    assert d.fn() is d.fn()  # one buffer, reused by every call
    a = cand.dequant_case("a", qw, reuse_output=False)
    assert a.correct and a.fn() is not a.fn()


def test_thread_limits_restore_the_environment():
    before = os.environ.get("LOWBITC_NUM_THREADS")
    with environment.thread_limits(1) as info:
        assert os.environ["LOWBITC_NUM_THREADS"] == "1" and info["lowbitc"] == 1
    assert os.environ.get("LOWBITC_NUM_THREADS") == before


def test_wait_for_load_returns_at_once_when_not_asked_or_timed_out():
    assert environment.wait_for_load(0.0, 100.0, print)["reached"] is True
    waited = environment.wait_for_load(1e-9, 0.0, print)  # an impossible load, no time to wait
    assert waited["waited_seconds"] < 5 and waited["max_load"] == 1e-9


def test_config_copies_cover_the_llc_and_stop_at_max_copies():
    cfg = runner.Config()
    llc = llc_bytes()
    assert cfg.copies(4 << 20) == min(64, copies_for(4 << 20, 4.0, llc))
    assert cfg.copies(64 << 20) * (64 << 20) >= 4 * llc or cfg.copies(64 << 20) == 64
    assert runner.Config(stream=0).copies(1) == 1 and runner.Config(max_copies=3).copies(1) == 3
    calls = []
    f = in_turn([lambda i=i: calls.append(i) for i in range(3)])
    for _ in range(7):
        f()
    assert calls == [0, 1, 2, 0, 1, 2, 0]


def test_config_rejects_bad_values():
    with pytest.raises(UserArgumentError, match="size"):
        runner.Config(size=0)
    with pytest.raises(UserArgumentError, match="threads"):
        runner.Config(threads=-1)
    with pytest.raises(UserArgumentError, match="burst_ms"):
        runner.Config(burst_ms=-1.0)


def test_bench_burst_option_reaches_the_config_and_the_command_line():
    from lowbitc.cli import build_parser
    from lowbitc.commands import bench

    args = build_parser(["bench"]).parse_args(["bench", "--burst-ms", "0", "--rows", "gemv_u4"])
    assert bench.config_from_args(args).burst_ms == 0.0
    assert "--burst-ms 0.0" in bench.command_line(args)
    args = build_parser(["bench"]).parse_args(["bench", "--rows", "gemv_u4"])
    assert bench.config_from_args(args).burst_ms == runner.Config().burst_ms == 5.0


def test_bench_reruns_itself_once_with_blas_threads_sleeping():
    from lowbitc.commands import bench

    argv = ["/bin/lowbitc", "bench", "--rows", "gemv_u4", "--rounds", "3"]
    again = bench.blas_sleep_argv(argv, {})
    assert again[0] == sys.executable and again[-5:] == argv[1:]
    # run as `python -c ...` it reaches the same CLI with the same arguments
    assert "from lowbitc.cli import main" in again[2]
    assert bench.blas_sleep_argv(argv, dict(bench.BLAS_SLEEP)) is None
    # OpenBLAS's and GNU OpenMP's (ggml, torch) workers both told to sleep soon; a value the
    # user set is kept, and one missing still re-runs
    assert set(bench.BLAS_SLEEP) == {"OPENBLAS_THREAD_TIMEOUT", "GOMP_SPINCOUNT"}
    assert bench.blas_sleep_argv(argv, {"OPENBLAS_THREAD_TIMEOUT": "4"}) is not None
    env = bench.blas_sleep_env({"GOMP_SPINCOUNT": "7", "PATH": "/bin"})
    assert env == {"OPENBLAS_THREAD_TIMEOUT": "4", "GOMP_SPINCOUNT": "7", "PATH": "/bin"}
