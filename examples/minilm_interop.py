"""all-MiniLM-L6-v2 written to other tools' formats and run from them with lowbitc.

Each linear weight goes to a GGUF file (the `gguf` package's writer) at Q8_0, Q6_K, Q4_K, Q4_0
and IQ4_NL (blocks from lowbitc's quantizers where `gguf` has none; rows of 384 values, which
the K-quants' 256-value blocks do not divide, take llama.cpp's fallback type), and to a
GPTQ-layout safetensors file (4 bits, group 128, integer zero points). Every other parameter
is stored as F32. The files are loaded back into a fresh float model with
`load_pretrained_quantized` and the mean-pooled sentence embeddings compared with fp32.

    python examples/minilm_interop.py [--sentences 16] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import minilm_quantize as mq  # noqa: E402

from lowbitc.interop import gptq  # noqa: E402
from lowbitc.interop.gguffile import to_gguf, write  # noqa: E402
from lowbitc.interop.kquants import type_for  # noqa: E402
from lowbitc.torch import QuantLinear, load_pretrained_quantized  # noqa: E402

GGUF_TYPES = ("Q8_0", "Q6_K", "Q4_K", "Q4_0", "IQ4_NL")
GOALS = {"Q8_0": 0.999, "Q4_K": 0.97}


def linear_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def write_gguf(model: nn.Module, type_name: str, path: str) -> dict[str, int]:
    """Every parameter to `path`; returns how many weights each GGUF type got."""
    linears = {f"{n}.weight" for n in linear_names(model)}
    tensors, counts = {}, {}
    for name, p in model.named_parameters():
        w = p.detach().numpy()
        ty = type_for(type_name, w.shape[-1]) if name in linears else "F32"
        tensors[name] = to_gguf(name, w, ty)
        if name in linears:
            counts[ty] = counts.get(ty, 0) + w.size
    write(path, tensors, arch="bert")
    return counts


def write_gptq(model: nn.Module, path: str, bits: int = 4, group: int = 128) -> None:
    linears = set(linear_names(model))
    state = {}
    for name, p in model.named_parameters():
        owner, _, leaf = name.rpartition(".")
        if owner in linears and leaf == "weight":
            parts = gptq.gptq_parts(gptq.gptq_quantize(p.detach().numpy(), bits, group))
            state.update({f"{owner}.{k}": v for k, v in parts.items()})
        else:
            state[name] = p.detach().numpy()
    save_file(state, path)


def evaluate(sentences=mq.SENTENCES, types=GGUF_TYPES, gptq_file: bool = True) -> list[dict]:
    model, tokenizer = mq.load_minilm()
    batch = tokenizer(list(sentences), padding=True, truncation=True, return_tensors="pt")
    ref = mq.embed(model, batch)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        jobs = [(t, f"{tmp}/{t}.gguf") for t in types]
        if gptq_file:
            jobs.append(("GPTQ-4bit-g128", f"{tmp}/gptq.safetensors"))
        for label, path in jobs:
            if label.startswith("GPTQ"):
                write_gptq(model, path)
                counts = {"gptq u4": 1}
            else:
                counts = write_gguf(model, label, path)
            fresh, _ = mq.load_minilm()
            load_pretrained_quantized(fresh, path)
            layers = sum(isinstance(m, QuantLinear) for m in fresh.modules())
            cos = torch.nn.functional.cosine_similarity(mq.embed(fresh, batch), ref, dim=-1)
            total = sum(counts.values())
            share = {k: round(v / total, 3) for k, v in counts.items()}
            rows.append({"format": label, "cosine_mean": float(cos.mean()),
                         "cosine_min": float(cos.min()), "layers": layers,
                         "file_bytes": Path(path).stat().st_size, "types": share})
    return rows


def print_table(rows: list[dict], sentences: int) -> None:
    print(f"all-MiniLM-L6-v2, {sentences} sentences: written, loaded back, cosine vs fp32")
    print(f"{'format':15} {'cos mean':>9} {'cos min':>9} {'file MB':>8}  weights by type")
    for r in rows:
        goal = GOALS.get(r["format"])
        mark = "" if goal is None else f"  (goal >= {goal}: " + (
            "ok)" if r["cosine_mean"] >= goal else "MISSED)")
        print(f"{r['format']:15} {r['cosine_mean']:9.5f} {r['cosine_min']:9.5f} "
              f"{r['file_bytes'] / 1e6:8.2f}  {r['types']}{mark}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sentences", type=int, default=len(mq.SENTENCES))
    ap.add_argument("--json", help="also write the rows to this JSON file")
    args = ap.parse_args(argv)
    sentences = mq.SENTENCES[: max(1, args.sentences)]
    rows = evaluate(sentences)
    print_table(rows, len(sentences))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
