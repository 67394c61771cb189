"""lowbitc.torch with int8 activations: QuantLinear(act="i8"), quantize_(..., act="i8") and
the op's `act` argument give what lowbitc.ops.matmul(act="i8") gives, eager and compiled."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="lowbitc.torch needs PyTorch")

from lowbitc import ops  # noqa: E402
from lowbitc.errors import UserArgumentError  # noqa: E402
from lowbitc.torch import QuantLinear, quantize_  # noqa: E402

pytestmark = pytest.mark.torch


def test_quant_linear_act_i8_matches_ops():
    torch.manual_seed(0)
    lin = torch.nn.Linear(256, 96)
    x = torch.randn(5, 256)
    q = QuantLinear.from_linear(lin, "u4", 64, act="i8")
    want = ops.matmul(x.numpy(), q.qweight, act="i8") + lin.bias.detach().numpy()
    assert "act='i8'" in repr(q) and q.config()["act"] == "i8"
    np.testing.assert_allclose(q(x).detach().numpy(), want, rtol=1e-6, atol=1e-6)
    y_op = torch.ops.lowbitc.matmul(x, q.qdata, q.scales, q.zeros, "u4", 64, 256, "i8")
    np.testing.assert_allclose(y_op.numpy() + lin.bias.detach().numpy(), want, rtol=1e-6,
                               atol=1e-6)
    compiled = torch.compile(q, fullgraph=True)
    np.testing.assert_allclose(compiled(x).detach().numpy(), want, rtol=1e-6, atol=1e-6)
    # not the f32 path's result: the activations were quantized
    assert not np.allclose(want, ops.matmul(x.numpy(), q.qweight) + lin.bias.detach().numpy(),
                           rtol=1e-6, atol=1e-6)


def test_quantize_act_i8_and_bad_act():
    m = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 32))
    assert quantize_(m, "u3", 32, act="i8") == 2
    assert all(layer.act == "i8" for layer in (m[0], m[2]))
    assert m(torch.randn(3, 64)).shape == (3, 32)
    with pytest.raises(UserArgumentError, match="act: expected one of 'f32', 'i8', got 'int8'"):
        quantize_(torch.nn.Sequential(torch.nn.Linear(8, 8)), "u4", 8, act="int8")
    q = QuantLinear.from_linear(torch.nn.Linear(32, 16), "u4", 32)
    with pytest.raises(UserArgumentError, match="act"):
        torch.ops.lowbitc.matmul(torch.randn(2, 32), q.qdata, q.scales, q.zeros, "u4", 32, 32,
                                 "i4")
