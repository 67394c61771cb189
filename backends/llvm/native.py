"""Kernels as shared libraries, so that loading one from the compile cache needs no llvmlite.

At build time a kernel's position-independent object code is linked by the system linker
(`cc`, `gcc`, `clang` or `ld`, first found on PATH; `LOWBITC_LINKER` names another, or `none`)
into an ELF shared library, and the cache stores that in place of the object. Loading one
copies the bytes the cache has just verified (sha256) to a file of this process in the cache's
private directory, dlopens it with ctypes (RTLD_NOW) and unlinks it: the code that runs is the
code that was checked, and nothing is loaded from a path another user can write. Without a
linker, off Linux, or with the cache turned off, kernels go through MCJIT (`jit.py`) as
before; a cached relocatable object (from a machine without a linker) loads there too.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import itertools
import os
import platform
import shutil
import sys
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from lowbitc.cache import CacheKey, CacheWarning, default_cache, default_cache_dir
from lowbitc.cache.fsutil import ensure_private_dir
from lowbitc.errors import BackendError

if TYPE_CHECKING:
    from lowbitc.backends.llvm.jit import CompiledModule

__all__ = ["SharedModule", "elf_type", "link", "linker", "load", "load_shared", "module"]

ET_REL, ET_DYN = 1, 3
# platform.machine() -> ELF e_machine of code built for it
_ELF_MACHINE = {"x86_64": 62, "AMD64": 62, "aarch64": 183, "arm64": 183}
_LINKERS = ("cc", "gcc", "clang", "ld")
_LOCK = threading.Lock()
_LOADED: dict[str, SharedModule] = {}  # sha256 of the image -> module; never unloaded
_COPIES_LOADED: list[SharedModule] = []  # loaded with fresh=True; never unloaded
_COPIES = itertools.count()


class SharedModule:
    """A kernel's shared library loaded in this process; `object_code` is its image."""

    def __init__(self, name: str, image: bytes, library: ctypes.CDLL):
        self.name = name
        self.object_code = image
        self._library = library  # keeps it loaded: function pointers point into it

    def __repr__(self) -> str:
        return f"SharedModule({self.name!r}, {len(self.object_code)} bytes)"

    def address(self, symbol: str) -> int:
        """The entry address of the function `symbol`; BackendError if the library lacks it."""
        try:
            return ctypes.cast(getattr(self._library, symbol), ctypes.c_void_p).value
        except AttributeError:
            raise BackendError(f"module {self.name!r} has no function {symbol!r}") from None


def elf_type(data: bytes) -> int | None:
    """ET_REL or ET_DYN for a 64-bit little-endian ELF file built for this machine, else None."""
    machine = _ELF_MACHINE.get(platform.machine())
    if len(data) < 64 or data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return None
    if machine is None or int.from_bytes(data[18:20], "little") != machine:
        return None
    return int.from_bytes(data[16:18], "little")


@functools.lru_cache(maxsize=8)
def _find_linker(choice: str) -> str | None:
    if choice.lower() in ("none", "off", "0"):
        return None
    for name in (choice,) if choice else _LINKERS:
        path = shutil.which(name)
        if path is not None:
            return path
    return None


def linker() -> str | None:
    """The linker that builds shared libraries here, or None (then MCJIT serves)."""
    if not sys.platform.startswith("linux") or platform.machine() not in _ELF_MACHINE:
        return None
    return _find_linker(os.environ.get("LOWBITC_LINKER", "").strip())


def _link_command(exe: str, obj: Path, out: Path) -> list[str]:
    if Path(exe).name.startswith("ld"):  # ld, ld.bfd, ld.gold, ld.lld: symbols resolve at load
        return [exe, "-shared", "-z", "noexecstack", "-o", str(out), str(obj)]
    return [
        exe,
        "-shared",
        "-Wl,-z,noexecstack",
        "-Wl,-z,defs",
        "-o",
        str(out),
        str(obj),
        "-lm",
        "-pthread",
    ]


def link(obj: bytes, name: str, exe: str) -> bytes | None:
    """The shared library `exe` links from position-independent object code `obj`, or None
    (with a warning) when the linker fails."""
    import subprocess  # with tempfile, ~5 ms to import: a cache hit never links
    import tempfile

    with tempfile.TemporaryDirectory(prefix="lowbitc-link-") as tmp:
        src, out = Path(tmp) / f"{name}.o", Path(tmp) / f"{name}.so"
        src.write_bytes(obj)
        try:
            run = subprocess.run(
                _link_command(exe, src, out),
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            failure = run.stderr.strip()[-500:] if run.returncode else None
        except (OSError, subprocess.SubprocessError) as exc:
            failure = str(exc)
        if failure is None and out.exists():
            return out.read_bytes()
    warnings.warn(
        f"lowbitc: linking {name!r} with {exe} failed ({failure}); the kernel runs "
        "through MCJIT instead",
        CacheWarning,
        stacklevel=3,
    )
    return None


def load_shared(image: bytes, name: str, fresh: bool = False) -> SharedModule:
    """Load a shared-library image (checked by the caller) through a private file. The same
    image loads once per process (its globals are shared) unless `fresh` asks for a copy of
    its own (as MCJIT gives every load), for code with mutable globals such as the pool."""
    digest = hashlib.sha256(image).hexdigest()
    with _LOCK:
        loaded = None if fresh else _LOADED.get(digest)
        if loaded is not None:
            return loaded
        where = ensure_private_dir(ensure_private_dir(default_cache_dir()) / "tmp")
        # dlopen takes a name it has loaded for that library: a copy needs a name of its own
        copy = f"-{next(_COPIES)}" if fresh else ""
        path = where / f"{digest}-{os.getpid()}{copy}.so"
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # left by a crashed process that had our pid
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o700)
            with os.fdopen(fd, "wb") as f:
                f.write(image)
            library = ctypes.CDLL(str(path), mode=os.RTLD_NOW | os.RTLD_LOCAL)
        except OSError as exc:
            raise BackendError(f"cannot load the shared library of {name!r}: {exc}") from None
        finally:
            with contextlib.suppress(OSError):
                path.unlink()
        loaded = SharedModule(name, bytes(image), library)
        if fresh:
            _COPIES_LOADED.append(loaded)
        else:
            _LOADED[digest] = loaded
        return loaded


def _jit():
    # llvmlite loads on a miss or for object files only: a shared-library hit never needs it
    from lowbitc.backends.llvm import jit

    return jit


def load(data: bytes, name: str, fresh: bool = False) -> CompiledModule | SharedModule:
    """Load what `module` stored: a shared library with ctypes, an object file with MCJIT."""
    if not isinstance(data, (bytes, bytearray)) or not data:
        raise BackendError(f"code for module {name!r} is empty or not bytes")
    if elf_type(data) == ET_DYN:
        return load_shared(bytes(data), name, fresh)
    return _jit().load_object(data, name)


def module(llvm_ir: str, name: str, fresh: bool = False) -> CompiledModule | SharedModule:
    """Machine code for `llvm_ir`, from the persistent cache when it has it: a shared library
    where a linker is found, else an object file loaded by MCJIT. The key covers the IR text,
    the host CPU and features, toolchain versions and lowbitc's codegen hash. `fresh`: a copy
    of the library's globals of its own (see `load_shared`)."""
    cache = default_cache()
    if cache is None:
        return _jit().compile_ir(llvm_ir, name)
    key = CacheKey.make(
        llvm_ir,
        {"symbol": name, "platform": f"{sys.platform}-{platform.machine()}"},
        backend="llvm",
    )
    built: list[SharedModule] = []

    def build() -> bytes:
        jit = _jit()
        exe = linker()
        image = link(jit.object_code(llvm_ir, name, pic=True), name, exe) if exe else None
        if image is not None:
            try:
                built.append(load_shared(image, name, fresh))
                return image
            except BackendError as exc:
                warnings.warn(
                    f"lowbitc: {exc}; the kernel runs through MCJIT instead",
                    CacheWarning,
                    stacklevel=2,
                )
        return jit.object_code(llvm_ir, name)

    data = cache.get_or_build(key, build)
    return built[0] if built else load(data, name, fresh)
