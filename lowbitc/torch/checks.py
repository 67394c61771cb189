"""Argument checks of the lowbitc torch ops, and the weight storage they check against:
int32 packed words `[N, ceil(K*bits/32)]`, or for u8/i8 the codes as uint8/int8 `[N, K]`.
Each failure is a UserArgumentError naming the op, the argument, what was expected and what
was given.
"""

from __future__ import annotations

import torch

from lowbitc import a8, formats
from lowbitc.errors import UserArgumentError
from lowbitc.ir.types import is_machine
from lowbitc.signature import words_for

ACTIVATIONS = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}
_MACHINE_STORAGE = {"u8": torch.uint8, "i8": torch.int8}


def storage_dtype(fmt: str) -> torch.dtype:
    """The torch dtype of a weight of format `fmt`: uint8/int8 for u8/i8, else int32 words."""
    return _MACHINE_STORAGE.get(fmt, torch.int32)


def storage_width(fmt: str, k: int) -> int:
    """Columns of a weight's storage for K codes per row."""
    return k if is_machine(fmt) else words_for(k, formats.lookup(fmt).bits)


def _fail(op: str, arg: str, want: str, got: object) -> UserArgumentError:
    return UserArgumentError(f"lowbitc::{op}: {arg}: expected {want}, got {got}")


def _check_tensor(op: str, name: str, t: object, dtypes: tuple, shape: tuple,
                  device: torch.device) -> None:
    if not isinstance(t, torch.Tensor):
        raise _fail(op, name, "a torch.Tensor", type(t).__name__)
    if t.dtype not in dtypes:
        raise _fail(op, name, " or ".join(str(d) for d in dtypes), t.dtype)
    if tuple(t.shape) != shape:
        raise _fail(op, name, f"shape {shape}", tuple(t.shape))
    if t.device != device:
        raise _fail(op, name, f"a tensor on {device} (like the others)", t.device)
    if not t.is_contiguous():
        raise _fail(op, name, "a contiguous tensor", f"strides {t.stride()} (call .contiguous())")


def check_weight(op: str, weight: torch.Tensor, scales: torch.Tensor,
                 zeros: torch.Tensor | None, fmt: str, group_size: int, k: int,
                 device: torch.device) -> int:
    """Check a weight's tensors and static arguments; returns N."""
    if not isinstance(fmt, str):
        raise _fail(op, "fmt", "a format name", repr(fmt))
    try:
        formats.lookup(fmt)
    except ValueError as e:
        raise _fail(op, "fmt", "a lowbitc format name", f"{fmt!r} ({e})") from None
    if group_size < 1:
        raise _fail(op, "group_size", "an int >= 1", group_size)
    if k < 0:
        raise _fail(op, "k", "an int >= 0", k)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise _fail(op, "weight", "a 2-D tensor [N, words]",
                    tuple(weight.shape) if isinstance(weight, torch.Tensor) else weight)
    n = weight.shape[0]
    _check_tensor(op, "weight", weight, (storage_dtype(fmt),), (n, storage_width(fmt, k)),
                  device)
    groups = (n, -(-k // group_size))
    _check_tensor(op, "scales", scales, (torch.float32,), groups, device)
    if zeros is not None:
        _check_tensor(op, "zeros", zeros, (torch.float32,), groups, device)
    return n


def check_matmul(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor,
                 zeros: torch.Tensor | None, fmt: str, group_size: int, k: int,
                 act: str = "f32") -> int:
    """Check lowbitc::matmul's arguments; returns N."""
    if act not in a8.ACTS:
        raise _fail("matmul", "act", " or ".join(map(repr, a8.ACTS)), repr(act))
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise _fail("matmul", "x", "a 2-D tensor [M, K]",
                    tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__)
    if x.dtype not in ACTIVATIONS:
        raise _fail("matmul", "x", "float32, float16 or bfloat16", x.dtype)
    if x.shape[1] != k:
        raise _fail("matmul", "x", f"K = {k} columns (the weight's in_features)",
                    f"shape {tuple(x.shape)}")
    if not x.is_contiguous():
        raise _fail("matmul", "x", "a contiguous tensor",
                    f"strides {x.stride()} (call .contiguous())")
    return check_weight("matmul", weight, scales, zeros, fmt, group_size, k, x.device)
