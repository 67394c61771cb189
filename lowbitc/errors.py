"""One error hierarchy for lowbitc: parse, verify, lowering, backend and user-argument errors.

DSL errors carry a source location and render the offending line with a caret.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class SourceLoc:
    """A position in DSL source: 1-based line and column, plus the line's text for carets."""

    file: str
    line: int
    col: int
    text: str = field(default="", compare=False)

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"

    def caret(self) -> str:
        """The source line followed by a caret under the column (empty if the text is unknown)."""
        if not self.text:
            return ""
        pad = "".join(c if c == "\t" else " " for c in self.text[: max(self.col - 1, 0)])
        return f"    {self.text}\n    {pad}^"


class LowbitcError(Exception):
    """Base class of every error lowbitc raises on purpose."""

    def __init__(self, message: str, loc: SourceLoc | None = None):
        self.message = message
        self.loc = loc
        super().__init__(self._render())

    def _render(self) -> str:
        if self.loc is None:
            return self.message
        caret = self.loc.caret()
        head = f"{self.loc}: {type(self).__name__}: {self.message}"
        return f"{head}\n{caret}" if caret else head


class DSLSyntaxError(LowbitcError):
    """The .lbk source does not parse."""


class DSLNameError(LowbitcError):
    """A name in .lbk source is not defined."""


class DSLTypeError(LowbitcError):
    """Shapes, formats or layouts in .lbk source do not fit together."""


class VerifyError(LowbitcError):
    """The IR breaks an invariant (a compiler bug or a malformed hand-written IR)."""


class LoweringError(LowbitcError):
    """A pass cannot lower a construct."""


class BackendError(LowbitcError):
    """A backend has no handler for an op, or its toolchain failed."""


class UserArgumentError(LowbitcError, ValueError):
    """A caller passed a bad argument to a public function or a compiled kernel."""


class CacheError(LowbitcError):
    """The compile cache is unusable (not raised for a corrupt entry, which is rebuilt)."""
