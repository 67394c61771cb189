"""What the compiler decided for each `dot`, `load` and `store` and each packed parameter, in
a form a kernel writer can read (`Kernel.explain()`, `lowbitc compile FILE --explain`).

The passes and the backends call `note` at the point where they take a decision, with its
outcome and, for a slower path, the reason in one line; nothing is re-derived afterwards.
Notes are kept only while `recording()` is active (compiling without it costs one context
variable read per decision).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

from lowbitc.errors import SourceLoc

KINDS = ("param", "dot", "load", "store")


@dataclass(frozen=True)
class Note:
    """One decision: `kind` (param, dot, load, store), what it is about (`subject`: a param
    name, or the op's tensor), the path taken, the reason when it is a slower path
    (`fallback`), and the source position of the op."""

    kind: str
    subject: str
    path: str
    reason: str = ""
    fallback: bool = False
    loc: SourceLoc | None = None

    def line(self) -> str:
        where = f"{self.loc}: " if self.loc is not None else ""
        head = f"{where}{self.kind} {self.subject}".rstrip()
        mark = "FALLBACK " if self.fallback else ""
        why = f" ({self.reason})" if self.reason else ""
        return f"{head}: {mark}{self.path}{why}"


_JOURNAL: ContextVar[list[Note] | None] = ContextVar("lowbitc_explain", default=None)
_MUTED: ContextVar[bool] = ContextVar("lowbitc_explain_muted", default=False)


def note(kind: str, subject: str, path: str, reason: str = "", *, fallback: bool = False,
         loc: SourceLoc | None = None) -> None:
    """Record a decision (a no-op unless `recording()` is active)."""
    journal = _JOURNAL.get()
    if journal is None or _MUTED.get():
        return
    n = Note(kind, subject, path, reason, fallback, loc)
    if n not in journal:  # a region emitted twice (both paths of a branch) notes once
        journal.append(n)


@contextlib.contextmanager
def recording() -> Iterator[list[Note]]:
    """Collect the notes of the compile steps run inside the block."""
    journal: list[Note] = []
    token = _JOURNAL.set(journal)
    try:
        yield journal
    finally:
        _JOURNAL.reset(token)


@contextlib.contextmanager
def muted() -> Iterator[None]:
    """Drop notes: for code emitted only as the runtime fallback of a path already noted
    (a fused dot's edge windows re-run its deferred loads through the generic handlers)."""
    token = _MUTED.set(True)
    try:
        yield
    finally:
        _MUTED.reset(token)


def subject_of(value) -> str:
    """How a note names an IR value: its name if it has one (a parameter), else ''."""
    return getattr(value, "name", "") or ""


def report(name: str, backend: str, notes: list[Note]) -> str:
    """The notes as text: the packing of each parameter, then each op in source order."""
    lines = [f"kernel {name} ({backend})"]
    params = [n for n in notes if n.kind == "param"]
    ops = sorted((n for n in notes if n.kind != "param"),
                 key=lambda n: (n.loc is None, n.loc.line if n.loc else 0,
                                n.loc.col if n.loc else 0, KINDS.index(n.kind)))
    lines += [f"  {n.line()}" for n in params]
    lines += [f"  {n.line()}" for n in ops]
    slow = sum(n.fallback for n in notes)
    lines.append(f"  {slow} fallback{'s' if slow != 1 else ''}")
    return "\n".join(lines)
