"""Parser fuzzing: random token streams and random mutations of valid kernels either parse
(and then print back to the same AST) or raise DSLSyntaxError with a sane location."""

from __future__ import annotations

import re
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_dsl_parser import SAMPLES

from lowbitc.dsl import ast, parse, to_source
from lowbitc.dsl.parser import KEYWORDS
from lowbitc.errors import DSLSyntaxError

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = {p.name: p.read_text() for pattern in ("lowbitc/kernels/*.lbk", "examples/*.lbk")
           for p in sorted(ROOT.glob(pattern))}
SEEDS = {**SAMPLES, **SHIPPED}

PUNCTUATION = ["(", ")", "[", "]", "{", "}", ",", ":", ":+", ".", "=", "+=", "-=", "*=", "/=",
               "==", "!=", "<", "<=", ">", ">=", "|", "^", "&", "<<", ">>", "+", "-", "*",
               "/", "//", "%", "@", "~", "**", "!"]
ATOMS = ["x", "acc", "range", "static_range", "block", "f32", "u4", "_", "0", "7", "0x1F",
         "0b10", "1_0", "1.0", ".5", "1e-3", "2.5e+3", "1e999", "0x", "1__0", '"a.lbk"',
         '"open', "$", "\t", "é", "\x00", "#c\n"]
TOKENS = [*KEYWORDS, *PUNCTUATION, *ATOMS, "\n", "\n\n"]
SEPARATORS = ["", " ", " ", "\n"]

_TOKEN_RE = re.compile(r"#[^\n]*|\s+|[A-Za-z_][A-Za-z0-9_]*|[0-9._][0-9A-Za-z_.+-]*|"
                       r':\+|==|!=|<=|>=|<<|>>|//|[-+*/]=|"[^"\n]*"|.', re.S)


def _lex(source: str) -> list[str]:
    """Split source into rough tokens (comments and whitespace kept) for mutation."""
    return _TOKEN_RE.findall(source)


def check(source: str) -> None:
    """The fuzz property: a parse, or a DSLSyntaxError that points inside the source."""
    try:
        module = parse(source, "fuzz.lbk")
    except DSLSyntaxError as err:
        loc = err.loc
        lines = source.split("\n")
        assert loc is not None and loc.file == "fuzz.lbk"
        assert 1 <= loc.line <= len(lines), (loc, source)
        assert loc.text == lines[loc.line - 1].rstrip("\r")
        assert 1 <= loc.col <= len(loc.text) + 1, (loc, source)
        assert err.message and str(err).startswith(f"fuzz.lbk:{loc.line}:{loc.col}: ")
        return
    printed = to_source(module)
    assert ast.strip_locs(parse(printed)) == ast.strip_locs(module), printed


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(TOKENS), st.sampled_from(SEPARATORS)), max_size=40))
def test_random_token_streams(tokens):
    check("".join(t + s for t, s in tokens))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(TOKENS), st.sampled_from(SEPARATORS)), max_size=30))
def test_random_token_streams_inside_a_kernel(tokens):
    body = "".join(t + s for t, s in tokens)
    check(f"kernel k[B: int = 4](x: f32[M, K], n: int)\n  grid (M,)\n{{\n  {body}\n}}\n")


@st.composite
def token_mutations(draw):
    source = SEEDS[draw(st.sampled_from(sorted(SEEDS)))]
    tokens = _lex(source)
    for _ in range(draw(st.integers(1, 3))):
        if not tokens:
            break
        i = draw(st.integers(0, len(tokens) - 1))
        kind = draw(st.sampled_from(["delete", "duplicate", "swap", "replace", "insert"]))
        if kind == "delete":
            del tokens[i]
        elif kind == "duplicate":
            tokens.insert(i, tokens[i])
        elif kind == "swap":
            j = draw(st.integers(0, len(tokens) - 1))
            tokens[i], tokens[j] = tokens[j], tokens[i]
        elif kind == "replace":
            tokens[i] = draw(st.sampled_from(TOKENS))
        else:
            tokens.insert(i, draw(st.sampled_from(TOKENS)) + " ")
    return "".join(tokens)


@st.composite
def char_mutations(draw):
    chars = list(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(chars) - 1))
        kind = draw(st.sampled_from(["delete", "duplicate", "swap", "insert"]))
        if kind == "delete":
            del chars[i]
        elif kind == "duplicate":
            chars.insert(i, chars[i])
        elif kind == "swap":
            j = draw(st.integers(0, len(chars) - 1))
            chars[i], chars[j] = chars[j], chars[i]
        else:
            chars.insert(i, draw(st.sampled_from(list("(){}[],:+-*/=<>!#\"\n .0_xe$"))))
    return "".join(chars)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(token_mutations())
def test_token_mutations_of_valid_kernels(source):
    check(source)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(char_mutations())
def test_char_mutations_of_valid_kernels(source):
    check(source)


def test_seeds_are_valid():
    assert len(SEEDS) >= 5
    for name, source in SEEDS.items():
        assert parse(source, name).kernels, name


def test_pathological_inputs():
    for source in ("(" * 5000, "kernel k() { a = " + "1 + " * 3000 + "1 }",
                   "{" * 100, "kernel k() {" + "\n" * 10000 + "}", "\r\n\r\n", "\x00", ""):
        check(source)
