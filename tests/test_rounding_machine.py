"""Rounded casts into machine types: `cast(x, u8 | i8 | f16 | bf16, rounding=...)`.

bf16 and f16: the host encoder against an exact reference on every code's neighbourhood (each
of the 2^16 codes' values and midpoints, the f32 numbers either side of each, both signs,
subnormals, overflow up to f32's max, infinities, NaN); the reference is numpy float64, exact
here (every f32 input, value and midpoint is a float64 and so is every difference taken), and
is itself checked against the fractions model on a sample. Then the native LLVM kernel on the
whole neighbourhood set, bit for bit; the CUDA simulator in a process of its own
(cudasim/test_sim_rounding_machine.py). The default cast (rounding="nearest_even") into f16 or
bf16 is the machine conversion: it agrees with encode except that it overflows to inf.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_compiler_encode import probe_values
from test_dtypes import Model
from test_rounding import model_round
from test_rounding_kernels import MODES, SEED

import lowbitc
from lowbitc.ir.types import numpy_dtype
from lowbitc.rounding import ROUNDINGS

DETERMINISTIC = [m for m in ROUNDINGS if m != "stochastic"]
SIXTEEN = ["bf16", "f16"]
EIGHT = ["u8", "i8"]


def neighbourhood16(fmt) -> np.ndarray:
    """f32 points around every value and midpoint of a 16-bit float, both signs, overflow."""
    v = fmt.values().astype(np.float64)
    v = np.unique(v[np.isfinite(v)])
    mids = (v[:-1] + v[1:]) / 2  # exact in f32 (one bit more than the format)
    base = np.concatenate([v, mids, [0.0, 3e38, 3.4028235e38, 1e-45]]).astype(np.float32)
    base = np.concatenate([base, -base])
    with np.errstate(over="ignore"):
        x = np.concatenate([base, np.nextafter(base, np.float32(np.inf)),
                            np.nextafter(base, np.float32(-np.inf))])
    return np.concatenate([x, np.float32([np.inf, -np.inf, np.nan, -np.nan])])


def exact_codes(fmt, x: np.ndarray, mode: str) -> np.ndarray:
    """Codes of f32 `x` in a deterministic mode, from the sorted exact values (float64)."""
    table = fmt.values().astype(np.float64)
    fin = np.isfinite(table)
    vals, first = np.unique(np.where(table[fin] == 0, 0.0, table[fin]), return_index=True)
    codes = np.flatnonzero(fin)[first]  # (+0 for 0: the smaller code)
    finite = np.isfinite(x)
    q = np.clip(np.where(finite, x, 0).astype(np.float64), vals[0], vals[-1])
    i = np.searchsorted(vals, q)
    hit = vals[np.minimum(i, vals.size - 1)] == q
    lo, hi = np.maximum(i - 1, 0), np.minimum(i, vals.size - 1)
    lo, hi = np.where(hit, i, lo), np.where(hit, i, hi)
    dl, dh = q - vals[lo], vals[hi] - q
    pick = {"down": lo, "up": hi, "toward_zero": np.where(q > 0, lo, hi),
            "nearest_away": np.where((dl < dh) | ((dl == dh) & (q < 0)), lo, hi),
            "nearest_even": np.where((dl < dh) | ((dl == dh) & (codes[lo] % 2 == 0)), lo, hi)}
    code = codes[pick[mode]]
    neg_zero = np.signbit(x) & (vals[pick[mode]] == 0)
    code = np.where(neg_zero, 0x8000, code)
    special = fmt.encode(np.where(finite, 0, x).astype(np.float32))
    return np.where(finite, code, special).astype(np.uint16)


def check_codes(fmt, x: np.ndarray, outs: list, where: str) -> None:
    """Every mode's output against encode; the default cast into a 16-bit float overflows."""
    for mode, out in zip(ROUNDINGS, outs):
        want = fmt.encode(x, rounding=mode, seed=SEED)
        got = np.asarray(out).view(want.dtype)
        if mode == "nearest_even" and fmt.bits == 16:
            over = np.abs(x) >= fmt.max + (fmt.max - fmt.values()[fmt.encode([fmt.max])[0] - 1]) / 2
            inf = fmt.encode(np.where(x > 0, np.inf, -np.inf).astype(np.float32))
            assert over.any() and np.array_equal(got[over], inf[over]), (where, fmt.name)
            want = np.where(over, inf, want)
        bad = np.flatnonzero(got != want)
        assert bad.size == 0, (where, fmt.name, mode, x[bad[:5]], got[bad[:5]], want[bad[:5]])


def machine_points(name: str) -> np.ndarray:
    fmt = lowbitc.dtype(name)
    if fmt.bits == 16:
        return neighbourhood16(fmt)
    x = probe_values(fmt)
    return x[~np.isnan(x)]


def edges_and_sample(name: str, x: np.ndarray, n: int) -> np.ndarray:
    """Every point past the finite range (overflow, infinities, NaN) and n of the others."""
    edge = ~(np.abs(x) <= lowbitc.dtype(name).max)
    rest = np.random.default_rng(3).choice(x[~edge], n, replace=False)
    return np.concatenate([x[edge], rest])


def run_machine_modes(k, name: str, x: np.ndarray) -> list[np.ndarray]:
    outs = [np.zeros(x.size, numpy_dtype(name)) for _ in ROUNDINGS]
    k(x, *outs, SEED)
    return outs


@pytest.mark.parametrize("name", SIXTEEN)
@pytest.mark.parametrize("mode", DETERMINISTIC)
def test_host_encode_exhaustive_16_bit(name, mode):
    fmt = lowbitc.dtype(name)
    x = neighbourhood16(fmt)
    got, want = fmt.encode(x, rounding=mode), exact_codes(fmt, x, mode)
    bad = np.flatnonzero(got != want)
    assert x.size > 300_000 and bad.size == 0, (x[bad[:5]], got[bad[:5]], want[bad[:5]])
    sample = np.random.default_rng(7).choice(x[np.isfinite(x)], 1500, replace=False)
    model = Model(fmt)
    fractions = np.array([model_round(model, float(v), mode) for v in sample])
    assert np.array_equal(exact_codes(fmt, sample, mode), fractions), (name, mode)


@pytest.mark.parametrize("name", SIXTEEN + EIGHT)
def test_native_kernel_every_mode(name):
    x = machine_points(name)
    k = lowbitc.compile(MODES, F=name, B=64)
    check_codes(lowbitc.dtype(name), x, run_machine_modes(k, name, x), "llvm")
    if name in SIXTEEN:  # (the interpreter runs a block at a time)
        x = edges_and_sample(name, x, 3000)
    outs = [np.zeros(x.size, numpy_dtype(name)) for _ in ROUNDINGS]
    k.interpret(x, *outs, SEED)  # the DSL cast's own semantics
    check_codes(lowbitc.dtype(name), x, outs, "interpreter")


@pytest.mark.cudasim
def test_simulator_suite_in_its_own_process():
    from cuda_checks import run_simulator_suite

    run_simulator_suite("test_sim_rounding_machine.py", passed=4)
