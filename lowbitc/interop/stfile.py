"""Safetensors checkpoints (files or state dicts) as {layer: Imported}: shared by the GPTQ,
AWQ, compressed-tensors, bitsandbytes and HQQ codecs. Tensors that are not part of a quantized
layer come back as they are, so writing reproduces the whole file."""

from __future__ import annotations

import os
import sys

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from lowbitc.errors import UserArgumentError
from lowbitc.interop.base import Codec, Imported, register
from lowbitc.ir.types import numpy_dtype

METADATA = "__metadata__"


def load_state(source) -> tuple[dict, dict]:
    """(arrays by name, metadata) of a safetensors path or a {name: array/tensor} dict."""
    if isinstance(source, dict):
        return {k: _numpy(v) for k, v in source.items()}, {}
    path = str(source)
    try:
        with safe_open(path, framework="numpy") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as e:  # safetensors raises its own error types on bad headers
        raise UserArgumentError(f"{path}: not a readable safetensors file "
                                f"({type(e).__name__}: {e})") from None


def _numpy(v) -> np.ndarray:
    """A numpy array of a numpy array or a torch tensor (bfloat16 as ml_dtypes' bfloat16)."""
    if isinstance(v, np.ndarray):
        return v
    t = v.detach().cpu()
    torch = sys.modules["torch"]  # v is a torch tensor, so torch is loaded
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(numpy_dtype("bf16"))
    return t.numpy()


def is_safetensors(source) -> bool:
    if isinstance(source, dict):
        return True
    if not isinstance(source, str | os.PathLike) or not os.path.isfile(source):
        return False
    with open(source, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def prefixes(state: dict, suffix: str) -> list[str]:
    return [k[: -len(suffix)] for k in state if k.endswith(suffix)]


def words_u32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(np.uint32)


def state_key(name: str, part: str) -> str:
    """The state-dict key of a layer's part ("" is the layer's own key)."""
    return f"{name}.{part}" if part else name


def read_state(source, build, suffix: str, parts) -> dict[str, Imported]:
    """Every quantized layer (found by `suffix`) through `build(name, parts)`; other tensors
    come back as float arrays (raw kept), so writing reproduces the whole file."""
    state, meta = load_state(source)
    out = {}
    taken = set()
    for name in prefixes(state, suffix):
        mine = {p: state[state_key(name, p)] for p in parts if state_key(name, p) in state}
        taken.update(state_key(name, p) for p in mine)
        out[name] = build(name, mine)
    for key, a in state.items():
        if key not in taken:
            out[key] = Imported(key, "tensor", a, {"": a})
    if meta:
        out[METADATA] = Imported(METADATA, "metadata", np.zeros(0), {"meta": meta})
    return out


def write_state(path: str, tensors: dict) -> None:
    """The raw arrays of `tensors` (as read) back to one safetensors file."""
    flat, meta = {}, None
    for name, t in tensors.items():
        if name == METADATA:
            meta = t.raw["meta"]
            continue
        for part, a in t.raw.items():
            flat[state_key(name, part)] = np.ascontiguousarray(a)
    save_file(flat, str(path), metadata=meta)


def keys_of(path) -> list[str]:
    return list(shapes_of(path))


def shapes_of(source) -> dict[str, tuple[int, ...]]:
    """{key: shape} of a state dict or a safetensors file's header ({} if unreadable)."""
    if isinstance(source, dict):
        return {k: tuple(np.shape(v)) for k, v in source.items()}
    try:
        with safe_open(str(source), framework="numpy") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception:  # not safetensors: the sniffers answer no
        return {}


def state_codec(name: str, marker: str, build, parts, suffix: str | None = None) -> Codec:
    """Register a safetensors codec whose layers are found by keys ending in `suffix`
    (default: `marker`) and whose files are recognised by a key containing `marker`."""
    suffix = suffix or marker

    def sniff(source) -> bool:
        return is_safetensors(source) and any(marker in k for k in shapes_of(source))

    def read(source) -> dict[str, Imported]:
        return read_state(source, build, suffix, parts)

    return register(Codec(name, sniff, read, write_state))

