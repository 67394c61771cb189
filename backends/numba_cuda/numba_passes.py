"""Faster, result-identical stand-ins for numba-cuda analyses, used while `ptx_for` types and
lowers a kernel.

A tensor-core kernel's generated source is long straight-line code (about 9000 numba IR
statements in 600 blocks; 150 variables assigned more than once: the C fragments, the
register-carried accumulators). numba-cuda 0.30 spends most of such a compile in places whose
cost grows with blocks x variables or variables x block length:
- `analysis.compute_live_map` iterates its backward liveness fix point over the blocks in
  forward order: about 110 sweeps over all blocks per call, nine calls per compile;
- `ir_utils.fixup_var_define_in_scope` checks every used variable once per block although
  the blocks share one or a few scopes;
- `ssa._run_ssa` walks every statement of the function twice for each variable assigned more
  than once, though only the blocks that mention it change;
- `lowering.Lower._find_singly_assigned_variable` scans a variable's block once per variable
  (the steady K loop is one block of thousands of statements).
The stand-ins compute the same fix points on bit sets (liveness in reverse block order: the
least fix point of the same monotone equations, reached in a few sweeps), define the
variables once per distinct scope, and hand a block to the SSA rewrite only when it mentions
the variable being renamed (any other block comes back with the same statements), and count
each block's assignments once. Typing resolves the same call signatures thousands of times:
`_memo_call_types` answers repeats. Tests compare the LLVM IR a kernel lowers to with and
without them (tests/test_cuda_toolchain.py).
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter, defaultdict
from collections.abc import Iterator


def compute_live_map(cfg, blocks, var_use_map, var_def_map):
    """numba's `analysis.compute_live_map`: the variables live at the entry of each block.

    The same two fix points, on bit sets (one Python int per block, a bit per variable)."""
    index: dict[str, int] = {}
    for names in (*var_use_map.values(), *var_def_map.values()):
        for name in names:
            index.setdefault(name, len(index))

    def bits(names) -> int:
        return sum(1 << index[n] for n in set(names))

    uses = {b: bits(var_use_map[b]) for b in var_use_map}
    defs = {b: bits(var_def_map[b]) for b in var_def_map}
    reach = dict.fromkeys(blocks, 0)
    for b in var_def_map:
        reach.setdefault(b, 0)

    def reach_sweep() -> None:
        for b in var_def_map:
            reach[b] |= defs[b] | uses[b]
            for succ, _ in cfg.successors(b):
                reach[succ] = reach.get(succ, 0) | reach[b]

    live = {b: uses[b] for b in blocks}
    order = list(blocks)[::-1]  # liveness flows backwards: sweep the blocks last to first

    def live_sweep() -> None:
        for b in order:
            for pred, _ in cfg.predecessors(b):
                live[pred] |= live[b] & reach.get(pred, 0) & ~defs.get(pred, 0)

    _fix_point(reach_sweep, reach)
    _fix_point(live_sweep, live)
    names = list(index)
    return {b: {names[i] for i in _set_bits(v)} for b, v in live.items()}


def _set_bits(v: int) -> Iterator[int]:
    while v:
        low = v & -v
        yield low.bit_length() - 1
        v ^= low


def _fix_point(sweep, values: dict) -> None:
    """Repeat `sweep` until no value in `values` changes (they only grow)."""
    before = None
    after = tuple(values.values())
    while before != after:
        sweep()
        before, after = after, tuple(values.values())


def fixup_var_define_in_scope(blocks) -> None:
    """numba's `ir_utils.fixup_var_define_in_scope`: every used variable defined in the scope
    of every block (checked once per distinct scope)."""
    used = {}
    for blk in blocks.values():
        for inst in blk.body:
            for var in inst.list_vars():
                used[var] = inst
    scopes = {id(blk.scope): blk.scope for blk in blocks.values()}
    for scope in scopes.values():
        for var in used:
            if var.name not in scope.localvars:
                scope.localvars.define(var.name, var)


def _mentions(blocks) -> dict:
    """Per block label, the names its statements assign or use (numba's SSA handlers act on a
    statement only when the variable being renamed is among them; renaming one variable never
    adds or removes another's name)."""
    return {label: {var.name for stmt in blk.body for var in stmt.list_vars()}
            for label, blk in blocks.items()}


@contextlib.contextmanager
def _skipping_blocks(ssa, mentions: dict) -> Iterator[None]:
    """While active, ssa._run_block_rewrite passes a block through unchanged (a new Block with
    the same statements, as the handlers would return them) when it does not mention the
    variable being renamed."""
    real = ssa._run_block_rewrite

    def rewrite(blocks, states, handler):
        name = states["varname"]
        newblocks = {}
        for label, blk in blocks.items():
            if name in mentions.get(label, (name,)):
                newblocks.update(real({label: blk}, states, handler))
            else:
                newblk = ssa.ir.Block(scope=blk.scope, loc=blk.loc)
                newblk.body = list(blk.body)
                newblocks[label] = newblk
        return newblocks

    ssa._run_block_rewrite = rewrite
    try:
        yield
    finally:
        ssa._run_block_rewrite = real


def _run_ssa(blocks):
    """numba's `ssa._run_ssa` with the block pass-through of `_skipping_blocks`."""
    from numba.cuda.core import ssa

    if not blocks:
        return {}
    cfg = ssa.compute_cfg_from_blocks(blocks)
    df_plus = ssa._iterated_domfronts(cfg)
    violators = ssa._find_defs_violators(blocks, cfg)
    cache_list_vars = ssa._CacheListVars()
    with _skipping_blocks(ssa, _mentions(blocks)):
        for varname in violators:
            blocks, defmap = ssa._fresh_vars(blocks, varname)
            blocks = ssa._fix_ssa_vars(blocks, varname, defmap, cfg, df_plus, cache_list_vars)
    if ssa.compute_cfg_from_blocks(blocks) != cfg:
        raise ssa.errors.CompilerError("CFG mutated in SSA pass")
    return blocks


def _find_singly_assigned_variable(self) -> None:
    """numba's `Lower._find_singly_assigned_variable`: the variables assigned once, in one
    block, used only there (kept out of allocas). numba counts a candidate's assignments by
    scanning its block once per candidate; this counts each block's assignments once."""
    from numba.cuda.core import analysis, ir

    sav = set()
    if not self.func_ir.func_id.is_generator:
        blocks = self.func_ir.blocks
        use_defs = analysis.compute_use_defs(blocks)
        alloca_vars = analysis.must_use_alloca(blocks)
        assigned_in: dict = defaultdict(set)
        for blk, names in use_defs.defmap.items():
            for name in names:
                assigned_in[name].add(blk)
        used_in: dict = defaultdict(set)
        for blk, names in use_defs.usemap.items():
            for name in names:
                used_in[name].add(blk)
        counts: dict = {}
        for name, where in assigned_in.items():
            if name in alloca_vars or len(where) != 1 or used_in[name]:
                continue
            [blk] = where
            if blk not in counts:
                counts[blk] = Counter(stmt.target.name
                                      for stmt in self.blocks[blk].find_insts(ir.assign_types))
            if counts[blk][name] == 1:
                sav.add(name)
    self._singly_assigned_vars = sav
    self._blk_local_varmap = {}


_PATCHES = (("analysis", "compute_live_map", compute_live_map),
            ("ir_utils", "compute_live_map", compute_live_map),
            ("ir_utils", "fixup_var_define_in_scope", fixup_var_define_in_scope),
            ("untyped_passes", "fixup_var_define_in_scope", fixup_var_define_in_scope),
            ("ssa", "_run_ssa", _run_ssa),
            ("lowering.Lower", "_find_singly_assigned_variable", _find_singly_assigned_variable))


@contextlib.contextmanager
def _memo_call_types() -> Iterator[None]:
    """While active, a function type's `get_call_type` answers a repeated (function, typing
    context, argument types) with the signature it resolved the first time (an mma kernel
    types about 14500 calls, 11500 of them repeats: `I64(int64)`, `U32(uint32)`, ...)."""
    from numba.core.types import functions

    real = functions.BaseFunction.get_call_type
    memo: dict = {}

    def get_call_type(self, context, args, kws):
        key = (id(self), id(context), tuple(args), tuple(sorted(kws.items())))
        try:
            got = memo.get(key)
        except TypeError:  # an unhashable argument type
            return real(self, context, args, kws)
        if got is None or got[0] is not self or got[1] is not context:
            sig = real(self, context, args, kws)
            memo[key] = got = (self, context, sig)  # (keeps the ids alive)
        return got[2]

    functions.BaseFunction.get_call_type = get_call_type
    try:
        yield
    finally:
        functions.BaseFunction.get_call_type = real


def _resolve(importlib, where: str):
    """numba.cuda.core.<module>, or a class of numba.cuda.<module> ("lowering.Lower")."""
    if "." in where:
        module, cls = where.split(".")
        return getattr(importlib.import_module(f"numba.cuda.{module}"), cls)
    return importlib.import_module(f"numba.cuda.core.{where}")


_SWAP = threading.RLock()  # one swap at a time: a second thread would save the stand-ins as
# the originals and leave them installed


@contextlib.contextmanager
def faster_analyses() -> Iterator[None]:
    """Swap the stand-ins into numba-cuda's modules for the duration, and memoize call typing
    (`_memo_call_types`); all are restored after. Compiles under it run one at a time (as
    numba's own compile lock runs them). A no-op if any name moved."""
    import importlib

    mods = {m: _resolve(importlib, m) for m, _, _ in _PATCHES}
    if not all(hasattr(mods[m], n) for m, n, _ in _PATCHES):
        yield
        return
    with _SWAP:
        saved = [(mods[m], n, getattr(mods[m], n)) for m, n, _ in _PATCHES]
        for m, n, f in _PATCHES:
            setattr(mods[m], n, f)
        try:
            with _memo_call_types():
                yield
        finally:
            for mod, n, f in saved:
                setattr(mod, n, f)
