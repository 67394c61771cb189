"""`Kernel.explain()` and `lowbitc compile FILE --explain` (issue 15): the path each dot, load
and store took, the packing of each parameter, and for each fallback its reason and position."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import lowbitc
from lowbitc import dtype, ops
from lowbitc.cli import main
from lowbitc.explain import Note, note, recording, report

GATHER = """kernel gather(x: f32[1, K], w: u4[N, K], keep: bool[N, K], y: f32[1, N])
  grid (cdiv(N, 8))
{
  acc = zeros(f32, [1, 8])
  for k in range(0, K, 64) {
    a = load(x[0 :+ 1, k :+ 64])
    m = load(keep[block.x * 8 :+ 8, k :+ 64])
    q = load(w[block.x * 8 :+ 8, k :+ 64], mask=m)
    acc = dot(a, transpose(cast(q, f32)), acc)
  }
  store(y[0 :+ 1, block.x * 8 :+ 8], acc)
}
"""
GEMV = """kernel gemv[W: dtype](x: f32[1, K], w: W[N, K], y: f32[1, N]) grid (cdiv(N, 32)) {
  acc = zeros(f32, [1, 32])
  for k in range(0, K, 64) {
    a = load(x[0 :+ 1, k :+ 64])
    acc = dot(a, transpose(cast(load(w[block.x * 32 :+ 32, k :+ 64]), f32)), acc)
  }
  store(y[0 :+ 1, block.x * 32 :+ 32], acc)
}
"""


def _lines(text: str, kind: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines() if re.search(rf": {kind}\b", ln)]


def test_a_data_dependent_select_is_a_fallback_with_its_reason_and_position(tmp_path, capsys):
    path = tmp_path / "gather.lbk"
    path.write_text(GATHER)
    assert main(["compile", str(path), "--explain"]) == 0
    out = capsys.readouterr().out
    dots = _lines(out, "dot")
    # the dot (line 9, column 11) names the masked codes it decodes (the cast, line 9 col 28)
    assert f"{path}:9:11: dot: FALLBACK not fused" in dots[0]
    assert f"the codes load at {path}:9:28 is masked" in dots[0]
    assert re.search(rf"{re.escape(str(path))}:9:28: param w: canonical packing \(the load at "
                     rf"{re.escape(str(path))}:9:28 is masked\)", out)
    assert re.search(r"\n  [1-9]\d* fallbacks?$", out.rstrip("\n") + "")
    # the same text from the API, and the kernel still runs correctly
    k = lowbitc.compile(path)
    assert k.explain() == out.rstrip("\n")
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 16, (16, 128), dtype=np.uint8)
    keep = rng.random((16, 128)) < 0.5
    x = rng.standard_normal((1, 128)).astype(np.float32)
    y = np.zeros((1, 16), np.float32)
    k(x, lowbitc.pack(codes, 4), keep, y)
    np.testing.assert_allclose(y, x @ np.where(keep, codes, 0).T.astype(np.float32), rtol=1e-5,
                               atol=1e-4)


def test_two_code_loads_in_one_weight_are_named():
    src = GEMV.replace("cast(load(w[block.x * 32 :+ 32, k :+ 64]), f32)",
                       "(cast(load(w[block.x * 32 :+ 32, k :+ 64]), f32) - "
                       "cast(load(v[block.x * 32 :+ 32, k :+ 64]), f32))").replace(
        "w: W[N, K],", "w: W[N, K], v: W[N, K],")
    text = lowbitc.compile(src, W=dtype("u4")).explain()
    (dot,) = [ln for ln in _lines(text, "dot") if "not fused" in ln]
    assert "E reads 2 loads of codes" in dot and dot.startswith("<string>:5:11:")


@pytest.mark.parametrize("w, path", [
    ("b2", "fused planes16 table dot over bit planes"),
    ("u4", "rows16 fused register dot"),
    ("u5", "fused register dot (lanes16x64t32 vector unpack)"),
    ("u8", "fused register dot (bytes widened in registers)"),
    ("f8e4m3fn", "fused register dot (canonical words unpacked in registers)"),
])
def test_user_gemv_paths(w, path):
    text = lowbitc.compile(GEMV, W=dtype(w)).explain()
    assert path in _lines(text, "dot")[0]
    assert "FALLBACK" not in text and text.endswith("0 fallbacks")
    (load_w,) = [ln for ln in _lines(text, "load") if "load w" in ln]
    assert "fused into the dot at <string>:5:11" in load_w


@pytest.mark.parametrize("m", [1, 4, 16])
@pytest.mark.parametrize("w", ["u4", "u3", "nf4", "f4e2m1fn"])
def test_shipped_matmul_takes_fused_paths(m, w):
    qw = lowbitc.quantize(np.ones((64, 256), np.float32), w, 128, zero_point=w[0] == "u")
    params = ops.matmul_params(m, qw, "f32")
    text = ops.get_kernel("matmul", "llvm", **params).explain()
    dots = _lines(text, "dot")
    assert dots and not any("FALLBACK" in d for d in dots), text
    assert all("fused" in d or "panel microkernel, weights decoded" in d for d in dots), text
    assert all("FALLBACK" not in ln for ln in _lines(text, "load") if "load w" in ln), text


def test_shipped_dequantize_fuses_its_store():
    text = ops.get_kernel("dequantize", "llvm", W=dtype("u3"), ZP=True).explain()
    assert any("fused dequantize-to-memory" in ln for ln in _lines(text, "store")), text
    assert not any("FALLBACK" in ln for ln in _lines(text, "load") if "load w" in ln), text


def test_notes_are_kept_only_while_recording():
    note("dot", "", "nowhere")  # no journal: dropped
    with recording() as notes:
        note("dot", "w", "a path", "why", fallback=True)
        note("dot", "w", "a path", "why", fallback=True)  # the same decision notes once
    assert notes == [Note("dot", "w", "a path", "why", True)]
    assert report("k", "llvm", notes).splitlines() == [
        "kernel k (llvm)", "  dot w: FALLBACK a path (why)", "  1 fallback"]


def test_the_docs_performance_example_is_the_explain_output():
    text = (Path(__file__).resolve().parents[1] / "docs" / "dsl.md").read_text()
    part = text[text.index("### Performance: what is fast"):]
    shown = re.search(r"```text\n(.*?)```", part, re.S).group(1).rstrip("\n")
    src = re.search(r"```lbk\n(.*?)```", part, re.S).group(1)
    assert lowbitc.compile(src, W=dtype("b2")).explain() == shown
    masked = src.replace("w: W[N, K],", "w: W[N, K], keep: bool[N, K],").replace(
        "load(w[block.x * 32 :+ 32, k :+ 64])",
        "load(w[block.x * 32 :+ 32, k :+ 64], mask=load(keep[block.x * 32 :+ 32, k :+ 64]))")
    said = " ".join(re.search(r"gives\n`(<string>:5:11: dot: FALLBACK.*?)`", part, re.S)
                    .group(1).split())
    assert said in lowbitc.compile(masked, W=dtype("b2")).explain().splitlines()[3]


USER = Path(__file__).resolve().parents[1] / "examples" / "user"
ABSQ = "nf4_absq"  # bitsandbytes' second-level code book stands in as 256 sorted values
EXAMPLES = {  # examples/user kernel -> (compile-time params, its weight parameters)
    "gptq_gemv": ({}, ("qweight", "qzeros")), "awq_gemv": ({}, ("qweight", "qzeros")),
    "gptq_act_gemv": ({}, ("qweight", "qzeros", "scales")),
    "gemv_b2_act": ({}, ("w",)), "gguf_q8_0_gemv": ({}, ("blocks",)),
    "gguf_q4_0_gemv": ({}, ("blocks",)), "gguf_q5_0_gemv": ({}, ("blocks",)),
    "gguf_q4_k_gemv": ({}, ("blocks",)), "bnb_nf4_gemv": ({"Q": ABSQ}, ("codes",)),
    "dequant_half": ({"W": "u4"}, ("w",)),
}


@pytest.mark.parametrize("m", [1, 16])
@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_every_user_example_names_a_fused_path(name, m):
    """Every dot of examples/user and every load of its weights takes a fused or vectorized
    path, at one row of activations and at 16 (the block rows the bench compiles with: the
    column and untransposed dots keep at most 8 rows in registers)."""
    given, weights = EXAMPLES[name]
    params = {k: lowbitc.codebook(np.linspace(-1, 1, 256).astype(np.float32), name=v)
              if k == "Q" else dtype(v) for k, v in given.items()}
    src = (USER / f"{name}.lbk").read_text()
    if "BM: int" not in src and m != 1:
        pytest.skip("no rows of activations")
    if "BM: int" in src:
        params["BM"] = min(m, 8) if name in ("gptq_gemv", "gptq_act_gemv", "awq_gemv") else m
        if name == "awq_gemv":
            params["BN"] = 256 // params["BM"]
    text = lowbitc.compile(USER / f"{name}.lbk", **params).explain()
    dots = _lines(text, "dot")
    assert all("FALLBACK" not in d and ("fused" in d or "panel microkernel" in d)
               for d in dots), text
    loads = [ln for ln in _lines(text, "load") if any(f"load {w}:" in ln for w in weights)]
    assert loads and not any("FALLBACK" in ln for ln in loads), text
    assert "FALLBACK" not in text, text  # bnb's per-block absmax codes: byte reads


@pytest.mark.parametrize("name", ["gguf_q4_0_gemv", "gguf_q5_0_gemv", "bnb_nf4_gemv"])
def test_byte_window_codes_take_the_fused_dot(name):
    params = {"Q": lowbitc.codebook(np.linspace(-1, 1, 256).astype(np.float32), name=ABSQ)} \
        if "nf4" in name else {}
    text = lowbitc.compile(USER / f"{name}.lbk", **params).explain()
    (dot,) = _lines(text, "dot")
    assert "fused register dot (codes of a byte window unpacked in registers" in dot, text
    # the code bytes (and Q5_0's high bits) are read in the dot, never materialised
    fused = [ln for ln in _lines(text, "load") if "fused into the dot" in ln]
    assert len(fused) == (2 if "q5_0" in name else 1), text
    panel = lowbitc.compile(USER / f"{name}.lbk", BM=16, **params).explain()
    assert "panel microkernel, weights decoded into the panel" in _lines(panel, "dot")[0]


@pytest.mark.parametrize("fmt", ["f8e4m3fn", "nf4_absq"])
def test_eight_bit_codes_of_any_window_are_byte_reads(fmt):
    """8-bit codes in canonical words, a window of 3 per row (not a multiple of 32): one byte
    load per row, widened (no per-element fallback); windows at the edge stay exact."""
    f = lowbitc.codebook(np.linspace(-1, 1, 256).astype(np.float32), name=fmt) \
        if fmt == "nf4_absq" else dtype(fmt)
    src = """
kernel cols[F: dtype](w: F[N, K], y: f32[N, 3]) grid (cdiv(N, 16)) {
  store(y[block.x * 16 :+ 16, 0 :+ 3], cast(load(w[block.x * 16 :+ 16, 5 :+ 3]), f32),
        mask=reshape(arange(16), [16, 1]) + block.x * 16 < N)
}
"""
    k = lowbitc.compile(src, F=f)
    line = [ln for ln in k.explain().splitlines() if "load w:" in ln][0]
    assert "byte reads" in line and "FALLBACK" not in line
    rng = np.random.default_rng(3)
    codes = rng.integers(0, 256, (40, 13), dtype=np.uint8)  # 40 rows: an edge block of 8
    y = np.zeros((40, 3), np.float32)
    k(lowbitc.pack(codes, 8), y, K=13)
    np.testing.assert_array_equal(y, f.decode(codes[:, 5:8]))
