"""The .lbk front end: every construct parses to the expected AST, locs, to_source round
trips (on sample kernels and on random ASTs), golden syntax errors, and import resolution."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbitc.dsl import ast, load_module, load_source, parse, parse_file, to_source
from lowbitc.dsl.parser import KEYWORDS
from lowbitc.errors import DSLNameError, DSLSyntaxError, LowbitcError, UserArgumentError

A = ast

MATMUL = """\
# y[M, N] = x[M, K] @ dequant(w[N, K]).T
import "helpers.lbk"                      # path relative to the importing file

func silu(x) { return x / (1.0 + exp(-x)) }

kernel matmul[W: dtype = u4, BM: int = 16, BN: int = 64, BK: int = 128](
    x: f32[M, K], w: W[N, K], s: f32[N, G], z: f32[N, G], y: f32[M, N], group: int)
  grid (cdiv(M, BM), cdiv(N, BN)) threads 128
  tune BM in [1, 16, 64], BN in [32, 64, 128]
  require BM * BK <= 8192, BN % 32 == 0
{
  acc = zeros(f32, [BM, BN])
  for k in range(0, K, BK) {
    a = load(x[block.x*BM :+ BM, k :+ BK])
    q = load(w[block.y*BN :+ BN, k :+ BK], layout=spatial(4, 32) * local(1, 4))
    if k > 0 { acc = acc * 1.0 } else { acc = acc }
    acc = dot(a, transpose(cast(q, f32)), acc)
  }
  store(y[block.x*BM :+ BM, block.y*BN :+ BN], acc)
}
"""

GEMV = """\
kernel gemv[W: dtype = u3, BN: int = 8, BK: int = 256, G: int = 128](
    x: f32[K], w: W[N, K], s: f32[N, NG], y: f32[N])
  grid (cdiv(N, BN),)
  threads 64
  require BK % G == 0
{
  acc = zeros(f32, [BN])
  for k in range(0, K, BK) {
    xs = load(x[k :+ BK])
    for g in static_range(BK // G) {
      q = cast(load(w[block.x * BN :+ BN, k + g * G :+ G]), f32)
      sc = load(s[block.x * BN :+ BN, (k + g * G) // G])
      acc += sum(q * xs[g * G :+ G], axis=1) * sc
    }
  }
  store(y[block.x * BN :+ BN], acc)
}
"""

DEQUANT = """\
# u32 words hold 3-bit codes; view reinterprets the bits, cast decodes them
kernel dequant_u3[BR: int = 4, BC: int = 64](words: u32[R, KW], out: f32[R, C], zp: i32)
  grid (cdiv(R, BR), cdiv(C, BC))
{
  codes = view(load(words[block.x * BR :+ BR, :]), u3)
  lo = codes & 0x7
  hi = (codes >> 1) | 0b100
  v = where(lo != hi and not (lo == 0), cast(lo, f32) - zp, -1.5e-3)
  store(out[block.x * BR :+ BR, block.y * BC :+ BC], v)
}
"""

Q4_0 = """\
func dq(q: u4, d: f32) {
  return (cast(q, f32) - 8.0) * d
}

kernel q4_0_dequant(qs: u4[NB, 32], d: f16[NB], y: f32[NB, 32])
  grid (NB,) threads 32
{
  b = block.x
  t = load(qs[b, :])
  scale = cast(load(d[b :+ 1]), f32)
  if scale == 0.0 {
    store(y[b, 0:32], zeros(f32, [32]))
  } elif scale < 0.0 {
    store(y[b, :], dq(t, -scale) * -1.0)
  } else {
    store(y[b, :], dq(t, scale))
  }
}
"""

SHARED = """\
kernel staged[BM: int = 32, BK: int = 64, F: dtype = f6e3m2, FAST: bool = true,
              EPS: float = 1e-6](a: F[M, K], out: f32[M], n: i64)
  threads 128 grid (cdiv(M, BM))
  tune BM in [16, 32], F in [f6e3m2, nf4, u4]
{
  buf = shared(F, (BM, BK))
  m = full(f32, [BM], -1e9)
  for i in range(cdiv(K, BK)) {
    copy(buf, a[block.x * BM :+ BM, i * BK :+ BK])
    sync()
    t = cast(load(buf), f32)
    m = maximum(m, max(t, axis=1))
    m -= EPS
    m *= 2
    m /= 2.0
    sync()
  }
  store(out[block.x * BM :+ BM], m @ eye(BM))
}
"""

SAMPLES = {"matmul": MATMUL, "gemv": GEMV, "dequant": DEQUANT, "q4_0": Q4_0,
           "shared": SHARED}


def strip(node):
    return ast.strip_locs(node)


def kernel_body(stmts: str, header: str = "kernel k()") -> tuple:
    return strip(parse(f"{header} {{\n{stmts}\n}}")).kernels[0].body


def expr(text: str) -> ast.Node:
    (stmt,) = kernel_body(f"v = {text}")
    return stmt.value


# ---- every construct -------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_samples_parse_and_round_trip(name):
    module = parse(SAMPLES[name], f"{name}.lbk")
    assert module.kernels
    again = parse(to_source(module))
    assert strip(again) == strip(module)
    assert to_source(again) == to_source(module)


def test_range_stages_parse_and_round_trip():
    """`range(..., stages=S)` (a pipeline depth for the CUDA backend) keeps its expression;
    to_source writes it back."""
    (loop,) = kernel_body("for t in range(a, b, stages=ST) { }")
    assert loop.stages == ast.Name("ST") and not loop.unroll
    module = parse("kernel k[ST: int = 3]() {\n  for t in range(4, stages=ST) {\n  }\n}")
    assert "range(4, stages=ST)" in to_source(module)
    assert strip(parse(to_source(module))) == strip(module)


def test_matmul_header():
    (k,) = strip(parse(MATMUL)).kernels
    assert k.name == "matmul"
    assert k.cparams == (A.CParam("W", "dtype", A.Name("u4")), A.CParam("BM", "int", A.Int(16)),
                         A.CParam("BN", "int", A.Int(64)), A.CParam("BK", "int", A.Int(128)))
    assert k.params[1] == A.TensorParam("w", "W", (A.Name("N"), A.Name("K")))
    assert k.params[-1] == A.ScalarParam("group", "int")
    cdiv = A.Name("cdiv")
    assert k.grid == (A.Call(cdiv, (A.Name("M"), A.Name("BM"))),
                      A.Call(cdiv, (A.Name("N"), A.Name("BN"))))
    assert k.threads == A.Int(128)
    assert k.tunes == (A.Tune("BM", (A.Int(1), A.Int(16), A.Int(64))),
                       A.Tune("BN", (A.Int(32), A.Int(64), A.Int(128))))
    assert k.requires == (
        A.Compare("<=", A.BinOp("*", A.Name("BM"), A.Name("BK")), A.Int(8192)),
        A.Compare("==", A.BinOp("%", A.Name("BN"), A.Int(32)), A.Int(0)))


def test_module_items_any_order():
    m = strip(parse('kernel a() {\n}\nfunc f() { return 1 }\nimport "x.lbk"\nkernel b() { }'))
    assert [k.name for k in m.kernels] == ["a", "b"]
    assert m.funcs == (A.Func("f", (), (A.Return(A.Int(1)),)),)
    assert m.imports == (A.Import("x.lbk"),)


def test_minimal_kernel_has_no_clauses():
    (k,) = strip(parse("kernel k() {}")).kernels
    assert k == A.Kernel("k", (), (), (), None, (), (), ())


def test_func_params_with_annotations():
    (f,) = strip(parse("func f(x: f32, n: int, y) { return x }")).funcs
    assert f.params == (A.Param("x", "f32"), A.Param("n", "int"), A.Param("y"))


def test_tensor_dims_names_and_ints_trailing_commas():
    (k,) = strip(parse("kernel k[A: int,](x: f32[M, 32], y: u4[7], n: i32,) {}")).kernels
    assert k.params == (A.TensorParam("x", "f32", (A.Name("M"), A.Int(32))),
                        A.TensorParam("y", "u4", (A.Int(7),)), A.ScalarParam("n", "i32"))
    assert k.cparams == (A.CParam("A", "int"),)


def test_a_condition_chooses_the_declared_shape():
    src = "kernel k[T: bool = false](s: f32[G, N] if T else [N, G], y: f32[N]) {}"
    (k,) = strip(parse(src)).kernels
    assert k.params[0] == A.TensorParam("s", "f32", (A.Name("G"), A.Name("N")), A.Name("T"),
                                        (A.Name("N"), A.Name("G")))
    assert to_source(parse(to_source(parse(src)))) == to_source(parse(src))
    from lowbitc.compiler import compile
    for t, shape in ((False, ("N", "G")), (True, ("G", "N"))):
        assert compile(src, T=t).ir.params[0].type.shape == shape
    with pytest.raises(LowbitcError, match="shape condition of s must be a compile-time bool"):
        compile(src.replace("if T", "if 3"))


def test_statements():
    body = kernel_body("a = 1\na += 2\na -= 3\na *= 4\na /= 5\nsync()")
    assert body == (A.Assign("a", A.Int(1)), A.AugAssign("a", "+", A.Int(2)),
                    A.AugAssign("a", "-", A.Int(3)), A.AugAssign("a", "*", A.Int(4)),
                    A.AugAssign("a", "/", A.Int(5)), A.ExprStmt(A.Call(A.Name("sync"))))


@pytest.mark.parametrize("header,start,stop,step", [
    ("range(n)", A.Int(0), A.Name("n"), A.Int(1)),
    ("range(2, n)", A.Int(2), A.Name("n"), A.Int(1)),
    ("range(2, n, 4)", A.Int(2), A.Name("n"), A.Int(4)),
])
def test_for_range_is_normalised(header, start, stop, step):
    (f,) = kernel_body(f"for i in {header} {{ x = i }}")
    assert f == A.For("i", start, stop, step, False, (A.Assign("x", A.Name("i")),))


def test_static_range_unrolls_and_defaults_sit_at_the_header():
    (f,) = parse("kernel k() {\n  for i in static_range(4) { }\n}").kernels[0].body
    assert f.unroll and f.body == ()
    assert (f.start.loc.line, f.start.loc.col) == (2, 3) == (f.loc.line, f.loc.col)
    assert f.step.value == 1


def test_if_elif_else_nests_in_orelse():
    src = "if a { x = 1 }\nelif b { x = 2 }\nelif c { x = 3 } else { x = 4 }"
    (s,) = kernel_body(src)
    x = [A.Assign("x", A.Int(i)) for i in range(1, 5)]
    inner = A.If(A.Name("c"), (x[2],), (x[3],))
    assert s == A.If(A.Name("a"), (x[0],), (A.If(A.Name("b"), (x[1],), (inner,)),))
    assert kernel_body("if a { }") == (A.If(A.Name("a"), ()),)


def test_newline_rules():
    body = kernel_body("""
      # comment line

      a = f(1,
            2)   # call spans lines
      if a
      {
        b = [1,
             2]
      }
      else
      {
      }
      c = a""")
    assert [type(s).__name__ for s in body] == ["Assign", "If", "Assign"]


@pytest.mark.parametrize("text,expected", [
    ("a or b and not c", A.BoolOp("or", A.Name("a"), A.BoolOp(
        "and", A.Name("b"), A.UnaryOp("not", A.Name("c"))))),
    ("not a == b", A.UnaryOp("not", A.Compare("==", A.Name("a"), A.Name("b")))),
    ("a | b ^ c & d", A.BinOp("|", A.Name("a"), A.BinOp(
        "^", A.Name("b"), A.BinOp("&", A.Name("c"), A.Name("d"))))),
    ("a << 1 + 2", A.BinOp("<<", A.Name("a"), A.BinOp("+", A.Int(1), A.Int(2)))),
    ("a - b - c", A.BinOp("-", A.BinOp("-", A.Name("a"), A.Name("b")), A.Name("c"))),
    ("a + b * c", A.BinOp("+", A.Name("a"), A.BinOp("*", A.Name("b"), A.Name("c")))),
    ("a @ b // c % d / e", A.BinOp("/", A.BinOp("%", A.BinOp(
        "//", A.BinOp("@", A.Name("a"), A.Name("b")), A.Name("c")), A.Name("d")), A.Name("e"))),
    ("-a * ~b", A.BinOp("*", A.UnaryOp("-", A.Name("a")), A.UnaryOp("~", A.Name("b")))),
    ("a < b | c", A.Compare("<", A.Name("a"), A.BinOp("|", A.Name("b"), A.Name("c")))),
    ("f(a, b, key=e)", A.Call(A.Name("f"), (A.Name("a"), A.Name("b")), (("key", A.Name("e")),))),
    ("f(a)(b)", A.Call(A.Call(A.Name("f"), (A.Name("a"),)), (A.Name("b"),))),
    ("block.x.y", A.Attribute(A.Attribute(A.Name("block"), "x"), "y")),
    ("-t[i].s", A.UnaryOp("-", A.Attribute(A.Subscript(A.Name("t"), (A.Name("i"),)), "s"))),
    ("(a, b)", A.TupleExpr((A.Name("a"), A.Name("b")))),
    ("(a,)", A.TupleExpr((A.Name("a"),))),
    ("()", A.TupleExpr(())),
    ("(a)", A.Name("a")),
    ("[a, b,]", A.ListExpr((A.Name("a"), A.Name("b")))),
    ("[]", A.ListExpr(())),
    ("true != false", A.Compare("!=", A.Bool(True), A.Bool(False))),
])
def test_expressions(text, expected):
    assert expr(text) == expected


@pytest.mark.parametrize("text,value", [
    ("0", 0), ("42", 42), ("1_000_000", 1000000), ("0x1F", 31), ("0XfF_ff", 0xFFFF),
    ("0b101", 5), ("0B1_0", 2), ("1.0", 1.0), (".5", 0.5), ("1e-3", 1e-3), ("2.5e+3", 2500.0),
    ("1_0.2_5", 10.25), ("3E2", 300.0),
])
def test_number_literals(text, value):
    node = expr(text)
    assert node.value == value and type(node.value) is type(value)


def test_subscript_items():
    e = expr("t[i, a :+ 4, 0 : n, :]")
    assert e == A.Subscript(A.Name("t"), (A.Name("i"), A.SliceSize(A.Name("a"), A.Int(4)),
                                           A.SliceRange(A.Int(0), A.Name("n")), A.SliceAll()))


def test_locations_point_at_the_first_character():
    m = parse(MATMUL, "mm.lbk")
    k = m.kernels[0]
    assert (k.loc.file, k.loc.line, k.loc.col) == ("mm.lbk", 6, 1)
    assert k.loc.text.startswith("kernel matmul[")
    loop = k.body[1]
    load = loop.body[0].value
    assert (load.loc.line, load.loc.col) == (14, 9)
    slice0 = load.args[0].items[0]
    assert (slice0.loc.line, slice0.loc.col) == (14, 16) and slice0.loc.text == load.loc.text
    assert m.imports[0].loc.line == 2 and m.funcs[0].params[0].loc.col == 11
    for node in ast.walk(m):
        assert node.loc.file == "mm.lbk" and node.loc.line >= 1, ast.dump(node)


def test_nodes_are_frozen_and_hashable():
    m = parse(MATMUL)
    assert len({m, m}) == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.kernels[0].name = "x"


def test_dump_is_constructor_like():
    assert ast.dump(expr("f(a, k=1)")) == "Call(Name('f'), (Name('a'),), (('k', Int(1)),))"
    assert ast.dump(parse("kernel k() {}"), locs=True).endswith("loc='<string>:1:1')")


# ---- to_source round trips over random ASTs -------------------------------------------

_names = st.sampled_from(["a", "b", "x1", "_t", "block", "f32", "range"])
_leaves = st.one_of(
    st.builds(A.Name, _names), st.builds(A.Int, st.integers(0, 2**70)),
    st.builds(A.Float, st.floats(min_value=0, allow_nan=False, allow_infinity=True)),
    st.builds(A.Bool, st.booleans()))


def _compound(children):
    binop = st.sampled_from(["+", "-", "*", "/", "//", "%", "@", "|", "^", "&", "<<", ">>"])
    item = st.one_of(children, st.builds(A.SliceSize, children, children),
                     st.builds(A.SliceRange, children, children), st.builds(A.SliceAll))
    small = st.lists(children, max_size=3).map(tuple)
    kwargs = st.lists(st.tuples(st.sampled_from(["k", "layout"]), children), max_size=1)
    return st.one_of(
        st.builds(A.BinOp, binop, children, children),
        st.builds(A.UnaryOp, st.sampled_from(["-", "~", "not"]), children),
        st.builds(A.Compare, st.sampled_from(["==", "!=", "<", "<=", ">", ">="]),
                  children, children),
        st.builds(A.BoolOp, st.sampled_from(["and", "or"]), children, children),
        st.builds(A.Call, children, small, kwargs.map(tuple)),
        st.builds(A.Subscript, children, st.lists(item, min_size=1, max_size=3).map(tuple)),
        st.builds(A.Attribute, children, _names),
        st.builds(A.TupleExpr, small), st.builds(A.ListExpr, small))


_exprs = st.recursive(_leaves, _compound, max_leaves=12)


@settings(max_examples=150, deadline=None)
@given(_exprs)
def test_to_source_round_trips_random_expressions(e):
    assert expr(to_source(e)) == e


_stmts = st.recursive(
    st.one_of(st.builds(A.Assign, _names, _exprs),
              st.builds(A.AugAssign, _names, st.sampled_from("+-*/"), _exprs),
              st.builds(A.ExprStmt, _exprs), st.builds(A.Return, _exprs)),
    lambda body: st.one_of(
        st.builds(A.For, _names, _exprs, _exprs, _exprs, st.booleans(),
                  st.lists(body, max_size=3).map(tuple)),
        st.builds(A.If, _exprs, st.lists(body, max_size=2).map(tuple),
                  st.lists(body, max_size=2).map(tuple))),
    max_leaves=6)


@settings(max_examples=50, deadline=None)
@given(st.lists(_stmts, max_size=4).map(tuple))
def test_to_source_round_trips_random_statements(body):
    func = A.Func("f", (A.Param("x", "f32"), A.Param("y")), body)
    assert strip(parse(to_source(A.Module(funcs=(func,))))).funcs == (func,)


# ---- syntax errors: exact messages ------------------------------------------------------

GOLDEN_ERRORS = [
    ("kernel k(x: f32[M, K], n: int {\n}",
     "t.lbk:1:31: DSLSyntaxError: expected ')' or ',' but found '{'\n"
     "    kernel k(x: f32[M, K], n: int {\n"
     "                                  ^"),
    ("kernel k() {\n  a = 1\n",
     "t.lbk:2:8: DSLSyntaxError: unexpected end of file, expected '}' or a new line\n"
     "      a = 1\n"
     "           ^"),
    ("kernel k() {\n  for = 1\n}",
     "t.lbk:2:3: DSLSyntaxError: 'for' is a keyword and cannot be a name\n"
     "      for = 1\n"
     "      ^"),
    ("kernel k() {\n\tx = tune + 1\n}",
     "t.lbk:2:6: DSLSyntaxError: 'tune' is a keyword and cannot be a name\n"
     "    \tx = tune + 1\n"
     "    \t    ^"),
    ("kernel k() {\n  a = b < c < d\n}",
     "t.lbk:2:13: DSLSyntaxError: comparisons cannot be chained; combine them with 'and'\n"
     "      a = b < c < d\n"
     "                ^"),
    ("kernel k() {\n  a = 1 b = 2\n}",
     "t.lbk:2:9: DSLSyntaxError: expected '}' or a new line but found 'b'\n"
     "      a = 1 b = 2\n"
     "            ^"),
    ("kernel k() {\n  a = \n  b = 2\n}",
     "t.lbk:2:7: DSLSyntaxError: expected an expression but found end of line\n"
     "      a = \n"
     "          ^"),
    ("kernel k() {\n  a = \n}",
     "t.lbk:3:1: DSLSyntaxError: expected an expression but found '}'\n"
     "    }\n"
     "    ^"),
    ("kernel k() { t[0] = 1 }",
     "t.lbk:1:19: DSLSyntaxError: only a name can be assigned to; write to a tensor with "
     "store(...)\n"
     "    kernel k() { t[0] = 1 }\n"
     "                      ^"),
    ("kernel k() { a = 3 $ 4 }",
     "t.lbk:1:20: DSLSyntaxError: unexpected character '$'\n"
     "    kernel k() { a = 3 $ 4 }\n"
     "                       ^"),
    ('import "a.lbk\n',
     "t.lbk:1:8: DSLSyntaxError: unterminated string\n"
     '    import "a.lbk\n'
     "           ^"),
    ("kernel k() grid (1, 2, 3, 4) {}",
     "t.lbk:1:27: DSLSyntaxError: a grid has 1 to 3 dimensions, got 4\n"
     "    kernel k() grid (1, 2, 3, 4) {}\n"
     "                              ^"),
    ("kernel k()",
     "t.lbk:1:11: DSLSyntaxError: unexpected end of file, expected 'grid', 'require', "
     "'threads', 'tune' or '{'\n"
     "    kernel k()\n"
     "              ^"),
    ("kernel k() {}\n}",
     "t.lbk:2:1: DSLSyntaxError: expected 'func', 'import', 'kernel' or end of file but "
     "found '}'\n"
     "    }\n"
     "    ^"),
    ("kernel k() {\n  for i in rng(4) { }\n}",
     "t.lbk:2:12: DSLSyntaxError: expected 'range' or 'static_range' after 'in', found 'rng'\n"
     "      for i in rng(4) { }\n"
     "               ^"),
]


@pytest.mark.parametrize("source,message", GOLDEN_ERRORS)
def test_golden_syntax_errors(source, message):
    with pytest.raises(DSLSyntaxError) as info:
        parse(source, "t.lbk")
    assert str(info.value) == message


@pytest.mark.parametrize("source,message", [
    ("kernel k[B: str]() {}", "compile-time parameter 'B' has kind 'str'; expected one of "
                              "dtype, int, float, bool"),
    ("kernel k() { for i in range() { } }", "range() takes 1 to 3 arguments, got 0"),
    ("kernel k() { for i in range(n, step=2) { } }",
     "range() takes no keyword argument 'step' (only stages=)"),
    ("kernel k() { for i in static_range(4, stages=2) { } }",
     "static_range() takes no keyword argument 'stages'"),
    ("kernel k() { f(a=1, 2) }", "positional argument after a keyword argument"),
    ("kernel k() { f(a=1, a=2) }", "keyword argument 'a' given twice"),
    ("kernel k[x: int](x: f32) {}", "duplicate parameter 'x'"),
    ("func f(x, x) { return x }", "duplicate parameter 'x'"),
    ("kernel k() threads 4 threads 8 {}", "duplicate 'threads' clause"),
    ("kernel k[A: int]() tune A in [1], A in [2] {}", "duplicate tune 'A'"),
    ("kernel k() { a = " + "(" * 150 + "1" + ")" * 150 + " }", None),
    ("kernel k() { a = " + "-" * 150 + "1 }", "expression nested too deeply"),
    ("kernel k() {" + " if a {" * 70 + " }" * 70 + "}", "blocks nested too deeply"),
    ("kernel k() {\n if a { }" + " elif a { }" * 70 + "\n}", "blocks nested too deeply"),
    ("kernel k() {" + " for i in range(3) {" * 70 + " }" * 70 + "}",
     "blocks nested too deeply"),
    ("kernel k() { a = c ** 2 }", "expected an expression but found '*'"),
    ("kernel k() { b //= 3 }", "expected an expression but found '='"),
    ('kernel k() { a = "s" }', "a string may appear only after 'import'"),
    ('import "a\\b.lbk"', "a string cannot contain '\\'"),
])
def test_other_syntax_errors(source, message):
    if message is None:
        parse(source)  # parentheses alone do not deepen the AST
        return
    with pytest.raises(DSLSyntaxError, match=None) as info:
        parse(source)
    assert message in info.value.message


@pytest.mark.parametrize("word", KEYWORDS)
def test_keywords_cannot_be_names(word):
    for source in (f"kernel k() {{ x = a.{word} }}", f"kernel {word}() {{}}",
                   f"func f({word}) {{ return 1 }}", f"kernel k() {{ {word} = 1 }}",
                   f"kernel k(x: f32[{word}]) {{}}"):
        with pytest.raises(DSLSyntaxError) as info:
            parse(source)
        assert info.value.message == f"'{word}' is a keyword and cannot be a name", source
        assert info.value.loc.text == source


def test_bad_arguments():
    with pytest.raises(UserArgumentError, match="source: expected str, got bytes"):
        parse(b"kernel k() {}")
    with pytest.raises(UserArgumentError, match="path: cannot read"):
        parse_file("/nonexistent/x.lbk")


def test_parse_file_and_bad_utf8(tmp_path):
    good = tmp_path / "g.lbk"
    good.write_text(GEMV)
    assert parse_file(good).kernels[0].loc.file == str(good)
    bom = tmp_path / "bom.lbk"
    bom.write_bytes(b"\xef\xbb\xbfkernel k() {}")
    assert parse_file(bom).kernels[0].loc.col == 1
    bad = tmp_path / "b.lbk"
    bad.write_bytes(b"kernel k() {\n  a = \xff\n}")
    with pytest.raises(DSLSyntaxError, match="not valid UTF-8") as info:
        parse_file(bad)
    assert (info.value.loc.line, info.value.loc.col) == (2, 7)


# ---- imports --------------------------------------------------------------------------


def _write(root, files: dict[str, str]):
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_load_module_merges_imports_relative_to_each_file(tmp_path):
    _write(tmp_path, {
        "main.lbk": 'import "lib/act.lbk"\nimport "lib/act.lbk"\nkernel k() { }',
        "lib/act.lbk": 'import "../common.lbk"\nimport "sub/x.lbk"\nfunc silu(x) { return x }',
        "lib/sub/x.lbk": 'import "../../common.lbk"\nfunc x() { return 1 }',
        "common.lbk": "func c() { return 0 }",
    })
    m = load_module(tmp_path / "main.lbk")
    assert m.imports == ()
    assert [f.name for f in m.funcs] == ["c", "x", "silu"]
    assert [k.name for k in m.kernels] == ["k"]
    assert m.funcs[0].loc.file.endswith("common.lbk") and m.funcs[0].loc.line == 1


def test_load_module_errors(tmp_path):
    _write(tmp_path, {
        "cyc_a.lbk": 'import "cyc_b.lbk"\nkernel a() {}',
        "cyc_b.lbk": 'func g() { return 1 }\nimport "cyc_a.lbk"',
        "missing.lbk": 'func f() { return 1 }\n  import "nope.lbk"',
        "dup.lbk": 'import "lib.lbk"\nfunc f() { return 2 }',
        "lib.lbk": "func f() { return 1 }",
        "bad.lbk": 'import "broken.lbk"',
        "broken.lbk": "kernel k( {}",
    })
    with pytest.raises(DSLNameError) as info:
        load_module(tmp_path / "cyc_a.lbk")
    assert info.value.message == "import cycle: cyc_a.lbk -> cyc_b.lbk -> cyc_a.lbk"
    assert info.value.loc.file.endswith("cyc_b.lbk") and info.value.loc.line == 2
    with pytest.raises(DSLNameError, match="cannot import 'nope.lbk'") as info:
        load_module(tmp_path / "missing.lbk")
    assert (info.value.loc.line, info.value.loc.col) == (2, 3)
    with pytest.raises(DSLNameError) as info:
        load_module(tmp_path / "dup.lbk")
    assert info.value.message.startswith("'f' is already defined at ")
    assert info.value.loc.file.endswith("dup.lbk") and info.value.loc.line == 2
    with pytest.raises(DSLSyntaxError) as info:
        load_module(tmp_path / "bad.lbk")
    assert info.value.loc.file.endswith("broken.lbk")
    with pytest.raises(UserArgumentError):
        load_module(tmp_path / "none.lbk")


def test_load_source_resolves_against_base_dir(tmp_path):
    _write(tmp_path, {"h.lbk": "func h(x) { return x }"})
    m = load_source('import "h.lbk"\nkernel k() { }\nfunc g() { return 1 }', "s.lbk", tmp_path)
    assert [f.name for f in m.funcs] == ["h", "g"]
    with pytest.raises(DSLNameError, match="already defined"):
        load_source("kernel k() {}\nfunc k() { return 1 }")


def test_every_error_is_a_lowbitc_error():
    assert issubclass(DSLSyntaxError, LowbitcError) and issubclass(DSLNameError, LowbitcError)


def test_docs_examples_parse():
    """Every ```lbk block of docs/dsl.md is a complete file that parses and round trips."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "dsl.md").read_text()
    blocks = re.findall(r"^```lbk\n(.*?)^```", text, re.S | re.M)
    assert len(blocks) >= 8
    for block in blocks:
        module = parse(block, "dsl.md")
        assert strip(parse(to_source(module))) == strip(module)
