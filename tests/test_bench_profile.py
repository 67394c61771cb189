"""benchmarks.profile: perf samples of a kernel's JIT code, mapped onto its disassembly."""

import shutil
import subprocess

import numpy as np
import pytest

import lowbitc
from benchmarks import profile


def _perf_works() -> bool:
    if not (shutil.which("perf") and shutil.which("objdump")):
        return False
    r = subprocess.run(["perf", "record", "-e", "cpu-clock", "-o", "/dev/null", "true"],
                       capture_output=True)
    return r.returncode == 0


@pytest.mark.skipif(not _perf_works(), reason="perf record (cpu-clock) or objdump unavailable")
def test_samples_land_in_the_kernels_code(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWBITC_NO_CACHE", "1")
    k = lowbitc.compile("""
kernel busy(x: f32[N], y: f32[N]) grid (cdiv(N, 64)) {
  v = load(x[block.x * 64 :+ 64])
  store(y[block.x * 64 :+ 64], sqrt(v * v + 1.0) * sqrt(v + 2.0))
}""")
    x = np.random.default_rng(0).random(1 << 20).astype(np.float32)
    y = np.empty_like(x)
    out = tmp_path / "listing.txt"
    res = profile.profile(k, lambda: k(x, y), 1.0, str(out))
    assert res["calls"] > 0 and res["samples"] > 100
    assert res["in_kernel"] > 0.5  # the kernel's loop, not Python, takes the time
    assert sum(res["regions"].values()) == pytest.approx(res["in_kernel"])
    assert any("sqrt" in ins for _, _, ins in res["hottest"])  # its own instructions
    lines = out.read_text().splitlines()
    assert lines[0].startswith("# lbk_busy:") and len(lines) > 10
