"""File-system pieces of the cache: a safe private directory, atomic writes, per-key locks."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from lowbitc.errors import CacheError

try:  # POSIX advisory locks; elsewhere get_or_build only serialises within SQLite's reach
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None


def default_cache_dir() -> Path:
    """`$LOWBITC_CACHE_DIR`, else `$XDG_CACHE_HOME/lowbitc`, else `~/.cache/lowbitc`."""
    env = os.environ.get("LOWBITC_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "lowbitc"


def _check_owner(path: Path, st: os.stat_result, what: str) -> None:
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise CacheError(
            f"cache directory {path}: {what} is owned by uid {st.st_uid}, not by you "
            f"(uid {os.getuid()}); set LOWBITC_CACHE_DIR to a directory of your own"
        )


def ensure_private_dir(path: Path) -> Path:
    """Create `path` (mode 0700) or check an existing one is safe to load code from.

    Refuses a symlink owned by someone else, a directory owned by someone else, and a
    world-writable directory without the sticky bit.
    """
    path = Path(path)
    if path.is_symlink():
        _check_owner(path, path.lstat(), "the symlink")
    if not path.exists():
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise CacheError(f"cache directory {path}: cannot create it ({e})") from e
    st = path.stat()
    if not stat.S_ISDIR(st.st_mode):
        raise CacheError(f"cache directory {path}: exists and is not a directory")
    _check_owner(path, st, "the directory")
    if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
        raise CacheError(
            f"cache directory {path}: world-writable without the sticky bit; "
            f"run `chmod 700 {path}` or choose another LOWBITC_CACHE_DIR"
        )
    return path


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so readers see either the old file or the whole new one."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on `path` (created if missing) for the block."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
