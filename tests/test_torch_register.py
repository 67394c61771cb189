"""`lowbitc.torch.register_kernel`: any compiled kernel as a torch.library custom op (issue 15)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="lowbitc.torch needs PyTorch")

import lowbitc  # noqa: E402
from lowbitc import dtype, pack  # noqa: E402
from lowbitc.errors import UserArgumentError  # noqa: E402
from lowbitc.torch import register_kernel  # noqa: E402

GEMV = """kernel gemv[W: dtype](x: f32[M, K], w: W[N, K], y: f32[M, N]) grid (cdiv(N, 32)) {
  acc = zeros(f32, [M, 32])
  for k in range(0, K, 64) {
    a = load(x[0 :+ M, k :+ 64])
    acc = dot(a, transpose(cast(load(w[block.x * 32 :+ 32, k :+ 64]), f32)), acc)
  }
  store(y[0 :+ M, block.x * 32 :+ 32], acc)
}
"""
# a scalar, a dim given only by packed words (K), two outputs, an f16 output
DEQUANT = """kernel dq[W: dtype](w: W[N, K], s: f32[N], scale: f32, y: f16[N, K], r: f32[N])
  grid (cdiv(N, 8), cdiv(K, 32))
{
  q = cast(load(w[block.x * 8 :+ 8, block.y * 32 :+ 32]), f32)
  v = q * reshape(load(s[block.x * 8 :+ 8]), [8, 1]) * scale
  store(y[block.x * 8 :+ 8, block.y * 32 :+ 32], cast(v, f16))
  if block.y == 0 { store(r[block.x * 8 :+ 8], load(s[block.x * 8 :+ 8]) * 2.0) }
}
"""
RNG = np.random.default_rng(15)
_NAMES = itertools.count()


def _name(base: str) -> str:
    return f"lbtest::{base}{next(_NAMES)}"


@pytest.mark.parametrize("w", ["b2", "u4", "u5"])
def test_a_user_gemv_is_a_torch_op_under_compile_and_opcheck(w):
    k = lowbitc.compile(GEMV.replace("M", "2"), W=dtype(w))
    op = register_kernel(k, _name("gemv"), outputs=["y"])
    bits = dtype(w).bits
    codes = RNG.integers(0, 1 << bits, (70, 200), dtype=np.uint8)
    words = torch.from_numpy(pack(codes, bits).view(np.int32))
    x = torch.randn(2, 200)
    ref = x.numpy().astype(np.float64) @ dtype(w).decode(codes).astype(np.float64).T
    np.testing.assert_allclose(op(x, words).numpy(), ref, rtol=1e-5, atol=1e-4)
    f = torch.compile(lambda x, w: torch.relu(op(x, w)), fullgraph=True)
    np.testing.assert_allclose(f(x, words).numpy(), np.maximum(ref, 0), rtol=1e-5, atol=1e-4)
    torch.library.opcheck(op, (x, words))
    # writing the weight in place is seen (a new tensor version)
    words[3, 0] ^= 1
    codes = lowbitc.unpack(words.numpy().view(np.uint32), bits, 200).reshape(70, 200)
    ref = x.numpy().astype(np.float64) @ dtype(w).decode(codes).astype(np.float64).T
    np.testing.assert_allclose(op(x, words).numpy(), ref, rtol=1e-5, atol=1e-4)


def test_scalars_packed_only_dims_and_two_outputs():
    k = lowbitc.compile(DEQUANT, W=dtype("u3"))
    op = register_kernel(k, _name("dq"), outputs=["y", "r"])
    codes = RNG.integers(0, 8, (20, 70), dtype=np.uint8)
    words = torch.from_numpy(pack(codes, 3).view(np.int32))
    s = torch.rand(20)
    y, r = op(words, s, 0.5, 70)
    assert y.dtype == torch.float16 and y.shape == (20, 70) and r.shape == (20,)
    want = (codes * s.numpy()[:, None] * 0.5).astype(np.float16)
    np.testing.assert_array_equal(y.numpy(), want)
    np.testing.assert_allclose(r.numpy(), 2 * s.numpy())
    f = torch.compile(lambda w, s: op(w, s, 0.5, 70)[0].float() + 1, fullgraph=True)
    np.testing.assert_allclose(f(words, s).numpy(), want.astype(np.float32) + 1, rtol=1e-3)
    torch.library.opcheck(op, (words, s, 0.5, 70))


def test_bad_registrations_name_the_argument():
    k = lowbitc.compile(GEMV.replace("M", "1"), W=dtype("u4"))
    with pytest.raises(UserArgumentError, match="outputs: 'z' is not a tensor parameter"):
        register_kernel(k, _name("g"), outputs=["z"])
    with pytest.raises(UserArgumentError, match="name: expected 'namespace::op'"):
        register_kernel(k, "nonamespace", outputs=["y"])
    with pytest.raises(UserArgumentError, match="kernel: expected a lowbitc.compile"):
        register_kernel("gemv", _name("g"), outputs=["y"])
    name = _name("twice")
    register_kernel(k, name, outputs=["y"])
    with pytest.raises(UserArgumentError, match="cannot define"):
        register_kernel(k, name, outputs=["y"])
