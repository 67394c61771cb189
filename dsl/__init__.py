"""The .lbk tile language front end: grammar, typed AST, parser and import resolution."""

from lowbitc.dsl import ast
from lowbitc.dsl.modules import load_module, load_source
from lowbitc.dsl.parser import parse, parse_file
from lowbitc.dsl.printer import to_source

__all__ = ["ast", "load_module", "load_source", "parse", "parse_file", "to_source"]
