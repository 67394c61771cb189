"""`lowbitc layout show EXPR [--png FILE]` and the safe expression parser behind it."""

from __future__ import annotations

import pytest

from lowbitc.cli import main
from lowbitc.layout import Layout, local, mma_m16n8k16_a, spatial
from lowbitc.layout.expr import evaluate

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_show_plain_layout(capsys):
    assert main(["layout", "show", "Layout((4,8),(8,1))"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "(4,8):(8,1)"
    rows = [line for line in out if line.lstrip().split("|")[0].strip().isdigit()]
    assert len(rows) == 4
    assert [c.strip() for c in rows[1].split("|")[1:-1]] == [str(8 + j) for j in range(8)]


def test_show_tv_layout_owners(capsys):
    assert main(["layout", "show", "spatial(2,4) * local(1,2)"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == str(spatial(2, 4) * local(1, 2))
    row1 = [line for line in out.splitlines() if line.startswith("  1 |")][0]
    assert [c.strip() for c in row1.split("|")[1:-1]] == [
        "T4V0", "T4V1", "T5V0", "T5V1", "T6V0", "T6V1", "T7V0", "T7V1"]


def test_show_mma_fragment_and_replication(capsys):
    assert main(["layout", "show", "mma_m16n8k16_a"]) == 0
    out = capsys.readouterr().out
    assert "| T0V0 | T0V1 | T1V0 |" in out.replace("  ", " ")
    assert main(["layout", "show", "replicated(2) * spatial(1,2)"]) == 0
    assert "T0,2V0" in capsys.readouterr().out


def test_show_writes_png(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="--png needs matplotlib (the `plot` extra)")
    path = tmp_path / "a.png"
    assert main(["layout", "show", "mma_m16n8k16_c()", "--png", str(path)]) == 0
    assert f"wrote {path}" in capsys.readouterr().out
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000
    import matplotlib.image as mpimg

    img = mpimg.imread(str(path))
    assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50
    plain = tmp_path / "plain.png"
    assert main(["layout", "show", "Layout((4,8),(8,1))", "--png", str(plain)]) == 0
    assert plain.read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize("expr,why", [
    ("__import__('os').system('true')", "not allowed"),
    ("__import__('os')", "unknown function"),
    ("Layout((4,8),(8,1)).shape", "not allowed"),
    ("open('/etc/passwd')", "unknown function"),
    ("[x for x in (1,2)]", "not allowed"),
    ("lambda: 1", "not allowed"),
    ("'text'", "integer and None literals"),
    ("Layout(2**40)", "not allowed"),
    ("Layout((4,8),(1,2,3))", "not congruent"),
    ("Layout((2,2)) * Layout((2,2))", "thread-value layouts only"),
    ("spatial(4,4) / spatial(2,2)", "divide"),
    ("Layout((2,2,2))", "rank 3"),
    ("spatial(", "not valid syntax"),
    ("(4, 8)", "not a layout"),
])
def test_show_rejects_bad_expressions(expr, why, capsys):
    assert main(["layout", "show", expr]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lowbitc layout: error:") and why in err
    assert "Traceback" not in err


def test_evaluate_whitelist():
    assert evaluate("Layout((4,8),(8,1))") == Layout((4, 8), (8, 1))
    assert evaluate("composition(Layout((6,2),(8,2)), Layout((4,3),(3,1)))") == \
        Layout(((2, 2), 3), ((24, 2), 8))
    assert evaluate("logical_divide(Layout((9,(4,8)),(59,(13,1))), (3, None))")[1] == \
        Layout((4, 8), (13, 1))
    assert evaluate("mma_m16n8k16_a") == evaluate("mma_m16n8k16_a()") == mma_m16n8k16_a()
    assert evaluate("replicated(2, rank=2)").shape == (1, 1)
    assert str(evaluate("composition(Swizzle(1,0,1), Layout((2,2)))")) == \
        "Sw<1,0,1> o (2,2):(1,2)"
