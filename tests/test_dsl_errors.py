"""Golden error messages for bad .lbk source: each names file:line:col, shows the source line
and puts a caret under the culprit; each is a LowbitcError subclass (the CLI prints it
without a traceback). Also: wrong arguments to a compiled kernel fail before native code."""

# ruff: noqa: E501  (golden messages are kept verbatim, one line each)
from __future__ import annotations

import numpy as np
import pytest

from lowbitc.compiler import compile
from lowbitc.errors import (
    DSLNameError,
    DSLSyntaxError,
    DSLTypeError,
    LowbitcError,
    UserArgumentError,
)

K2 = "kernel k(x: f32[N], y: f32[N]) {{\n  {}\n}}\n"  # a one-statement kernel body


def golden(error: type, source: str, expected: str, **params) -> None:
    with pytest.raises(error) as info:
        compile(source, **params)
    assert isinstance(info.value, LowbitcError)
    assert str(info.value) == expected.strip("\n")


CASES = {
    "syntax-unclosed-call": (
        DSLSyntaxError, "kernel k(x: f32[N]) {\n  a = load(x[0 :+ 4]\n}\n", {}, """
<string>:3:1: DSLSyntaxError: expected ')' or ',' but found '}'
    }
    ^"""),
    "syntax-double-equals": (
        DSLSyntaxError, "kernel k(x: f32[N]) {\n  a = = 3\n}\n", {}, """
<string>:2:7: DSLSyntaxError: expected an expression but found '='
      a = = 3
          ^"""),
    "unknown-variable": (
        DSLNameError, K2.format("store(y[0 :+ 4], load(z[0 :+ 4]))"), {}, """
<string>:2:25: DSLNameError: name 'z' is not defined
      store(y[0 :+ 4], load(z[0 :+ 4]))
                            ^"""),
    "unknown-function": (
        DSLNameError, K2.format("store(y[0 :+ 4], frob(load(x[0 :+ 4])))"), {}, """
<string>:2:20: DSLNameError: name 'frob' is not defined
      store(y[0 :+ 4], frob(load(x[0 :+ 4])))
                       ^"""),
    "unknown-format": (
        DSLNameError, "kernel k(x: q7[N], y: f32[N]) {\n  store(y[0 :+ 4], 1.0)\n}\n", {}, """
<string>:1:10: DSLNameError: unknown format 'q7'
    kernel k(x: q7[N], y: f32[N]) {
             ^"""),
    "min-of-a-dtype": (
        DSLTypeError, K2.format("store(y[0 :+ 4], min(f32, [4]))"), {}, """
<string>:2:20: DSLTypeError: min(a, b) takes two numbers or tiles, got Format(name='f32') and (4,)
      store(y[0 :+ 4], min(f32, [4]))
                       ^"""),
    "dim-named-by-a-dtype-param": (
        DSLTypeError, "kernel k[W: dtype = u4](x: W[W, N], y: f32[N]) {\n"
        "  store(y[0 :+ 4], 1.0)\n}\n", {}, """
<string>:1:30: DSLTypeError: dim W of x must be a non-negative int, got u4
    kernel k[W: dtype = u4](x: W[W, N], y: f32[N]) {
                                 ^"""),
    "unknown-block-axis": (
        DSLNameError, K2.format("store(y[block.w :+ 4], load(x[0 :+ 4]))"), {}, """
<string>:2:11: DSLNameError: block has x, y and z, not 'w'
      store(y[block.w :+ 4], load(x[0 :+ 4]))
              ^"""),
    "dot-of-incompatible-tiles": (
        DSLTypeError, "kernel k(x: f32[N, N], y: f32[N, N]) {\n  a = load(x[0 :+ 4, 0 :+ 8])\n"
        "  store(y[0 :+ 4, 0 :+ 4], dot(a, a))\n}\n", {}, """
<string>:3:28: DSLTypeError: dot: shapes do not chain: tile<f32[4,8]> @ tile<f32[4,8]> + tile<f32[4,8]>
      store(y[0 :+ 4, 0 :+ 4], dot(a, a))
                               ^"""),
    "tiles-that-do-not-broadcast": (
        DSLTypeError, K2.format("store(y[0 :+ 4], load(x[0 :+ 4]) + load(x[0 :+ 3]))"), {}, """
<string>:2:20: DSLTypeError: add: shapes [4] and [3] do not broadcast
      store(y[0 :+ 4], load(x[0 :+ 4]) + load(x[0 :+ 3]))
                       ^"""),
    "store-f32-into-f16": (
        DSLTypeError, "kernel k(x: f32[N], y: f16[N]) {\n  store(y[0 :+ 4], load(x[0 :+ 4]))\n}\n",
        {}, """
<string>:2:20: DSLTypeError: store: the value is f32 but y holds f16; cast it with cast(value, f16)
      store(y[0 :+ 4], load(x[0 :+ 4]))
                       ^"""),
    "mixed-types-in-arithmetic": (
        DSLTypeError, "kernel k(x: f32[N], y: f32[N], n: int) {\n"
        "  store(y[0 :+ 4], load(x[0 :+ 4]) + n)\n}\n", {}, """
<string>:2:20: DSLTypeError: operands have different types (f32 and i64); cast one with cast(x, T)
      store(y[0 :+ 4], load(x[0 :+ 4]) + n)
                       ^"""),
    "arithmetic-on-codes": (
        DSLTypeError, "kernel k(x: u4[N], y: f32[N]) {\n  store(y[0 :+ 4], load(x[0 :+ 4]) + 1.0)\n}\n",
        {}, """
<string>:2:20: DSLTypeError: a number cannot be a u4 value; cast the u4 codes to a machine type first, e.g. cast(q, f32)
      store(y[0 :+ 4], load(x[0 :+ 4]) + 1.0)
                       ^"""),
    "cast-u4-to-f4e2m1": (
        DSLTypeError, "kernel k(x: u4[N], y: f4e2m1[N]) {\n"
        "  store(y[0 :+ 4], cast(load(x[0 :+ 4]), f4e2m1))\n}\n", {}, """
<string>:2:20: DSLTypeError: cast from u4 to f4e2m1 has no meaning; go through f32
      store(y[0 :+ 4], cast(load(x[0 :+ 4]), f4e2m1))
                       ^"""),
    "slice-size-not-compile-time": (
        DSLTypeError, "kernel k(x: f32[N], y: f32[N], n: int) {\n"
        "  store(y[0 :+ 4], load(x[0 :+ n]))\n}\n", {}, """
<string>:2:32: DSLTypeError: slice size must be a compile-time int >= 1, got i64
      store(y[0 :+ 4], load(x[0 :+ n]))
                                   ^"""),
    "wrong-number-of-subscripts": (
        DSLTypeError, "kernel k(x: f32[N, M], y: f32[N]) {\n  store(y[0 :+ 4], load(x[0 :+ 4]))\n}\n",
        {}, """
<string>:2:25: DSLTypeError: x has 2 dims (tensor<f32[N,M]>), got 1 subscripts
      store(y[0 :+ 4], load(x[0 :+ 4]))
                            ^"""),
    "missing-cparam": (
        DSLTypeError, "kernel k[B: int](x: f32[N], y: f32[N]) {\n"
        "  store(y[0 :+ B], load(x[0 :+ B]))\n}\n", {}, """
<string>:1:10: DSLTypeError: compile-time parameter B has no default; pass it
    kernel k[B: int](x: f32[N], y: f32[N]) {
             ^"""),
    "cparam-of-the-wrong-kind": (
        DSLTypeError, "kernel k[B: int = 4](x: f32[N], y: f32[N]) {\n"
        "  store(y[0 :+ B], load(x[0 :+ B]))\n}\n", {"B": "wide"}, """
<string>:1:10: DSLTypeError: B must be int, got 'wide'
    kernel k[B: int = 4](x: f32[N], y: f32[N]) {
             ^"""),
    "unknown-compile-time-parameter": (
        DSLNameError, "kernel k[B: int = 4](x: f32[N], y: f32[N]) {\n"
        "  store(y[0 :+ B], load(x[0 :+ B]))\n}\n", {"BX": 8}, """
<string>:1:1: DSLNameError: kernel k has no compile-time parameter BX; it has: B
    kernel k[B: int = 4](x: f32[N], y: f32[N]) {
    ^"""),
    "unknown-keyword-argument": (
        DSLTypeError, K2.format("store(y[0 :+ 4], load(x[0 :+ 4], msk=true))"), {}, """
<string>:2:40: DSLTypeError: load() has no argument 'msk' (it takes src, mask, layout)
      store(y[0 :+ 4], load(x[0 :+ 4], msk=true))
                                           ^"""),
    "require-that-fails": (
        DSLTypeError, "kernel k[B: int = 3](x: f32[N], y: f32[N])\n  require B % 2 == 0\n{\n"
        "  store(y[0 :+ B], load(x[0 :+ B]))\n}\n", {}, """
<string>:2:11: DSLTypeError: requirement does not hold for these parameters: B=3
      require B % 2 == 0
              ^"""),
    "mask-that-is-not-bool": (
        DSLTypeError, K2.format("store(y[0 :+ 4], load(x[0 :+ 4], mask=arange(4)))"), {}, """
<string>:2:41: DSLTypeError: load: mask must be a bool tile, got tile<i64[4]>
      store(y[0 :+ 4], load(x[0 :+ 4], mask=arange(4)))
                                            ^"""),
    "func-arity": (
        DSLTypeError, "func f(a, b) { return a + b }\nkernel k(x: f32[N], y: f32[N]) {\n"
        "  store(y[0 :+ 4], f(load(x[0 :+ 4])))\n}\n", {}, """
<string>:3:20: DSLTypeError: f takes 2 positional arguments
      store(y[0 :+ 4], f(load(x[0 :+ 4])))
                       ^"""),
    "reshape-to-another-size": (
        DSLTypeError, K2.format("store(y[0 :+ 4], reshape(load(x[0 :+ 4]), [3]))"), {}, """
<string>:2:20: DSLTypeError: reshape: cannot reshape tile<f32[4]> to [3]
      store(y[0 :+ 4], reshape(load(x[0 :+ 4]), [3]))
                       ^"""),
    "if-branches-of-different-types": (
        DSLTypeError, "kernel k(x: f32[N], y: f32[N], n: int) {\n  a = 1.0\n"
        "  if n > 3 { a = load(x[0 :+ 4]) }\n  store(y[0 :+ 4], a)\n}\n", {}, """
<string>:3:3: DSLTypeError: the branches of an if give variables different types
      if n > 3 { a = load(x[0 :+ 4]) }
      ^"""),
    "return-outside-a-func": (
        DSLTypeError, K2.format("return 3"), {}, """
<string>:2:3: DSLTypeError: return outside a func
      return 3
      ^"""),
    "calling-a-tensor": (
        DSLTypeError, K2.format("store(y[0 :+ 4], x(3))"), {}, """
<string>:2:20: DSLTypeError: tensor<f32[N]> is not callable
      store(y[0 :+ 4], x(3))
                       ^"""),
    "swizzle-of-a-float": (
        DSLTypeError, K2.format("s = shared(f32, [4, 8], layout=swizzle(1, 1.5, 2))"), {}, """
<string>:2:34: DSLTypeError: swizzle() takes compile-time ints, got [1, 1.5, 2]
      s = shared(f32, [4, 8], layout=swizzle(1, 1.5, 2))
                                     ^"""),
    "layout-of-a-float": (
        DSLTypeError, K2.format("t = load(x[0 :+ 8], layout=spatial(8, 0.5))"), {}, """
<string>:2:30: DSLTypeError: spatial() takes compile-time ints, got [8, 0.5]
      t = load(x[0 :+ 8], layout=spatial(8, 0.5))
                                 ^"""),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_error_message(case):
    error, source, params, expected = CASES[case]
    golden(error, source, expected, **params)


def test_errors_in_a_file_name_the_file(tmp_path):
    path = tmp_path / "bad.lbk"
    path.write_text("# a comment\nkernel k(x: f32[N], y: f32[N]) {\n"
                    "  store(y[0 :+ 4], cast(load(x[0 :+ 4]), q9))\n}\n")
    with pytest.raises(DSLNameError) as info:
        compile(path)
    assert str(info.value) == (f"{path}:3:42: DSLNameError: name 'q9' is not defined\n"
                               "      store(y[0 :+ 4], cast(load(x[0 :+ 4]), q9))\n"
                               "                                             ^")


def test_errors_inside_an_imported_func_point_into_the_imported_file(tmp_path):
    (tmp_path / "lib.lbk").write_text("func twice(a) {\n  return a * undefined_thing\n}\n")
    main = tmp_path / "main.lbk"
    main.write_text('import "lib.lbk"\nkernel k(x: f32[N], y: f32[N]) {\n'
                    "  store(y[0 :+ 4], twice(load(x[0 :+ 4])))\n}\n")
    with pytest.raises(DSLNameError) as info:
        compile(main)
    assert str(info.value).splitlines() == [
        f"{tmp_path / 'lib.lbk'}:2:14: DSLNameError: name 'undefined_thing' is not defined",
        "      return a * undefined_thing",
        "                 ^",
    ]


def test_missing_import_and_import_cycle(tmp_path):
    main = tmp_path / "main.lbk"
    main.write_text('import "nope.lbk"\nkernel k(x: f32[N]) {\n  a = 1\n}\n')
    with pytest.raises(DSLNameError, match=r"main.lbk:1:1: DSLNameError: cannot import "
                                           r"'nope.lbk': No such file"):
        compile(main)
    (tmp_path / "a.lbk").write_text('import "b.lbk"\n')
    (tmp_path / "b.lbk").write_text('import "a.lbk"\n')
    with pytest.raises(DSLNameError, match="import cycle: a.lbk -> b.lbk -> a.lbk"):
        compile(tmp_path / "a.lbk")


def test_a_source_without_kernels_and_an_ambiguous_source():
    with pytest.raises(DSLNameError, match="the source defines no kernel"):
        compile("func f(a) { return a }\n")
    two = K2.format("a = 1") + K2.format("a = 2").replace("kernel k", "kernel k2")
    with pytest.raises(UserArgumentError, match=r"several kernels \(k, k2\); pass kernel=NAME"):
        compile(two)
    with pytest.raises(DSLNameError, match="no kernel named 'k3'; the source defines k, k2"):
        compile(two, kernel="k3")


def test_wrong_kernel_arguments_fail_before_native_code():
    k = compile("kernel c[W: dtype = u3](w: W[N, K], y: f32[N, K]) grid (N) {\n"
                "  store(y[block.x, 0 :+ 8], cast(load(w[block.x, 0 :+ 8]), f32))\n}\n")
    y = np.zeros((2, 8), np.float32)
    words = np.zeros((2, 1), np.uint32)
    k(words, y)  # the right call works
    bad = [
        ((words.astype(np.int32), y), "argument 'w': expected dtype uint32"),
        ((words, y.astype(np.float64)), "argument 'y': expected dtype float32"),
        ((words, np.zeros((3, 8), np.float32)), "dim N is 2 elsewhere but 3"),
        ((words, np.zeros((2, 16), np.float32)[:, ::2]), "must be C-contiguous"),
        ((words, y[0]), "expected 2 dims"),
        ((np.zeros((2, 2), np.uint32), y), "8 u3 codes per row need 1 uint32 words, got 2"),
        ((words,), "missing arguments"),
        ((words, [[0.0] * 8] * 2), "expected a numpy array"),
    ]
    for args, message in bad:
        with pytest.raises(UserArgumentError, match=message) as info:
            k(*args)
        assert isinstance(info.value, ValueError)
    with pytest.raises(UserArgumentError, match="has no parameter or dim 'Q'"):
        k(words, y, Q=3)


def test_a_format_tile_carried_out_of_a_run_time_if_is_a_located_error():
    source = ("kernel k(x: f32[N], y: f32[N]) {\n  t = load(x[0 :+ 4])\n  q = cast(t, u4)\n"
              "  if N == 4 { q = cast(t * 2.0, u4) }\n  store(y[0 :+ 4], cast(q, f32))\n}\n")
    with pytest.raises(LowbitcError, match=r"<string>:4:3: .*tile<u4\[4\]> cannot be carried "
                                           r"out of a run-time if"):
        compile(source)

