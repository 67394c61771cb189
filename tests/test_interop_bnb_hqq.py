"""bitsandbytes NF4/FP4 and HQQ state dicts: exact against the libraries' own CPU dequantize."""

import numpy as np
import pytest

from lowbitc import interop, ops

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("double", [False, True])
def test_bitsandbytes_matches_its_dequantize_4bit(quant_type, double):
    F = pytest.importorskip("bitsandbytes.functional")
    w = torch.randn(37, 320, generator=torch.Generator().manual_seed(0))  # odd row count
    q, st = F.quantize_4bit(w, blocksize=64, compress_statistics=double, quant_type=quant_type)
    q[:7] = 0x08  # codes 0 and 8: FP4's +0 and -0 (its quantizer rounds to +0 only)
    state = {"layer.weight": q, **{f"layer.weight.{k}": v
                                   for k, v in st.as_dict(packed=True).items()}}
    ref = F.dequantize_4bit(q, st).numpy()
    t = interop.read(state)["layer.weight"]  # sniffed
    assert t.format == f"bnb:{quant_type}" and t.group == 64
    mine = t.dequantize()
    assert np.array_equal(mine.view(np.uint32), ref.view(np.uint32))  # FP4's code 8 included
    assert np.array_equal(ops.dequantize(t.weight).view(np.uint32), mine.view(np.uint32))


def test_bitsandbytes_fp4_table_with_negative_zero_keeps_it():
    """bitsandbytes' CPU table stores code 8 as +0.0 (its GPU tree returns -0.0): a quant_map
    that holds -0.0 reads back with that sign, w = quant_map[q] * absmax bit for bit."""
    F = pytest.importorskip("bitsandbytes.functional")
    q, st = F.quantize_4bit(torch.randn(3, 128), blocksize=64, quant_type="fp4")
    q[:5] = 0x80  # codes 8 and 0
    state = {"l.weight": q, **{f"l.weight.{k}": v for k, v in st.as_dict(packed=True).items()}}
    table = state["l.weight.quant_map"].clone()
    table[8] = -0.0
    state["l.weight.quant_map"] = table
    codes = np.stack([q.numpy().ravel() >> 4, q.numpy().ravel() & 15], 1).ravel()
    ref = (table.numpy()[codes].reshape(3, 2, 64) * st.absmax.numpy().reshape(3, 2, 1))
    t = interop.read(state)["l.weight"]
    mine = t.dequantize()
    assert np.array_equal(mine.view(np.uint32), ref.reshape(3, 128).view(np.uint32))
    assert np.signbit(mine[0, :10:2]).all() and not np.signbit(mine[0, 1:10:2]).any()
    assert np.array_equal(ops.dequantize(t.weight).view(np.uint32), mine.view(np.uint32))


def test_bitsandbytes_rejects_blocks_straddling_rows():
    F = pytest.importorskip("bitsandbytes.functional")
    w = torch.randn(5, 96)
    q, st = F.quantize_4bit(w, blocksize=64, quant_type="nf4")
    state = {"l.weight": q, **{f"l.weight.{k}": v for k, v in st.as_dict(packed=True).items()}}
    with pytest.raises(ValueError, match="'l.weight': blocks of 64 straddle rows of 96"):
        interop.read(state, "bitsandbytes")


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("axis", [0, 1])
def test_hqq_matches_its_dequantize(bits, axis):
    quantize = pytest.importorskip("hqq.core.quantize")
    HQQLinear, Config = quantize.HQQLinear, quantize.BaseQuantizeConfig
    lin = torch.nn.Linear(320, 48)
    m = HQQLinear(lin, Config(nbits=bits, group_size=64, axis=axis),
                  compute_dtype=torch.float32, device="cpu")
    ref = m.dequantize().numpy()
    state = {f"blk.{k}": v for k, v in m.state_dict().items()}
    t = interop.read(state, "hqq")["blk"]
    assert t.format == f"hqq:axis{axis}"
    assert np.array_equal(t.dequantize().view(np.uint32), ref.view(np.uint32))
    x = np.random.default_rng(0).standard_normal((3, 320)).astype(np.float32)
    assert np.allclose(ops.matmul(x, t.weight), x @ ref.T, rtol=1e-4, atol=1e-4)
