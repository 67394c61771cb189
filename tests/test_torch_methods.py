"""lowbitc.torch with the accuracy methods: QuantLinear carries outliers (forward, state
dict, save/load), quantize_ takes mixtures and fitted code books."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import lowbitc  # noqa: E402
from lowbitc.torch import QuantLinear, quantize_  # noqa: E402
from lowbitc.torch.linear import load_quantized, save_quantized  # noqa: E402
from lowbitc.torch.tables import TableLinear  # noqa: E402


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(96, 64), torch.nn.ReLU(), torch.nn.Linear(64, 32))


def test_quant_linear_with_outliers_matches_its_weight(tmp_path):
    m = _model()
    x = torch.randn(5, 96)
    quantize_(m, "u3", 32, outliers=0.02)
    layer = m[0]
    assert isinstance(layer, QuantLinear) and layer.outlier_values.numel() == round(0.02 * 96 * 64)
    w = torch.from_numpy(layer.qweight.dequantize())
    torch.testing.assert_close(layer.dequantize(), w)
    torch.testing.assert_close(layer(x), x @ w.T + layer.bias, rtol=1e-5, atol=1e-5)
    save_quantized(m, tmp_path / "m.safetensors")
    back = load_quantized(_model(), tmp_path / "m.safetensors")
    torch.testing.assert_close(back(x), m(x))
    assert back[0].qweight.sparse.nnz == layer.qweight.sparse.nnz


def test_quantize_with_gptq_and_outliers_keeps_them_exact():
    m = _model()
    quantize_(m, "u2", 32, calibrate=lambda mod: mod(torch.randn(64, 96)), outliers=0.01)
    qw = m[0].qweight
    rows, cols = qw.sparse.rows, qw.sparse.indices
    assert qw.sparse.nnz == round(0.01 * 96 * 64)
    dense = lowbitc.quant.QTensor(qw.dtype, qw.shape, 32, qw.codes, qw.scales, qw.zeros)
    np.testing.assert_array_equal(qw.dequantize(), dense.dequantize() + qw.sparse.to_dense())
    assert np.isfinite(qw.dequantize()[rows, cols]).all()


def test_quantize_mixture_and_row_code_books():
    x = torch.randn(3, 96)
    for dtype in (["u4", "nf4", "f4e2m1", "i4"], lowbitc.codebook.fitter(3, per="row")):
        m = _model()
        quantize_(m, dtype, 32)
        assert isinstance(m[0], TableLinear)
        w = torch.from_numpy(m[0].qweight.dequantize())
        torch.testing.assert_close(m[0](x), x @ w.T + m[0].bias, rtol=1e-5, atol=1e-5)


def test_quantize_hqq_with_calibration_weighs_by_the_hessian_diagonal():
    """quantize_(calibrate=, method="hqq"): no GPTQ; each layer is lowbitc.quantize's HQQ
    weighted by its inputs' mean x^2 (the Hessian's diagonal), outliers included."""
    from lowbitc.torch.gptq import collect_hessians  # noqa: PLC0415

    torch.manual_seed(1)
    x = torch.randn(64, 96) * torch.linspace(0.1, 3, 96)

    def calibrate(mod):
        mod(x)

    m = _model()
    h = collect_hessians(m, ["0"], calibrate)["0"]
    w = m[0].weight.detach().numpy().copy()
    quantize_(m, "u3", 32, calibrate=calibrate, outliers=0.01, method="hqq")
    want = lowbitc.quantize(w, "u3", 32, zero_point=True, outliers=0.01, method="hqq",
                            column_weights=torch.diagonal(h).numpy())
    np.testing.assert_array_equal(m[0].qweight.dequantize(), want.dequantize())
    assert m[0].qweight.sparse.nnz == round(0.01 * 96 * 64)
