"""Reading SASS text (nvdisasm -c): instructions, opcode mixes and the innermost loop.

Pure text functions, testable without the toolchain. NOPs (alignment padding) are kept in
the parsed list but left out of every count.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

_INSTR = re.compile(r"^\s*/\*([0-9a-fA-F]{4,})\*/\s+(.*?)\s*;")
_LABEL = re.compile(r"^\s*(\.L_x_\d+):\s*$")
_PRED = re.compile(r"^@!?U?P(?:T|\d+)\s+")
_TARGET = re.compile(r"(\.L_x_\d+)")
_BRANCHES = frozenset({"BRA", "JMP", "BRX", "JMX"})


@dataclass(frozen=True, slots=True)
class Instr:
    """One SASS instruction: position in the listing, address, predicate, opcode, operands."""

    index: int
    addr: int
    pred: str
    opcode: str
    operands: str
    target: int | None = None  # index of the branch target, for branches to a label

    @property
    def base(self) -> str:
        """The opcode without modifiers: LOP3.LUT -> LOP3."""
        return self.opcode.split(".")[0]


def parse(text: str) -> list[Instr]:
    """Instructions of every function in nvdisasm -c output, branch targets resolved."""
    raw: list[tuple[int, str, str, str, str | None]] = []
    labels: dict[str, int] = {}
    for line in text.splitlines():
        label = _LABEL.match(line)
        if label:
            labels[label.group(1)] = len(raw)
            continue
        match = _INSTR.match(line)
        if not match:
            continue
        body = match.group(2)
        pred_match = _PRED.match(body)
        pred = pred_match.group(0).strip() if pred_match else ""
        body = body[pred_match.end() :] if pred_match else body
        opcode, _, operands = body.partition(" ")
        target = _TARGET.search(operands) if opcode.split(".")[0] in _BRANCHES else None
        tgt = target.group(1) if target else None
        raw.append((int(match.group(1), 16), pred, opcode, operands.strip(), tgt))
    return [
        Instr(i, addr, pred, op, operands, labels.get(tgt) if tgt else None)
        for i, (addr, pred, op, operands, tgt) in enumerate(raw)
    ]


def count(instrs: list[Instr]) -> int:
    """Number of instructions, NOPs excluded."""
    return sum(1 for ins in instrs if ins.base != "NOP")


def opcode_mix(instrs: list[Instr]) -> dict[str, int]:
    """Counts by base opcode, most frequent first, NOPs excluded."""
    mix = Counter(ins.base for ins in instrs if ins.base != "NOP")
    return dict(sorted(mix.items(), key=lambda kv: (-kv[1], kv[0])))


def loops(instrs: list[Instr]) -> list[tuple[int, int]]:
    """(first, last) listing indices of each loop: a backward branch and its target.

    The branch-to-self that ends every kernel (a trap after EXIT) is not a loop.
    """
    found = []
    for ins in instrs:
        if ins.target is not None and ins.target < ins.index:
            found.append((ins.target, ins.index))
    return sorted(set(found))


def innermost_loops(instrs: list[Instr]) -> list[list[Instr]]:
    """Bodies (target .. backward branch, inclusive) of loops that contain no other loop."""
    spans = loops(instrs)
    inner = [
        (a, b)
        for a, b in spans
        if not any((c, d) != (a, b) and a <= c and d <= b for c, d in spans)
    ]
    return [instrs[a : b + 1] for a, b in inner]


def innermost_loop(instrs: list[Instr]) -> list[Instr] | None:
    """The longest innermost loop (the main unrolled body rather than a remainder loop)."""
    bodies = innermost_loops(instrs)
    return max(bodies, key=count) if bodies else None
