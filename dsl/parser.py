"""Parse .lbk source into the typed AST; every syntax error becomes a DSLSyntaxError.

`parse(source, filename)` and `parse_file(path)` are the entry points. The grammar lives in
grammar.lark (LALR(1)); a post-lexer decides which newlines end statements, and Lark's
exceptions are translated into messages such as "expected ',' or ')' but found '{'".
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedToken, VisitError
from lark.lexer import PatternStr

from lowbitc.dsl import ast
from lowbitc.dsl.tree_to_ast import ToAst
from lowbitc.errors import DSLSyntaxError, LowbitcError, SourceLoc, UserArgumentError

KEYWORDS = ("kernel", "func", "import", "for", "in", "if", "elif", "else", "return", "grid",
            "threads", "tune", "require", "and", "or", "not", "true", "false")

_DROP_NEWLINE_BEFORE = {"RBRACE", "LBRACE", "ELIF", "ELSE"}
_OPEN = {"LPAR": 1, "LSQB": 1, "RPAR": -1, "RSQB": -1}

_EXPR_START = {"NAME", "INT", "FLOAT", "TRUE", "FALSE", "LPAR", "LSQB", "MINUS", "TILDE", "NOT"}
_STMT_START = {"FOR", "IF", "RETURN"}
_COMPARE = {"EQ", "NE", "LT", "LE", "GT", "GE"}
_BINARY = {"BAR", "CARET", "AMP", "LSHIFT", "RSHIFT", "PLUS", "MINUS", "STAR", "SLASH",
           "DSLASH", "PERCENT", "AT", "AND", "OR"} | _COMPARE
_CONTINUATION = _BINARY | {"LPAR", "LSQB", "DOT", "EQUAL", "AUGOP", "SLICE_SIZE", "COLON"}
_NAMED = {"NAME": "a name", "INT": "an integer", "FLOAT": "a number", "STRING": "a string",
          "AUGOP": "'+=', '-=', '*=' or '/='", "_NL": "a new line", "$END": "end of file"}
_RANK = ["an expression", "a statement", "a name", "')'", "']'", "'}'", "','"]


class NewlinePostLexer:
    """Keeps only the newlines that end a statement inside braces (see grammar.lark)."""

    always_accept = ("_NL",)

    def process(self, stream: Iterator[Token]) -> Iterator[Token]:
        parens = braces = 0
        prev: str | None = None
        pending: Token | None = None
        for tok in stream:
            kind = tok.type
            if kind == "_NL":
                if parens == 0 and braces > 0 and prev not in (None, "LBRACE"):
                    pending = pending or tok
                continue
            if pending is not None and kind not in _DROP_NEWLINE_BEFORE:
                yield pending
            pending = None
            parens = max(parens + _OPEN.get(kind, 0), 0)
            if kind == "LBRACE":
                braces += 1
            elif kind == "RBRACE":
                braces = max(braces - 1, 0)
            prev = kind
            yield tok


@functools.cache
def _lark() -> Lark:
    grammar = (Path(__file__).parent / "grammar.lark").read_text()
    # cache=True keeps the LALR tables in the temp dir (keyed by grammar, options and Lark
    # version): 0.05 s instead of 0.3-1.5 s per process
    return Lark(grammar, parser="lalr", lexer="basic", postlex=NewlinePostLexer(),
                propagate_positions=True, maybe_placeholders=True, cache=True)


@functools.cache
def _terminal_texts() -> dict[str, str]:
    """Terminal name -> how a message shows it ("')'", "'for'", "a name")."""
    texts = dict(_NAMED)
    for term in _lark().terminals:
        if term.name not in texts and isinstance(term.pattern, PatternStr):
            texts[term.name] = f"'{term.pattern.value}'"
    return texts


def _source_lines(source: str) -> list[str]:
    return [line.rstrip("\r") for line in source.split("\n")]


def parse(source: str, filename: str = "<string>") -> ast.Module:
    """Parse one .lbk source text (imports are not followed; see load_module)."""
    if not isinstance(source, str):
        raise UserArgumentError(f"source: expected str, got {type(source).__name__}")
    lines = _source_lines(source)

    def loc(line: int, col: int) -> SourceLoc:
        text = lines[line - 1] if 0 < line <= len(lines) else ""
        return SourceLoc(filename, line, col, text)

    try:
        tree = _lark().parse(source)
    except UnexpectedCharacters as e:
        message = _bad_character(source, e.pos_in_stream)
        raise DSLSyntaxError(message, loc(e.line, e.column)) from None
    except UnexpectedToken as e:
        line, col, message = _describe_unexpected(source, e)
        raise DSLSyntaxError(message, loc(line, col)) from None
    except UnexpectedEOF:
        last = max(len(lines), 1)
        raise DSLSyntaxError("unexpected end of file", loc(last, len(lines[-1]) + 1)) from None
    try:
        return ToAst(filename, lines).transform(tree)
    except VisitError as e:
        if isinstance(e.orig_exc, LowbitcError):
            raise e.orig_exc from None
        raise


def _bad_character(source: str, pos: int) -> str:
    char = source[pos]
    if char != '"':
        return f"unexpected character {char!r}"
    rest = source[pos + 1:].split("\n", 1)[0]
    if '"' in rest and "\\" in rest[: rest.index('"')]:
        return "a string cannot contain '\\'"
    return "unterminated string"


def parse_file(path: str | Path) -> ast.Module:
    """Parse the .lbk file at path (imports are not followed; see load_module)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserArgumentError(f"path: cannot read {str(path)!r}: {e.strerror}") from None
    return parse(decode_source(data, str(path)), str(path))


def decode_source(data: bytes, filename: str) -> str:
    """UTF-8 text of a .lbk file (a leading BOM is dropped); invalid bytes are a
    DSLSyntaxError at their line."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        good = data[: e.start].decode("utf-8")
        line = good.count("\n") + 1
        col = len(good) - (good.rfind("\n") + 1) + 1
        text = good.split("\n")[-1]
        raise DSLSyntaxError("the file is not valid UTF-8", SourceLoc(filename, line, col,
                                                                       text)) from None


# ---- messages for unexpected tokens --------------------------------------------------


def _describe_unexpected(source: str, e: UnexpectedToken) -> tuple[int, int, str]:
    """(line, col, message) for a token the grammar does not allow where it stands."""
    tok, expected = e.token, _acceptable(e)
    if tok.type == "$END":
        line, col = (tok.end_line, tok.end_column) if tok.end_line else (1, 1)
        wanted = _expected_text(expected)
        return line, col, "unexpected end of file" + (f", expected {wanted}" if wanted else "")
    if _is_keyword(tok) and "NAME" in expected and tok.type not in expected:
        return tok.line, tok.column, f"'{tok}' is a keyword and cannot be a name"
    if tok.type in ("EQUAL", "AUGOP"):
        prev = _previous_token(source, tok)
        if prev is not None and _is_keyword(prev):
            return prev.line, prev.column, f"'{prev}' is a keyword and cannot be a name"
        if _after_postfix(e):
            return tok.line, tok.column, ("only a name can be assigned to; write to a tensor "
                                          "with store(...)")
    if tok.type == "STRING" and "STRING" not in expected:
        return tok.line, tok.column, ("a string may appear only after 'import' or as a "
                                      'keyword\'s value (rounding="up")')
    if tok.type in _COMPARE and _after_comparison(e):
        return tok.line, tok.column, "comparisons cannot be chained; combine them with 'and'"
    found = "end of line" if tok.type == "_NL" else f"'{tok}'"
    wanted = _expected_text(expected)
    return tok.line, tok.column, f"expected {wanted} but found {found}"


def _acceptable(e: UnexpectedToken) -> set[str]:
    """The terminals the parser could take at the error, exactly (LALR's own set is merged
    across contexts, so it names tokens that would fail a step later)."""
    try:
        accepts = e.interactive_parser.accepts()
    except Exception:  # noqa: BLE001 - any failure here falls back to Lark's own set
        accepts = set()
    return set(accepts) or set(e.expected)


def _after_comparison(e: UnexpectedToken) -> bool:
    """True if the expression being parsed already holds a comparison (so this one chains)."""
    try:
        stack = e.interactive_parser.parser_state.value_stack
    except AttributeError:
        return False
    for value in reversed(stack):
        if isinstance(value, Tree) and value.data in ("_compop", "compare"):
            return True
        if isinstance(value, Token) and value.type not in _BINARY:
            return False
    return False


def _after_postfix(e: UnexpectedToken) -> bool:
    """True if the parser has just read a call, subscript, attribute or parenthesis."""
    try:
        stack = e.interactive_parser.parser_state.value_stack
    except AttributeError:
        return False
    top = stack[-1] if stack else None
    if isinstance(top, Tree):
        return top.data in ("call", "subscript", "attribute")
    if isinstance(top, Token) and top.type == "NAME":
        return len(stack) > 1 and isinstance(stack[-2], Token) and stack[-2].type == "DOT"
    return isinstance(top, Token) and top.type in ("RPAR", "RSQB")


def _is_keyword(tok: Token) -> bool:
    return str(tok) in KEYWORDS


def _previous_token(source: str, tok: Token) -> Token | None:
    """The significant token before tok (re-lexes the source; errors only)."""
    prev = None
    try:
        for t in _lark().lex(source):
            if t.start_pos is not None and t.start_pos >= tok.start_pos:
                break
            if t.type != "_NL":
                prev = t
    except UnexpectedCharacters:
        pass
    return prev


def _expected_text(expected: set[str]) -> str:
    """'an expression', "',' or ')'", ... for a set of acceptable terminal names."""
    items = set(expected)
    words: set[str] = set()
    if {"NAME", "INT"} <= items:
        items -= _EXPR_START
        words.add("an expression")
        if _STMT_START <= items:
            items -= _STMT_START
            words = {"a statement"}
    if items - _CONTINUATION:
        items -= _CONTINUATION
    texts = _terminal_texts()
    words |= {texts.get(name, name) for name in items}
    ordered = sorted(words, key=lambda w: (_RANK.index(w) if w in _RANK else len(_RANK),
                                           w in ("a new line", "end of file"), w))
    if len(ordered) <= 1:
        return "".join(ordered)
    return ", ".join(ordered[:-1]) + " or " + ordered[-1]
