"""Thread-value layouts as IR attributes: the printed form and its exact inverse."""

from __future__ import annotations

import ast
import re

from lowbitc.errors import VerifyError
from lowbitc.layout import TVLayout

_FORM = re.compile(r"tv\((.*), modes=(.*), spatial=(.*), local=(.*)\)\Z")


def layout_text(tv: TVLayout) -> str:
    """The canonical text of a layout (equal layouts print equal)."""
    return str(tv)


def _tuple(text: str) -> tuple[int, ...]:
    v = ast.literal_eval(text)
    return tuple(v) if isinstance(v, tuple) else (v,)


def parse_layout(text: str) -> TVLayout:
    """The layout `layout_text` printed (VerifyError for anything else)."""
    m = _FORM.match(text)
    if not m:
        raise VerifyError(f"not a layout: {text!r}")
    try:
        return TVLayout(*(_tuple(g) for g in m.groups()))
    except (ValueError, SyntaxError) as e:
        raise VerifyError(f"not a layout: {text!r} ({e})") from None
