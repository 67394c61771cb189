"""GGUF files with llama.cpp's tensor names (as convert_hf_to_gguf.py writes them, Llama's q/k
rows in its rotary order) load into the Hugging Face model they came from."""

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from lowbitc.interop.base import Imported  # noqa: E402
from lowbitc.interop.gguffile import METADATA, to_gguf, write  # noqa: E402
from lowbitc.torch import QuantLinear, load_pretrained_quantized  # noqa: E402

pytestmark = pytest.mark.torch
U32 = gguf.GGUFValueType.UINT32


def llama_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute (rows of q/k for llama.cpp's rope)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2) \
        .reshape(w.shape)


def write_like_llama_cpp(model, arch: str, path, kv: dict, permute: dict | None = None):
    """Every tensor with a llama.cpp name: linear weights Q8_0, the rest F32."""
    table = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], model.config.num_hidden_layers)
    linears = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    tensors = {METADATA: Imported(METADATA, "gguf:metadata", np.zeros(0, np.float32),
                                  {"arch": arch, "kv": {f"{arch}.{k}": (v, U32)
                                                        for k, v in kv.items()}})}
    for name, p in model.state_dict().items():
        g = table.get_name(name, try_suffixes=(".weight", ".bias"))
        if g is None:
            continue
        w = p.detach().numpy()
        for part, heads in (permute or {}).items():
            if f".{part}." in g:
                w = llama_permute(w, heads)
        tensors[g] = to_gguf(g, w, "Q8_0" if name in linears else "F32")
    write(path, tensors)
    return tensors


def check_loaded(model, fresh, inputs: dict):
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    for n in linears:
        q = fresh.get_submodule(n)
        assert isinstance(q, QuantLinear), n
        want = to_gguf(n, model.get_submodule(n).weight.detach().numpy(), "Q8_0").dequantize()
        assert np.array_equal(q.dequantize().numpy(), want), n  # rows in HF order, exactly
    with torch.no_grad():
        a, b = model(**inputs)[0], fresh(**inputs)[0]
    cos = torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1), dim=-1)
    assert cos.min() > 0.999


def test_llama_names_and_rope_rows(tmp_path):
    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=96,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    path = tmp_path / "llama.gguf"
    write_like_llama_cpp(model, "llama", path, {"block_count": 2, "attention.head_count": 4,
                                                "attention.head_count_kv": 2},
                         permute={"attn_q": 4, "attn_k": 2})
    torch.manual_seed(1)
    fresh = transformers.LlamaForCausalLM(cfg).eval()
    load_pretrained_quantized(fresh, str(path))  # strict: every file tensor found its place
    assert torch.equal(fresh.model.norm.weight, model.model.norm.weight)
    check_loaded(model, fresh, {"input_ids": torch.arange(12).reshape(2, 6)})


def test_bert_names(tmp_path):
    cfg = transformers.BertConfig(vocab_size=96, hidden_size=64, intermediate_size=96,
                                  num_hidden_layers=2, num_attention_heads=4,
                                  max_position_embeddings=32)
    torch.manual_seed(0)
    model = transformers.BertModel(cfg, add_pooling_layer=False).eval()
    path = tmp_path / "bert.gguf"
    tensors = write_like_llama_cpp(model, "bert", path, {"block_count": 2})
    assert "blk.1.attn_q.weight" in tensors and "token_embd.weight" in tensors
    torch.manual_seed(1)
    fresh = transformers.BertModel(cfg, add_pooling_layer=False).eval()
    load_pretrained_quantized(fresh, str(path))
    check_loaded(model, fresh, {"input_ids": torch.arange(12).reshape(2, 6)})
