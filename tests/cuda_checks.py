"""Checks shared by the CUDA backend's tests: the toolchain skip mark, PTX that ptxas
assembles without spills, and a simulator suite run in a process of its own."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

T = pytest.importorskip("lowbitc.backends.numba_cuda.toolchain")

MISSING = T.toolchain_missing()
needs_toolchain = pytest.mark.skipif(MISSING is not None, reason=f"CUDA toolchain: {MISSING}")
SIM_DIR = Path(__file__).parent / "cudasim"


def assemble_without_spills(ptx: str, arch: str):
    """ptxas -v's result for `ptx`, after checking it spills nothing."""
    asm = T.assemble(ptx, arch)
    assert asm.spill_store_bytes == 0 and asm.spill_load_bytes == 0, asm.log
    return asm


def run_simulator_suite(name: str, passed: int | None = None, *args: str,
                        timeout: float = 900) -> None:
    """pytest tests/cudasim/NAME (with pytest's `args`, e.g. "-m", "sweep") under
    NUMBA_ENABLE_CUDASIM=1 in a fresh process: it must pass (`passed` tests exactly, when
    given) and leave this process off the simulator."""
    pytest.importorskip("numba.cuda")
    proc = T.run_in_simulator(["-m", "pytest", "-q", "-p", "no:cacheprovider", *args,
                               str(SIM_DIR / name)], timeout=timeout)
    report = proc.stdout[-6000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, report
    got = re.search(r"(\d+) passed", proc.stdout)
    assert got and "failed" not in proc.stdout, report
    assert passed is None or int(got.group(1)) == passed, report
    assert os.environ.get("NUMBA_ENABLE_CUDASIM") != "1"
