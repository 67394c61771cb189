"""Code generators. Each backend has a name, the pass pipeline its input needs, a pure `emit`
(text) and a `compile` stage that returns something callable on numpy arrays."""

from __future__ import annotations

import importlib

from lowbitc.errors import UserArgumentError

_BACKENDS = {"llvm": "lowbitc.backends.llvm.backend", "cuda": "lowbitc.backends.numba_cuda.backend"}


def get_backend(name: str):
    """The backend object registered under `name` ('llvm' or 'cuda')."""
    if name not in _BACKENDS:
        raise UserArgumentError(f"backend: expected one of {sorted(_BACKENDS)}, got {name!r}")
    return importlib.import_module(_BACKENDS[name]).BACKEND
