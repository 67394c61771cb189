"""Pictures of layouts: an ASCII grid (index per cell, or owner `T<thread>V<value>` for
thread-value layouts) and the same grid as a PNG coloured by thread."""

from __future__ import annotations

from lowbitc.errors import UserArgumentError
from lowbitc.layout.layout import Layout
from lowbitc.layout.swizzle import ComposedLayout
from lowbitc.layout.tv import TVLayout

MAX_CELLS = 1 << 16


def _grid_shape(obj) -> tuple[int, int]:
    if isinstance(obj, TVLayout):
        dims = obj.shape
    elif isinstance(obj, (Layout, ComposedLayout)):
        dims = tuple(obj[i].size() for i in range(len(obj)))
    else:
        raise UserArgumentError(
            f"layout picture: expected a Layout, swizzled layout or TVLayout, got {obj!r}")
    if len(dims) > 2:
        raise UserArgumentError(
            f"layout picture: {obj} has rank {len(dims)}; only rank 1 and 2 can be drawn")
    rows, cols = (1, dims[0]) if len(dims) == 1 else ((1, 1) if not dims else dims)
    if rows * cols > MAX_CELLS:
        raise UserArgumentError(
            f"layout picture: {obj} has {rows * cols} cells, more than {MAX_CELLS}")
    return rows, cols


def cells(obj) -> list[list[tuple[str, int]]]:
    """Per cell (label, colour key): the index for a layout, the owner for a TV layout."""
    rows, cols = _grid_shape(obj)
    rank = obj.rank if isinstance(obj, TVLayout) else len(obj)
    out = []
    for r in range(rows):
        row = []
        for c in range(cols):
            coord = (c,) if rank == 1 else ((r, c) if rank == 2 else ())
            if isinstance(obj, TVLayout):
                owners = obj.owners(*coord)
                threads = ",".join(str(t) for t, _ in owners)
                row.append((f"T{threads}V{owners[0][1]}", owners[0][0]))
            else:
                idx = obj(coord[0]) if rank == 1 else obj(*coord)
                row.append((str(idx), idx))
        out.append(row)
    return out


def ascii_picture(obj) -> str:
    """The layout printed as a boxed grid with row and column numbers."""
    grid = cells(obj)
    width = max(len(label) for row in grid for label, _ in row)
    width = max(width, len(str(len(grid[0]) - 1)))
    rule = "    " + "+" + "+".join("-" * (width + 2) for _ in grid[0]) + "+"
    lines = [str(obj), "    " + " " + " ".join(f" {c:>{width}} " for c in range(len(grid[0])))]
    for r, row in enumerate(grid):
        lines.append(rule)
        lines.append(f"{r:>3} |" + "|".join(f" {label:>{width}} " for label, _ in row) + "|")
    lines.append(rule)
    return "\n".join(lines)


def save_png(obj, path: str) -> None:
    """Draw the grid with matplotlib (Agg, no display); one colour per thread or index."""
    # matplotlib is an optional dependency (the `plot` extra), so it loads only when drawing
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    grid = cells(obj)
    rows, cols = len(grid), len(grid[0])
    keys = sorted({k for row in grid for _, k in row})
    rank_of = {k: i for i, k in enumerate(keys)}
    fig = Figure(figsize=(max(2.0, 0.75 * cols), max(1.5, 0.45 * rows + 0.6)), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    cmap = matplotlib.colormaps["tab20"]
    font = 7 if max(len(lbl) for row in grid for lbl, _ in row) > 5 else 8
    for r, row in enumerate(grid):
        for c, (label, key) in enumerate(row):
            red, green, blue, _ = cmap(rank_of[key] % 20)
            colour = (0.55 + 0.45 * red, 0.55 + 0.45 * green, 0.55 + 0.45 * blue)
            ax.add_patch(Rectangle((c, rows - 1 - r), 1, 1, facecolor=colour,
                                   edgecolor="black", linewidth=0.5))
            ax.text(c + 0.5, rows - 0.5 - r, label, ha="center", va="center", fontsize=font)
    ax.set_xlim(0, cols)
    ax.set_ylim(0, rows)
    ax.set_xticks([c + 0.5 for c in range(cols)], [str(c) for c in range(cols)], fontsize=7)
    ax.set_yticks([rows - 0.5 - r for r in range(rows)], [str(r) for r in range(rows)],
                  fontsize=7)
    ax.xaxis.tick_top()
    ax.set_aspect("auto")
    ax.set_title(str(obj), fontsize=8, pad=14)
    fig.tight_layout()
    fig.savefig(path, format="png")

