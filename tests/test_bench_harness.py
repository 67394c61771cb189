"""Functional checks of the benchmark harness and baselines (no timing assertions)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root

from benchmarks import baselines, harness, peer_ggml  # noqa: E402
from benchmarks import candidates as cand  # noqa: E402
from benchmarks.peer_ggml import GGML_TYPES  # noqa: E402
from lowbitc.backends.llvm.digest import digest  # noqa: E402


def _counter():
    calls = []
    return calls, lambda: calls.append(1)


def test_timeit_counts_runs_and_orders_percentiles():
    calls, fn = _counter()
    stats = harness.timeit(fn, warmup=2, repeat=7)
    assert stats["runs"] >= 7
    assert stats["p10"] <= stats["median"] <= stats["p90"]
    assert stats["number"] >= 1
    assert len(calls) >= 2 + 7 * stats["number"]


def test_timeit_min_time_extends_runs():
    stats = harness.timeit(lambda: sum(range(2000)), warmup=0, repeat=1, min_time=0.02)
    assert stats["total"] >= 0.02


def test_timeit_rejects_bad_arguments():
    with pytest.raises(ValueError, match="repeat"):
        harness.timeit(lambda: None, repeat=0)


def test_interleaved_calls_every_candidate_in_every_round():
    order: list[str] = []
    cands = {name: (lambda n=name: order.append(n)) for name in ("a", "b", "c")}
    medians = harness.interleaved(cands, rounds=6, warmup=0)
    assert set(medians) == {"a", "b", "c"} and all(v >= 0 for v in medians.values())
    order.clear()
    stats = harness.interleaved_stats(cands, rounds=4, warmup=1)
    for name in "abc":
        assert stats[name]["runs"] == 4
        # one warmup call, one calibration call, then `number` calls in each of 4 rounds
        assert order.count(name) == 2 + 4 * stats[name]["number"]


def test_interleaved_order_changes_each_candidates_predecessor():
    """A rotation would keep every candidate's predecessor fixed (what one library leaves
    behind would always land on the same next one); the rounds' orders vary it, the same
    orders in every run of a seed."""
    def orders(seed: int) -> list[list[str]]:
        calls: list[str] = []
        cands = {name: (lambda n=name: calls.append(n)) for name in "abcd"}
        stats = harness.interleaved_stats(cands, rounds=24, warmup=0, min_run=0.0, seed=seed)
        assert all(s["number"] == 1 and s["runs"] == 24 for s in stats.values())
        runs = calls[4:]  # after each candidate's calibration call, one call per sample
        return [runs[i:i + 4] for i in range(0, len(runs), 4)]

    rounds = orders(0)
    assert all(sorted(r) == list("abcd") for r in rounds)
    for name in "abcd":
        before = {r[r.index(name) - 1] for r in rounds if r.index(name) > 0}
        assert len(before) == 3, (name, before)  # every other candidate precedes it sometimes
    assert orders(0) == rounds and orders(1) != rounds


def test_interleaved_samples_are_bursts_of_at_least_min_run():
    clock = {"t": 0.0}

    def fake_time() -> float:
        return clock["t"]

    def call(cost: float):
        def run() -> None:
            clock["t"] += cost
        return run

    cands = {"fast": call(1e-4), "slow": call(3e-3)}
    real = harness.time.perf_counter
    harness.time.perf_counter = fake_time
    try:
        stats = harness.interleaved_stats(cands, rounds=3, warmup=0, min_run=5e-3)
        single = harness.interleaved_stats(cands, rounds=3, warmup=0, min_run=0.0)
    finally:
        harness.time.perf_counter = real
    # a 5 ms burst is 50 calls of 0.1 ms and 2 calls of 3 ms; per-call medians unchanged
    assert (stats["fast"]["number"], stats["slow"]["number"]) == (50, 2)
    assert stats["fast"]["median"] == pytest.approx(1e-4)
    assert stats["slow"]["median"] == pytest.approx(3e-3)
    assert single["fast"]["number"] == single["slow"]["number"] == 1
    with pytest.raises(ValueError, match="min_run"):
        harness.interleaved_stats(cands, rounds=1, min_run=-1.0)


def test_summarize_percentiles():
    s = harness.summarize([float(i) for i in range(1, 102)])
    assert (s["p10"], s["median"], s["p90"], s["runs"]) == (11.0, 51.0, 91.0, 101)


def test_machine_info_has_the_facts_a_result_needs():
    info = harness.machine_info()
    keys = ("cpu_model", "cpu_count", "cpu_flags", "numpy_blas", "versions", "load_average")
    for key in keys:
        assert key in info
    assert info["versions"]["numpy"] == np.__version__
    json.dumps(info)  # serialisable as is


def test_write_json_round_trips_numpy_values(tmp_path):
    path = harness.write_json(
        tmp_path / "sub" / "r.json", {"x": np.float32(1.5), "a": np.arange(3), "n": np.int64(4)}
    )
    assert json.loads(path.read_text()) == {"x": 1.5, "a": [0, 1, 2], "n": 4}
    with pytest.raises(TypeError, match="cannot serialise"):
        harness.write_json(tmp_path / "bad.json", {"f": object()})


def test_copy_baseline_copies_every_byte():
    for threads in (1, 2, 3):
        base = baselines.copy_baseline(nbytes=1 << 16, threads=threads)
        base.fn()
        assert base.bytes_moved == 2 * (1 << 16)
    assert baselines.copy_bandwidth(nbytes=1 << 20, threads=2, repeat=2) > 0
    bw = baselines.copy_bandwidths(nbytes=1 << 20, repeat=2)
    assert bw["best"] == max(bw["1_thread"], bw["2_threads"]) > 0


def test_read_baseline_reads_every_byte_once():
    for threads, nbytes in ((1, 1 << 16), (2, 5 << 17), (3, (3 << 20) + 8 * 13)):
        base = baselines.read_baseline(nbytes=nbytes, threads=threads)
        words = base.data["words"]
        before = base.fn()
        assert words.nbytes == nbytes and before == digest(words)
        words[-1] += 1  # the last word is read too (and every word: test_repack_cache.py)
        assert base.fn() != before
        assert base.bytes_moved == nbytes and base.name == f"read_{threads}t"
    with pytest.raises(ValueError, match="read_baseline"):
        baselines.read_baseline(nbytes=100)


def test_numpy_gemm_baseline_computes_x_wt():
    base = baselines.numpy_gemm(3, 40, 17)
    x, w = base.data["x"], base.data["w"]
    np.testing.assert_allclose(base.fn(), x @ w.T, rtol=1e-5)
    assert base.flops == 2 * 3 * 40 * 17
    assert baselines.numpy_gemv(40, 17).fn().shape == (1, 17)
    json.dumps(base.info)


@pytest.mark.torch
def test_torch_int4_baseline_matches_its_dequantized_weights():
    torch = pytest.importorskip("torch", reason="torch is not installed")
    base = baselines.torch_int4_gemv(256, 48, M=2, group_size=128)
    codes, sz, x = base.data["codes"], base.data["scales_zeros"], base.data["x"]
    scale = sz[..., 0].float().T.repeat_interleave(128, dim=1)
    zero = sz[..., 1].float().T.repeat_interleave(128, dim=1)
    expected = x.float() @ ((codes.float() - 8) * scale + zero).T
    got = base.fn().float()
    assert got.shape == (2, 48)
    torch.testing.assert_close(got, expected, rtol=2e-2, atol=2e-2)
    with pytest.raises(ValueError, match="multiple of group_size"):
        baselines.torch_int4_gemv(200, 48)


@pytest.mark.parametrize("qtype", ["q4_K", "q4_0", "q8_0", "q2_K"])
def test_ggml_peer_computes_x_wt_with_its_own_blocks(qtype):
    """llama.cpp's mul_mat (ggml-python, the bench extra) on ggml-quantized weights equals
    x @ W.T with those blocks dequantized by gguf, to int8 activation rounding; q4 types run
    from the repacked buffer; every weight of the rotation gives the same result."""
    pytest.importorskip("ggml", reason="ggml-python (the bench extra) is not installed")
    w = cand.weights(64, 512, seed=3)
    x = cand.activations(5, 512, seed=4)
    t = cand.ggml_case(w, x, qtype, copies=2)
    assert t.check["ok"], t.check
    assert 0 < t.check["max_rel_error"] <= cand.A8_TOLERANCE
    assert t.info["repacked"] == (qtype in ("q4_K", "q4_0"))
    assert t.weight_bytes == 64 * 512 * GGML_TYPES[qtype][1] / 8
    first = t.fn()  # the rotation's two weights
    second = t.fn()
    assert first == second == 0  # GGML_STATUS_SUCCESS
    # the check can fail: another weight's blocks are far from this product
    b = peer_ggml.ggml_gemm(w, x, qtype)
    other = np.asarray(b.data["y"](), dtype=np.float64)
    wrong = x.astype(np.float64) @ (w[::-1].astype(np.float64)).T
    assert not cand._compare(other, wrong, cand.A8_TOLERANCE)["ok"]


def test_ggml_peer_rejects_an_unknown_type():
    pytest.importorskip("ggml", reason="ggml-python (the bench extra) is not installed")
    with pytest.raises(ValueError, match="qtype: expected one of"):
        peer_ggml.ggml_gemm(np.zeros((8, 256), np.float32), np.zeros((1, 256), np.float32), "q5_1")


def test_interleaved_reports_the_cpu_per_wall_second(monkeypatch):
    """cpu_per_wall: the process's CPU time over the wall time of a candidate's samples (a
    clock that advances 1 ms per call; a call that spins on two threads uses 2 ms of CPU,
    one that sleeps none)."""
    clock = {"wall": 0.0, "cpu": 0.0}

    def call(cpu: float):
        def run():
            clock["wall"] += 1e-3
            clock["cpu"] += cpu
        return run

    fake = type("Clock", (), {"perf_counter": staticmethod(lambda: clock["wall"]),
                              "process_time": staticmethod(lambda: clock["cpu"])})
    monkeypatch.setattr(harness, "time", fake)
    stats = harness.interleaved_stats({"two": call(2e-3), "nap": call(0.0)}, rounds=3,
                                      warmup=0)
    assert stats["two"]["cpu_per_wall"] == pytest.approx(2.0)
    assert stats["nap"]["cpu_per_wall"] == 0.0
