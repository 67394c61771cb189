"""Lane sums carried across a user's K loop (backends/llvm/carry.py): `acc = dot(a, E, acc)`
in a `for`, acc read nowhere else in the loop, keeps each output's vector partial sums and
sums them once after the loop. Against numpy and the interpreter, with edge tiles (N not a
multiple of the tile, K ending inside a window: the generic dot adds into acc meanwhile),
M = 1-3 and 5, chains of dots, two carried tiles; and loops that read acc, or nested in
another loop (not carried: explain says which ran)."""

from pathlib import Path

import numpy as np
import pytest

import lowbitc
from lowbitc.compiler import compile
from lowbitc.interp import run

CARRIED = "lane sums carried across the loop"
JOINED = "one row loop with the chained dot reading the same codes window"
USER = Path(__file__).resolve().parents[1] / "examples" / "user"

# MODE 0: one dot; 1: two dots a step (the second adds into the first's result, with a row
# offset); 2: acc scaled inside the loop (read: not carried); 3: two carried tiles;
# 4: a nested loop (not carried: entered once per outer step); 5: acc also stored inside the
# loop (not carried)
KERNEL = """
kernel carried[MODE: int = 0, BM: int = 1](
    x: f32[M, K], w: u8[N, KH], s: f32[N, KB], c: f32[N, KB], y: f32[M, N], z: f32[M, N])
  grid (cdiv(N, 16))
{
  n0 = block.x * 16
  acc = zeros(f32, [BM, 16])
  acc2 = zeros(f32, [BM, 16])
  if MODE != 4 {
    for kb in range(0, KB, 1) {
      a = load(x[0 :+ BM, kb * 64 :+ 64])
      b = load(w[n0 :+ 16, kb * 32 :+ 32])
      q = cast(view((b << 4) | (b >> 4), nf4), f32)
      sc = load(s[n0 :+ 16, kb :+ 1])
      if MODE == 0 { acc = dot(a, transpose(q * sc), acc) }
      if MODE == 1 {
        a0 = load(x[0 :+ BM, kb * 64 :+ 32])
        a1 = load(x[0 :+ BM, kb * 64 + 32 :+ 32])
        lo = cast(load(w[n0 :+ 16, kb * 32 :+ 32]) & 15, f32)
        hi = cast(load(w[n0 :+ 16, kb * 32 :+ 32]) >> 4, f32)
        acc = dot(a0, transpose(hi * sc - load(c[n0 :+ 16, kb :+ 1])), acc)
        acc = dot(a1, transpose(lo * sc), acc)
      }
      if MODE == 2 { acc = dot(a, transpose(q * sc), acc * 0.5) }
      if MODE == 3 {
        acc = dot(a, transpose(q * sc), acc)
        b2 = load(w[n0 :+ 16, kb * 32 :+ 32])
        q2 = cast(view((b2 << 4) | (b2 >> 4), nf4), f32)
        acc2 = dot(a, transpose(q2 * load(c[n0 :+ 16, kb :+ 1])), acc2)
      }
      if MODE == 5 {
        acc = dot(a, transpose(q * sc), acc)
        store(z[0 :+ BM, n0 :+ 16], acc)
      }
    }
  }
  if MODE == 4 {
    for kc in range(0, KB, 2) {
      for kb in range(kc, kc + 2, 1) {
        a = load(x[0 :+ BM, kb * 64 :+ 64])
        b = load(w[n0 :+ 16, kb * 32 :+ 32])
        q = cast(view((b << 4) | (b >> 4), nf4), f32)
        acc = dot(a, transpose(q * load(s[n0 :+ 16, kb :+ 1])), acc)
      }
    }
  }
  store(y[0 :+ BM, n0 :+ 16], acc)
  if MODE == 3 { store(z[0 :+ BM, n0 :+ 16], acc2) }
}
"""


def _case(mode: int, m: int, n: int, k: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    kb = -(-k // 64)  # (even: MODE 4's inner loop takes two steps)
    codes = rng.integers(0, 16, (n, kb * 64)).astype(np.uint8)
    codes[:, k:] = 0  # bytes past the weights' K / 2 read 0
    stored = ((codes[:, 0::2] << 4) | codes[:, 1::2]).astype(np.uint8)  # first code high
    s = rng.uniform(0.5, 2, (n, kb)).astype(np.float32)
    c = rng.uniform(0.5, 2, (n, kb)).astype(np.float32)
    x = rng.standard_normal((m, kb * 64)).astype(np.float32)
    x[:, k:] = 0  # the kernel reads K = k: windows past it read 0
    x64, sk, ck = x.astype(np.float64), np.repeat(s, 64, 1), np.repeat(c, 64, 1)
    nf4 = lowbitc.dtype("nf4").decode(codes).astype(np.float64)
    z = np.zeros((m, n))
    if mode == 1:  # per 64: the high nibbles (codes 0, 2, ..) with a0, the low ones with a1
        hi, lo = codes[:, 0::2].astype(np.float64), codes[:, 1::2].astype(np.float64)
        steps = [(x64[:, j * 64:j * 64 + 32] @ (hi[:, j * 32:j * 32 + 32] * s[:, j:j + 1]
                                                 - c[:, j:j + 1]).T
                  + x64[:, j * 64 + 32:j * 64 + 64] @ (lo[:, j * 32:j * 32 + 32]
                                                        * s[:, j:j + 1]).T)
                 for j in range(kb)]
        y = sum(steps)
    elif mode == 2:  # acc = acc * 0.5 + step
        y = np.zeros((m, n))
        for j in range(kb):
            y = y * 0.5 + x64[:, j * 64:(j + 1) * 64] @ (nf4 * sk)[:, j * 64:(j + 1) * 64].T
    else:
        y = x64 @ (nf4 * sk).T
        if mode == 3:
            z = x64 @ (nf4 * ck).T
        if mode == 5:
            z = y
    return [np.ascontiguousarray(x[:, :k]), np.ascontiguousarray(stored[:, :k // 2]), s, c], y, z


def _check(mode: int, m: int, n: int, k: int) -> str:
    args, ref_y, ref_z = _case(mode, m, n, k)
    kern = compile(KERNEL, MODE=mode, BM=m)
    y, z = np.zeros(ref_y.shape, np.float32), np.zeros(ref_z.shape, np.float32)
    kern(*args, y, z)
    np.testing.assert_allclose(y, ref_y, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(z, ref_z, rtol=1e-4, atol=1e-3)
    iy, iz = np.zeros_like(y), np.zeros_like(z)
    run(kern.ir, *args, iy, iz)
    np.testing.assert_allclose(y, iy, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(z, iz, rtol=1e-4, atol=1e-3)
    return kern.explain()


@pytest.mark.parametrize("m", [1, 2, 3, 5])
@pytest.mark.parametrize("n,k", [(48, 256), (40, 352)])  # (40, 352): edge tiles and windows
def test_carried_dot_matches_numpy_and_the_interpreter(m, n, k):
    text = _check(0, m, n, k)
    assert CARRIED in text, text


@pytest.mark.parametrize("mode", [1, 3])
@pytest.mark.parametrize("m", [1, 3])
def test_chains_and_two_tiles_are_carried(mode, m):
    text = _check(mode, m, 40, 352)
    dots = [ln for ln in text.splitlines() if ": dot" in ln]
    assert dots and all(CARRIED in ln for ln in dots), text
    # MODE 1's two dots read one codes window: their rows run in one loop (carry.plan_joins)
    assert all((JOINED in ln) == (mode == 1) for ln in dots), text


@pytest.mark.parametrize("mode", [2, 4, 5])
def test_a_loop_reading_acc_or_nested_is_not_carried(mode):
    text = _check(mode, 2, 40, 352)
    assert "fused register dot" in text and CARRIED not in text, text


@pytest.mark.parametrize("name,carried", [("gguf_q4_k_gemv", True), ("gguf_q4_0_gemv", True),
                                          ("gguf_q8_0_gemv", False)])
def test_steps_of_fewer_than_64_weights_sum_per_window(name, carried):
    """GGUF Q8_0's loop steps over 32 weights (one dot): carrying measured slower there."""
    text = compile(USER / f"{name}.lbk").explain()
    dots = [ln for ln in text.splitlines() if ": dot" in ln]
    assert dots and all((CARRIED in ln) == carried for ln in dots), text



def test_output_tiles_past_the_partials_budget_are_not_carried(monkeypatch):
    """Partials cost 128 bytes per output: a tile past carry.MAX_PARTIALS (here lowered below
    one [4, 16] tile) keeps the per-window horizontal sums, and stays correct."""
    from lowbitc.backends.llvm import carry

    monkeypatch.setenv("LOWBITC_NO_CACHE", "1")  # (compiled anew under the lowered budget)
    monkeypatch.setattr(carry, "MAX_PARTIALS", 4 * 4 * 16 * carry.LANES - 4)
    text = _check(0, 4, 40, 352)
    assert "fused register dot" in text and CARRIED not in text, text
    monkeypatch.setattr(carry, "MAX_PARTIALS", 4 * 4 * 16 * carry.LANES)
    assert CARRIED in _check(0, 4, 40, 352)


def test_the_mixture_gemv_carries_its_flat_loop_not_the_inner_group_loop():
    """matmul_mix.lbk's nested K loop runs inside its loop over groups (one or two steps an
    entry): carried, its partials were zeroed and reduced per group (the GEMV 1.65x slower).
    The GEMV's flat loop (FLAT) carries each row's lane sums across groups instead, the
    group's scale applied per row and window."""
    from lowbitc import ops

    w = np.random.default_rng(0).standard_normal((64, 256)).astype(np.float32)
    q = lowbitc.quantize(w, ["u4", "nf4", "f4e2m1fn", "i4"], 128, zero_point=True)
    params = ops.mix_params(q, 1, "f32")
    assert params["FLAT"]
    text = ops.get_kernel("matmul_mix", "llvm", **params).explain()
    assert CARRIED in text and "each row's sum scaled once by its row scale" in text, text
    text = ops.get_kernel("matmul_mix", "llvm", **{**params, "FLAT": False}).explain()
    assert "fused register dot" in text and CARRIED not in text, text
