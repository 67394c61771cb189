"""The tile IR: types, ops, kernels, builder, printer/parser and verifier.

The names below load on first use (PEP 562): a module that needs only `lowbitc.ir.types` or
`lowbitc.ir.core` (the compile cache's hit path) does not pay for the op table, builder,
parser and verifier.
"""

import importlib
import sys
import types

# attribute -> module defining it
_LAZY = {
    "Builder": "lowbitc.ir.builder",
    "Attrs": "lowbitc.ir.core", "Kernel": "lowbitc.ir.core", "Op": "lowbitc.ir.core",
    "Region": "lowbitc.ir.core", "Value": "lowbitc.ir.core", "renumber": "lowbitc.ir.core",
    "walk": "lowbitc.ir.core",
    "OPS": "lowbitc.ir.opdefs",
    "parse": "lowbitc.ir.parser",
    "print_kernel": "lowbitc.ir.printer",
    "ScalarType": "lowbitc.ir.types", "TensorType": "lowbitc.ir.types",
    "TileType": "lowbitc.ir.types",
    "verify": "lowbitc.ir.verify",
}  # fmt: skip

__all__ = sorted(_LAZY)


class _Package(types.ModuleType):
    """Loading a submodule binds it as a package attribute; `verify` stays the function."""

    def __setattr__(self, name: str, value: object) -> None:
        if name == "verify" and isinstance(value, types.ModuleType):
            value = value.verify
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'lowbitc.ir' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
