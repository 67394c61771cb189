"""Compiler passes (one per module) and the named pipelines built from them."""

from lowbitc.passes import (  # noqa: F401  (registers passes)
    bitpack,
    bitpack_lanes,
    infer_layouts,
    linearize,
    lower_encode,
    lower_formats,
    simplify,
    vectorize,
)
from lowbitc.passes.base import PASSES, Pass, rewrite, run_pipeline

# the pipeline every CPU kernel goes through before the LLVM backend renders it
CPU_PIPELINE = ("infer-layouts", "cse", "lower-formats", "bitpack", "lower-encode", "cse",
                "dce", "bitpack-lanes", "linearize",
                "vectorize")

__all__ = ["CPU_PIPELINE", "PASSES", "Pass", "rewrite", "run_pipeline"]
