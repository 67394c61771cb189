"""pytest never touches the user's compile cache: conftest.py gives each run its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SOURCE = """kernel twice(x: f32[N], y: f32[N])
  grid (cdiv(N, 64),)
{
  store(y[block.x*64 :+ 64], load(x[block.x*64 :+ 64]) * 2.0)
}
"""


@pytest.mark.skipif(os.environ.get("LOWBITC_INNER_RUN") != "1",
                    reason="run by test_pytest_leaves_the_users_cache_untouched only")
def test_inner_run_compiles_into_the_default_cache():
    import numpy as np

    import lowbitc
    from lowbitc.cache import default_cache

    k = lowbitc.compile(SOURCE)
    x = np.arange(100, dtype=np.float32)
    y = np.zeros_like(x)
    k(x, y)
    assert (y == 2 * x).all()
    cache = default_cache()
    assert cache.info()["entries"] >= 1 and not cache.path.is_relative_to(Path.home())


def test_pytest_leaves_the_users_cache_untouched(tmp_path):
    home = tmp_path / "home"
    (home / ".cache").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items()
           if k not in ("LOWBITC_CACHE_DIR", "LOWBITC_TEST_RUN_CACHE", "LOWBITC_TEST_CACHE_DIR",
                        "XDG_CACHE_HOME", "LOWBITC_NO_CACHE")}
    env.update(HOME=str(home), LOWBITC_INNER_RUN="1")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        f"{__file__}::test_inner_run_compiles_into_the_default_cache"],
                       env=env, capture_output=True, text=True, timeout=300,
                       cwd=Path(__file__).parents[1])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 passed" in r.stdout
    assert not (home / ".cache" / "lowbitc").exists()
    assert list((home / ".cache").iterdir()) == []
