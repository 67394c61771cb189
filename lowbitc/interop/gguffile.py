"""GGUF files (llama.cpp) through the `gguf` package's reader and writer.

Reading keeps each tensor's block bytes (`raw["blocks"]`) beside its exact lowbitc tensor, and
the file's scalar metadata, so `write(path, read(path))` reproduces the file. Weights are
[rows, row length] (GGUF's ne[1], ne[0]); tensors of other ranks stay float arrays or raw.
"""

from __future__ import annotations

import os

import numpy as np

from lowbitc.errors import UserArgumentError
from lowbitc.interop.base import Codec, Imported, register
from lowbitc.interop.ggml import BLOCK_TYPES, FLOAT_TYPES, ggml_to_qtensor
from lowbitc.interop.kquants import quantize_blocks

MAGIC = b"GGUF"
SUPPORTED = FLOAT_TYPES + tuple(BLOCK_TYPES)
METADATA = "__gguf_metadata__"  # read()'s extra entry: the file's key/value pairs


def _gguf():
    """The `gguf` package (the `interop` extra), imported on first use."""
    try:
        import gguf
    except ModuleNotFoundError:
        raise UserArgumentError("GGUF support needs the gguf package: pip install gguf") from None
    return gguf


def sniff(source) -> bool:
    if not isinstance(source, str | os.PathLike) or not os.path.isfile(source):
        return False
    with open(source, "rb") as f:
        return f.read(4) == MAGIC


def _reader(path: str):
    try:
        return _gguf().GGUFReader(path, "r")
    except UserArgumentError:
        raise
    except Exception as e:  # the package raises ValueError, struct/IndexError on bad files
        raise UserArgumentError(f"{path}: not a readable GGUF file "
                                f"({type(e).__name__}: {e})") from None


def _check_sizes(path: str, r) -> None:
    end = os.path.getsize(path)
    for t in r.tensors:
        if t.data_offset + t.n_bytes > end:
            raise UserArgumentError(f"{path}: truncated: tensor {t.name!r} needs bytes up to "
                                    f"{t.data_offset + t.n_bytes}, the file has {end}")


def _tensor(t, path: str) -> Imported:
    type_name = t.tensor_type.name
    if type_name not in SUPPORTED:
        raise UserArgumentError(f"{path}: tensor {t.name!r} has GGUF type {type_name}; lowbitc "
                                f"reads {', '.join(SUPPORTED)}")
    ne = [int(v) for v in t.shape]
    blocks = np.array(t.data).view(np.uint8).reshape(-1)  # a copy: the map closes with the file
    raw = {"blocks": blocks, "ne": ne, "type": type_name}
    if type_name in FLOAT_TYPES:
        return Imported(t.name, f"gguf:{type_name}", float_values(blocks, type_name, ne), raw)
    if len(ne) > 2 and any(v != 1 for v in ne[2:]):
        raise UserArgumentError(f"{path}: tensor {t.name!r} ({type_name}) has shape {ne}; "
                                "lowbitc reads quantized GGUF tensors of rank <= 2")
    k, n = ne[0], int(np.prod(ne[1:]))
    w = ggml_to_qtensor(type_name, blocks.reshape(n, -1), k)
    return Imported(t.name, f"gguf:{type_name}", w, raw, BLOCK_TYPES[type_name].group)


def float_values(blocks: np.ndarray, type_name: str, ne: list[int]) -> np.ndarray:
    """F32/F16/BF16 bytes as float32, shaped as GGUF's ne reversed."""
    if type_name == "BF16":
        w = (blocks.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    else:
        w = blocks.view(np.float32 if type_name == "F32" else np.float16).astype(np.float32)
    return w.reshape(ne[::-1])


def _metadata(r) -> dict:
    gguf = _gguf()
    keep = {}
    for name, f in r.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        if f.types and f.types[0] != gguf.GGUFValueType.ARRAY:
            keep[name] = (f.contents(), f.types[0])
    arch = r.fields.get("general.architecture")
    return {"arch": arch.contents() if arch is not None else "unknown", "kv": keep}


def read(path) -> dict[str, Imported]:
    """Every tensor of a GGUF file; nothing is returned unless all of them read."""
    path = str(path)
    r = _reader(path)
    _check_sizes(path, r)
    out = {t.name: _tensor(t, path) for t in r.tensors}
    out[METADATA] = Imported(METADATA, "gguf:metadata", np.zeros(0, np.float32),
                             _metadata(r))
    return out


def write(path: str, tensors: dict, arch: str | None = None) -> None:
    """Write `{name: Imported}` (as `read` returns, or from `to_gguf`) to a GGUF file."""
    gguf = _gguf()
    meta = tensors.get(METADATA)
    kv = meta.raw if meta is not None else {"arch": arch or "lowbitc", "kv": {}}
    w = gguf.GGUFWriter(str(path), arch or kv["arch"])
    for key, (value, vtype) in kv["kv"].items():
        w.add_key_value(key, value, vtype)
    for name, t in tensors.items():
        if name == METADATA:
            continue
        raw = t.raw
        qtype = gguf.GGMLQuantizationType[raw["type"]]
        rows = raw["ne"][::-1][:-1]  # uint8 [..., bytes per row]: the writer derives ne
        w.add_tensor(name, raw["blocks"].reshape(*rows, -1), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def to_gguf(name: str, weight: np.ndarray, type_name: str) -> Imported:
    """A float weight [N, K] (or any float tensor for F32/F16/BF16) as a GGUF tensor of
    `type_name` (blocks from gguf's quantizer, or lowbitc's for the K-quants and IQ4_NL)."""
    w = np.asarray(weight, np.float32)
    if type_name in FLOAT_TYPES:
        data = quantize_blocks(w.reshape(-1, w.shape[-1]), type_name) if type_name != "F32" \
            else w
    else:
        w2 = w.reshape(-1, w.shape[-1])
        data = quantize_blocks(w2, type_name)
    raw = {"blocks": data.view(np.uint8).reshape(-1), "ne": list(w.shape[::-1]),
           "type": type_name}
    if type_name in BLOCK_TYPES:
        n, k = w.reshape(-1, w.shape[-1]).shape
        qw = ggml_to_qtensor(type_name, data.reshape(n, -1), k)
        return Imported(name, f"gguf:{type_name}", qw, raw, BLOCK_TYPES[type_name].group)
    return Imported(name, f"gguf:{type_name}", float_values(raw["blocks"], type_name, raw["ne"]),
                    raw)


def inspect(path: str) -> list[dict]:
    """The tensor table from the header alone (no weight is decoded)."""
    r = _reader(path)
    _check_sizes(path, r)
    rows = []
    for t in r.tensors:
        name = t.tensor_type.name
        n = int(t.n_elements)
        group = BLOCK_TYPES[name].group if name in BLOCK_TYPES else None
        rows.append({"name": t.name, "shape": tuple(int(v) for v in t.shape[::-1]),
                     "format": f"gguf:{name}", "group": group, "bytes": int(t.n_bytes),
                     "bits": 8 * int(t.n_bytes) / n if n else 0.0})
    return rows


CODEC = register(Codec("gguf", sniff, read, write, inspect))
