"""Fuzz the whole compiler with mutated kernels: token deletes, duplicates, swaps, number and
name changes applied to the shipped and example kernels, run through `lowbitc.compile`.
The only exceptions allowed are LowbitcError subclasses (UserArgumentError among them);
anything else (AttributeError, KeyError, an llvmlite RuntimeError, ...) is a compiler bug."""

from __future__ import annotations

import re
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lowbitc.compiler import compile
from lowbitc.errors import LowbitcError

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([*(ROOT / "lowbitc" / "kernels").glob("*.lbk"),
                  *(ROOT / "examples").glob("*.lbk")])
TEXTS = {p.name: p.read_text() for p in SOURCES}
# shared tiles, copies and barriers (the shipped kernels have none)
TEXTS["<staged>"] = """
kernel staged[BM: int = 4, BK: int = 8, W: dtype = u4](x: f32[M, K], w: W[M, K], y: f32[M, K])
  threads 32 grid (cdiv(M, BM), cdiv(K, BK))
{
  s = shared(f32, [BM, BK], layout=swizzle(1, 1, 2))
  c = shared(W, [BM, BK])
  copy(s, x[block.x * BM :+ BM, block.y * BK :+ BK])
  copy(c, w[block.x * BM :+ BM, block.y * BK :+ BK], mask=arange(BK) < 5)
  sync()
  t = load(s[1 :+ 2, :]) + cast(load(c[0 :+ 2, :]), f32)
  store(s[0 :+ 2, :], t * 2.0)
  sync()
  store(w[block.x * BM :+ BM, block.y * BK :+ BK], cast(load(s), W))
  copy(y[block.x * BM :+ BM, block.y * BK :+ BK], s)
}
"""

# string literals, names, numbers (exponents too), multi-character operators, single
# characters, newlines (comments dropped)
_TOKEN = re.compile(r'#[^\n]*|"[^"\n]*"|[A-Za-z_]\w*|\d+(?:\.\d*)?(?:[eE][-+]?\d+)?'
                    r"|:\+|//|<<|>>|==|!=|<=|>=|[-+*/]=|\n|\S")
NUMBERS = ("0", "1", "2", "3", "5", "17", "33", "64", "0.5", "-1")
EXTRA = ("(", ")", "[", "]", "{", "}", ",", ":+", ":", "=", "+", "*", "/", "<", "==", "and",
         "not", "if", "for", "in", "range", "static_range", "return", "load", "store", "cast",
         "f32", "u4", "i3", "nf4", "f16", "dot", "sum", "where", "reshape", "transpose",
         "block", ".", "x", "true", "1e400", "shared", "copy", "sync", "swizzle", "view")


def tokens(text: str) -> list[str]:
    return [t for t in _TOKEN.findall(text) if not t.startswith("#")]


def join(toks: list[str]) -> str:
    return " ".join(toks).replace(" \n ", "\n")


TOKEN_EDITS = ("delete", "duplicate", "swap", "number", "name", "insert")
VALUE_EDITS = ("number", "name")  # keep the syntax, change the meaning
FORMATS = ("u4", "u3", "i2", "b1", "f6e3m2", "f8e4m3fn", "f8e8m0fnu", "nf4", "u8", "f16")


@st.composite
def mutated(draw, edits: tuple[str, ...] = TOKEN_EDITS) -> str:
    toks = tokens(TEXTS[draw(st.sampled_from(sorted(TEXTS)))])
    names = sorted({t for t in toks if t[0].isalpha() or t[0] == "_"})
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(toks) - 1))
        kind = draw(st.sampled_from(edits))
        if kind == "delete":
            del toks[i]
        elif kind == "duplicate":
            toks.insert(i, toks[i])
        elif kind == "swap" and i + 1 < len(toks):
            toks[i], toks[i + 1] = toks[i + 1], toks[i]
        elif kind == "number":
            nums = [j for j, t in enumerate(toks) if t[0].isdigit()]
            if nums:
                toks[draw(st.sampled_from(nums))] = draw(st.sampled_from(NUMBERS))
        elif kind == "name":
            spots = [j for j, t in enumerate(toks) if t in names]
            toks[draw(st.sampled_from(spots))] = draw(st.sampled_from(names))
        else:
            toks.insert(i, draw(st.sampled_from(EXTRA)))
    return join(toks)


def compile_or_reject(source: str, **params) -> None:
    try:
        compile(source, **params)
    except LowbitcError:
        pass  # a clean rejection (DSL, verify, lowering, backend or user-argument error)


def test_unmutated_token_streams_still_compile():
    for text in TEXTS.values():  # the tokenizer round trip keeps every kernel valid
        names = re.findall(r"^kernel\s+(\w+)", text, re.M)
        for name in names if len(names) > 1 else [None]:
            compile(join(tokens(text)), kernel=name)


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_kernels_fail_only_with_lowbitc_errors(source):
    compile_or_reject(source)


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(mutated(VALUE_EDITS), st.sampled_from(FORMATS))
def test_kernels_with_changed_numbers_and_names_fail_only_with_lowbitc_errors(source, wtype):
    params = {"W": wtype} if "W: dtype" in source else {}
    compile_or_reject(source, **params)
