"""Conversion from CuTe layouts (thread, value) -> row-major tile index to TVLayouts
(the other direction is `TVLayout.to_cute`)."""

from __future__ import annotations

from lowbitc.errors import UserArgumentError
from lowbitc.layout import inttuple as it
from lowbitc.layout.layout import Layout
from lowbitc.layout.tv import TVLayout, _prod, _Work


def from_cute(layout: Layout, shape: tuple[int, ...]) -> TVLayout:
    """TVLayout of a CuTe layout (thread, value) -> row-major index into `shape`;
    stride-0 thread modes are replication."""
    try:
        shape = tuple(it.normalize(tuple(shape), "shape", minimum=1))
        if len(layout) != 2:
            raise ValueError("expected a rank-2 (thread, value) layout")
        dim_stride = [_prod(shape[i + 1:]) for i in range(len(shape))]
        w = _Work([[] for _ in shape], [], [], [])
        per_dim: list[list[tuple[int, int]]] = [[] for _ in shape]  # (stride, id)
        for part, lst in ((layout[0], w.spatial), (layout[1], w.local)):
            ids = []
            for s, d in zip(it.flatten(part.shape), it.flatten(part.stride), strict=False):
                if s == 1:
                    continue
                if d == 0:
                    if lst is w.local:
                        raise ValueError("a value mode with stride 0 repeats an element")
                    ids.append(-s)
                    continue
                while s > 1:
                    i = next((k for k, ds in enumerate(dim_stride) if d >= ds), None)
                    if i is None or d % dim_stride[i]:
                        raise ValueError(f"stride {d} does not fall on a dimension")
                    step = d // dim_stride[i]
                    if step >= shape[i]:
                        raise ValueError(f"stride {d} points outside the tile")
                    room = it.ceil_div(shape[i], step)
                    take = min(s, room)
                    if s % take or (take < s and shape[i] % step):
                        raise ValueError(f"mode {s}:{d} straddles a dimension unevenly")
                    w.sizes.append(take)
                    ids.append(len(w.sizes) - 1)
                    per_dim[i].append((d, len(w.sizes) - 1))
                    s, d = s // take, d * take
            lst.extend(reversed(ids))
        for i, items in enumerate(per_dim):
            expect = dim_stride[i]
            for d, m in sorted(items):
                if d != expect:
                    raise ValueError("not a bijection from (thread, value) onto the tile")
                expect = d * w.sizes[m]
            if expect != dim_stride[i] * shape[i]:
                raise ValueError("does not cover the tile")
            w.dims[i] = [m for _, m in sorted(items, reverse=True)]
        return w.build(shape)
    except ValueError as e:
        raise UserArgumentError(f"from_cute({layout}, {shape}): {e}") from None
