"""Which tiles the CUDA renderer materializes in shared memory, decided before rendering.

Tiles are lazy by default: an element is computed where a consumer (a store, a dot, a
reduction, a loop-carried update) needs it, so a whole dequantize chain fuses into the loop
that stores it. A tile is materialized (written once per block to shared memory, then read)
when:
- it feeds `dot` (through reshape/transpose/broadcast views): every output element reads a
  row and a column, so recomputing would repeat the decode BM or BN times; the base of the
  view chain is stored, so global reads stay coalesced;
- it is a `load` of a tensor that the kernel also stores to (a lazy read could move past the
  store), or a `load_shared` of a shared tile stored to later in its region.
Results of dot, reduce, for and if are always buffers, as are loop-carried tiles.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from lowbitc.ir.core import Kernel, Op, walk
from lowbitc.ir.types import TileType

VIEWS = frozenset({"reshape", "transpose", "broadcast"})
BUFFER_RESULTS = frozenset({"dot", "reduce", "for", "if"})
BYTE_CODES = ("u8", "i8")  # machine types whose loads are codes (`codes_leaf(machine=True)`)


@dataclass(frozen=True)
class Plan:
    """`materialize`: tile value ids stored at their definition; `uses`: operand counts."""

    materialize: frozenset[int]
    uses: Counter


def codes_leaf(v, defs: dict, any_width: bool = False, machine: bool = False):
    """The one unmasked `load_codes` of 1, 2, 4 or 8-bit codes (any width with `any_width`)
    that v's elementwise chain reads (and nothing else from memory), else None. `machine`:
    an unmasked `load` of u8/i8 codes (machine types, read as bytes) counts as one too."""
    leaf, todo, seen = None, [v], set()
    while todo:
        x = todo.pop()
        d = defs.get(x.id)
        if x.id in seen or d is None:
            continue
        seen.add(x.id)
        if d.opcode == "load_codes" or (machine and d.opcode == "load"
                                        and d.operands[0].type.dtype in BYTE_CODES):
            if leaf is not None or d.attrs.masked or (
                    d.opcode == "load_codes" and 32 % max(d.attrs.bits, 1) and not any_width):
                return None
            leaf = d
        elif d.opcode in ("load", "load_shared", "dot", "reduce", "for", "if"):
            return None
        todo.extend(d.operands)
    return leaf


def make_plan(k: Kernel, threads: int = 0, packed: frozenset[int] = frozenset()) -> Plan:
    """`threads`: the block size, which decides whether a dot runs on tensor cores; the weight
    operand of such a dot (`codes_leaf`, or any width read from a param in `packed`, the mma
    packing) is then decoded in registers, not in shared memory."""
    defs: dict[int, Op] = {}
    region_args: set[int] = set()
    stored: set[int] = set()
    uses: Counter = Counter()
    for op in walk(k.body.ops):
        for r in op.results:
            defs[r.id] = op
        for reg in op.regions:
            region_args.update(a.id for a in reg.args)
        uses.update(v.id for v in op.operands)
        if op.opcode in ("store", "store_codes"):
            stored.add(op.operands[0].id)
    marked: set[int] = set()
    for op in walk(k.body.ops):
        if op.opcode == "dot":
            for v in op.operands[:2]:
                leaf = codes_leaf(v, defs, any_width=True, machine=True)
                if threads and v is op.operands[1] and leaf is not None and (
                        leaf.operands[0].id in packed
                        or (leaf.opcode == "load_codes" and 32 % leaf.attrs.bits == 0)):
                    from lowbitc.backends.numba_cuda.mma_dot import mma_tiling

                    if mma_tiling(op, threads) is not None:
                        continue
                base = v
                while base.id in defs and defs[base.id].opcode in VIEWS:
                    base = defs[base.id].operands[0]
                d = defs.get(base.id)
                if base.id in region_args or d is None or d.opcode in BUFFER_RESULTS:
                    continue
                marked.add(base.id)
        if op.opcode in ("load", "load_codes") and op.operands[0].id in stored:
            if isinstance(op.results[0].type, TileType):
                marked.add(op.results[0].id)
    marked |= _overwritten_shared_reads(k.body.ops)
    return Plan(frozenset(marked), uses)


def _overwritten_shared_reads(ops) -> set[int]:
    """`load_shared` tiles whose shared tile is stored to later in the same region (or in an
    op nested after it): a lazy read could see the new contents, so they are materialized."""
    out: set[int] = set()
    for i, op in enumerate(ops):
        for r in op.regions:
            out |= _overwritten_shared_reads(r.ops)
        if op.opcode != "load_shared" or not isinstance(op.results[0].type, TileType):
            continue
        later = {o.operands[0].id for after in ops[i + 1:] for o in walk((after,))
                 if o.opcode == "store_shared"}
        if op.operands[0].id in later:
            out.add(op.results[0].id)
    return out
