"""benchmarks/bench_cuda.py without a GPU: a clear message and status 2, no traceback; the
int4 operands it gives torch's kernel reproduce the QTensor's weight."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lowbitc.quant import quantize

B = pytest.importorskip("benchmarks.bench_cuda")
ROOT = Path(__file__).resolve().parents[1]


def test_without_a_gpu_it_says_why_and_exits_2(tmp_path):
    if B.gpu_missing() is None:
        pytest.skip("this machine has a GPU: the benchmark would run")
    out = tmp_path / "cuda.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_cuda", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "bench_cuda: nothing timed:" in proc.stderr and "sm_80" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout and not out.exists()


@pytest.mark.parametrize("zero_point", [True, False])
def test_int4pack_inputs_reproduce_the_weight(zero_point):
    w = np.random.default_rng(3).standard_normal((24, 320)).astype(np.float32)
    qw = quantize(w, "u4", 64, zero_point=zero_point)
    pairs, sz = B.int4pack_inputs(qw)
    assert pairs.dtype == np.uint8 and pairs.shape == (24, 160) and sz.shape == (5, 24, 2)
    np.testing.assert_allclose(B.int4pack_dequantize(pairs, sz, 64), qw.dequantize(),
                               rtol=1e-6, atol=1e-6)


def test_int4pack_inputs_reject_other_formats():
    qw = quantize(np.ones((2, 64), np.float32), "u3", 32)
    with pytest.raises(ValueError, match="u4 weight"):
        B.int4pack_inputs(qw)


def test_bench_weight_runs_its_candidates_on_cpu_tensors():
    """The GPU benchmark's code path with device="cpu": rows, times, errors recorded, no crash
    (torch's int4 op takes other inputs on the CPU: recorded as an error, not raised)."""
    rows = B.bench_weight(128, "u4", (1, 3), 2, np.random.default_rng(0), device="cpu")
    assert [r["M"] for r in rows] == [1, 3]
    for r in rows:
        assert {"lowbitc", "torch_f16"} <= set(r["times"]) and r["times"]["lowbitc"]["median"] > 0
        assert r["lowbitc_path"] == "lowbitc QuantLinear (cpu tensors)"
        # f16 outputs: within an f16 ulp (2^-10) of the largest |y| for both
        assert r["rel_error"]["lowbitc"] < 2**-10 and r["rel_error"]["torch_f16"] < 2**-10
        assert set(r["speedup"]) == set(r["times"]) - {"lowbitc"}
        assert "torch_int4pack_mm" in r["times"] or any("torch_int4pack_mm" in e
                                                          for e in r["errors"])
