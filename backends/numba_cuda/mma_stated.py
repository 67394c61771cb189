"""Layouts a kernel states for the operands of a `dot` on tensor cores, checked against the
fragments the mma path uses.

A kernel may state a thread-value layout for a dot's operands (`load(..., layout=L)`,
`relayout(x, L)`; `infer-layouts` spreads it over the values tied to it). On the mma path the
thread that holds each element is fixed by the fragment layouts composed with the warp tiling
(`mma_dot.Tiling.layouts`: A and B per K step, repeated along K; C whole). A stated layout must
give every element the same owning threads (the order of a thread's registers is free: the
backend numbers them itself); otherwise the dot raises a BackendError at its source position
naming the operand, the first element whose owners differ, and both layouts.
"""

from __future__ import annotations

from collections import defaultdict

from lowbitc.errors import BackendError
from lowbitc.ir.layouts import parse_layout
from lowbitc.layout.tv import TVLayout


def owners(tv: TVLayout) -> dict[tuple, frozenset]:
    """{element coordinate: threads holding it}."""
    held: dict[tuple, set] = defaultdict(set)
    for t in range(tv.num_threads):
        for v in range(tv.num_values):
            held[tv(t, v)].add(t)
    return {c: frozenset(s) for c, s in held.items()}


def check_stated_layouts(op, tiling, threads: int) -> None:
    """Raise when a stated layout of the dot's operands or result conflicts with the mma
    fragments (see the module doc); nothing when none is stated."""
    a, b, c = op.operands
    la, lb, lc = tiling.layouts()
    kk = tiling.kind.k
    roles = (("a (the left operand)", a, la, 1), ("b (the right operand)", b, lb, 0),
             ("the accumulator", c, lc, None), ("the result", op.results[0], lc, None))
    for role, v, frag, kdim in roles:
        text = getattr(v.type, "layout", "")
        if not text:
            continue
        stated = parse_layout(text)
        where = f"cuda: dot on tensor cores: {role} has the stated layout {stated}"
        if stated.num_threads != threads:
            raise BackendError(f"{where} over {stated.num_threads} threads, but the block has "
                               f"{threads}", op.loc)
        want = owners(frag)
        per_step = f" per K step of {kk}" if kdim is not None else ""
        for coord, got in sorted(owners(stated).items()):
            key = list(coord)
            if kdim is not None:
                key[kdim] %= kk
            exp = want.get(tuple(key), frozenset())
            if got != exp:
                raise BackendError(
                    f"{where}, which gives element {list(coord)} to thread(s) "
                    f"{sorted(got)[:8]}; the mma fragments give it to {sorted(exp)[:8]} "
                    f"(fragment layout {frag}{per_step}, {tiling.WM} x {tiling.WN} warps). "
                    "State that layout or none.", op.loc)
