"""lowbitc: a compiler for arbitrary-bitwidth (1-8 bit) kernels."""
__version__ = "0.1.0"

from lowbitc import layout  # noqa: E402,F401
from lowbitc.dtypes import codebook, dtype, dtypes  # noqa: E402,F401
from lowbitc.packing import pack, unpack  # noqa: E402,F401
from lowbitc.quant import QTensor, load, quantize  # noqa: E402,F401
