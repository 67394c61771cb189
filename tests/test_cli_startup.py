"""The command line answers at once: `lowbitc --help`, `formats` and `cache info` import only
the command they run (no torch, no benchmarks package, no compiler front end)."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time

import pytest

from lowbitc.cli import COMMANDS, build_parser, chosen_command

CHILD = """
import contextlib, io, json, sys
from lowbitc.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        code = main(sys.argv[1:])
    except SystemExit as e:
        code = e.code
heavy = ("torch", "benchmarks", "lowbitc.benchmarks", "numba", "llvmlite", "lark", "ml_dtypes",
         "lowbitc.compiler")
print(json.dumps({"code": code, "out": out.getvalue(),
                  "loaded": sorted(m for m in heavy if m in sys.modules)}))
"""


@pytest.mark.parametrize("argv", [["--help"], ["formats"], ["cache", "info"]])
def test_light_commands_import_nothing_heavy(argv, tmp_path):
    env = {**os.environ, "LOWBITC_CACHE_DIR": str(tmp_path / "cache")}
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", CHILD, *argv], env=env, capture_output=True,
                       text=True, timeout=120, check=True)
    wall = time.perf_counter() - t0
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["code"] in (0, None) and got["out"]
    assert got["loaded"] == []
    assert wall < 5.0  # loose: 0.15 s on a quiet host; torch's import alone takes ~2 s


def test_every_command_module_matches_its_table_entry():
    parser = build_parser()  # every command's arguments, as tests and docs see them
    for name in COMMANDS:
        mod = importlib.import_module(f"lowbitc.commands.{name}")
        assert mod.NAME == name and callable(mod.run)
        assert parser.parse_args([name, *_required(name)]).command == name
    assert chosen_command(["cache", "info"]) == "cache" and chosen_command(["-h"]) is None


def _required(name: str) -> list[str]:
    """The fewest arguments each command's parser accepts."""
    return {"compile": ["x.lbk"], "emit": ["matmul"], "layout": ["show", "(4,8):(8,1)"],
            "tune": ["matmul", "--shape", "1,64,64"], "cache": ["info"],
            "inspect": ["model.gguf"]}.get(name, [])
