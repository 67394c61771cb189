"""llama.cpp's tensor names (`blk.0.attn_q.weight`) back to a Hugging Face model's own
(`encoder.layer.0.attention.self.query.weight`), for GGUF files written from HF models.

The map is the `gguf` package's own (`gguf.get_tensor_name_map(arch, blocks)`, the table
llama.cpp's converter writes with), asked for each of the model's state-dict names. llama.cpp's
converter also reorders the rows of Llama's q/k projections for its rotary embedding; those
rows are put back (an exact row permutation of the quantized tensor), as transformers' own GGUF
loader does.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable

import numpy as np

from lowbitc.interop.base import Imported
from lowbitc.interop.gguffile import METADATA, _gguf
from lowbitc.quant import QTensor

SUFFIXES = (".weight", ".bias")
# arch -> the metadata keys giving the head counts of attn_q and attn_k (rows llama.cpp permuted)
ROPE_PERMUTED = {"llama": {"attn_q": "head_count", "attn_k": "head_count_kv"}}


def _block_count(tensors: dict[str, Imported], arch: str) -> int:
    kv = tensors[METADATA].raw["kv"]
    if f"{arch}.block_count" in kv:
        return int(kv[f"{arch}.block_count"][0])
    blocks = [int(m.group(1)) for n in tensors if (m := re.match(r"blk\.(\d+)\.", n))]
    return max(blocks, default=-1) + 1


def gguf_to_model(tensors: dict[str, Imported], model_names: Iterable[str]) -> dict[str, str]:
    """{GGUF name: model name} for the file's tensors whose llama.cpp name the model spells its
    own way (empty when the file is not GGUF or its architecture is unknown to `gguf`)."""
    meta = tensors.get(METADATA)
    if meta is None:
        return {}
    gguf = _gguf()
    arch = meta.raw["arch"]
    archs = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}
    if arch not in archs:
        return {}
    table = gguf.get_tensor_name_map(archs[arch], _block_count(tensors, arch))
    out: dict[str, str] = {}
    for name in model_names:
        for candidate in (name, name.partition(".")[2]):  # e.g. without "bert." / "model."
            g = table.get_name(candidate, try_suffixes=SUFFIXES) if candidate else None
            if g is not None:
                out.setdefault(g, name)
                break
    return {g: m for g, m in out.items() if g in tensors and g != m}


def _rope_rows(n: int, heads: int) -> np.ndarray:
    """The rows of the HF weight in llama.cpp's order is hf[perm]; returns argsort(perm)."""
    perm = np.arange(n).reshape(heads, 2, n // heads // 2).swapaxes(1, 2).reshape(-1)
    return np.argsort(perm)


def _take_rows(t: Imported, rows: np.ndarray) -> Imported:
    w = t.weight
    if isinstance(w, QTensor):
        parts = {"codes": w.codes[rows], "scales": w.scales[rows]}
        if w.zeros is not None:
            parts["zeros"] = w.zeros[rows]
        if getattr(w, "offsets", None) is not None:
            parts["offsets"] = w.offsets[rows]
        w = dataclasses.replace(w, **parts)
    else:
        w = np.ascontiguousarray(np.asarray(w)[rows])
    raw = dict(t.raw)
    if "blocks" in raw:
        raw["blocks"] = raw["blocks"].reshape(len(rows), -1)[rows].reshape(-1)
    return dataclasses.replace(t, weight=w, raw=raw)


def rename_for(tensors: dict[str, Imported], model_names: Iterable[str]) -> dict[str, Imported]:
    """`tensors` with llama.cpp names replaced by the model's (see gguf_to_model), and the
    rows of Llama's q/k projections back in the HF order. Other dicts come back unchanged."""
    names = gguf_to_model(tensors, model_names)
    if not names:
        return tensors
    arch = tensors[METADATA].raw["arch"]
    kv = tensors[METADATA].raw["kv"]
    out = {}
    for name, t in tensors.items():
        if name in names:
            kind = name.split(".")[2] if name.startswith("blk.") else ""
            heads_key = ROPE_PERMUTED.get(arch, {}).get(kind)
            if heads_key is not None:
                heads = int(kv.get(f"{arch}.attention.{heads_key}",
                                   kv[f"{arch}.attention.head_count"])[0])
                t = _take_rows(t, _rope_rows(t.shape[0], heads))
            name = names[name]
            t = dataclasses.replace(t, name=name)
        out[name] = t
    return out
