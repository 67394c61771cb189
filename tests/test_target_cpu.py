"""LOWBITC_TARGET_CPU: the LLVM backend compiles for a named CPU (its name, the host's features
less those it lacks), so an AVX2-only CPU's code paths run end to end on an AVX-512 host."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace

import pytest

from lowbitc.cache import host as cache_host
from lowbitc.cache import key
from lowbitc.errors import UserArgumentError

HOST = cache_host.LLVMHost(
    cpu="znver4",
    features="+avx,+avx2,+avx512f,+avx512vnni,+avx512vl,-avxvnni,-avxvnniint8,+fma,+gfni,+vaes",
    llvm="20.1.0",
)


def _on(host: cache_host.LLVMHost) -> set[str]:
    return {f[1:] for f in host.features.split(",") if f[0] == "+"}


def test_a_cpu_without_avx512_turns_off_what_it_lacks():
    z3 = cache_host.for_target(HOST, "znver3")
    assert z3.cpu == "znver3" and z3.llvm == HOST.llvm
    assert _on(z3) == {"avx", "avx2", "fma", "vaes"}  # Zen 3: no GFNI either
    assert z3.features.split(",")[2:6] == ["-avx512f", "-avx512vnni", "-avx512vl", "-avxvnni"]
    with_avxvnni = replace(HOST, features=HOST.features.replace("-avxvnni,", "+avxvnni,"))
    adl = cache_host.for_target(with_avxvnni, "alderlake")  # AVX-VNNI, not its int8 form
    assert _on(adl) == {"avx", "avx2", "avxvnni", "fma", "gfni", "vaes"}
    # it only turns features off: nothing the host lacks is turned on
    assert _on(cache_host.for_target(HOST, "haswell")) == {"avx", "avx2", "fma"}


def test_a_cpu_with_avx512_keeps_the_host_features_and_unset_is_the_host():
    assert cache_host.for_target(HOST, "sapphirerapids") == cache_host.LLVMHost(
        "sapphirerapids", HOST.features, HOST.llvm)
    assert cache_host.for_target(HOST, "") is HOST


def test_an_unknown_cpu_is_an_error_naming_the_variable_and_the_cpus():
    with pytest.raises(UserArgumentError, match=r"LOWBITC_TARGET_CPU: expected one of "
                                                r"alderlake, broadwell, .*znver3, znver4, "
                                                r"znver5 \(or unset for this host\), got 'zen3'"):
        cache_host.for_target(HOST, "zen3")


@pytest.fixture
def fresh_host():
    """llvm_host and host_target answered anew (for the environment the test sets)."""

    def clear():
        cache_host.llvm_host.cache_clear()
        key.host_target.cache_clear()

    clear()
    yield
    clear()


def test_the_cache_key_separates_the_target_from_the_host(monkeypatch, fresh_host):
    monkeypatch.delenv("LOWBITC_TARGET_CPU", raising=False)
    native = key.host_target()
    assert native == f"{cache_host.real_host().cpu}:{cache_host.real_host().features}"
    cache_host.llvm_host.cache_clear()
    key.host_target.cache_clear()
    monkeypatch.setenv("LOWBITC_TARGET_CPU", "znver3")
    z3 = key.host_target()
    assert z3.startswith("znver3:") and z3 != native and "+avx512" not in z3
    assert cache_host.real_host().cpu == native.split(":")[0]  # the record keeps the host


CHILD = r"""
import re
import numpy as np
import lowbitc
from lowbitc import ops, kernels
from lowbitc.backends.llvm import bytedot, intdot, microkernel, target

assert target.cpu_name() == "znver3", target.cpu_name()
assert target.host_vector_bits() == 256 and microkernel.host_vector() == (8, 16)
assert [r.name for r in intdot.host_int_dots()] == ["vpmaddwd-256"]
assert bytedot.recipe() == "avx2"  # the fused byte dot on two ymm halves

def bound(x, w_hat, qb):
    # tests/test_a8.py's a8_bound: f32 rounding of the sums, plus (int8 activations in
    # blocks of qb) half a step of each block's activations
    b = 1e-5 * np.abs(x) @ np.abs(w_hat).T + 1e-6
    for k0 in range(0, x.shape[1], qb) if qb else ():
        amax = np.abs(x[:, k0:k0 + qb]).max(axis=1, keepdims=True).astype(np.float64)
        b += amax / 254 * np.abs(w_hat[:, k0:k0 + qb]).sum(axis=1)[None, :]
    return b

rng = np.random.default_rng(5)
N = K = 256
for fmt in ("u4", "u3", "u8"):
    qw = lowbitc.quantize(rng.standard_normal((N, K)).astype(np.float32), fmt, 64,
                          zero_point=True)
    w_hat = qw.dequantize().astype(np.float64)
    for act in ("f32", "i8"):
        for M in (1, 5):
            x = (rng.standard_normal((M, K)) * rng.uniform(0.1, 10, (M, 1))).astype(np.float32)
            y = ops.matmul(x, qw, act=act)
            err = np.abs(y - x.astype(np.float64) @ w_hat.T)
            b = bound(x, w_hat, 64 if act == "i8" else 0)
            assert (err <= b).all(), (fmt, act, M, float((err / b).max()))
asm = {name: k.text("asm") for name, k in kernels._KERNELS.items()}
zmm = [name for name, text in asm.items() if "%zmm" in text]
assert not zmm, zmm
assert any("vpmaddubsw" in text for text in asm.values())
print("ok", len(kernels._KERNELS))
"""


def test_znver3_runs_the_avx2_paths_end_to_end(tmp_path):
    """u4, u3 and u8 weights with f32 and int8 activations at M = 1 and 5, compiled for Zen 3
    in a fresh process and cache: the AVX2 recipes (the fused byte dot's vpmaddubsw), no zmm
    register, numpy's results."""
    env = {**os.environ, "LOWBITC_TARGET_CPU": "znver3", "LOWBITC_CACHE_DIR": str(tmp_path)}
    env.pop("LOWBITC_NO_CACHE", None)
    done = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[0] == "ok"
