"""The README's tour must stay true: its python blocks run in order and its quick start has
exactly the two commands CI relies on."""

import re
from pathlib import Path

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def test_tour_python_blocks_run(capsys):
    tour = README[README.index("## A 5-minute tour"):]
    blocks = re.findall(r"```python\n(.*?)```", tour, re.S)
    assert len(blocks) >= 3
    ns: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), ns)  # noqa: S102 - our own documentation
    assert ns["y"].shape == (10, 100) and ns["w_hat"].shape == (256, 512)


def test_quick_start_has_two_commands():
    qs = README[README.index("## Quick start"):]
    block = re.search(r"```bash\n(.*?)```", qs, re.S).group(1)
    lines = [ln for ln in block.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    assert len(lines) == 2
    assert "lowbitc demo" in lines[0] and "pytest" in lines[1]
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text(encoding="utf-8")
    assert lines[1] in ci
