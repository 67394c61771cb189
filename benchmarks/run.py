"""Run the CPU benchmark: `python benchmarks/run.py [--quick] ...`, the same as `lowbitc bench`."""

from __future__ import annotations

import sys

from lowbitc.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
