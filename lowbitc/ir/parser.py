"""Parse the textual IR that `printer.print_kernel` writes (its mirror image)."""

from __future__ import annotations

import json
import math
import re

from lowbitc.errors import DSLSyntaxError, SourceLoc
from lowbitc.ir.core import Kernel, Op, Region, Value
from lowbitc.ir.opdefs import OPS, make_attrs
from lowbitc.ir.types import ScalarType, TensorType, TileType, Type

_TOKEN = re.compile(
    r"""\s*(?:
      (?P<str>"(?:[^"\\]|\\.)*")
    | (?P<val>%[A-Za-z_0-9]+)
    | (?P<sym>@[A-Za-z_][A-Za-z_0-9]*)
    | (?P<num>-?(?:inf|nan|\d+\.\d*(?:[eE][-+]?\d+)?|\d+[eE][-+]?\d+|\d+))
    | (?P<id>[A-Za-z_][A-Za-z_0-9]*)
    | (?P<punct>[=,:(){}\[\]<>])
    )""",
    re.VERBOSE,
)


class _Lexer:
    def __init__(self, text: str, file: str):
        self.toks: list[tuple[str, str, int, int]] = []
        self.lines = text.splitlines()
        for ln, line in enumerate(self.lines, 1):
            pos = 0
            line = line.rstrip()
            while pos < len(line):
                m = _TOKEN.match(line, pos)
                if not m or m.end() == pos:
                    self._error(f"unexpected character {line[pos:].strip()[:1]!r}", ln, pos + 1)
                kind = m.lastgroup
                self.toks.append((kind, m.group(kind), ln, m.start(kind) + 1))
                pos = m.end()
            self.toks.append(("nl", "\n", ln, len(line) + 1))
        self.toks.append(("eof", "", len(self.lines) + 1, 1))
        self.i = 0
        self.file = file

    def _error(self, msg: str, line: int, col: int):
        text = self.lines[line - 1] if 0 < line <= len(self.lines) else ""
        raise DSLSyntaxError(msg, SourceLoc(getattr(self, "file", "<ir>"), line, col, text))

    def peek(self) -> tuple[str, str, int, int]:
        return self.toks[self.i]

    def next(self) -> tuple[str, str, int, int]:
        t = self.toks[self.i]
        self.i += 1
        return t

    def expect(self, value: str, kind: str | None = None) -> str:
        k, v, ln, col = self.next()
        if (kind and k != kind) or (not kind and v != value):
            self._error(f"expected {value!r} but found {v or 'end of input'!r}", ln, col)
        return v

    def accept(self, value: str) -> bool:
        if self.peek()[1] == value and self.peek()[0] != "str":
            self.i += 1
            return True
        return False

    def skip_nl(self) -> None:
        while self.peek()[0] == "nl":
            self.i += 1


class _Parser:
    def __init__(self, text: str, file: str):
        self.lx = _Lexer(text, file)
        self.scope: dict[str, Value] = {}
        self.next_id = 0

    # -- values and types
    def define(self, name: str, t: Type) -> Value:
        named = not name[1:].isdigit()
        v = Value(self.next_id, t, name[1:] if named else "")
        if not named and int(name[1:]) != self.next_id:
            k, _, ln, col = self.lx.toks[self.lx.i - 1]
            self.lx._error(f"value {name} out of order: expected %{self.next_id}", ln, col)
        self.next_id += 1
        self.scope[name] = v
        return v

    def use(self) -> Value:
        k, name, ln, col = self.lx.next()
        if k != "val" or name not in self.scope:
            self.lx._error(f"undefined value {name!r}", ln, col)
        return self.scope[name]

    def dims(self) -> tuple:
        self.lx.expect("[")
        out: list = []
        while not self.lx.accept("]"):
            k, v, ln, col = self.lx.next()
            out.append(int(v) if k == "num" else v)
            self.lx.accept(",")
        return tuple(out)

    def type_(self) -> Type:
        k, name, ln, col = self.lx.next()
        if name in ("tile", "tensor") and self.lx.peek()[1] == "<":
            self.lx.expect("<")
            dtype = self.lx.expect("dtype", "id")
            shape = self.dims()
            if name == "tensor":
                self.lx.expect(">")
                return TensorType(dtype, shape)
            space, layout = "reg", ""
            while self.lx.accept(","):
                if self.lx.accept("layout"):
                    self.lx.expect("=")
                    layout = json.loads(self.lx.expect("string", "str"))
                else:
                    space = self.lx.expect("space", "id")
            self.lx.expect(">")
            return TileType(dtype, shape, space, layout)
        if k != "id":
            self.lx._error(f"expected a type but found {name!r}", ln, col)
        return ScalarType(name)

    def attr_value(self) -> object:
        k, v, ln, col = self.lx.next()
        if v == "[":
            items = []
            while not self.lx.accept("]"):
                items.append(self.attr_value())
                self.lx.accept(",")
            return tuple(items)
        if k == "str":
            return json.loads(v)
        if k == "id" and v in ("true", "false"):
            return v == "true"
        if k == "num":
            if v.lstrip("-") == "nan":
                return math.nan  # one NaN object, so attributes holding NaN compare equal
            return int(v) if re.fullmatch(r"-?\d+", v) else float(v)
        self.lx._error(f"expected an attribute value but found {v!r}", ln, col)

    def loc(self) -> SourceLoc | None:
        if not self.lx.accept("loc"):
            return None
        self.lx.expect("(")
        file = json.loads(self.lx.expect("file name", "str"))
        self.lx.expect(":")
        line = int(self.lx.expect("line", "num"))
        self.lx.expect(":")
        col = int(self.lx.expect("column", "num"))
        self.lx.expect(")")
        return SourceLoc(file, line, col)

    # -- ops and regions
    def region_args(self) -> tuple[Value, ...]:
        self.lx.expect("(")
        args = []
        while not self.lx.accept(")"):
            name = self.lx.expect("value", "val")
            self.lx.expect(":")
            args.append(self.define(name, self.type_()))
            self.lx.accept(",")
        return tuple(args)

    def op(self) -> Op:
        result_names: list[str] = []
        while self.lx.peek()[0] == "val":
            result_names.append(self.lx.next()[1])
            if not self.lx.accept(","):
                break
        if result_names:
            self.lx.expect("=")
        k, opcode, ln, col = self.lx.next()
        if opcode not in OPS:
            self.lx._error(f"unknown opcode {opcode!r}", ln, col)
        operands = []
        while self.lx.peek()[0] == "val":
            operands.append(self.use())
            self.lx.accept(",")
        attrs: dict[str, object] = {}
        if self.lx.accept("{"):
            while not self.lx.accept("}"):
                key = self.lx.expect("attribute name", "id")
                self.lx.expect("=")
                attrs[key] = self.attr_value()
                self.lx.accept(",")
        types: list[Type] = []
        if result_names:
            self.lx.expect(":")
            types.append(self.type_())
            while self.lx.accept(","):
                types.append(self.type_())
        loc = self.loc()
        results = tuple(self.define(n, t) for n, t in zip(result_names, types, strict=True))
        regions = []
        while self.lx.accept("region"):
            saved = dict(self.scope)
            args = self.region_args()
            self.lx.expect("{")
            ops = self.ops_until("}")
            self.lx.expect("}")
            self.scope = saved
            regions.append(Region(args, ops))
        self.lx.expect("newline", "nl")
        return Op(opcode, results, tuple(operands), make_attrs(opcode, attrs), tuple(regions), loc)

    def ops_until(self, *stops: str) -> tuple[Op, ...]:
        ops = []
        self.lx.skip_nl()
        while self.lx.peek()[1] not in stops and self.lx.peek()[0] != "eof":
            ops.append(self.op())
            self.lx.skip_nl()
        return tuple(ops)

    def kernel(self) -> Kernel:
        self.lx.skip_nl()
        self.lx.expect("kernel")
        name = self.lx.expect("@name", "sym")[1:]
        params = self.region_args()
        self.lx.expect("dims")
        dims = self.region_args()
        self.lx.expect("threads")
        self.lx.expect("=")
        threads = int(self.lx.expect("thread count", "num"))
        self.lx.expect("meta")
        self.lx.expect("(")
        meta = []
        while not self.lx.accept(")"):
            key = self.lx.expect("name", "id")
            self.lx.expect("=")
            meta.append((key, json.loads(self.lx.expect("string", "str"))))
            self.lx.accept(",")
        loc = self.loc()
        self.lx.expect("{")
        self.lx.skip_nl()
        self.lx.expect("grid")
        self.lx.expect(":")
        grid = Region((), self.ops_until("body"))
        self.lx.expect("body")
        self.lx.expect(":")
        body = Region((), self.ops_until("}"))
        self.lx.expect("}")
        self.lx.skip_nl()
        self.lx.expect("end of input", "eof")
        return Kernel(name, params, dims, grid, body, threads, tuple(meta), loc)


def parse(text: str, file: str = "<ir>") -> Kernel:
    """Parse one kernel from its textual IR."""
    return _Parser(text, file).kernel()
