"""all-MiniLM-L6-v2 with its self-attention keys and values through lowbitc's quantized KV
cache (lowbitc.kv.QuantKVCache + torch.ops.lowbitc.attention_decode) against fp32.

Every layer's attention becomes `lowbitc.torch.quantized_kv_attention` (registered with
transformers' attention interface): each sentence's K and V are appended to a cache (KIVI
layout: keys per channel over groups of `group` tokens, values per token over groups of
`group` channels), all of it quantized (an encoder has no later tokens: residual 0, flush),
and the queries attend over the packed cache. Prints the mean cosine similarity of the
sentence embeddings against the fp32 model for K/V at 8, 4 and 2 bits.

    python examples/minilm_kv.py [--sentences 16] [--json out.json]
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402

import torch  # noqa: E402
from transformers import AttentionInterface  # noqa: E402
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from minilm_quantize import SENTENCES, embed, load_minilm  # noqa: E402

from lowbitc.torch import quantized_kv_attention  # noqa: E402

# (label, K format, V format, extra cache arguments)
SETTINGS = (("u8", "u8", "u8", {}), ("u4", "u4", "u4", {}), ("u2 KIVI", "u2", "u2", {}),
            ("u2 + MiKV u8 for 20%", "u2", "u2",
             {"important_dtype_k": "u8", "important_dtype_v": "u8"}))
GOALS = {"u4": 0.99, "u2 KIVI": 0.95}


def evaluate(sentences, settings=SETTINGS, group: int = 16) -> list[dict]:
    model, tokenizer = load_minilm()
    batch = tokenizer(list(sentences), padding=True, return_tensors="pt")
    model.set_attn_implementation("eager")
    ref = embed(model, batch)
    rows = []
    for label, fk, fv, extra in settings:
        name = f"lowbitc_kv_{fk}_{fv}_{len(rows)}"
        AttentionInterface.register(name, quantized_kv_attention(
            dtype_k=fk, dtype_v=fv, group=group, residual=0, **extra))
        AttentionMaskInterface.register(name, sdpa_mask)  # boolean padding masks
        model.set_attn_implementation(name)
        got = embed(model, batch)
        cos = torch.nn.functional.cosine_similarity(got, ref, dim=-1)
        rows.append({"kv": label, "dtype_k": fk, "dtype_v": fv, "group": group,
                     "cosine_mean": round(float(cos.mean()), 5),
                     "cosine_min": round(float(cos.min()), 5)})
    model.set_attn_implementation("eager")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sentences", type=int, default=16)
    ap.add_argument("--group", type=int, default=16)
    ap.add_argument("--json")
    args = ap.parse_args()
    rows = evaluate(SENTENCES[:args.sentences], group=args.group)
    for r in rows:
        goal = GOALS.get(r["kv"])
        print(f"{r['kv']:28s} cosine mean {r['cosine_mean']:.5f} min {r['cosine_min']:.5f}"
              + (f" (goal >= {goal})" if goal else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
