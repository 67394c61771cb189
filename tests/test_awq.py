"""Activation-aware input scaling (lowbitc.awq, quantize_(..., method="awq")): the layer is
(x / s) @ Q(W * s)^T run by the kernel, the alpha search picks the least output error, and
the input scale survives save/load."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import lowbitc  # noqa: E402
from lowbitc import awq, ops  # noqa: E402
from lowbitc.errors import UserArgumentError  # noqa: E402
from lowbitc.torch import QuantLinear, quantize_  # noqa: E402
from lowbitc.torch.linear import load_quantized, save_quantized  # noqa: E402


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(96, 64), torch.nn.ReLU(), torch.nn.Linear(64, 32))


def _inputs():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 96, generator=g)
    return x * _salient(96)


def _salient(k):
    """Column magnitudes with a few large channels, as transformer activations have (AWQ)."""
    return torch.where(torch.arange(k) % 16 == 0, 20.0, 1.0)


def test_awq_layer_is_scaled_input_times_quantized_scaled_weight(tmp_path):
    m, x = _model(), _inputs()
    w0 = m[0].weight.detach().numpy().copy()
    quantize_(m, "u4", 32, calibrate=lambda mod: mod(x), method="awq")
    layer = m[0]
    assert isinstance(layer, QuantLinear) and layer.input_scale is not None
    s = layer.input_scale.numpy()
    assert s.shape == (96,) and not np.all(s == 1.0)  # alpha > 0 wins on these inputs
    want_q = lowbitc.quantize(w0 * s, "u4", 32, zero_point=True)
    np.testing.assert_array_equal(layer.qweight.codes, want_q.codes)
    np.testing.assert_array_equal(layer.qweight.scales, want_q.scales)
    xs = x[:3]
    with torch.no_grad():
        y = layer(xs).numpy()
    scaled = (xs / torch.from_numpy(s)).numpy()
    np.testing.assert_array_equal(y, ops.matmul(scaled, want_q) + layer.bias.detach().numpy())
    np.testing.assert_allclose(y, scaled @ want_q.dequantize().T + layer.bias.detach().numpy(),
                               rtol=1e-5, atol=1e-4)
    save_quantized(m, tmp_path / "m.safetensors")
    back = load_quantized(_model(), tmp_path / "m.safetensors")
    np.testing.assert_array_equal(back[0].input_scale.numpy(), s)
    with torch.no_grad():
        torch.testing.assert_close(back(xs), m(xs), rtol=0, atol=0)


def test_awq_search_picks_the_least_output_error():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((48, 64)).astype(np.float32)
    x = rng.standard_normal((200, 64)) * _salient(64).numpy()
    h = x.T @ x / len(x)
    mean_abs = np.abs(x).mean(axis=0)
    qw, s, alpha = awq.scaled_quantize(w, mean_abs, h, "u3", 32, True)
    errors = {a: awq.output_error(w, lowbitc.quantize(w * awq.column_scales(mean_abs, a), "u3",
                                                      32, zero_point=True).dequantize()
                                  / awq.column_scales(mean_abs, a), h) for a in awq.ALPHAS}
    assert alpha == min(errors, key=errors.get)
    np.testing.assert_array_equal(s, awq.column_scales(mean_abs, alpha))
    assert errors[alpha] < errors[0.0]  # scaling helps with uneven inputs


def test_awq_bad_input_names_the_argument():
    with pytest.raises(UserArgumentError, match="calibrate"):
        quantize_(_model(), "u4", 32, method="awq")
    with pytest.raises(UserArgumentError, match="method"):
        quantize_(_model(), "u4", 32, calibrate=lambda mod: mod(_inputs()), method="awq",
                  outliers=0.01)
    with pytest.raises(UserArgumentError, match="input_scale"):
        QuantLinear.from_qtensor(lowbitc.quantize(np.ones((4, 8), np.float32), "u4", 8),
                                 input_scale=np.zeros(8))
