"""A packed load's window as a 2-D view, for the fused paths (fusion.py, axpy.py, lanes_dot.py).

The fused paths address codes as rows of one 2-D tensor: row n starts `n * strides[0]` words
(bytes for u8/i8) from the pointer and column c at word `(c >> 5) * bits`. A window of a
higher-rank tensor that indexes every leading dim but one (`k[t :+ G, h, :]` of token-major
KV pages: sizes [G, 0, D]) is such a 2-D tensor once linearized: its rows are `strides[i]`
apart for the kept dim i and start at the op's origin. `view` gives that tensor, the starts
(row 0, the window's first column) and whether the window is aligned and inside the tensor.
"""

from __future__ import annotations

from dataclasses import replace

from lowbitc.backends.llvm.handlers import Env, TensorArg
from lowbitc.ir.core import Op

W = 32  # codes per step of the fused paths


def kept(sizes) -> tuple[int, ...]:
    """The tile shape a window of `sizes` loads (indexed dims, size 0, dropped)."""
    return tuple(s for s in sizes if s)


def viewable(codes: Op) -> bool:
    """Whether the fused paths can read this codes load as a 2-D window: 2-D already, or
    linearized with exactly one kept leading dim and the last dim kept."""
    sizes = codes.attrs.sizes
    if len(sizes) == 2:
        return True
    return (getattr(codes.attrs, "linear", False) and sizes[-1] != 0
            and len(kept(sizes)) == 2)


def view(env: Env, codes: Op, t: TensorArg) -> tuple[TensorArg, list[str], str]:
    """(tensor, starts, ok) of a viewable codes load: for a 2-D load the tensor and starts
    as they are; for a higher-rank one the 2-D view described in the module docstring."""
    em = env.em
    sizes = codes.attrs.sizes
    n = len(sizes)
    starts = [env.get(v) for v in codes.operands[1:1 + n]]
    ok = em.val(f"icmp eq i64 {em.val(f'and i64 {starts[-1]}, {W - 1}')}, 0")
    for st, sz, dim in zip(starts, sizes, t.dims):
        end = em.val(f"add i64 {st}, {max(sz, 1)}")
        inb = em.val(f"and i1 {em.val(f'icmp sle i64 {end}, {dim}')}, "
                     f"{em.val(f'icmp sge i64 {st}, 0')}")
        ok = em.val(f"and i1 {ok}, {inb}")
    if n == 2:
        return t, starts, ok
    row = next(i for i, s in enumerate(sizes[:-1]) if s)
    origin = env.get(codes.operands[1 + n])
    strides = [env.get(v) for v in codes.operands[2 + n: 1 + 2 * n]]
    elem = "i8" if codes.opcode == "load" else "i32"
    ptr = em.val(f"getelementptr inbounds {elem}, ptr {t.ptr}, i64 {origin}")
    v = replace(t, ptr=ptr, dims=[str(sizes[row]), t.dims[-1]], strides=[strides[row], "1"])
    return v, ["0", starts[-1]], ok


def window_ok(em, t, starts: list[str], sizes, aligned: bool = True) -> str:
    """Whether a window lies inside the tensor (and, `aligned`, starts on a 32-code step)."""
    ok = em.val(f"icmp eq i64 {em.val(f'and i64 {starts[1]}, {W - 1}')}, 0") if aligned \
        else "true"
    for st, sz, dim in zip(starts, sizes, t.dims):
        end = em.val(f"add i64 {st}, {sz}")
        inb = em.val(f"and i1 {em.val(f'icmp sle i64 {end}, {dim}')}, "
                     f"{em.val(f'icmp sge i64 {st}, 0')}")
        ok = em.val(f"and i1 {ok}, {inb}")
    return ok
