"""Which dots and stores take the fused dequantization paths (backends/llvm/fusion.py, panel.py):
the tree of elementwise ops over one load of packed codes, found by plan_fusion and
plan_store_fusion, and the constants those paths are built around."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from lowbitc.backends.llvm import byte_window, fused_view, row_scale, row_tables
from lowbitc.backends.llvm.decode import code_tables
from lowbitc.explain import note
from lowbitc.ir.core import Op, Region, Value
from lowbitc.ir.opdefs import ELEMENTWISE
from lowbitc.ir.types import TileType, is_float

W = 32  # codes per step: every 32 codes of a row are exactly `bits` whole words
MAX_ROWS = 8  # rows of `a` that share one decoded weight vector (vector accumulators)


def acc_lanes(rows: int) -> int:
    """Accumulator width per row: wide (independent chains) for one or two rows, narrow enough
    for every row's accumulator to stay in a register when more rows share the weights."""
    return 32 if rows <= 2 else 16 if rows <= 4 else 8


FUSIBLE = ELEMENTWISE | {"cast", "bitcast", "where", "lut"}
BYTE_CODES = ("u8", "i8")  # machine integers whose loads the fused paths read like codes


def reads_codes(op: Op) -> bool:
    """Whether `op` is the codes leaf of a fused tree: a load_codes, or a 2-D load of 8-bit
    machine integers (read 32 bytes at a time and widened, like 8-bit codes)."""
    t = op.results[0].type if op.results else None
    return op.opcode == "load_codes" or (
        op.opcode == "load" and isinstance(t, TileType) and t.dtype in BYTE_CODES
        and len(op.attrs.sizes) == 2)


# E = core * S (+ T) that is a row table (row_tables.py) whole: the row table is made of core
# only and S, T go to the row scale (each row's sum scaled once per window, so a carried sum
# stays carried; matmul_mix.lbk's flat GEMV, M = 1: 0.93x the nested loops' time streamed,
# docs/performance.md)
SCALE_OUTSIDE_TABLES = True
# a scale constant along each step of W codes (GGUF Q4_0's d per block of 32) multiplies each
# step's sum of products, not every weight (row_scale.step), for dots of up to STEP_SCALE_ROWS
# rows of `a`: a step then costs 3 vector ops per row of `a` (a multiply and an FMA of the
# halves, an FMA by the scale) against 2 multiplies by the scale shared by the rows and 2 FMAs
# per row. Q4_0's user GEMV (M = 1, Zen 4, 2 threads, streamed): 0.82x the time; M = 2 0.96x;
# M = 4 1.0-1.08x
STEP_SCALE = True
STEP_SCALE_ROWS = 2


@dataclass
class Plan:
    dot: Op  # the consumer: a dot (weights transposed) or a store
    transpose: Op | None
    codes: Op  # the load_codes leaf
    tree: list[Op]  # E's ops in program order (load_codes excluded)
    deferred: list[Op] = field(default_factory=list)  # everything skipped until the consumer
    root: Value | None = None  # E itself
    tables: dict = field(default_factory=dict)  # value id -> its value for every code (decode.py)
    # E = core * 2^k (a constant): the register dot sums core * a and scales each sum once
    core: Value | None = None
    factor: float = 1.0
    # E = core * S (+ or - T), S and T f32 leaves constant along K (a row's scale and offset):
    # each row's sum is scaled once per window, T times the sum of the activations added,
    # instead of every weight (the register dot; others evaluate E); offset_sign: +1 or -1
    scale: Value | None = None
    offset: Value | None = None
    offset_sign: float = 1.0
    # E = core * S (through reshapes), S constant along each step of W codes but not along
    # the window (a scale per block of 32 codes, several blocks a window): each step's sum is
    # scaled once (row_scale.step); step_space: the shape the product is computed in
    step_scale: Value | None = None
    step_space: tuple[int, ...] = ()
    fold: tuple[Value, Value, Value] | None = None  # (Y, U, V): see `fold`
    # codes of a byte window (byte_window.py): the (load, view) the codes leaf reads through
    chain: tuple[Op, ...] = ()
    # every byte window's codes (the plan's and others in the tree): result id -> its chain
    windows: dict[int, tuple[Op, ...]] = field(default_factory=dict)
    # the byte windows' codes result id -> their tensor from the window's first byte
    # (fusion.window binds it)
    bases: dict = field(default_factory=dict)
    # the row tables of E whole, as found before the register dot moved a row scale out of
    # them (SCALE_OUTSIDE_TABLES): what the panel decode looks up (panel.py)
    whole_tables: row_tables.RowTables = row_tables.NONE
    # values of E that are a function of the code and of per-row leaves (row_tables.py)
    row_tables: row_tables.RowTables = row_tables.NONE
    # False: an earlier dot joined to this one (carry.plan_joins) prefetches the same window
    prefetch: bool = True


class RegionIndex(NamedTuple):
    """What the dot planners look up in one region: the op defining each value id, how often
    each value is used (nested regions included), each op's position (by id(op)), its dots."""

    defs: dict[int, Op]
    uses: dict[int, int]
    order: dict[int, int]
    dots: tuple[Op, ...]


def region_index(r: Region) -> RegionIndex:
    return RegionIndex({res.id: op for op in r.ops for res in op.results}, _uses(r),
                       {id(o): i for i, o in enumerate(r.ops)},
                       tuple(op for op in r.ops if op.opcode == "dot"))


def _uses(r: Region) -> dict[int, int]:
    counts: dict[int, int] = {}

    def walk(ops):
        for op in ops:
            for v in op.operands:
                counts[v.id] = counts.get(v.id, 0) + 1
            for reg in op.regions:
                walk(reg.ops)
    walk(r.ops)
    return counts


def plan_fusion(r: Region, max_rows: int | None = MAX_ROWS,
                skip: frozenset[int] = frozenset()) -> dict[int, Plan]:
    """Dots of this region (keyed by their result id) whose weight operand can be fused, with
    at most `max_rows` rows of `a` (None: any; backends/llvm/panel.py takes the larger ones).
    Each dot left out is noted (lowbitc.explain) with the reason."""
    defs, uses, _, dots = region_index(r)
    plans: dict[int, Plan] = {}
    for op in dots:
        if op.results[0].id in skip:  # (planned elsewhere: columns.py)
            continue
        found = _dot_tree(op, defs, uses, max_rows)
        if found is None:
            continue
        if isinstance(found, str):
            note("dot", "", "not fused: the weight tile is built, then a generic dot", found,
                 fallback=True, loc=op.loc)
            continue
        tr, tree, codes = found
        order = {id(o): i for i, o in enumerate(r.ops)}
        tree = sorted(tree, key=lambda o: order[id(o)])  # program order: operands first
        windows = {o.results[0].id: byte_window.chain(o, defs, uses)
                   for o in (codes, *tree) if o.opcode == "codes"}
        moved = [d for c in windows.values() for d in c]
        plan = Plan(op, tr, codes, tree,
                    sorted([*tree, *moved, codes, tr], key=lambda o: order[id(o)]),
                    tr.operands[0], code_tables(tree, codes, tr.operands[0], defs),
                    chain=windows.get(codes.results[0].id, ()), windows=windows)
        spaces = row_spaces(tree, plan.root)
        plan.row_tables = row_tables.find(tree, codes, plan.root, plan.tables, spaces)
        plan.whole_tables = plan.row_tables
        plan.core, plan.factor = _scaled(plan, defs)
        if plan.core is None and SCALE_OUTSIDE_TABLES and plan.row_tables.wanted:
            tables, plan.row_tables = plan.row_tables, row_tables.NONE
            found = row_scale.find(plan, defs)
            plan.row_tables = tables if found[0] is None else row_tables.find(
                tree, codes, found[0], plan.tables, row_spaces(tree, found[0]))
        if plan.core is None:
            plan.core, plan.scale, plan.offset, plan.offset_sign = row_scale.find(plan, defs)
        if plan.core is None and STEP_SCALE and op.operands[0].type.shape[0] <= STEP_SCALE_ROWS:
            plan.core, plan.step_scale, plan.step_space = row_scale.step(plan, defs, spaces)
        plans[op.results[0].id] = plan
    return plans


def _dot_tree(op: Op, defs: dict[int, Op], uses: dict[int, int], max_rows: int | None):
    """(transpose, E's ops, the codes load) of a dot whose weights fuse, or why not."""
    a, b, acc = op.operands
    tr = defs.get(b.id)
    transposed = tr is not None and tr.opcode == "transpose" and tr.attrs.perm == (1, 0)
    found = _tree(defs, uses, tr.operands[0] if transposed else b, moved=True, windows=True)
    if found == NO_CODES:
        return None  # a dot of tiles of machine types: nothing to fuse
    if not transposed:
        return "the weight operand is not transpose(E) of a [N, K] tile (codes along K)"
    if uses[b.id] != 1:
        return "transpose(E) is used by more than this dot"
    if isinstance(found, str):
        return found
    tree, codes = found
    e = tr.operands[0].type
    if not (isinstance(e, TileType) and is_float(e.dtype)):
        if acc.type.dtype == "i32":
            return None  # an integer dot: bytedot.py's to fuse, and to explain
        return "E is not a float tile"
    if e.shape[1] % W:
        return f"the K window ({e.shape[1]}) is not a multiple of {W}"
    if max_rows is not None and a.type.shape[0] > max_rows:
        return f"more than {max_rows} rows of a"
    if acc.type.dtype != "f32":
        return f"the accumulator is {acc.type.dtype}, not f32"
    if codes.opcode == "codes":  # a byte window's codes, its K part regrouped into E's rows
        if not byte_window.fits(codes, e.shape):
            return (f"the byte window viewed as codes at {codes.loc} is not E's rows with "
                    "its K part regrouped")
        return tr, tree, codes
    if codes.attrs.masked:
        return f"the codes load at {codes.loc} is masked (a mask= or data-dependent select)"
    if not fused_view.viewable(codes) or fused_view.kept(codes.attrs.sizes) != e.shape:
        return (f"the codes load at {codes.loc} is not a [N, K] window of E's shape "
                "(a broadcast, reshape or single index in between)")
    return tr, tree, codes


def _scaled(plan: Plan, defs: dict[int, Op]) -> tuple[Value | None, float]:
    """(core, 2^k) when E is core times a power-of-two constant (a decode through f16, see
    lower_formats) and core is not a table lookup anyway, else (None, 1.0). Scaling the dot's
    sums instead of every weight is exact unless a product leaves f32's normal range."""
    op = defs.get(plan.root.id)
    if (op is None or op.opcode != "mul" or plan.root.id in plan.tables
            or plan.root.id in plan.row_tables.wanted):
        return None, 1.0
    for core, k in (op.operands, op.operands[::-1]):
        kd = defs.get(k.id)
        if (kd is not None and kd.opcode == "const" and not isinstance(k.type, TileType)
                and core.id not in plan.tables and isinstance(kd.attrs.value, float)):
            mant, _ = math.frexp(kd.attrs.value)
            if mant == 0.5 and math.isfinite(kd.attrs.value):
                return core, kd.attrs.value
    return None, 1.0


def plan_store_fusion(r: Region) -> dict[int, Plan]:
    """Unmasked stores of this region (keyed by id(op)) whose value is a fusible tree over one
    aligned load_codes of the same shape: dequantize-to-memory without a materialised tile."""
    defs, uses, order, _ = region_index(r)
    plans: dict[int, Plan] = {}
    for op in r.ops:
        if op.opcode != "store" or op.attrs.masked or len(op.attrs.sizes) != 2:
            continue
        v = op.operands[-1]
        if not (isinstance(v.type, TileType) and v.type.shape == tuple(op.attrs.sizes)
                and v.type.shape[1] % W == 0 and uses[v.id] == 1 and v.id in defs):
            continue
        found = _tree(defs, uses, v)
        if isinstance(found, str):
            if found != NO_CODES:  # a store of codes that does not fuse: say why
                note("store", "", "not fused: the tile is built, then stored", found,
                     fallback=True, loc=op.loc)
            continue
        tree, codes = found
        if codes.attrs.sizes != v.type.shape or codes.attrs.masked or not tree:
            why = ("the codes load is masked" if codes.attrs.masked else
                   "the value is the codes themselves" if not tree else
                   "the codes window is not the stored window's shape")
            note("store", "", "not fused: the tile is built, then stored", why, fallback=True,
                 loc=op.loc)
            continue
        tree = sorted(tree, key=lambda o: order[id(o)])
        plans[id(op)] = Plan(op, None, codes, tree,
                             sorted(tree + [codes], key=lambda o: order[id(o)]), v,
                             code_tables(tree, codes, v, defs))
    return plans


def _derived(seen: dict[int, Op], codes: Op) -> dict[int, Op]:
    """The ops of `seen` that depend on the codes; the others (a zero point's cast, a scale
    times a constant) are leaves, computed once on their small tiles before the consumer
    rather than per code."""
    derived = {codes.results[0].id} | {o.results[0].id for o in seen.values()
                                        if o.opcode == "codes"}  # other byte windows
    grew = True
    while grew:
        grew = False
        for op in seen.values():
            r = op.results[0].id
            if r not in derived and any(v.id in derived for v in op.operands):
                derived.add(r)
                grew = True
    return {k: op for k, op in seen.items() if op.results[0].id in derived}


def fold(tree: list[Op], root: Value, k_axis: int) -> tuple[Value, Value, Value] | None:
    """(Y, U, V) when E = (Y - U) * V (either order of the product) with U and V float leaves
    of E constant along its K axis `k_axis`, else None: a dot then sums a * Y only and applies
    V * (sum - U * sum(a)) once per window (the zero-point fold)."""
    def k_invariant(v: Value) -> bool:
        return not isinstance(v.type, TileType) or v.type.shape[k_axis] == 1

    return difference_times(tree, root, k_invariant)


def difference_times(tree: list[Op], root: Value,
                     leaf_ok: Callable[[Value], bool]) -> tuple[Value, Value, Value] | None:
    """(Y, U, V) when the f32 E = (Y - U) * V (either order of the product), Y f32, U and V
    leaves of E (not made by `tree`) that `leaf_ok` accepts, else None."""
    made = {op.results[0].id: op for op in tree}
    mul = made.get(root.id)
    if mul is None or mul.opcode != "mul" or root.type.dtype != "f32":
        return None
    for x, v in (mul.operands, mul.operands[::-1]):
        sub = made.get(x.id)
        if (sub is not None and sub.opcode == "sub" and v.id not in made and leaf_ok(v)
                and sub.operands[0].type.dtype == "f32"
                and sub.operands[1].id not in made and leaf_ok(sub.operands[1])):
            return sub.operands[0], sub.operands[1], v
    return None


NO_CODES = "E reads no packed codes"


# data movement (and codes read out of a view of words): not fused; how explain names them
RESHAPING = {"view": "view", "reshape": "reshape", "transpose": "transpose",
             "broadcast": "broadcast", "codes": "a view of words as codes"}


def _tree(defs: dict[int, Op], uses: dict[int, int], root: Value, moved: bool = False,
          windows: bool = False):
    """E's fusible ops and its one load_codes, or why not (a line). Values may be shared
    inside E (a decode reuses the magnitude bits), but none of them may be used outside it.
    Other codes loads of a smaller tile than E (zero points, one per column) are leaves,
    loaded before the consumer and broadcast like scales.
    `moved`: a tree without codes that views, reshapes or transposes loaded data is a
    fallback too (its reason names those ops), not a plain float operand.
    `windows`: codes viewed out of a window of bytes (byte_window.py) are a codes leaf too."""
    seen: dict[int, Op] = {}
    codes: dict[int, Op] = {}
    movers: list[Op] = []
    below: dict[int, bool] = {}
    stack = [root]
    while stack:
        v = stack.pop()
        op = defs.get(v.id)
        if op is None or not isinstance(v.type, TileType):
            continue  # a parameter, region argument or scalar: a leaf
        if reads_codes(op) or (windows and byte_window.chain(op, defs, uses)):
            codes[id(op)] = op
            continue
        if (regroups_rows(op) or (windows and byte_window.step_shuffle(op))) \
                and _codes_below(defs, op.operands[0], below):
            # the codes' rows split into groups (or merged back), or their K positions
            # permuted inside each step of 32: fused
            seen[id(op)] = op
            stack.extend(op.operands)
            continue
        if op.opcode in RESHAPING and op not in movers and (
                v is root or not is_float(v.type.dtype)):  # E itself, or its codes
            movers.append(op)
        if op.opcode not in FUSIBLE or id(op) in seen:
            continue  # not fusible: a leaf computed elsewhere (scales, zero points, ...)
        seen[id(op)] = op
        stack.extend(op.operands)
    if not codes and moved and movers:
        return ("E is built through "
                + ", ".join(f"{RESHAPING[o.opcode]} at {o.loc}" for o in movers[:3])
                + ": only elementwise ops over one 2-D load of codes (or u8/i8 bytes) fuse")
    if not codes:
        return NO_CODES
    if len(codes) > 1:  # codes of a smaller tile (zero points along N) are leaves
        full = {k: o for k, o in codes.items()
                if _tile_shape(o) == getattr(root.type, "shape", None)}
        if len(full) == 1:
            codes = full
    if len(codes) > 1 and windows and all(byte_window.chain(o, defs, uses)
                                          for o in codes.values()):
        # several byte windows (a block's low bits and its high-bit plane): the widest is
        # the plan's codes, the others are read in the tree (fusion._eval_tree)
        first = max(codes.values(), key=byte_window.bits)
        seen.update({k: o for k, o in codes.items() if o is not first})
        codes = {id(first): first}
    if len(codes) > 1:
        return (f"E reads {len(codes)} loads of codes ("
                + ", ".join(str(o.loc) for o in codes.values()) + "); a fused E reads one")
    seen = _derived(seen, next(iter(codes.values())))
    inside: dict[int, int] = {}
    for op in seen.values():
        for v in op.operands:
            inside[v.id] = inside.get(v.id, 0) + 1
    for op in [*seen.values(), *codes.values()]:
        r = op.results[0]
        if r is not root and inside.get(r.id, 0) != uses[r.id]:
            return f"the value of {op.opcode} at {op.loc} inside E is also used outside it"
    spaces = row_spaces(list(seen.values()), root)
    if isinstance(spaces, str):
        return spaces
    return list(seen.values()), next(iter(codes.values()))


def _tile_shape(codes: Op) -> tuple[int, ...]:
    sizes = getattr(codes.attrs, "sizes", None)
    return fused_view.kept(sizes) if sizes is not None else codes.results[0].type.shape


def regroups_rows(op: Op) -> bool:
    """A reshape that keeps the first dim (the codes' rows) and regroups the rest, as a
    per-group scale needs (`reshape(c, [N, K / g, g])` and back to [N, K]): row-major, so a
    row's columns keep their order and the fused paths read it unchanged."""
    if op.opcode != "reshape":
        return False
    a, r = op.operands[0].type, op.results[0].type
    return (isinstance(a, TileType) and isinstance(r, TileType) and len(a.shape) >= 2
            and len(r.shape) >= 2 and a.shape[0] == r.shape[0])


def _codes_below(defs: dict[int, Op], v: Value, memo: dict[int, bool]) -> bool:
    """Whether v is computed from a codes load through fusible ops and row regroupings."""
    if v.id not in memo:
        op = defs.get(v.id)
        memo[v.id] = op is not None and isinstance(v.type, TileType) and (
            reads_codes(op) or op.opcode == "codes"
            or ((op.opcode in FUSIBLE or regroups_rows(op) or byte_window.step_shuffle(op))
                and any(_codes_below(defs, u, memo) for u in op.operands)))
    return memo[v.id]


def row_spaces(tree: list[Op], root: Value) -> dict[int, tuple[int, ...]] | str:
    """The shape each value of E is computed in (and its leaves read in, fused_leaves.py):
    E's own shape, or for values under a row regrouping the shape it regroups; why not
    (a line) when a value is read in two shapes."""
    ops = {op.results[0].id: op for op in tree}
    space = {root.id: tuple(root.type.shape)}
    work = [root]
    while work:
        v = work.pop()
        op = ops.get(v.id)
        if op is None:
            continue
        for u in op.operands:
            if u.id not in ops:
                continue
            s = tuple(u.type.shape) if op.opcode in ("reshape", "transpose") else space[v.id]
            if space.setdefault(u.id, s) != s:
                return (f"the value of {ops[u.id].opcode} at {ops[u.id].loc} is read at two "
                        "shapes inside E")
            work.append(u)
    return space
