"""lowbitc: a compiler for arbitrary-bitwidth (1-8 bit) kernels."""
__version__ = "0.1.0"

import importlib  # noqa: E402

from lowbitc.codebook_fit import CodebookFactory  # noqa: E402
from lowbitc.dtypes import dtype, dtypes  # noqa: E402,F401
from lowbitc.packing import pack, unpack  # noqa: E402,F401

codebook = CodebookFactory()  # lowbitc.codebook(values) and lowbitc.codebook.fit(w, bits)

# Heavier pieces load on first use (PEP 562), so `import lowbitc` + a cached compile stay fast:
# attribute -> (module, name in it; None for the module itself)
_LAZY = {
    "layout": ("lowbitc.layout", None),
    "ops": ("lowbitc.ops", None),
    "QTensor": ("lowbitc.quant", "QTensor"),
    "load": ("lowbitc.quant", "load"),
    "quantize": ("lowbitc.methods", "quantize"),
    "TableQTensor": ("lowbitc.mixture", "TableQTensor"),
    "compile": ("lowbitc.compiler", "compile"),
    "chop": ("lowbitc.emulate", "chop"),
    "tune": ("lowbitc.autotune", "tune"),
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'lowbitc' has no attribute {name!r}")
    module, attr = _LAZY[name]
    value = importlib.import_module(module)
    value = value if attr is None else getattr(value, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
