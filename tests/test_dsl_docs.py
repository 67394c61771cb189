"""The documentation runs: docs/tutorial.md top to bottom (its .lbk files written to a
directory, its python blocks executed in order there), and every `lbk` example of the
Semantics part of docs/dsl.md compiled and run, natively and interpreted, against numpy."""

from __future__ import annotations

import builtins
import re
from pathlib import Path

import numpy as np
import pytest

import lowbitc
from lowbitc.compiler import compile

DOCS = Path(__file__).resolve().parents[1] / "docs"
_BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)


def blocks(text: str, lang: str) -> list[str]:
    return [body for kind, body in _BLOCK.findall(text) if kind == lang]


# ------------------------------------------------------------------ tutorial

def test_tutorial_runs_from_top_to_bottom(tmp_path, monkeypatch):
    text = (DOCS / "tutorial.md").read_text()
    files = blocks(text, "lbk")
    assert len(files) >= 4
    for body in files:
        first = body.splitlines()[0]
        assert first.startswith("# file: "), f"tutorial lbk block without '# file:': {first}"
        (tmp_path / first.removeprefix("# file: ").strip()).write_text(body)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    snippets = blocks(text, "python")
    assert len(snippets) >= 6
    for i, code in enumerate(snippets):
        code_obj = builtins.compile(code, f"docs/tutorial.md python block {i}", "exec")
        exec(code_obj, namespace)  # noqa: S102 - the tutorial's own code


# ------------------------------------------------------------------ dsl.md, Semantics

def semantics_examples() -> dict[str, str]:
    """Kernel name -> source of each lbk block after the '## Semantics' heading."""
    text = (DOCS / "dsl.md").read_text()
    part = text[text.index("\n## Semantics"):]
    out = {}
    for body in blocks(part, "lbk"):
        name = re.search(r"^kernel (\w+)", body, re.M)
        assert name, f"a Semantics example without a kernel:\n{body}"
        out[name.group(1)] = body
    return out


RNG = np.random.default_rng(7)
f32 = np.float32


def _sem_broadcast():
    x, r = RNG.standard_normal((4, 8)).astype(f32), RNG.standard_normal(8).astype(f32)
    y = np.zeros((4, 8), f32)
    return [x, r, y], {2: (x * 2 + r).astype(f32)}, {}


def _sem_edges():
    x = RNG.standard_normal((5, 7)).astype(f32)
    return [x, np.full((5, 7), np.nan, f32)], {1: np.abs(x)}, {}


def _sem_masks():
    x = RNG.standard_normal(10).astype(f32)
    keep = np.arange(16)[:10] % 2 == 0
    y = np.full(10, -1.0, f32)
    y[keep] = x[keep]
    return [x, np.full(10, -1.0, f32)], {1: y}, {}


def _sem_gather():
    x = RNG.standard_normal((3, 8)).astype(f32)
    idx = np.array([2, 0, 9, 2], np.int32)
    want = np.stack([x[2], x[0], np.zeros(8, f32), x[2]])
    return [x, idx, np.zeros((4, 8), f32)], {2: want}, {}


def _sem_dequant():
    codes = RNG.integers(0, 16, (3, 10)).astype(np.uint8)
    s = RNG.uniform(0.5, 1.5, 3).astype(f32)
    want = lowbitc.dtype("nf4").decode(codes) * s[:, None]
    return [lowbitc.pack(codes, 4), s, np.zeros((3, 10), f32)], {2: want.astype(f32)}, {}


def _sem_casts():
    x = RNG.uniform(-50, 50, 8).astype(f32)
    return ([x, np.zeros(8, np.int32), np.zeros(8, np.float16)],
            {1: x.astype(np.int32), 2: x.astype(np.float16)}, {})


def _sem_loops():
    x = RNG.standard_normal((6, 4)).astype(f32)
    y = np.zeros(4, f32)
    n = np.zeros(1, np.int64)
    return [x, y, n], {1: x[::2].sum(0).astype(f32), 2: np.array([3], np.int64)}, {}


def _sem_cparams():
    x = RNG.standard_normal(16).astype(f32)
    want = sum(x[u * 4:u * 4 + 4] for u in range(4)) * 3
    y = np.zeros(4, f32)
    return [x, y, 1], {1: want.astype(f32)}, {"SCALE": 3.0}


def _sem_funcs():
    x = RNG.standard_normal(8).astype(f32)
    v = np.clip(x * 2, -1, 1)
    return [x, np.zeros(8, f32)], {1: v.astype(f32)}, {}


def _sem_dot():
    a = RNG.standard_normal((4, 16)).astype(f32)
    b = RNG.standard_normal((8, 16)).astype(f32)
    want = (a.astype(np.float64) @ b.T.astype(np.float64)).astype(f32)
    return [a, b, np.zeros((4, 8), f32)], {2: want}, {}


def _perf_gemv():
    codes = RNG.integers(0, 4, (40, 128)).astype(np.uint8)
    x = RNG.standard_normal((1, 128)).astype(f32)
    want = x.astype(np.float64) @ lowbitc.dtype("b2").decode(codes).astype(np.float64).T
    return ([x, lowbitc.pack(codes, 2), np.zeros((1, 40), f32)], {2: want.astype(f32)},
            {"W": lowbitc.dtype("b2")})


def _sem_layouts():
    x = RNG.standard_normal((8, 8)).astype(f32)
    codes = RNG.integers(0, 8, (8, 32)).astype(np.uint8)
    words = lowbitc.pack(codes, 3)
    return ([x, words, np.zeros((8, 8), f32), np.zeros((8, 32), f32)],
            {2: x * 2, 3: codes.astype(f32)}, {})


def _sem_quantize():
    x = RNG.uniform(-3, 20, 37).astype(f32)
    s = np.float32([1.5])
    codes = lowbitc.dtype("u4").encode(x / s[0])
    return ([x, s, np.zeros(5, np.uint32), np.zeros(37, f32)],
            {2: lowbitc.pack(codes, 4), 3: codes.astype(f32) * s[0]}, {})


def _sem_rounding():
    x = RNG.uniform(-1, 9, 37).astype(f32)
    u4 = lowbitc.dtype("u4")
    down = u4.encode(x * 2, rounding="down")
    sto = u4.encode(x * 2, rounding="stochastic", seed=5)
    return ([x, np.zeros(5, np.uint32), np.zeros(5, np.uint32), 5],
            {1: lowbitc.pack(down, 4), 2: lowbitc.pack(sto, 4)}, {})


def _sem_shared():
    x = RNG.standard_normal((13, 10)).astype(f32)
    t = np.zeros((16, 16), f32)
    t[:13, :10] = x
    for i in range(0, 16, 8):
        t[i] = 2 * t[i + 1]
    return [x, np.zeros((10, 13), f32)], {1: t[:13, :10].T.copy()}, {}


CHECKS = {"sem_quantize": _sem_quantize, "sem_shared": _sem_shared,
          "sem_rounding": _sem_rounding,
          "sem_layouts": _sem_layouts, "sem_broadcast": _sem_broadcast, "sem_edges": _sem_edges,
          "sem_masks": _sem_masks, "sem_gather": _sem_gather,
          "sem_dequant": _sem_dequant, "sem_casts": _sem_casts, "sem_loops": _sem_loops,
          "sem_cparams": _sem_cparams, "sem_funcs": _sem_funcs, "sem_dot": _sem_dot,
          "gemv": _perf_gemv}


def test_every_semantics_example_has_a_check():
    assert sorted(semantics_examples()) == sorted(CHECKS)


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_semantics_example_runs(name):
    args, outs, params = CHECKS[name]()
    k = compile(semantics_examples()[name], **params)
    for runner in (k, k.interpret):
        a = [np.array(x, copy=True) if isinstance(x, np.ndarray) else x for x in args]
        runner(*a)
        for i, want in outs.items():
            np.testing.assert_allclose(a[i], want, rtol=1e-5, atol=1e-5, err_msg=name)
