"""lowbitc.torch.moments: data-free input moments of a post-LayerNorm encoder's linear layers
against the model run over its whole token x position population, and quantize_'s
`moments="analytic"` (HQQ weighted by them)."""

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import lowbitc  # noqa: E402
from lowbitc.errors import UserArgumentError  # noqa: E402
from lowbitc.torch import QuantLinear, quantize_  # noqa: E402
from lowbitc.torch.moments import _activation, input_moments  # noqa: E402

VOCAB, POSITIONS = 64, 8


def _bert(seed: int = 0, pooler: bool = False, act: str = "gelu"):
    """A small random BERT with weights large enough for GELU to bend and LayerNorms whose
    gains and biases are not the identity."""
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=2, num_attention_heads=2,
                                  max_position_embeddings=POSITIONS, initializer_range=0.2,
                                  hidden_act=act)
    model = transformers.BertModel(cfg, add_pooling_layer=pooler).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.3)
    return model


def _population_moments(model, length: int) -> dict[str, np.ndarray]:
    """E[x^2] of each linear layer's input over every (token, position < length) as a
    one-token sequence (a token attends only to itself, as the analytic moments assume)."""
    ids = torch.arange(VOCAB).repeat(length)[:, None]
    pos = torch.arange(length).repeat_interleave(VOCAB)[:, None]
    stats = {}

    def hook(name):
        def record(mod, inputs, out):
            x = inputs[0].reshape(-1, inputs[0].shape[-1]).double()
            stats[name] = (x * x).mean(0).numpy()
        return record

    hooks = [m.register_forward_hook(hook(n)) for n, m in model.named_modules()
             if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        model(input_ids=ids, position_ids=pos, attention_mask=torch.ones_like(ids))
    for h in hooks:
        h.remove()
    return stats


@pytest.mark.parametrize("seed, length, act", [(0, None, "gelu"), (1, 3, "relu")])
def test_moments_match_the_population_the_model_sees(seed, length, act):
    model = _bert(seed, act=act)
    analytic = input_moments(model, length)
    exact = _population_moments(model, length or POSITIONS)
    assert set(analytic) == set(exact) and len(exact) == 12
    for name, e in exact.items():
        a = analytic[name]
        assert a.shape == e.shape and (a > 0).all()
        assert np.corrcoef(a, e)[0, 1] > 0.99, name
        assert np.median(np.abs(a - e) / e) < 0.15, name
        assert abs(a.sum() / e.sum() - 1) < 0.03, name
    # the LayerNorm-only proxy (gain^2 + bias^2: unit-variance normalised inputs) misses the
    # embedding statistics that the propagation carries
    norm = model.embeddings.LayerNorm
    proxy = (norm.weight ** 2 + norm.bias ** 2).detach().double().numpy()
    e = exact["encoder.layer.0.attention.self.query"]
    a = analytic["encoder.layer.0.attention.self.query"]
    assert np.abs(a - e).sum() < 0.5 * np.abs(proxy - e).sum()


@pytest.mark.parametrize("act", [torch.nn.GELU(), torch.nn.ReLU(), torch.nn.SiLU()])
def test_activation_moments_against_sampling(act):
    """E[a(h)], E[a(h)^2], E[a'(h)] for h ~ N(mean, var) per channel (Gauss-Hermite)."""
    mean, var = np.array([-2.0, -0.3, 0.0, 0.5, 3.0]), np.array([0.5, 1.0, 4.0, 0.01, 2.0])
    h = torch.from_numpy(mean + np.sqrt(var) * np.random.default_rng(0).standard_normal(
        (400_000, 5))).requires_grad_(True)
    a = act(h)
    (slope,) = torch.autograd.grad(a.sum(), h)
    a = a.detach().numpy()
    for got, want in zip(_activation(act, mean, var),
                         (a.mean(0), (a * a).mean(0), slope.numpy().mean(0)), strict=True):
        np.testing.assert_allclose(got, want, rtol=0.02, atol=0.01)


def test_quantize_hqq_analytic_weighs_each_layer_by_its_moments():
    model = _bert(pooler=True)
    float_model = copy.deepcopy(model)
    d = input_moments(model, 5)
    x = torch.randint(0, VOCAB, (2, 5))
    assert quantize_(model, "u4", 32, method="hqq", moments="analytic:5") == 13
    for name, m in float_model.named_modules():
        if not isinstance(m, torch.nn.Linear):
            continue
        q = model.get_submodule(name)
        assert isinstance(q, QuantLinear)
        w = m.weight.detach().numpy()
        want = lowbitc.quantize(w, "u4", 32, True, method="hqq", column_weights=d.get(name))
        np.testing.assert_array_equal(q.qweight.dequantize(), want.dequantize())
    # the pooler is outside the blocks: fitted unweighted
    assert "pooler.dense" not in d
    unweighted = lowbitc.quantize(float_model.pooler.dense.weight.detach().numpy(), "u4", 32,
                                  True, method="hqq")
    np.testing.assert_array_equal(model.pooler.dense.qweight.dequantize(),
                                  unweighted.dequantize())
    fake = copy.deepcopy(float_model)  # the float model with the quantized weights put back
    for name, m in fake.named_modules():
        if isinstance(m, torch.nn.Linear):
            m.weight.data = torch.from_numpy(model.get_submodule(name).qweight.dequantize())
    with torch.no_grad():
        torch.testing.assert_close(model(x).last_hidden_state, fake(x).last_hidden_state,
                                   rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kwargs, words", [
    ({"method": "hqq", "moments": "montecarlo"}, ["moments", "'analytic:L'", "montecarlo"]),
    ({"method": "hqq", "moments": "analytic:0"}, ["moments", "L > 0", "'analytic:0'"]),
    ({"method": "hqq", "moments": 16}, ["moments", "'analytic'", "got 16"]),
    ({"moments": "analytic"}, ["moments", "method='hqq'", "'rtn'"]),
    ({"method": "hqq", "moments": "analytic", "calibrate": lambda m: None},
     ["moments", "without calibration", "a function"]),
])
def test_quantize_moments_bad_arguments(kwargs, words):
    with pytest.raises(UserArgumentError) as e:
        quantize_(_bert(), "u4", 32, **kwargs)
    assert all(w in str(e.value) for w in words), str(e.value)


def test_moments_need_an_encoder_structure():
    seq = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.GELU(), torch.nn.Linear(32, 8))
    with pytest.raises(UserArgumentError, match=r"model: moments='analytic' needs .* found 0 "
                                                r"embedding stages and 0 .* in Sequential"):
        quantize_(seq, "u4", 32, method="hqq", moments="analytic")
    assert isinstance(seq[0], torch.nn.Linear)  # nothing was replaced
