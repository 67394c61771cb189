"""Build IR: create typed values and ops in nested regions (used by the DSL lowering and passes)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from lowbitc.errors import SourceLoc, VerifyError
from lowbitc.ir.core import Attrs, Op, Region, Value
from lowbitc.ir.opdefs import OPS, ConstAttrs, check_shared_operands
from lowbitc.ir.types import ScalarType, Type


class Builder:
    """Appends ops to the innermost open region; types results by the op's type rule."""

    def __init__(self, first_id: int = 0):
        self._next = first_id
        self._blocks: list[list[Op]] = [[]]
        self.loc: SourceLoc | None = None  # default location for new ops

    def value(self, type_: Type, name: str = "") -> Value:
        v = Value(self._next, type_, name)
        self._next += 1
        return v

    def op(
        self,
        opcode: str,
        operands: Sequence[Value] = (),
        attrs: Attrs | None = None,
        regions: Sequence[Region] = (),
        loc: SourceLoc | None = None,
        result_types: Sequence[Type] | None = None,
    ) -> Op:
        try:
            d = OPS[opcode]
        except KeyError:
            raise VerifyError(f"unknown opcode {opcode!r}", loc or self.loc) from None
        attrs = attrs if attrs is not None else d.attrs()
        if result_types is None:
            try:
                check_shared_operands(opcode, tuple(v.type for v in operands))
                result_types = d.infer(tuple(v.type for v in operands), attrs)
            except VerifyError as e:
                raise type(e)(e.message, loc or self.loc) from None
        op = Op(
            opcode,
            tuple(self.value(t) for t in result_types),
            tuple(operands),
            attrs,
            tuple(regions),
            loc or self.loc,
        )
        self._blocks[-1].append(op)
        return op

    def emit(self, opcode: str, *operands: Value, attrs: Attrs | None = None,
             loc: SourceLoc | None = None) -> Value:
        """Append a single-result op and return its result."""
        return self.op(opcode, operands, attrs, loc=loc).result

    def const(self, value: int | float | bool, dtype: str) -> Value:
        return self.emit("const", attrs=ConstAttrs(dtype, value))

    def i64(self, value: int) -> Value:
        return self.const(int(value), "i64")

    @contextmanager
    def block(self) -> Iterator[list[Op]]:
        """Collect the ops appended inside the `with` into the yielded list."""
        ops: list[Op] = []
        self._blocks.append(ops)
        try:
            yield ops
        finally:
            self._blocks.pop()

    def defining_op(self, v: Value) -> Op | None:
        """The op of an open block that defines `v` (None for arguments and values of blocks
        already closed, such as a finished loop's body)."""
        for ops in self._blocks:
            for op in ops:
                if v in op.results:
                    return op
        return None

    def take(self) -> tuple[Op, ...]:
        """The ops of the outermost block so far (and clear it)."""
        ops = tuple(self._blocks[0])
        self._blocks[0].clear()
        return ops


def scalar(dtype: str) -> ScalarType:
    return ScalarType(dtype)
