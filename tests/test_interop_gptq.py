"""GPTQ (v1/v2, act-order, 2/3/4/8 bits), AWQ and compressed-tensors layouts: exact codes
against independent references, byte-identical write-back, clear errors."""

import numpy as np
import pytest
from safetensors.numpy import save_file

from lowbitc import interop, ops
from lowbitc.errors import UserArgumentError
from lowbitc.interop import awq, compressed, gptq
from lowbitc.offset import OffsetQTensor


def autogptq_pack(intweight: np.ndarray, bits: int) -> np.ndarray:
    """AutoGPTQ's pack loop (int weights [K, N] -> qweight int32 [K*bits/32, N]), including
    its 3-bit word straddling, written out as in auto_gptq/nn_modules/qlinear."""
    k, n = intweight.shape
    iw = intweight.astype(np.uint64)
    q = np.zeros((k * bits // 32, n), np.uint64)
    i = row = 0
    while row < q.shape[0]:
        if bits in (2, 4, 8):
            for j in range(i, i + 32 // bits):
                q[row] |= iw[j] << np.uint64(bits * (j - i))
            i += 32 // bits
            row += 1
        else:  # 3 bits: 32 values in 3 words; values 10 and 21 straddle a word boundary
            for part in range(3):
                for j in range(i, i + 10):
                    q[row] |= iw[j] << np.uint64(3 * (j - i) + part)
                i += 10
                if part < 2:
                    q[row] |= iw[i] << np.uint64(30 + part)
                    row += 1
                    q[row] |= (iw[i] >> np.uint64(2 - part)) & np.uint64((1 << (part + 1)) - 1)
                    i += 1
            row += 1
    return (q & np.uint64(0xFFFFFFFF)).astype(np.uint32).view(np.int32)


def gptq_layer(bits, n=64, k=256, group=64, act_order=False, seed=0):
    rng = np.random.default_rng(seed)
    g = k // group
    q = rng.integers(0, 1 << bits, (k, n))
    z = rng.integers(0, 1 << bits, (g, n))
    s = rng.uniform(0.001, 0.02, (g, n)).astype(np.float16)
    g_idx = np.arange(k) // group
    if act_order:
        g_idx = rng.permutation(g_idx)
    parts = {"qweight": autogptq_pack(q, bits),
             "qzeros": autogptq_pack(z.T, bits).T.copy(),
             "scales": s, "g_idx": g_idx.astype(np.int32)}
    return parts, q, z, s, g_idx


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("version", [1, 2])
def test_gptq_exact(bits, act_order, version):
    parts, q, z, s, g_idx = gptq_layer(bits, act_order=act_order, seed=bits)
    t = gptq.gptq_tensor("l", parts, version)
    zero = z[g_idx] + (1 if version == 1 else 0)  # v1 stores z - 1
    ref = ((q - zero).astype(np.float32) * s[g_idx].astype(np.float32)).T  # exact in f32
    assert np.array_equal(t.dequantize(), ref)
    assert isinstance(t.weight, OffsetQTensor) == act_order
    assert np.array_equal(ops.dequantize(t.weight), ref)
    # AutoGPTQ computes in float16: its result is ours rounded once
    assert np.array_equal(ref.astype(np.float16), (q - zero).astype(np.float16).T
                          * s[g_idx].T)
    x = np.random.default_rng(0).standard_normal((2, 256)).astype(np.float32)
    assert np.allclose(ops.matmul(x, t.weight), x @ ref.T, rtol=1e-4, atol=1e-4)


def test_gptq_file_round_trip_and_sniff(tmp_path):
    parts, *_ = gptq_layer(4, act_order=True)
    state = {f"m.0.{k}": v for k, v in parts.items()}
    state["m.0.bias"] = np.arange(64, dtype=np.float16)
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file(state, str(a), metadata={"format": "pt"})
    back = interop.read(str(a))
    assert back["m.0"].format == "gptq" and back["m.0"].group == 64
    interop.write(str(b), back, "gptq")
    assert a.read_bytes() == b.read_bytes()
    rows = {r["name"]: r for r in interop.inspect(str(a))}  # the file's metadata is no row
    assert set(rows) == {"m.0", "m.0.bias"} and rows["m.0"]["format"] == "gptq"


def test_gptq_from_lowbitc_weights(tmp_path):
    w = np.random.default_rng(1).standard_normal((64, 256)).astype(np.float32)
    qw = gptq.gptq_quantize(w, 4, 64)
    t = gptq.gptq_tensor("l", gptq.gptq_parts(qw))
    assert np.array_equal(t.dequantize(), qw.dequantize())
    save_file({f"l.{k}": v for k, v in gptq.gptq_parts(qw).items()}, str(tmp_path / "g.st"))
    assert np.array_equal(interop.read(str(tmp_path / "g.st"))["l"].dequantize(),
                          qw.dequantize())
    assert np.sqrt(np.mean((qw.dequantize() - w) ** 2)) < 0.1


def test_gptq_bad_bits_and_groups():
    parts, *_ = gptq_layer(4)
    bad = dict(parts, qzeros=np.zeros((4, 10), np.int32))  # 10 words for 64 columns: 5 bits
    with pytest.raises(UserArgumentError, match=r"'l.qzeros'.*supported: \(2, 3, 4, 8\)"):
        gptq.gptq_tensor("l", bad)
    bad = dict(parts, g_idx=np.zeros(256, np.int32))
    with pytest.raises(UserArgumentError, match="g_idx does not give every group"):
        gptq.gptq_tensor("l", bad)


def test_awq_nibble_order_exact_and_round_trip(tmp_path):
    rng = np.random.default_rng(5)
    n, k, group = 64, 256, 128
    q = rng.integers(0, 16, (k, n))
    z = rng.integers(0, 16, (k // group, n))
    s = rng.uniform(0.001, 0.02, (k // group, n)).astype(np.float16)

    def autoawq_pack(v):  # AutoAWQ WQLinear_GEMM.from_linear: order_map [0, 2, 4, 6, 1, 3, 5, 7]
        out = np.zeros((v.shape[0], v.shape[1] // 8), np.uint32)
        for col in range(v.shape[1] // 8):
            for i, o in enumerate([0, 2, 4, 6, 1, 3, 5, 7]):
                out[:, col] |= v[:, col * 8 + o].astype(np.uint32) << (i * 4)
        return out.view(np.int32)

    parts = {"qweight": autoawq_pack(q), "qzeros": autoawq_pack(z), "scales": s}
    t = awq.awq_tensor("l", parts)
    ref = ((q - np.repeat(z, group, 0)) * np.repeat(s, group, 0).astype(np.float32)).T
    assert np.array_equal(t.dequantize(), ref.astype(np.float32))
    assert np.array_equal(awq.awq_parts(t.weight)["qweight"], parts["qweight"])
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file({f"x.{p}": v for p, v in parts.items()}, str(a))
    back = interop.read(str(a))
    assert back["x"].format == "awq"
    interop.write(str(b), back, "awq")
    assert a.read_bytes() == b.read_bytes()


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_compressed_tensors_against_its_unpack(bits, symmetric):
    torch = pytest.importorskip("torch")
    helpers = pytest.importorskip("compressed_tensors.compressors.pack_quantized.helpers")
    rng = np.random.default_rng(bits)
    n, k, group = 48, 200, 64  # partial last group, K not a multiple of 32
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    q = torch.from_numpy(rng.integers(lo, hi + 1, (n, k)).astype(np.int8))
    groups = -(-k // group)
    zp = torch.from_numpy(rng.integers(lo, hi + 1, (n, groups)).astype(np.int8))
    scale = torch.from_numpy(rng.uniform(0.01, 0.1, (n, groups)).astype(np.float32))
    parts = {"weight_packed": helpers.pack_to_int32(q, bits).numpy(),
             "weight_scale": scale.to(torch.bfloat16).float().numpy(),
             "weight_shape": np.array([n, k])}
    if not symmetric:
        parts["weight_zero_point"] = helpers.pack_to_int32(zp, bits, packed_dim=0).numpy()
    t = compressed.packed_tensor("layer", parts)
    unpacked = helpers.unpack_from_int32(torch.from_numpy(parts["weight_packed"]), bits,
                                         torch.Size([n, k])).numpy().astype(np.float32)
    z = zp.numpy().astype(np.float32) if not symmetric else np.zeros((n, groups), np.float32)
    ref = (unpacked - np.repeat(z, group, 1)[:, :k]) * np.repeat(parts["weight_scale"], group,
                                                                 1)[:, :k]
    assert np.array_equal(t.dequantize(), ref)
    again = compressed.packed_parts(t.weight, np.float32)
    for p in ("weight_packed", "weight_zero_point"):
        if p in parts:
            assert np.array_equal(again[p], parts[p])


def test_sniffing_tells_gptq_without_g_idx_from_awq(tmp_path):
    parts, *_ = gptq_layer(4)
    del parts["g_idx"]  # old AutoGPTQ files may lack it
    save_file({f"l.{k}": v for k, v in parts.items()}, str(tmp_path / "g.safetensors"))
    assert interop.read(str(tmp_path / "g.safetensors"))["l"].format == "gptq"
    rows = interop.inspect(str(tmp_path / "g.safetensors"))
    assert rows[0]["name"] == "l" and rows[0]["shape"] == (64, 256) and rows[0]["group"] == 64
    with pytest.raises(UserArgumentError, match="none of the formats lowbitc reads"):
        interop.read({"w": np.zeros(3, np.float32)})
