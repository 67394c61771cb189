"""Shared pytest configuration."""

import os

# tests/cudasim needs NUMBA_ENABLE_CUDASIM=1, which is process-wide: only the subprocess that
# tests/test_cuda_toolchain.py starts (with that variable set) collects it.
collect_ignore = [] if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" else ["cudasim"]
