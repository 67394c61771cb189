"""The tile IR: types, ops, kernels, builder, printer/parser and verifier."""

from lowbitc.ir.builder import Builder
from lowbitc.ir.core import Attrs, Kernel, Op, Region, Value, renumber, walk
from lowbitc.ir.opdefs import OPS
from lowbitc.ir.parser import parse
from lowbitc.ir.printer import print_kernel
from lowbitc.ir.types import ScalarType, TensorType, TileType
from lowbitc.ir.verify import verify

__all__ = [
    "OPS", "Attrs", "Builder", "Kernel", "Op", "Region", "ScalarType", "TensorType", "TileType",
    "Value", "parse", "print_kernel", "renumber", "verify", "walk",
]
