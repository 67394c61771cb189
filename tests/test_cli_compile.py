"""`lowbitc compile` and `lowbitc emit`: summaries, emitted text, -D parameters, and errors
printed without a traceback (exit 2)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lowbitc.cli import main
from lowbitc.commands import emit
from lowbitc.commands.compile import parse_defines
from lowbitc.errors import UserArgumentError
from lowbitc.ir import parse, walk

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

TWO = """kernel first[B: int = 4](x: f32[N], y: f32[N]) {
  store(y[0 :+ B], load(x[0 :+ B]) * 2.0)
}
kernel second(x: f32[N], y: f32[N]) {
  store(y[0 :+ 8], exp(load(x[0 :+ 8])))
}
"""


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_parse_defines_types_values():
    assert parse_defines(["W=u3", "BM=16", "S=0.5", "ZP=true", "Q = false"]) == {
        "W": "u3", "BM": 16, "S": 0.5, "ZP": True, "Q": False}
    for bad in ("W", "=3", "W=", "1X=2"):
        with pytest.raises(UserArgumentError, match="expected NAME=VALUE"):
            parse_defines([bad])


def test_compile_prints_one_summary_line_per_kernel(capsys, tmp_path):
    path = tmp_path / "two.lbk"
    path.write_text(TWO)
    code, out, err = cli(capsys, "compile", str(path), "-D", "B=8")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("first: [B=8] 2 tensors, 0 scalars, ")
    assert lines[1].startswith("second: [-] 2 tensors, 0 scalars, ")
    assert all("lines of LLVM IR, compiled in" in ln for ln in lines)


def test_compile_emits_the_requested_stage_of_one_kernel(capsys, tmp_path):
    path = tmp_path / "two.lbk"
    path.write_text(TWO)
    code, out, _ = cli(capsys, "compile", str(path), "--kernel", "second", "--emit", "ir")
    assert code == 0
    k = parse(out)
    assert k.name == "second" and any(op.opcode == "exp" for op in k.body.ops)
    code, out, _ = cli(capsys, "compile", str(path), "--kernel", "first", "--emit", "llvm")
    assert code == 0 and "define void @lbk_first(" in out


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.lbk")))
def test_compile_every_example_and_its_lowered_ir_parses(capsys, example):
    code, out, err = cli(capsys, "compile", str(EXAMPLES / example), "--emit", "lowered")
    assert code == 0 and err == ""
    k = parse(out)
    assert k.name == Path(example).stem
    assert not any(op.opcode == "codes" for op in k.body.ops)


ERRORS = [
    (["compile", "missing.lbk"], "lowbitc compile: error: FILE: no such .lbk file: 'missing.lbk'"),
    (["compile", str(EXAMPLES / "q4_0_dequant.lbk"), "-D", "X=1"],
     "lowbitc compile: error: compile-time parameter X: no kernel compiled here declares it "
     "(declared: BN, NB)"),
    (["compile", str(EXAMPLES / "q4_0_dequant.lbk"), "-D", "BN"],
     "lowbitc compile: error: -D: expected NAME=VALUE (e.g. -D BM=16), got 'BN'"),
    (["emit", "gemm", "--wtype", "u4"],
     "lowbitc emit: error: KERNEL: expected one of matmul, matmul_mma, dequantize or a .lbk "
     "file, got 'gemm'"),
    (["emit", "matmul", "--wtype", "u4", "--arch", "sm_80"],
     "lowbitc emit: error: --arch sm_80: only the cuda backend takes an arch"),
    (["emit", "matmul", "--wtype", "u4", "--format", "ptx"],
     "lowbitc emit: error: --format ptx: PTX comes from --backend cuda"),
]


@pytest.mark.parametrize(("argv", "message"), ERRORS, ids=[" ".join(a[:2]) + str(i)
                                                            for i, (a, _) in enumerate(ERRORS)])
def test_errors_print_one_line_and_exit_2(capsys, argv, message):
    code, out, err = cli(capsys, *argv)
    assert (code, out) == (2, "")
    assert err.strip() == message


def test_dsl_errors_keep_their_caret_and_have_no_traceback(tmp_path):
    path = tmp_path / "bad.lbk"
    path.write_text("kernel k(x: f32[N], y: f16[N]) {\n  store(y[0 :+ 4], load(x[0 :+ 4]))\n}\n")
    r = subprocess.run([sys.executable, "-m", "lowbitc.cli", "compile", str(path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert "Traceback" not in r.stderr
    assert r.stderr.splitlines() == [
        f"lowbitc compile: error: {path}:2:20: DSLTypeError: store: the value is f32 but y "
        "holds f16; cast it with cast(value, f16)",
        "      store(y[0 :+ 4], load(x[0 :+ 4]))",
        "                       ^",
    ]


def test_emit_shipped_kernels_for_a_weight_type(capsys):
    code, out, _ = cli(capsys, "emit", "dequantize", "--wtype", "f6e3m2", "--format", "lowered")
    assert code == 0
    k = parse(out)
    assert dict(k.meta)["W"] == "f6e3m2"
    assert any(op.opcode == "bitcast" for op in walk(k.body.ops))
    code, out, _ = cli(capsys, "emit", "matmul", "--wtype", "u3", "--format", "stats")
    assert code == 0
    assert out.startswith("kernel matmul (llvm)\nlowered ops: ")
    assert "load_codes 1" in out and "instructions: " in out


def test_emit_a_lbk_file_with_several_kernels_needs_a_name(capsys, tmp_path):
    path = tmp_path / "two.lbk"
    path.write_text(TWO)
    code, _, err = cli(capsys, "emit", str(path), "--format", "ir")
    assert code == 2 and "defines several kernels (first, second); pick one with --name" in err
    code, out, _ = cli(capsys, "emit", str(path), "--name", "second", "--format", "asm")
    assert code == 0 and "lbk_second" in out


def test_emit_cuda_reports_that_the_backend_is_missing(capsys, monkeypatch):
    monkeypatch.setattr(emit, "cuda_available", lambda: False)
    code, out, err = cli(capsys, "emit", "matmul", "--wtype", "u4", "--backend", "cuda",
                         "--arch", "sm_80", "--format", "ptx")
    assert (code, out) == (2, "")
    assert err.strip() == ("lowbitc emit: error: --backend cuda: the CUDA backend is not "
                           "available yet (use --backend llvm)")


def test_compile_takes_several_files(capsys):
    from pathlib import Path

    from lowbitc.cli import main

    files = sorted(str(p) for p in (Path(__file__).resolve().parents[1] / "examples").glob("*.lbk"))
    assert len(files) >= 2
    assert main(["compile", *files]) == 0
    out = capsys.readouterr().out
    assert "dequant_silu:" in out and "q4_0_dequant:" in out


def test_output_cut_short_by_a_pipe_is_not_an_error():
    r = subprocess.run(f"{sys.executable} -m lowbitc.cli formats | head -1", shell=True,
                       capture_output=True, text=True, timeout=120)
    assert r.stdout.startswith("name") and "Traceback" not in r.stderr
