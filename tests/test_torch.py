"""lowbitc.torch: custom ops (opcheck, errors), QuantLinear, quantize_, autograd, torch.compile,
quantized save/load."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="lowbitc.torch needs PyTorch")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import lowbitc.torch as lt  # noqa: E402
from lowbitc.errors import UserArgumentError  # noqa: E402
from lowbitc.quant import quantize  # noqa: E402
from lowbitc.torch import ops as tops  # noqa: E402

pytestmark = pytest.mark.torch
N, K, G = 40, 72, 32  # partial last group: 72 = 2 * 32 + 8


def pieces(fmt: str, zero_point: bool, n: int = N, k: int = K, g: int = G, seed: int = 0):
    """A QTensor and the op arguments that describe it."""
    w = np.random.default_rng(seed).standard_normal((n, k)).astype(np.float32)
    qw = quantize(w, fmt, g, zero_point=zero_point)
    zeros = None if qw.zeros is None else torch.from_numpy(qw.zeros)
    return qw, (tops.weight_tensor(qw), torch.from_numpy(qw.scales), zeros, fmt, g, k)


def reference(x: torch.Tensor, qw) -> torch.Tensor:
    return x.float() @ torch.from_numpy(qw.dequantize()).T


CASES = [("u4", True, torch.float32), ("nf4", False, torch.bfloat16),
         ("i8", False, torch.float16), ("u3", True, torch.float32),
         ("f4e2m1", False, torch.float32), ("u8", True, torch.bfloat16)]


# ---------------------------------------------------------------- the ops
@pytest.mark.parametrize("fmt,zp,act", CASES)
def test_matmul_op_matches_dequantized_reference(fmt, zp, act):
    qw, args = pieces(fmt, zp)
    x = torch.randn(5, K).to(act)
    y = torch.ops.lowbitc.matmul(x, *args)
    assert y.dtype == torch.float32 and y.shape == (5, N)
    torch.testing.assert_close(y, reference(x, qw), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("fmt,zp", [("u4", True), ("nf4", False), ("i8", False), ("u3", True)])
def test_dequantize_op_is_bit_exact(fmt, zp):
    qw, args = pieces(fmt, zp)
    assert torch.equal(torch.ops.lowbitc.dequantize(*args), torch.from_numpy(qw.dequantize()))


def test_matmul_reads_tensor_memory_in_place():
    """The kernel sees the tensors' own memory: writing the weight storage changes y."""
    qw, (w, s, z, fmt, g, k) = pieces("u4", True)
    x = torch.randn(2, K)
    y0 = torch.ops.lowbitc.matmul(x, w, s, z, fmt, g, k)
    s.mul_(2)  # scales are shared with qw.scales: no copy anywhere
    torch.testing.assert_close(torch.ops.lowbitc.matmul(x, w, s, z, fmt, g, k), 2 * y0)
    assert np.shares_memory(s.numpy(), qw.scales)
    # weight words written in place are seen too (also by kernels that read a repacked copy)
    other, (w2, *_) = pieces("u4", True, seed=1)
    xs = [torch.randn(m, K) for m in (1, 2)]
    for xm in xs:
        torch.testing.assert_close(torch.ops.lowbitc.matmul(xm, w, s, z, fmt, g, k),
                                   reference(xm, qw), rtol=1e-4, atol=1e-4)
    w.copy_(w2)
    codes = torch.from_numpy(other.codes.astype(np.float32))
    w_hat = (codes - z.repeat_interleave(g, 1)[:, :K]) * s.repeat_interleave(g, 1)[:, :K]
    for xm in xs:
        torch.testing.assert_close(torch.ops.lowbitc.matmul(xm, w, s, z, fmt, g, k),
                                   xm @ w_hat.T, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fmt,zp,act", CASES[:4])
def test_opcheck(fmt, zp, act):
    _, args = pieces(fmt, zp)
    for x in (torch.randn(3, K, dtype=act), torch.randn(3, K, dtype=act, requires_grad=True)):
        torch.library.opcheck(torch.ops.lowbitc.matmul.default, (x, *args))
    torch.library.opcheck(torch.ops.lowbitc.dequantize.default, args)


def test_empty_batch():
    _, args = pieces("u4", True)
    assert torch.ops.lowbitc.matmul(torch.zeros(0, K), *args).shape == (0, N)


# ---------------------------------------------------------------- bad inputs
def bad(match: str):
    return pytest.raises(UserArgumentError, match=match)


def test_errors_name_the_argument():
    _, (w, s, z, fmt, g, k) = pieces("u4", True)
    mm = torch.ops.lowbitc.matmul
    with bad(r"x: expected K = 72 columns .* got shape \(2, 64\)"):
        mm(torch.randn(2, 64), w, s, z, fmt, g, k)
    with bad(r"x: expected float32, float16 or bfloat16, got torch.float64"):
        mm(torch.randn(2, K, dtype=torch.float64), w, s, z, fmt, g, k)
    with bad(r"x: expected a contiguous tensor"):
        mm(torch.randn(K, 2).T, w, s, z, fmt, g, k)
    with bad(r"x: expected a 2-D tensor"):
        mm(torch.randn(2, 3, K), w, s, z, fmt, g, k)
    with bad(r"weight: expected torch.int32, got torch.uint8"):
        mm(torch.randn(2, K), w.to(torch.uint8), s, z, fmt, g, k)
    with bad(r"weight: expected shape \(40, 9\)"):
        mm(torch.randn(2, K), w[:, :8].contiguous(), s, z, fmt, g, k)
    with bad(r"scales: expected shape \(40, 3\), got \(40, 2\)"):
        mm(torch.randn(2, K), w, s[:, :2].contiguous(), z, fmt, g, k)
    with bad(r"scales: expected torch.float32, got torch.float16"):
        mm(torch.randn(2, K), w, s.half(), z, fmt, g, k)
    with bad(r"fmt: expected a lowbitc format name, got 'u99'"):
        mm(torch.randn(2, K), w, s, z, "u99", g, k)
    with bad(r"group_size: expected an int >= 1, got 0"):
        torch.ops.lowbitc.dequantize(w, s, z, fmt, 0, k)


def test_mixed_and_unsupported_devices(monkeypatch):
    _, (w, s, z, fmt, g, k) = pieces("u4", True)
    with bad(r"weight: expected a tensor on meta \(like the others\), got cpu"):
        torch.ops.lowbitc.matmul(torch.randn(2, K, device="meta"), w, s, z, fmt, g, k)
    with pytest.raises(lt.DeviceError, match="no kernels for tensors on device xpu"):
        tops._backend(torch.device("xpu"))
    # a machine whose CUDA backend cannot load (no numba-cuda, say) gets a DeviceError

    def no_cuda(name, backend, **params):
        raise ModuleNotFoundError("No module named 'numba.cuda'")
    monkeypatch.setattr(tops.lops, "get_kernel", no_cuda)
    with pytest.raises(lt.DeviceError, match=r"device cuda:0 need the lowbitc 'cuda' backend"):
        tops._kernel("matmul", "cuda", torch.device("cuda:0"), ("test", "cuda"),
                     lambda: {"W": "u4"})


def test_meta_tensors_give_shapes_without_running():
    _, (w, s, z, fmt, g, k) = pieces("u4", True)
    y = torch.ops.lowbitc.matmul(torch.empty(7, K, device="meta"), w.to("meta"),
                                 s.to("meta"), z.to("meta"), fmt, g, k)
    assert y.device.type == "meta" and y.shape == (7, N) and y.dtype == torch.float32


# ---------------------------------------------------------------- QuantLinear
def linear(n=N, k=K, bias=True, seed=0) -> torch.nn.Linear:
    torch.manual_seed(seed)
    return torch.nn.Linear(k, n, bias=bias)


@settings(max_examples=12, deadline=None)
@given(lead=st.lists(st.integers(1, 3), max_size=2), n=st.integers(1, 40),
       k=st.integers(1, 90), g=st.sampled_from([8, 32, 64]), bias=st.booleans(),
       act=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
def test_quantlinear_any_batch_dims_and_dtypes(lead, n, k, g, bias, act):
    lin = linear(n, k, bias)
    q = lt.QuantLinear.from_linear(lin, "u4", g)
    x = torch.randn(*lead, k).to(act)
    y = q(x)
    assert y.dtype == act and y.shape == (*lead, n)
    want = reference(x.reshape(-1, k), q.qweight) + (lin.bias if bias else 0)
    tol = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 2e-2}[act]
    torch.testing.assert_close(y.float().reshape(-1, n), want.detach(), rtol=tol, atol=tol)


def test_quantlinear_qweight_and_non_contiguous_input():
    lin = linear()
    q = lt.QuantLinear.from_linear(lin, "nf4", G)
    assert q.qweight.dtype.name == "nf4" and q.qweight.shape == (N, K)
    assert q.zeros is None  # only unsigned integer formats get zero points by default
    x = torch.randn(K, 6).T  # a transposed view: QuantLinear copies it like nn.Linear would
    torch.testing.assert_close(q(x), q(x.contiguous()))
    with bad(r"QuantLinear: x: expected a last dim of in_features = 72, got shape \(3, 36\)"):
        q(torch.randn(3, 36))


def test_eager_path_follows_bias_replaced_or_written_in_place():
    """The eager call keeps a numpy view of the bias: a bias written in place or replaced by
    another tensor is the one added (int8 activations too: both kernels bound once)."""
    for act in ("f32", "i8"):
        q = lt.QuantLinear.from_linear(linear(seed=4), "u4", G, act=act)
        x = torch.randn(5, K)
        with torch.no_grad():
            plain = q(x) - q.bias
            q.bias.add_(1.5)
            torch.testing.assert_close(q(x), plain + q.bias)
            q.bias = torch.nn.Parameter(torch.full_like(q.bias, -2.0))
            torch.testing.assert_close(q(x), plain - 2.0)
            torch.testing.assert_close(q(x.reshape(1, 5, K)), (plain - 2.0).reshape(1, 5, -1))


def test_eager_path_follows_replaced_buffers_and_copies():
    """Eager inference binds the kernel to the weight buffers; replacing one rebinds, and a
    used module still deep-copies and pickles (the binding is not part of its state)."""
    import copy
    import io

    q = lt.QuantLinear.from_linear(linear(seed=1), "u4", G)
    other = lt.QuantLinear.from_linear(linear(seed=2), "u4", G)
    x = torch.randn(3, K)
    with torch.no_grad():
        first = q(x)
        assert q._bound is not None  # the eager path ran
        torch.testing.assert_close(first, reference(x, q.qweight) + q.bias)
        q.qdata, q.scales, q.zeros = other.qdata, other.scales, other.zeros
        torch.testing.assert_close(q(x), other(x) - other.bias + q.bias)
        third = lt.QuantLinear.from_linear(linear(seed=3), "u4", G)
        q.load_state_dict(third.state_dict())  # copied into the same memory
        torch.testing.assert_close(q(x), third(x))
        clone = copy.deepcopy(q)
        buf = io.BytesIO()
        torch.save(q, buf)
        buf.seek(0)
        loaded = torch.load(buf, weights_only=False)
        for m in (clone, loaded):
            torch.testing.assert_close(m(x), q(x))


def test_jit_trace_records_the_op_not_the_eager_call():
    q = lt.QuantLinear.from_linear(linear(), "u4", G)
    with torch.no_grad():
        traced = torch.jit.trace(q, torch.randn(2, K))
        assert "lowbitc::matmul" in str(traced.graph)
        x = torch.randn(2, K)
        torch.testing.assert_close(traced(x), q(x))


def test_vmap_goes_through_the_op():
    q = lt.QuantLinear.from_linear(linear(), "u4", G)
    x = torch.randn(4, 3, K)
    with torch.no_grad():
        torch.testing.assert_close(torch.func.vmap(q)(x), q(x))


def test_half_and_device_moves_keep_scales_float32():
    q = lt.QuantLinear.from_linear(linear(), "u4", G)
    x = torch.randn(3, K, dtype=torch.bfloat16)
    before = q(x)
    q.to(torch.bfloat16)
    assert q.scales.dtype == torch.float32 and q.zeros.dtype == torch.float32
    assert q.bias.dtype == torch.bfloat16
    torch.testing.assert_close(q(x), before, rtol=2e-2, atol=2e-2)


def test_gradients_wrt_inputs_match_dequantized_reference():
    q = lt.QuantLinear.from_linear(linear(), "u3", G)
    w_hat = torch.from_numpy(q.qweight.dequantize())
    x = torch.randn(2, 3, K, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    gy = torch.randn(2, 3, N)
    q(x).backward(gy)
    (x_ref @ w_hat.T + q.bias).backward(gy)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5)
    assert q.bias.grad is not None  # bias stays trainable; the quantized weight is frozen
    xb = torch.randn(4, K, dtype=torch.bfloat16, requires_grad=True)
    q(xb).sum().backward()
    assert xb.grad.dtype == torch.bfloat16


def test_gradcheck_in_double_precision_of_the_reference():
    """torch.autograd.gradcheck on the op (float32 inputs; loose tolerances for fp32)."""
    _, args = pieces("u4", True, n=6, k=10, g=4)
    x = torch.randn(3, 10, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: torch.ops.lowbitc.matmul(t, *args), (x,),
                                    eps=1e-2, atol=1e-2, rtol=1e-2)


# ---------------------------------------------------------------- quantize_
def test_quantize_counts_and_skips():
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(),
                                torch.nn.Sequential(torch.nn.Linear(32, 32),
                                                    torch.nn.Linear(32, 8)))
    assert lt.quantize_(model, "u4", 16, skip=["2.1"]) == 2
    assert isinstance(model[0], lt.QuantLinear) and isinstance(model[2][1], torch.nn.Linear)
    assert lt.quantize_(model, "u4", 16) == 1  # QuantLinear modules are not linear any more
    attn = torch.nn.MultiheadAttention(16, 2)
    assert lt.quantize_(attn, "u4", 16) == 0  # out_proj's weight is read by the attention


# ---------------------------------------------------------------- torch.compile
class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(K, 64), torch.nn.Linear(64, N, bias=False)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_compile_fullgraph_equals_eager():
    torch.manual_seed(0)
    model = Tiny()
    assert lt.quantize_(model, "u4", G) == 2
    x = torch.randn(2, 3, K)
    with torch.no_grad():
        eager = model(x)
        compiled = torch.compile(model, fullgraph=True)(x)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)


def test_compile_backward_through_the_op():
    torch.manual_seed(1)
    model = Tiny()
    lt.quantize_(model, "nf4", G)
    x = torch.randn(4, K, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    torch.compile(model, fullgraph=True, backend="aot_eager")(x).sum().backward()
    model(x2).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- save / load
def test_save_load_rebuilds_without_quantizing(tmp_path, monkeypatch):
    torch.manual_seed(2)
    model = Tiny()
    lt.quantize_(model, "u3", G, skip=["b"])
    x = torch.randn(5, K)
    want = model(x)
    path = tmp_path / "tiny.safetensors"
    lt.save_quantized(model, path)

    def no_quantize(*args, **kwargs):
        raise AssertionError("load must not quantize")

    monkeypatch.setattr("lowbitc.torch.linear.quantize", no_quantize)
    fresh = lt.load_quantized(Tiny(), path)
    assert isinstance(fresh.a, lt.QuantLinear) and isinstance(fresh.b, torch.nn.Linear)
    assert torch.equal(fresh(x), want)
    assert np.array_equal(fresh.a.qweight.codes, model.a.qweight.codes)


def test_state_dict_round_trip_with_a_code_book(tmp_path):
    import lowbitc

    # 8 values fill all 3-bit codes (padded tables trip formats.register: NaN != NaN)
    book = lowbitc.codebook([-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 1.0], name="torch_book8")
    q = lt.QuantLinear.from_linear(linear(), book, 16)
    sd = q.state_dict()
    assert set(sd) == {"qdata", "scales", "bias"}
    fresh = lt.QuantLinear.from_config(q.config())
    fresh.load_state_dict(sd)
    x = torch.randn(3, K)
    assert torch.equal(fresh(x), q(x))
    assert fresh.qweight.dtype.name == "torch_book8"


def test_load_rejects_a_plain_file(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "plain.safetensors"
    save_file({"a": torch.zeros(2)}, str(path))
    with bad("has no 'lowbitc.quantized' metadata"):
        lt.load_quantized(Tiny(), path)


# ---------------------------------------------------------------- GPTQ
@pytest.mark.parametrize("fmt,zp", [("u4", True), ("nf4", False)])
def test_gptq_lowers_output_error_on_the_calibration_inputs(fmt, zp):
    """GPTQ trades weight error for output error: on correlated inputs its ||X W_hat^T - X W^T||
    beats round-to-nearest, and the QTensor it returns is an ordinary one."""
    from lowbitc.dtypes import dtype
    from lowbitc.torch.gptq import gptq_quantize

    gen = torch.Generator().manual_seed(3)
    x = torch.randn(512, 16, generator=gen) @ torch.randn(16, 64, generator=gen)  # low rank
    x += 0.1 * torch.randn(512, 64, generator=gen)
    w = torch.randn(24, 64, generator=gen)
    h = (x.double().T @ x.double()) / x.shape[0]
    qg = gptq_quantize(w, h, dtype(fmt), 32, zero_point=zp)
    qr = quantize(w.numpy(), fmt, 32, zero_point=zp)
    err = {name: float(torch.linalg.norm(x @ (torch.from_numpy(q.dequantize()) - w).T))
           for name, q in (("gptq", qg), ("rtn", qr))}
    assert err["gptq"] < 0.9 * err["rtn"], err
    assert qg.codes.shape == (24, 64) and (qg.zeros is not None) == zp


def test_quantize_with_calibration_uses_gptq():
    torch.manual_seed(4)
    model = Tiny()
    xs = [torch.randn(16, K) for _ in range(4)]
    n = lt.quantize_(model, "u4", G, calibrate=lambda m: [m(x) for x in xs])
    assert n == 2 and isinstance(model.a, lt.QuantLinear) and model.a.zeros is not None
