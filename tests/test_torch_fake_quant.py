"""torch.ops.lowbitc.fake_quantize (values, straight-through and LSQ gradients, torch.compile),
FakeQuantLinear (quantization-aware training beats quantizing after training) and
stochastic_round_."""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import lowbitc  # noqa: E402
import lowbitc.torch as lt  # noqa: E402
from lowbitc.rounding import ROUNDINGS  # noqa: E402

nn = torch.nn


def reference(x: torch.Tensor, fmt: str, scales, group: int, mode: str, seed: int):
    f = lowbitc.dtype(fmt)
    k = x.shape[-1]
    s = scales.repeat_interleave(group, 1)[:, :k].reshape(x.shape) if scales is not None \
        else torch.ones_like(x)
    v = (x.float() / s).numpy()
    q = torch.from_numpy(f.decode(f.encode(v, rounding=mode, seed=seed)))
    return (q * s).to(x.dtype)


@pytest.mark.parametrize("fmt,mode", [("i4", m) for m in ROUNDINGS]
                         + [("f4e2m1fn", "stochastic"), ("nf4", "up")])
def test_fake_quantize_matches_host_encode(fmt, mode):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 45, generator=g) * 3
    scales = torch.rand(5, 3, generator=g) + 0.25  # groups of 16: the last one partial
    y = torch.ops.lowbitc.fake_quantize(x, fmt, scales, 16, mode, 11)
    assert torch.equal(y, reference(x, fmt, scales, 16, mode, 11))
    plain = torch.ops.lowbitc.fake_quantize(x, fmt, None, 0, mode, 11)
    assert torch.equal(plain, reference(x, fmt, None, 45, mode, 11))


def test_half_inputs_and_shapes():
    x = torch.randn(2, 3, 32).to(torch.bfloat16)
    y = torch.ops.lowbitc.fake_quantize(x, "f6e3m2fn", None, 0, "nearest_even", 0)
    assert y.dtype == torch.bfloat16 and y.shape == x.shape
    f = lowbitc.dtype("f6e3m2fn")
    want = f.decode(f.encode(x.float().numpy()))
    assert torch.equal(y.float(), torch.from_numpy(want).to(torch.bfloat16).float())


def test_straight_through_and_lsq_gradients():
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(4, 40, generator=g) * 4).requires_grad_(True)
    s = (torch.rand(4, 3, generator=g) + 0.5).requires_grad_(True)
    y = torch.ops.lowbitc.fake_quantize(x, "i4", s, 16, "nearest_even", 0)
    w = torch.randn(4, 40, generator=g)
    (y * w).sum().backward()
    se = s.detach().repeat_interleave(16, 1)[:, :40]
    v = x.detach() / se
    inside = (v >= -8) & (v <= 7)
    assert torch.equal(x.grad, torch.where(inside, w, torch.zeros_like(w)))
    q = y.detach() / se
    per = w * torch.where(inside, q - v, q)
    want = torch.stack([per[:, 16 * j : 16 * j + 16].sum(1) for j in range(3)], 1)
    torch.testing.assert_close(s.grad, want)
    assert inside.any() and not inside.all()  # both branches exercised


def test_opcheck_and_torch_compile():
    x, s = torch.randn(3, 32), torch.rand(3, 2) + 0.5
    torch.library.opcheck(torch.ops.lowbitc.fake_quantize.default,
                          (x, "f4e2m1fn", s, 16, "stochastic", 5))
    f = torch.compile(lambda a, b: 2 * torch.ops.lowbitc.fake_quantize(
        a, "f4e2m1fn", b, 16, "stochastic", 5), fullgraph=True)
    assert torch.equal(f(x, s), 2 * torch.ops.lowbitc.fake_quantize(
        x, "f4e2m1fn", s, 16, "stochastic", 5))


BAD = [
    (lambda: torch.ops.lowbitc.fake_quantize(torch.ones(2, 4, dtype=torch.int32), "i4", None,
                                             0, "up", 0), "x: expected float32"),
    (lambda: torch.ops.lowbitc.fake_quantize(torch.ones(2, 4), "i4", torch.ones(2, 2), 4,
                                             "up", 0), r"scales: expected float32 \[2, 1\]"),
    (lambda: torch.ops.lowbitc.fake_quantize(torch.ones(2, 4), "i4", None, 0, "round", 0),
     "rounding: expected one of"),
    (lambda: torch.ops.lowbitc.fake_quantize(torch.ones(2, 4), "bf16", None, 0, "up", 0),
     "fmt: expected a format of 1-8 bits"),
    (lambda: lt.stochastic_round_(torch.ones(3, dtype=torch.float16)), "expected a float32"),
]


@pytest.mark.parametrize("call,msg", BAD)
def test_bad_arguments(call, msg):
    with pytest.raises(ValueError, match=msg):
        call()


def test_stochastic_round_in_place():
    t = torch.randn(4096) * 100
    before = t.clone()
    out = lt.stochastic_round_(t, "bf16", seed=7)
    assert out is t
    assert torch.equal(t.to(torch.bfloat16).float(), t)  # representable in bf16
    lo = before.numpy().astype(np.float64)
    f = lowbitc.dtype("bf16")
    want = f.decode(f.encode(before.numpy(), rounding="stochastic", seed=7))
    assert np.array_equal(t.numpy(), want)
    assert (t != before.to(torch.bfloat16).float()).any()  # not plain round-to-nearest
    assert abs(float((t.double().numpy() - lo).mean())) < 0.05
    t8 = torch.randn(100)
    lt.stochastic_round_(t8, "f8e4m3fn", seed=1)
    f8 = lowbitc.dtype("f8e4m3fn")
    assert np.array_equal(f8.decode(f8.encode(t8.numpy())), t8.numpy())


def test_bf16_stochastic_bits_match_the_table_rule():
    from lowbitc.rounding import encode_rounded

    rng = np.random.default_rng(0)
    x = rng.standard_normal(20000) * 10.0 ** rng.integers(-40, 38, 20000)
    x = np.concatenate([x, [3.39e38, -3.39e38, 3.4e38, -3.4e38, 1e-45, -1e-45, 0.0, -0.0,
                            np.inf, -np.inf, np.nan]]).astype(np.float32)
    f = lowbitc.dtype("bf16")
    fast = f.encode(x, rounding="stochastic", seed=9)  # on the bits
    table = encode_rounded(f, x.astype(np.float64), "stochastic", 9)  # searchsorted + step
    assert np.array_equal(fast, table)


# ---------------------------------------------------------------- quantization-aware training


def test_qat_beats_quantizing_after_training():
    """A 2-layer MLP on a synthetic regression task: fine-tuned with FakeQuantLinear at 4 bits
    (i4, groups of 16) it reaches a lower test loss than the same float model after quantize_."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: extra threads only contend on a busy machine
    try:
        torch.manual_seed(0)
        d, h, n = 16, 64, 2048
        teacher = nn.Sequential(nn.Linear(d, h), nn.Tanh(), nn.Linear(h, 1))
        x, xt = torch.randn(n, d), torch.randn(512, d)
        with torch.no_grad():
            y, yt = teacher(x), teacher(xt)

        def train(model, steps, lr):
            opt = torch.optim.Adam(model.parameters(), lr=lr)
            for _ in range(steps):
                i = torch.randint(0, n, (256,))
                loss = nn.functional.mse_loss(model(x[i]), y[i])
                opt.zero_grad()
                loss.backward()
                opt.step()
            return model.eval()

        def test_loss(model):
            with torch.no_grad():
                return nn.functional.mse_loss(model(xt), yt).item()

        torch.manual_seed(1)
        fp = train(nn.Sequential(nn.Linear(d, h), nn.Tanh(), nn.Linear(h, 1)), 600, 1e-2)
        ptq = copy.deepcopy(fp)
        assert lt.quantize_(ptq, "i4", 16) == 2
        qat = copy.deepcopy(fp).train()
        for j in (0, 2):
            qat[j] = lt.FakeQuantLinear.from_linear(qat[j], "i4", 16)
        train(qat, 300, 1e-3)
        loss_fp, loss_ptq, loss_qat = test_loss(fp), test_loss(ptq), test_loss(qat)
        assert loss_fp < loss_ptq
        assert loss_qat < 0.9 * loss_ptq, (loss_fp, loss_ptq, loss_qat)
        # the trained model's weights are exactly codes * scales of the format
        w = qat[0].quantized_weight().detach()
        s = qat[0].scales.detach().repeat_interleave(16, 1)[:, :16]
        codes = (w / s).numpy()
        assert np.abs(codes - np.rint(codes)).max() < 1e-5 and np.abs(codes).max() <= 8
    finally:
        torch.set_num_threads(threads)
