"""GGUF interop: every block type bit-exact with gguf.quants.dequantize, through QTensor and the
compiled ops; lowbitc's K-quant/IQ4_NL quantizers; file round trips; bad files."""

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from lowbitc import interop, ops  # noqa: E402
from lowbitc.errors import UserArgumentError  # noqa: E402
from lowbitc.interop.ggml import BLOCK_TYPES, ggml_to_qtensor  # noqa: E402
from lowbitc.interop.gguffile import read, to_gguf, write  # noqa: E402
from lowbitc.interop.kquants import LOWBITC_QUANTIZES, quantize_blocks  # noqa: E402

T = gguf.GGMLQuantizationType
ALL = ["F32", "F16", "BF16", *BLOCK_TYPES]


def random_blocks(name: str, rows: int, blocks_per_row: int, seed: int = 0) -> np.ndarray:
    """Random block bytes with finite float16 scale fields (all other bits random)."""
    t = BLOCK_TYPES[name]
    rng = np.random.default_rng(seed)
    b = rng.integers(0, 256, (rows * blocks_per_row, t.nbytes), dtype=np.uint8)
    for at in t.f16_at:
        b[:, at:at + 2] = rng.normal(0, 0.05, (len(b), 1)).astype(np.float16).view(np.uint8)
    if name == "MXFP4":
        b[:, 0] = rng.integers(0, 255, len(b))  # every exponent but 255 (the NaN scale)
    return b.reshape(rows, -1)


@pytest.mark.parametrize("name", list(BLOCK_TYPES))
def test_dequantize_bit_exact_with_gguf(name):
    t = BLOCK_TYPES[name]
    raw = random_blocks(name, 5, 2)  # odd row count
    ref = gguf.quants.dequantize(raw, T[name])
    qw = ggml_to_qtensor(name, raw, 2 * t.block)
    assert np.array_equal(qw.dequantize().view(np.uint32), ref.view(np.uint32))
    assert np.array_equal(ops.dequantize(qw).view(np.uint32), ref.view(np.uint32))
    x = np.random.default_rng(1).standard_normal((20, 2 * t.block)).astype(np.float32)
    want = x.astype(np.float64) @ ref.T.astype(np.float64)
    tol = 1e-5 * (np.abs(x) @ np.abs(ref).T) + 1e-30
    for m in (20, 3, 1):  # the GEMM path, small M, GEMV
        assert np.all(np.abs(ops.matmul(x[:m], qw) - want[:m]) <= tol[:m])


@pytest.mark.parametrize("name", LOWBITC_QUANTIZES)
def test_lowbitc_quantizers_read_back_by_gguf(name):
    w = np.random.default_rng(2).standard_normal((5, 512)).astype(np.float32)
    raw = quantize_blocks(w, name)
    ref = gguf.quants.dequantize(raw, T[name])
    mine = ggml_to_qtensor(name, raw, 512).dequantize()
    assert np.array_equal(mine.view(np.uint32), ref.view(np.uint32))


def test_quantizer_errors_are_ordered_by_bits():
    w = np.random.default_rng(3).standard_normal((16, 1024)).astype(np.float32)
    err = {n: np.sqrt(np.mean((gguf.quants.dequantize(quantize_blocks(w, n), T[n]) - w) ** 2))
           for n in ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "Q4_0", "Q8_0")}
    assert err["Q2_K"] > err["Q3_K"] > err["Q4_K"] > err["Q5_K"] > err["Q6_K"] > err["Q8_0"]
    assert err["IQ4_NL"] < err["Q4_0"] and err["Q4_K"] < err["Q4_0"]  # gguf's Q4_0 is min-max
    assert err["Q4_K"] < 0.08 and err["Q6_K"] < 0.02


def test_file_round_trip_identical_bytes(tmp_path):
    rng = np.random.default_rng(4)
    tensors = {f"w{i}": to_gguf(f"w{i}", rng.standard_normal((3, 256)), ty)
               for i, ty in enumerate(ALL)}
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    write(a, tensors)
    back = interop.read(str(a))  # sniffed
    write(b, back)
    assert a.read_bytes() == b.read_bytes()
    for name, t in tensors.items():
        assert np.array_equal(back[name].raw["blocks"], t.raw["blocks"])
        assert np.array_equal(back[name].dequantize(), t.dequantize())
    rows = interop.inspect(str(a))
    assert [r["name"] for r in rows] == list(tensors)
    q4k = next(r for r in rows if r["format"] == "gguf:Q4_K")
    assert q4k["shape"] == (3, 256) and q4k["bits"] == 4.5 and q4k["group"] == 32


def test_truncated_and_corrupt_files(tmp_path):
    a = tmp_path / "a.gguf"
    write(a, {"w": to_gguf("w", np.ones((4, 256)), "Q4_K")})
    data = a.read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[:-100])
    with pytest.raises(UserArgumentError, match="cut.gguf: (truncated|not a readable GGUF)"):
        read(str(tmp_path / "cut.gguf"))
    (tmp_path / "bad.gguf").write_bytes(data[:40])
    with pytest.raises(UserArgumentError, match="not a readable GGUF file"):
        interop.inspect(str(tmp_path / "bad.gguf"))


def test_unsupported_type_names_tensor_and_types(tmp_path):
    w = gguf.GGUFWriter(str(tmp_path / "t.gguf"), "test")
    w.add_tensor("tq", gguf.quants.quantize(np.zeros((2, 256), np.float32), T.TQ2_0),
                 raw_dtype=T.TQ2_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(UserArgumentError, match="tensor 'tq' has GGUF type TQ2_0; lowbitc reads"):
        read(str(tmp_path / "t.gguf"))
