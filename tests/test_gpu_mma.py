"""The tensor-core matmul natively on a CUDA device (sm_80+) through torch: f16 and bf16
activations on CUDA tensors take matmul_mma (mma .f16 / .bf16), against float64 within the
bounds tests/cudasim/test_sim_mma.py derives. Marked `gpu`: skipped, with the reason, where
there is no device."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("numba.cuda")

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("act", ["f16", "bf16"])
@pytest.mark.parametrize("m", [1, 5, 33])
def test_torch_matmul_on_cuda_tensors(act, m):
    import lowbitc.torch  # noqa: F401  (registers torch.ops.lowbitc)
    from lowbitc.quant import quantize
    from lowbitc.torch.ops import weight_tensor

    n, k, group = 70, 200, 64
    qw = quantize(np.random.default_rng(0).standard_normal((n, k)).astype(np.float32), "u4",
                  group, zero_point=True)
    dt = torch.float16 if act == "f16" else torch.bfloat16
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(1)).to(dt)
    dev = torch.device("cuda")
    y = torch.ops.lowbitc.matmul(x.to(dev), weight_tensor(qw).to(dev),
                                 torch.from_numpy(qw.scales).to(dev),
                                 torch.from_numpy(qw.zeros).to(dev), "u4", group, k, "f32")
    xf = x.to(torch.float64).numpy()
    exact = xf @ qw.dequantize().astype(np.float64).T
    cols = np.arange(k) // group
    mass = np.abs(xf) @ (np.abs(qw.codes * qw.scales[:, cols]) +
                         np.abs(qw.zeros[:, cols] * qw.scales[:, cols])).T
    assert np.all(np.abs(y.cpu().numpy() - exact) <= (k + 8) * 2.0**-24 * mass + 1e-30)
