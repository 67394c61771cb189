"""Every examples/*.lbk kernel, run natively (LLVM) and in the reference interpreter, against
the numpy expectation in examples/run_examples.py, on odd shapes and several formats."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
_spec = importlib.util.spec_from_file_location("run_examples", EXAMPLES / "run_examples.py")
run_examples = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run_examples)

RUNNERS = {"llvm": run_examples.native, "interpreter": run_examples.interpreted}


def test_every_example_kernel_has_a_numpy_check():
    assert sorted(p.name for p in EXAMPLES.glob("*.lbk")) == sorted(run_examples.CASES)


@pytest.mark.parametrize("runner", sorted(RUNNERS))
@pytest.mark.parametrize(("N", "K", "params"), [
    (5, 100, {}),                      # partial last block, partial row tile
    (1, 31, {"BN": 1, "NB": 1}),       # one row, less than one block
    (9, 256, {"BN": 8, "NB": 2}),      # whole blocks and tiles
])
def test_q4_0_dequant(runner, N, K, params):
    got, want = run_examples.q4_0_dequant(RUNNERS[runner], np.random.default_rng(N * K), N, K,
                                          **params)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("runner", sorted(RUNNERS))
@pytest.mark.parametrize(("W", "N", "K", "group", "ZP"), [
    ("u4", 6, 90, 16, True),
    ("i3", 3, 70, 32, True),
    ("f6e3m2", 9, 65, 64, False),
    ("nf4", 1, 130, 128, True),
    ("b1", 4, 40, 7, False),           # groups that do not divide the tile
])
def test_dequant_silu(runner, W, N, K, group, ZP):
    got, want = run_examples.dequant_silu(RUNNERS[runner], np.random.default_rng(K), N, K,
                                          group, W=W, ZP=ZP)
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("runner", sorted(RUNNERS))
@pytest.mark.parametrize(("W", "N", "K", "group", "ZP"), [
    ("u4", 5, 70, 32, True),           # whole-word groups, a partial last group
    ("u3", 3, 45, 10, True),           # groups share words: programs update their own bits
    ("i4", 4, 50, 16, False),
    ("f4e2m1", 2, 64, 32, False),
    ("nf4", 3, 40, 16, False),
    ("f8e4m3fn", 1, 37, 8, False),
])
def test_quantize_rows(runner, W, N, K, group, ZP):
    got, want = run_examples.quantize_rows(RUNNERS[runner], np.random.default_rng(K), N, K,
                                           group, W=W, ZP=ZP)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("runner", sorted(RUNNERS))
@pytest.mark.parametrize(("W", "M", "N", "K", "group"), [
    ("u4", 5, 37, 70, 32),             # partial row tile, odd N, a partial last group
    ("i3", 17, 8, 64, 64),
    ("nf4", 1, 9, 40, 16),
])
def test_tc_gemm(runner, W, M, N, K, group):
    got, want = run_examples.tc_gemm(RUNNERS[runner], np.random.default_rng(K), M, N, K,
                                     group, W=W)
    # f32 sums of exact f16 products: K terms within K * 2^-24 of sum |x * w|
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=K * 2.0**-24 * 8)


def test_run_examples_script_reports_success(capsys):
    assert run_examples.main(["--formats", "u4"]) == 0
    out = capsys.readouterr().out
    assert "all examples match numpy" in out and "MISMATCH" not in out


def test_tutorial_tensor_core_kernel_is_the_example():
    """docs/tutorial.md section 7 writes examples/tc_gemm.lbk's kernel, word for word."""
    text = (EXAMPLES.parent / "docs" / "tutorial.md").read_text()
    block = text[text.index("# file: tc_gemm.lbk\n"):]
    block = block[block.index("kernel tc_gemm"):block.index("```")]
    example = (EXAMPLES / "tc_gemm.lbk").read_text()
    assert block == example[example.index("kernel tc_gemm"):]
